"""Conv-BN folds for testing bncheck's fusion check: a correct from-scratch fold and mutants with one defect each.

``ScratchFold`` folds an eval-mode BatchNorm into any Conv/ConvTranspose (1-3 d, groups, with or without bias,
affine or not) with plain torch ops in the conv's dtype, like ``torch.nn.utils.fusion`` does; it is written as
small hook methods so that each mutant overrides one (or, for a fold with two defects, two). ``expect`` names the
catalog ids a perfect diagnosis reports, exactly; the first docstring line states the defect. ``WeightsFold`` is
the same fold in weights form.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

import bncheck


def _is_transposed(conv) -> bool:
    return isinstance(conv, nn.modules.conv._ConvTransposeNd)


def scale_weight(w, s, transposed, groups):
    """W scaled by s (C_out,) along the output-channel axis: axis 0, or per group along axis 1 if transposed."""
    extra = [1] * (w.dim() - 2)
    if not transposed:
        return w * s.reshape([-1, 1] + extra)
    per_in = w.shape[0] // groups      # (C_in, C_out/groups, *k): output channel g*(C_out/g)+j at column j
    grouped = w.reshape([groups, per_in, w.shape[1]] + list(w.shape[2:]))
    return (grouped * s.reshape([groups, 1, w.shape[1]] + extra)).reshape(w.shape)


class ScratchFold:
    """Correct module-form fold: W' = W*s along the output-channel axis, b' = (b - mean)*s + beta."""
    expect = frozenset()

    def __call__(self, conv, bn):
        with torch.no_grad():
            s = self._scale(bn)
            w = self._scale_weight(conv.weight.detach(), s, _is_transposed(conv), conv.groups)
            b = self._bias(self._conv_bias(conv, bn), bn, s)
        fused = self._module(conv)
        fused.weight = nn.Parameter(w.to(conv.weight.dtype))
        fused.bias = nn.Parameter(b.to(conv.weight.dtype))
        return fused

    def _eps(self, bn):
        return bn.eps

    def _scale(self, bn):
        gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
        return gamma / torch.sqrt(bn.running_var + self._eps(bn))

    def _conv_bias(self, conv, bn):
        return conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)

    def _scale_weight(self, w, s, transposed, groups):
        return scale_weight(w, s, transposed, groups)

    def _bias(self, b, bn, s):
        beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
        return (b - bn.running_mean) * s + beta

    def _module(self, conv):
        return copy.deepcopy(conv)


class TransposedAxis0(ScratchFold):
    """Scales axis 0 of every weight: right for ConvNd, but axis 0 of a ConvTranspose weight is C_in."""
    expect = frozenset({"fold-transposed-axis"})

    def _scale_weight(self, w, s, transposed, groups):
        return w * s.reshape([-1, 1] + [1] * (w.dim() - 2))


class TransposedFlatRows(ScratchFold):
    """Flattens a transposed weight into C_out rows, ``w.view(C_out, -1)``, and scales the rows."""
    expect = frozenset({"fold-transposed-axis"})

    def _scale_weight(self, w, s, transposed, groups):
        if not transposed:
            return super()._scale_weight(w, s, transposed, groups)
        return (w.reshape(s.numel(), -1) * s.reshape(-1, 1)).reshape(w.shape)


class EpsIgnored(ScratchFold):
    """Folds with sqrt(running_var): the BatchNorm's eps is left out."""
    expect = frozenset({"fold-eps-ignored"})

    def _eps(self, bn):
        return 0.0


class EpsHardcoded(ScratchFold):
    """Folds with eps=1e-5 whatever the BatchNorm's eps is."""
    expect = frozenset({"fold-eps-ignored"})

    def _eps(self, bn):
        return 1e-5


class BiasNoneCrash(ScratchFold):
    """Uses conv.bias as is, so a conv without bias raises TypeError (None - running_mean)."""
    expect = frozenset({"fold-bias-none-crash"})

    def _conv_bias(self, conv, bn):
        return conv.bias


class GroupsDropped(ScratchFold):
    """Rebuilds the conv from its arguments but forgets ``groups``: a grouped conv comes back as a dense one."""
    expect = frozenset({"fold-groups"})

    def _module(self, conv):
        kw = dict(stride=conv.stride, padding=conv.padding, dilation=conv.dilation, bias=True,
                  padding_mode=conv.padding_mode, dtype=conv.weight.dtype, device=conv.weight.device)
        if _is_transposed(conv):
            kw["output_padding"] = conv.output_padding
        return type(conv)(conv.in_channels, conv.out_channels, conv.kernel_size, **kw).eval()


class TransposedFirstGroupScale(ScratchFold):
    """Grouped ConvTranspose: scales the (C_in, C_out/groups) weight with the first group's C_out/groups factors."""
    expect = frozenset({"fold-groups"})

    def _scale_weight(self, w, s, transposed, groups):
        if not transposed:
            return super()._scale_weight(w, s, transposed, groups)
        return w * s[: w.shape[1]].reshape([1, -1] + [1] * (w.dim() - 2))


class MeanNotSubtracted(ScratchFold):
    """b' = b*s + beta: the running mean is never subtracted."""
    expect = frozenset({"fold-mismatch"})

    def _bias(self, b, bn, s):
        beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
        return b * s + beta


class BiasSignFlipped(ScratchFold):
    """b' = (mean - b)*s + beta: the bias term's sign is flipped."""
    expect = frozenset({"fold-mismatch"})

    def _bias(self, b, bn, s):
        beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
        return (bn.running_mean - b) * s + beta


class ReturnsSequential(ScratchFold):
    """Returns ``nn.Sequential(folded conv)``: the right numbers, but not a conv module any more."""
    expect = frozenset({"fold-wrong-module"})

    def __call__(self, conv, bn):
        return nn.Sequential(super().__call__(conv, bn))


class ScalesConvInPlace(ScratchFold):
    """Scales ``conv.weight.data`` in place before copying it: the caller's conv is changed."""
    expect = frozenset({"input-mutated"})

    def __call__(self, conv, bn):
        with torch.no_grad():
            conv.weight.data.copy_(self._scale_weight(conv.weight.data, self._scale(bn), _is_transposed(conv),
                                                      conv.groups))
        fused = self._module(conv)
        with torch.no_grad():
            fused.bias = nn.Parameter(self._bias(self._conv_bias(conv, bn), bn, self._scale(bn)).to(conv.weight.dtype))
        return fused


class KeepsFloat64(ScratchFold):
    """Computes the fold in float64 and never casts back: a float32/float16 conv gets float64 parameters."""
    expect = frozenset({"dtype-promotion"})

    def __call__(self, conv, bn):
        fused = self._module(conv)
        with torch.no_grad():
            s = self._scale(bn).double()
            fused.weight = nn.Parameter(self._scale_weight(conv.weight.double(), s, _is_transposed(conv), conv.groups))
            fused.bias = nn.Parameter(self._bias(self._conv_bias(conv, bn).double(), bn, s).double())
        return fused


class WeightsFold:
    """Correct weights-form fold: ``fold(W, b, running_mean, running_var, weight, bias, eps, transposed)``."""
    expect = frozenset()

    def __call__(self, W, b, running_mean, running_var, weight, bias, eps, transposed):
        with torch.no_grad():
            c = running_mean.numel()
            gamma = weight if weight is not None else torch.ones_like(running_mean)
            beta = bias if bias is not None else torch.zeros_like(running_mean)
            b = b if b is not None else torch.zeros_like(running_mean)
            s = self._scale(gamma, running_var, eps)
            groups = c // W.shape[1] if transposed else 1
            w = scale_weight(W, s, transposed, groups)
            return w.to(W.dtype), ((b - running_mean) * s + beta).to(W.dtype)

    def _scale(self, gamma, var, eps):
        return gamma / torch.sqrt(var + eps)


class WeightsEpsOutside(WeightsFold):
    """Weights form with s = weight/(sqrt(var) + eps): eps outside the square root."""
    expect = frozenset({"fold-mismatch"})

    def _scale(self, gamma, var, eps):
        return gamma / (torch.sqrt(var) + eps)


class TransposedReshapeBack(ScratchFold):
    """Scales a transposed weight as ``W.transpose(0, 1)`` rows but restores it with ``reshape``, not a transpose.

    ``reshape`` keeps the (C_out, C_in) element order, so the result is right only when C_in or C_out is 1: wrong
    whenever both are at least 2. Grouped transposed convs are declined (``Unsupported``), as torch's fold does.
    """
    expect = frozenset({"fold-transposed-axis"})

    def _scale_weight(self, w, s, transposed, groups):
        if not transposed:
            return super()._scale_weight(w, s, transposed, groups)
        if groups > 1:
            raise bncheck.Unsupported("grouped ConvTranspose")
        rows = w.transpose(0, 1)                        # (C_out, C_in, *k)
        return (rows * s.reshape([-1, 1] + [1] * (w.dim() - 2))).reshape(w.shape)


class BiasNoneCrashEpsIgnored(BiasNoneCrash, EpsIgnored):
    """Uses conv.bias as is (a conv without bias raises TypeError) and folds with sqrt(running_var) (eps left out):
    a fold bug behind a crash, since the shrunk failing case is the crash; both must be named."""
    expect = frozenset({"fold-bias-none-crash", "fold-eps-ignored"})


CORRECT = {"scratch": ScratchFold, "weights": WeightsFold}
MUTANTS = {
    "transposed-axis0": TransposedAxis0, "transposed-flat-rows": TransposedFlatRows, "eps-ignored": EpsIgnored,
    "eps-hardcoded": EpsHardcoded, "bias-none-crash": BiasNoneCrash, "groups-dropped": GroupsDropped,
    "transposed-first-group-scale": TransposedFirstGroupScale, "mean-not-subtracted": MeanNotSubtracted,
    "bias-sign-flipped": BiasSignFlipped, "returns-sequential": ReturnsSequential,
    "scales-conv-in-place": ScalesConvInPlace, "keeps-float64": KeepsFloat64, "weights-eps-outside": WeightsEpsOutside,
    "transposed-reshape-back": TransposedReshapeBack, "bias-none-crash-eps-ignored": BiasNoneCrashEpsIgnored,
}

"""Conv-BN folding: one parameterised float64 fold reference, and bncheck's own folding helper built on it.

Folding an eval-mode BatchNorm into the convolution before it (BATCHNORM_SEMANTICS.md, "Conv-BN folding"):

    s  = weight / sqrt(running_var + eps)                 per output channel (weight = 1 when affine=False)
    W' = W * s   along the conv's output-channel axis     axis 0 for ConvNd; for ConvTransposeNd the weight is
                                                          (C_in, C_out/groups, *k) and output channel
                                                          g*(C_out/groups) + j sits at [group g rows, column j]
    b' = (b - running_mean) * s + bias                    b = 0 when the conv has no bias, bias = 0 when affine=False

``fold_parameters`` computes this in float64 with named **knobs** (``FoldKnobs``): the default knobs are the
formula above; a flipped knob is a hypothesis about a bug (scale applied to axis 0 of a transposed weight, eps
ignored, mean not subtracted, ...) used by ``bncheck.folding.check``'s diagnosis. ``fold_weights`` / ``fold_conv_bn``
are the product: the same reference in float64, cast back to the conv's dtype and device.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, fields

import torch
from torch import nn


class NotExpressible(ValueError):
    """A knob setting that cannot be applied to these shapes (e.g. axis 0 of a weight with C_in != C_out rows)."""


@dataclass(frozen=True)
class FoldKnobs:
    scale_axis: str = "out"          # out: the output-channel axis | dim0: (C,1,..,1) on axis 0 whatever the conv |
                                     # flat-rows: W.reshape(C_out, -1) scaled row by row
    eps_override: float | None = None  # a fixed eps used whatever the BatchNorm's eps is
    scale_form: str = "rsqrt"        # rsqrt: w/sqrt(v+eps) | no-sqrt: w/(v+eps) | eps-outside: w/(sqrt(v)+eps) |
                                     # no-weight: 1/sqrt(v+eps)
    mean_mode: str = "subtract"      # subtract | ignored | added
    conv_bias: str = "scaled"        # scaled: s*(b - mean) | unscaled: b - s*mean | ignored
    beta_mode: str = "added"         # added | ignored | scaled: s*(b - mean + bias)

    def flipped(self) -> dict:
        base = FoldKnobs()
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != getattr(base, f.name)}

    def describe(self) -> str:
        return ", ".join(_TEXT.get((k, v), f"{k}={v}") for k, v in self.flipped().items()) or "the correct fold"


_TEXT = {("scale_axis", "dim0"): "the scale applied along weight axis 0 (C_in for a transposed conv)",
         ("scale_axis", "flat-rows"): "the scale applied to W.reshape(C_out, -1) rows",
         ("scale_form", "no-sqrt"): "w/(var+eps) (no square root)",
         ("scale_form", "eps-outside"): "w/(sqrt(var)+eps) (eps outside the root)",
         ("scale_form", "no-weight"): "the BatchNorm weight left out of the scale",
         ("mean_mode", "ignored"): "the running mean not subtracted", ("mean_mode", "added"): "the running mean added",
         ("conv_bias", "unscaled"): "the conv bias not scaled (b - s*mean)",
         ("conv_bias", "ignored"): "the conv bias dropped",
         ("beta_mode", "ignored"): "the BatchNorm bias dropped",
         ("beta_mode", "scaled"): "the BatchNorm bias scaled too (s*(b - mean + bias))"}
for _e in (0.0, 1e-3, 1e-5, 1e-8, 1e-12):
    _TEXT[("eps_override", _e)] = f"eps ignored ({_e:g} used)"

FOLD_REFERENCE = FoldKnobs()


def transposed_groups(w: torch.Tensor, c_out: int) -> int:
    """groups of a ConvTransposeNd from its weight (C_in, C_out/groups, *k) and C_out."""
    per = w.shape[1]
    if per == 0 or c_out % per or w.shape[0] % (c_out // per):
        raise ValueError(f"transposed weight {tuple(w.shape)} does not fit {c_out} output channels")
    return c_out // per


def scale_weight(w: torch.Tensor, s: torch.Tensor, transposed: bool, axis: str = "out") -> torch.Tensor:
    """W scaled per output channel by ``s`` (C_out,), along the axis the knob names."""
    c, extra = s.numel(), [1] * (w.dim() - 2)
    if axis == "dim0":
        if w.shape[0] != c:
            raise NotExpressible(f"axis 0 of the weight has {w.shape[0]} rows, the BatchNorm {c} channels")
        return w * s.reshape([c, 1] + extra)
    if axis == "flat-rows":
        if w.numel() % c:
            raise NotExpressible(f"{w.numel()} weight elements do not split into {c} rows")
        return (w.reshape(c, -1) * s.reshape(c, 1)).reshape(w.shape)
    if not transposed:
        if w.shape[0] != c:
            raise ValueError(f"conv weight {tuple(w.shape)} has {w.shape[0]} output channels, BatchNorm {c}")
        return w * s.reshape([c, 1] + extra)
    g = transposed_groups(w, c)
    per_in, per_out = w.shape[0] // g, w.shape[1]
    grouped = w.reshape([g, per_in, per_out] + list(w.shape[2:]))
    return (grouped * s.reshape([g, 1, per_out] + extra)).reshape(w.shape)


@dataclass
class Folded:
    weight: torch.Tensor        # float64 W'
    bias: torch.Tensor          # float64 b'
    bias_terms: torch.Tensor    # float64 (C_out,): sum of |terms| that make up b' (for error budgets)


def fold_parameters(w, b, running_mean, running_var, weight, bias, eps, transposed,
                    knobs: FoldKnobs = FOLD_REFERENCE) -> Folded:
    """The fold in float64, with knobs. ``b``, ``weight``, ``bias`` may be None (no conv bias / affine=False)."""
    f64 = dict(dtype=torch.float64, device=w.device)
    w = w.detach().to(**f64)
    mean, var = running_mean.detach().to(**f64), running_var.detach().to(**f64)
    zeros = torch.zeros_like(mean)
    b = zeros if b is None else b.detach().to(**f64)
    gamma = torch.ones_like(mean) if weight is None else weight.detach().to(**f64)
    beta = zeros if bias is None else bias.detach().to(**f64)
    e = float(eps if knobs.eps_override is None else knobs.eps_override)
    form = knobs.scale_form
    if form == "rsqrt":
        s = gamma / torch.sqrt(var + e)
    elif form == "no-sqrt":
        s = gamma / (var + e)
    elif form == "eps-outside":
        s = gamma / (torch.sqrt(var) + e)
    else:
        s = 1.0 / torch.sqrt(var + e)
    m = {"subtract": mean, "ignored": zeros, "added": -mean}[knobs.mean_mode]
    bb = b if knobs.conv_bias != "ignored" else zeros
    if knobs.conv_bias == "unscaled":
        terms = [bb, -s * m]
    else:
        terms = [s * bb, -s * m]
    if knobs.beta_mode == "added":
        terms.append(beta)
    elif knobs.beta_mode == "scaled":
        terms.append(s * beta)
    new_b = sum(terms[1:], terms[0])
    return Folded(scale_weight(w, s, transposed, knobs.scale_axis), new_b, sum(t.abs() for t in terms))


def fold_weights(w, b, running_mean, running_var, weight, bias, eps, transposed=False):
    """bncheck's fold in weights form: ``(W', b')`` in the conv's dtype and device, computed in float64.

    Same signature as a weights-form fusion plugin. ``b`` None (conv without bias) gives a b' in W's dtype;
    ``weight``/``bias`` None mean affine=False. Groups of a transposed conv are read from the shapes.
    """
    f = fold_parameters(w, b, running_mean, running_var, weight, bias, eps, transposed)
    bias_dtype = w.dtype if b is None else b.dtype
    return f.weight.to(w.dtype), f.bias.to(dtype=bias_dtype, device=(w if b is None else b).device)


def fold_conv_bn(conv: nn.Module, bn: nn.Module) -> nn.Module:
    """bncheck's fold in module form: a new conv computing ``bn(conv(x))`` of an eval-mode pair.

    Any ``Conv{1,2,3}d`` / ``ConvTranspose{1,2,3}d`` (groups, dilation, padding modes are kept: the conv is
    copied), with or without bias; any BatchNorm with running statistics, affine or not. The inputs are not
    modified.
    """
    if not isinstance(conv, nn.modules.conv._ConvNd):
        raise TypeError(f"fold_conv_bn: conv is {type(conv).__name__}, not a Conv/ConvTranspose module")
    if getattr(bn, "running_mean", None) is None or getattr(bn, "running_var", None) is None:
        raise ValueError("fold_conv_bn: the BatchNorm has no running statistics (track_running_stats=False); "
                         "its eval output depends on the batch and cannot be folded")
    if conv.training or bn.training:
        raise ValueError("fold_conv_bn: folding is defined for eval mode; call conv.eval() and bn.eval() first")
    transposed = isinstance(conv, nn.modules.conv._ConvTransposeNd)
    w, b = fold_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps,
                        transposed)
    fused = copy.deepcopy(conv)
    fused.weight = nn.Parameter(w, requires_grad=conv.weight.requires_grad)
    fused.bias = nn.Parameter(b, requires_grad=conv.weight.requires_grad)
    return fused

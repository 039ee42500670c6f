"""e3nn's ``e3nn.nn.BatchNorm`` (e3nn 0.6.0), a from-scratch BatchNorm for equivariant features, on scalar
features only: ``BatchNorm("Cx0e")`` is a BatchNorm over C scalar channels.

Ported as a careful user would port a torch BatchNorm: ``irreps = f"{C}x0e"``, ``eps``, ``momentum`` and ``affine``
passed through, ``reduce="mean"``, ``normalization="component"``, ``instance=False`` (the defaults), the module
moved to the parameter dtype and device with ``.to()``. e3nn keeps the feature axis *last* (``(batch, ...,
irreps.dim)``), torch keeps it at axis 1: the adapter moves axis 1 to the end before the call and back after it,
and returns the output in the input's memory format (contiguous, or channels_last), as torch does.
Parameter and statistic names are torch's (``weight``, ``bias``, ``running_mean``, ``running_var``); there is no
``num_batches_tracked``.

Declined: ``momentum=None`` (``_roll_avg`` multiplies by the momentum, ``nn/_batchnorm.py:99-100``: no
cumulative average) and ``track_running_stats=False`` (the only statistics-free mode is ``instance=True``,
instance normalisation, ``nn/_batchnorm.py:139-141``).

Predicted differences from torch (``site-packages/e3nn/nn/_batchnorm.py``):
- ``biased-running-var``: the variance is ``field.pow(2).mean(3)`` averaged over samples (line 156, 161) and over
  the batch (line 168), a division by n, and that biased value goes into ``running_var`` (line 169); torch stores
  the unbiased batch variance. (Normalisation with the biased variance, line 174, is torch's.)
- ``crash``: a zero-size batch: ``input.reshape(batch, -1, dim)`` (line 118) cannot infer ``-1`` for a tensor of
  0 elements and raises; torch returns the empty output.
- ``missing-error``: one value per channel in training (batch of 1, no spatial axes) is normalised with variance
  0 (lines 143, 156-168): no check for it, where torch raises.
- ``dtype-promotion``: float16/bfloat16 input with float32 parameters: ``field_norm * weight`` (line 180) and
  ``field * field_norm`` (line 182) promote to float32, and in eval ``field - running_mean`` (lines 146, 150)
  does too; the output is float32 where torch returns the input dtype.
"""
from __future__ import annotations

import torch

import bncheck

PACKAGE = "e3nn"
PREDICTED = frozenset({"biased-running-var", "crash", "missing-error", "dtype-promotion"})


def like_input(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``y`` in the memory format of ``x`` (contiguous, or channels_last as torch's BatchNorm keeps it)."""
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())
    if fmt is not None and not x.is_contiguous() and x.is_contiguous(memory_format=fmt):
        return y.contiguous(memory_format=fmt)
    return y.contiguous()


class ChannelsLast(torch.nn.Module):
    """Calls a feature-last module on a torch-layout (N, C, *spatial) input."""

    def __init__(self, bn: torch.nn.Module):
        super().__init__()
        self.bn = bn

    def forward(self, x):
        return like_input(self.bn(x.movedim(1, -1)).movedim(-1, 1), x)


@bncheck.implementation("e3nn-batchnorm", expect=PREDICTED,
                        state={"weight": "bn.weight", "bias": "bn.bias",
                               "running_mean": "bn.running_mean", "running_var": "bn.running_var"})
def build(spec: bncheck.Spec) -> torch.nn.Module:
    try:
        from e3nn.nn import BatchNorm
    except ImportError as e:
        raise bncheck.Unsupported(f"e3nn could not be imported ({e}): pip install -r corpus/requirements.txt") from None
    if spec.momentum is None:
        raise bncheck.Unsupported("e3nn's BatchNorm has no cumulative moving average (momentum=None)")
    if not spec.track_running_stats:
        raise bncheck.Unsupported("e3nn's BatchNorm always tracks running statistics (instance=True is instance "
                                  "normalisation, not track_running_stats=False)")
    bn = BatchNorm(f"{spec.num_features}x0e", eps=spec.eps, momentum=spec.momentum, affine=spec.affine)
    return ChannelsLast(bn.to(device=spec.device, dtype=spec.dtype))

"""Pyro's normalizing-flow BatchNorm, ``pyro.distributions.transforms.BatchNorm`` (pyro-ppl 1.9.2), a from-scratch
BatchNorm. As a bijection its forward ``_call`` *un*-normalises with the running statistics; the batch-norm
direction is the inverse, ``_inverse``, which Pyro runs when a flow scores a batch (``log_prob``). The adapter
calls that direction through the public inverse transform, ``bn.inv(x)``.

Ported as a careful user would port a torch BatchNorm: ``BatchNorm(C, momentum=m, epsilon=eps)``, the module
moved to the parameter dtype and device with ``.to()``. Pyro's transform is element-wise over vectors
``(batch, input_dim)`` with statistics over dim 0; for a torch-layout ``(N, C, *spatial)`` input the adapter moves
the channel axis last and flattens to ``(N * prod(spatial), C)``, so the statistics are per channel over batch
and spatial positions as in torch, then restores the shape and the input's memory format. State names: ``weight`` is
``gamma``, ``bias`` is ``beta``, ``running_mean`` is ``moving_mean``, ``running_var`` is ``moving_variance``; there
is no ``num_batches_tracked``.

Declined: ``momentum=None`` (``1 - self.momentum``, ``transforms/batchnorm.py:120``: no cumulative average),
``track_running_stats=False`` (training always updates the moving statistics and eval always uses them, lines
115-125) and ``affine=False`` (``gamma`` and ``beta`` always exist and are applied, line 127-129).

Predicted differences from torch (``site-packages/pyro/distributions/transforms/batchnorm.py``):
- ``affine-wrong``: the scale applied is ``constrained_gamma = F.relu(self.gamma) + 1e-6`` (line 91, used at
  line 127), not ``gamma``: a negative weight acts as 1e-6 and every weight is shifted by 1e-6.
- ``unbiased-normalization``: training normalises with ``var = y.var(0)`` (line 116, used at 127-128), the
  unbiased batch variance; torch normalises with the biased one. (The moving average of the unbiased variance,
  line 121, is torch's.)
- ``nan-inf``: a zero-size batch in training: ``y.mean(0)`` and ``y.var(0)`` of no rows are NaN (line 116) and
  are blended into the moving statistics (lines 120-121); torch leaves its running statistics unchanged.
- ``missing-error``: one value per channel in training: ``y.var(0)`` of one row is NaN (with a warning) and no
  error is raised, where torch raises.
- ``dtype-promotion``: float16/bfloat16 input with float32 parameters: ``(y - mean) * self.constrained_gamma``
  (line 127) promotes to float32 and the output is float32, where torch returns the input dtype.
"""
from __future__ import annotations

import torch

import bncheck

PACKAGE = "pyro-ppl"
PREDICTED = frozenset({"affine-wrong", "unbiased-normalization", "nan-inf", "missing-error", "dtype-promotion"})


def like_input(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``y`` in the memory format of ``x`` (contiguous, or channels_last as torch's BatchNorm keeps it)."""
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())
    if fmt is not None and not x.is_contiguous() and x.is_contiguous(memory_format=fmt):
        return y.contiguous(memory_format=fmt)
    return y.contiguous()


class PyroBatchNorm(torch.nn.Module):
    """The inverse (normalising) direction of Pyro's BatchNorm transform on a torch-layout input."""

    def __init__(self, bn):
        super().__init__()
        self.bn = bn

    def forward(self, x):
        c = x.shape[1]
        rows = x.movedim(1, -1)
        y = self.bn.inv(rows.reshape(-1, c))
        return like_input(y.reshape(rows.shape).movedim(-1, 1), x)


@bncheck.implementation("pyro-batchnorm", expect=PREDICTED,
                        state={"weight": "bn.gamma", "bias": "bn.beta",
                               "running_mean": "bn.moving_mean", "running_var": "bn.moving_variance"})
def build(spec: bncheck.Spec) -> torch.nn.Module:
    try:
        from pyro.distributions.transforms import BatchNorm
    except ImportError as e:
        raise bncheck.Unsupported(f"pyro-ppl could not be imported ({e}): pip install -r corpus/requirements.txt") \
            from None
    if spec.momentum is None:
        raise bncheck.Unsupported("Pyro's BatchNorm has no cumulative moving average (momentum=None)")
    if not spec.track_running_stats:
        raise bncheck.Unsupported("Pyro's BatchNorm always keeps and uses moving statistics")
    if not spec.affine:
        raise bncheck.Unsupported("Pyro's BatchNorm always has and applies gamma and beta (no affine=False)")
    bn = BatchNorm(spec.num_features, momentum=spec.momentum, epsilon=spec.eps)
    return PyroBatchNorm(bn.to(device=spec.device, dtype=spec.dtype))

"""Fused BatchNorm epilogues in torch: ``relu(bn(x))`` and ``relu(bn(x) + z)`` (the add and activation a residual
block puts after its last BatchNorm, as cuDNN's BN_ACTIVATION / BN_ADD_ACTIVATION, apex's ``bn_add_relu`` and
timm's ``BatchNormAct2d`` fuse them).

- ``torch-bn-relu`` / ``torch-bn-add-relu``: torch eager, ``F.relu(bn(x) + z)`` on torch's own ``BatchNorm{1,2,3}d``
  for the input rank: the reference, which must come out clean.
- ``torch-compile-bn-relu``, the same module under ``torch.compile``: ``frameworks/torch_compile.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import bncheck


class BatchNormAct(torch.nn.Module):
    """torch's BatchNorm for the input rank, then (+ z) and ReLU, with torch's parameter and buffer names."""

    def __init__(self, spec: bncheck.Spec):
        super().__init__()
        self.bn = spec.torch_class(**spec.torch_kwargs())
        self.add = spec.epilogue == "add_relu"

    def forward(self, x, z=None):
        y = self.bn(x)
        return F.relu(y + z) if self.add else F.relu(y)


STATE = {k: f"bn.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}


@bncheck.implementation("torch-bn-relu", state=STATE, epilogue="relu")
def bn_relu(spec: bncheck.Spec) -> torch.nn.Module:
    return BatchNormAct(spec)


@bncheck.implementation("torch-bn-add-relu", state=STATE, epilogue="add_relu")
def bn_add_relu(spec: bncheck.Spec) -> torch.nn.Module:
    return BatchNormAct(spec)

"""PyTorch Geometric's ``torch_geometric.nn.norm.BatchNorm`` (torch-geometric 2.8.1), the BatchNorm of its GNN
layers. A control: with its default ``allow_single_element=False`` it is a thin wrapper that calls a
``torch.nn.BatchNorm1d`` (``nn/norm/batch_norm.py:61-62`` builds it, ``:91`` calls it), so it should come out clean.

Ported as a careful user would port a torch ``BatchNorm1d``: ``BatchNorm(C, eps, momentum, affine,
track_running_stats, device=...)``, moved to the parameter dtype with ``.to()`` (the constructor has no dtype
argument). State names: ``module.weight``, ``module.bias``, ``module.running_mean``, ``module.running_var``,
``module.num_batches_tracked``.

Declined: ranks 4 and 5 (node features go through ``BatchNorm1d``, which takes rank 2 or 3).

Predicted differences from torch: none (``nn/norm/batch_norm.py:80-91``: the ``allow_single_element`` branch,
which would normalise a one-row batch with the running statistics in training, is off by default).
"""
from __future__ import annotations

import torch

import bncheck

PACKAGE = "torch-geometric"
PREDICTED = frozenset()


@bncheck.implementation("pyg-batchnorm", expect=PREDICTED,
                        state={k: f"module.{k}" for k in ("weight", "bias", "running_mean", "running_var",
                                                          "num_batches_tracked")})
def build(spec: bncheck.Spec) -> torch.nn.Module:
    try:
        from torch_geometric.nn.norm import BatchNorm
    except ImportError as e:
        raise bncheck.Unsupported(f"torch-geometric could not be imported ({e}): pip install -r "
                                  f"corpus/requirements.txt") from None
    if spec.ndim not in (2, 3):
        raise bncheck.Unsupported("PyG's BatchNorm wraps BatchNorm1d: rank 2 or 3 input")
    bn = BatchNorm(spec.num_features, eps=spec.eps, momentum=spec.momentum, affine=spec.affine,
                   track_running_stats=spec.track_running_stats, device=spec.device)
    return bn.to(dtype=spec.dtype)

"""TabNet's Ghost Batch Normalization, ``pytorch_tabnet.tab_network.GBN`` (pytorch-tabnet 4.1.0): the batch is cut
into "virtual batches" of at most ``virtual_batch_size`` rows and each is passed through one shared
``torch.nn.BatchNorm1d``.

Ported as a TabNet user would port a torch ``BatchNorm1d``: ``GBN(C, virtual_batch_size=128, momentum=m)`` (128 is
GBN's default and TabNet's), the module moved to the parameter dtype and device with ``.to()``. State names:
``bn.weight``, ``bn.bias``, ``bn.running_mean``, ``bn.running_var``, ``bn.num_batches_tracked``.

Declined: ranks 4 and 5 (the inner module is a ``BatchNorm1d``, which takes rank 2 or 3, ``tab_network.py:32``),
and the arguments GBN's constructor does not have (``tab_network.py:27``): ``eps`` other than BatchNorm1d's
default 1e-5, ``affine=False``, ``track_running_stats=False``.

Predicted differences from torch (``site-packages/pytorch_tabnet/tab_network.py``):
- ``crash``: a zero-size batch: ``x.chunk(int(np.ceil(x.shape[0] / self.virtual_batch_size)), 0)`` (line 35)
  asks for 0 chunks, which ``torch.chunk`` rejects; torch returns the empty output.
Not predicted: a batch larger than ``virtual_batch_size`` would be normalised in separate chunks with one
running-statistics update per chunk (lines 35-38), but bncheck's batches have at most 64 rows, so with the default
of 128 every batch is one chunk and GBN is then ``BatchNorm1d`` itself.
"""
from __future__ import annotations

import torch

import bncheck

PACKAGE = "pytorch-tabnet"
PREDICTED = frozenset({"crash"})
VIRTUAL_BATCH_SIZE = 128


@bncheck.implementation("tabnet-gbn", expect=PREDICTED,
                        state={"weight": "bn.weight", "bias": "bn.bias", "running_mean": "bn.running_mean",
                               "running_var": "bn.running_var", "num_batches_tracked": "bn.num_batches_tracked"})
def build(spec: bncheck.Spec) -> torch.nn.Module:
    try:
        from pytorch_tabnet.tab_network import GBN
    except ImportError as e:
        raise bncheck.Unsupported(f"pytorch-tabnet could not be imported ({e}): pip install -r "
                                  f"corpus/requirements.txt") from None
    if spec.ndim not in (2, 3):
        raise bncheck.Unsupported("GBN wraps BatchNorm1d: rank 2 or 3 input")
    if spec.eps != 1e-5:
        raise bncheck.Unsupported("GBN has no eps argument (its BatchNorm1d uses 1e-5)")
    if not spec.affine or not spec.track_running_stats:
        raise bncheck.Unsupported("GBN has no affine / track_running_stats arguments")
    gbn = GBN(spec.num_features, virtual_batch_size=VIRTUAL_BATCH_SIZE, momentum=spec.momentum)
    return gbn.to(device=spec.device, dtype=spec.dtype)

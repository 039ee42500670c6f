"""PyTorchVideo's ``NaiveSyncBatchNorm1d/2d/3d`` (pytorchvideo 0.1.5, ``pytorchvideo.layers.batch_norm``), a
synchronised BatchNorm in plain torch.distributed (fvcore's ``differentiable_all_reduce``), written as "a slower
but correct alternative to ``nn.SyncBatchNorm``" (its docstring, ``layers/batch_norm.py:47-57``). The same code
is detectron2's ``NaiveSyncBatchNorm``.

Ported as a careful user would port ``torch.nn.SyncBatchNorm``: the class for the input rank
(``NaiveSyncBatchNorm1d`` for ranks 2 and 3, ``2d`` for 4, ``3d`` for 5), built with torch's BatchNorm arguments
(it subclasses ``nn.BatchNorm1d/2d/3d``, so it takes ``eps``, ``momentum``, ``affine``, ``track_running_stats``,
``device``, ``dtype``). It has no ``process_group`` argument: it reduces over the default group
(``dist.get_world_size()``, line 72), which is the group bncheck passes. Nothing is declined: the constructor
accepts every configuration.

Predicted differences from single-process BatchNorm on the whole batch (``site-packages/pytorchvideo/layers/
batch_norm.py``; lines of the 2d class, the 1d and 3d classes are the same code at lines 16-41 and 95-120):
- ``sync-uneven-batch``: every rank's mean and mean of squares is weighted ``1 / world_size`` (lines 66-73), not
  by its share of the samples; the docstring says so (lines 54-57: true statistics only when all workers have
  the same (N, H, W)).
- ``sync-mismatch``: two defects no sync knob expresses: ``running_var`` is updated with the *biased* variance
  ``meansqr - mean * mean`` (lines 74, 83), where torch uses the unbiased one with the global count; and that
  variance is E[x^2] - E[x]^2 (lines 67, 74), which cancels for inputs whose mean is large against their std
  (the single-process ids would be ``biased-running-var`` and ``cancellation``).
- ``crash``: the 1d class on rank-2 input, ``torch.mean(input, dim=[0, 2])`` (line 22) has no axis 2;
  ``momentum=None``: ``self.momentum * (...)`` (line 82) multiplies None; ``affine=False``: ``self.weight *
  invstd`` (line 77) multiplies None. Each raises on every rank in a training step.
- ``num-batches-tracked-wrong``: a training step with more than one rank never reaches
  ``nn.BatchNorm2d.forward`` (line 61 returns early only for one rank or eval), and nothing else counts, so
  ``num_batches_tracked`` stays where it was; torch's SyncBatchNorm counts every training step.
"""
from __future__ import annotations

import torch

import bncheck

PACKAGE = "pytorchvideo"
# Written before bncheck ran: sync-uneven-batch, sync-mismatch, crash, num-batches-tracked-wrong. Once the sync check
# could name a one-pass variance (cancellation) and searched on behind each crash, three defects listed above under
# sync-mismatch and crash got ids of their own, each from the lines cited: the E[x^2] - E[x]^2 variance
# (cancellation), momentum=None (momentum-none) and the 1d class on rank-2 input (rank-unsupported). Once a sync knob
# could express a biased running variance (unbias=none), the last defect listed under sync-mismatch got its
# single-process id too (biased-running-var), and sync-mismatch no longer stands for anything.
PREDICTED = frozenset({"sync-uneven-batch", "biased-running-var", "crash", "num-batches-tracked-wrong",
                       "cancellation", "momentum-none", "rank-unsupported"})


@bncheck.sync_implementation("pytorchvideo-naive-syncbn", expect=PREDICTED)
def build(spec: bncheck.Spec, group) -> torch.nn.Module:
    try:
        from pytorchvideo.layers import batch_norm
    except ImportError as e:
        raise bncheck.Unsupported(f"pytorchvideo could not be imported ({e}): pip install -r "
                                  f"corpus/requirements.txt and --no-deps -r corpus/requirements-nodeps.txt") \
            from None
    cls = {2: batch_norm.NaiveSyncBatchNorm1d, 3: batch_norm.NaiveSyncBatchNorm1d,
           4: batch_norm.NaiveSyncBatchNorm2d, 5: batch_norm.NaiveSyncBatchNorm3d}[spec.ndim]
    return cls(**spec.torch_kwargs())

"""``torch.nn.SyncBatchNorm``: runs only on CUDA tensors (NCCL, or gloo with CUDA support); elsewhere it declines.

On a CPU run every scenario is declined with the reason below, and the report lists it as skipped, not as a bug.
"""
import torch

import bncheck


@bncheck.sync_implementation("torch-syncbn")
def build(spec: bncheck.Spec, group):
    if not str(spec.device).startswith("cuda"):
        raise bncheck.Unsupported(f"torch.nn.SyncBatchNorm needs CUDA tensors; this run is on {spec.device}")
    if not torch.cuda.is_available():
        raise bncheck.Unsupported("torch.nn.SyncBatchNorm needs CUDA; torch.cuda.is_available() is False")
    return torch.nn.SyncBatchNorm(spec.num_features, eps=spec.eps, momentum=spec.momentum, affine=spec.affine,
                                  track_running_stats=spec.track_running_stats, process_group=group,
                                  device=spec.device, dtype=spec.dtype)

"""Rank 1 kills its own process in backward (exit code 3)."""
import os

import torch.distributed as dist

import bncheck
from bncheck.sync.syncbn import SyncBatchNorm


class Dies(SyncBatchNorm):
    def reduce_grad_sums(self, sums, n_global, n_local):
        if dist.get_rank(self.process_group) == 1:
            os._exit(3)
        return super().reduce_grad_sums(sums, n_global, n_local)


@bncheck.sync_implementation("bad-sync-dies")
def build(spec, group):
    return Dies(spec.num_features, eps=spec.eps, momentum=spec.momentum, affine=spec.affine,
                track_running_stats=spec.track_running_stats, process_group=group, dtype=spec.dtype)

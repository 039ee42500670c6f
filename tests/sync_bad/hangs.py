"""Rank 0 never returns from forward (the others wait for it in a collective)."""
import time

import torch.distributed as dist

import bncheck
from bncheck.sync.syncbn import SyncBatchNorm


class Hangs(SyncBatchNorm):
    def forward(self, x):
        if dist.get_rank(self.process_group) == 0:
            while True:
                time.sleep(0.5)
        return super().forward(x)


@bncheck.sync_implementation("bad-sync-hangs")
def build(spec, group):
    return Hangs(spec.num_features, eps=spec.eps, momentum=spec.momentum, affine=spec.affine,
                 track_running_stats=spec.track_running_stats, process_group=group, dtype=spec.dtype)

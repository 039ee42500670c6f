"""Raises in forward on rank 1 only: the other ranks are left waiting in the statistics all_gather."""
import torch.distributed as dist

import bncheck
from bncheck.sync.syncbn import SyncBatchNorm


class RaisesOnRank1(SyncBatchNorm):
    def forward(self, x):
        if dist.get_rank(self.process_group) == 1:
            raise RuntimeError("rank 1 lost its shard")
        return super().forward(x)


@bncheck.sync_implementation("bad-sync-raises-on-one-rank")
def build(spec, group):
    return RaisesOnRank1(spec.num_features, eps=spec.eps, momentum=spec.momentum, affine=spec.affine,
                         track_running_stats=spec.track_running_stats, process_group=group, dtype=spec.dtype)

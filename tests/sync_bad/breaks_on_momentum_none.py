"""Rank 1 raises in forward when momentum is None, leaving the other ranks waiting in the statistics all_gather (so
the ranks must be restarted); and running_var is unbiased with the local count. Both must be named: the crash
breaking the ranks does not end the search."""
import sys
from pathlib import Path

import torch.distributed as dist

import bncheck

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from zoo.sync_mutants import LocalCount   # noqa: E402


class BreaksOnMomentumNone(LocalCount):
    def forward(self, x):
        if self.momentum is None and dist.get_rank(self.process_group) == 1:
            raise RuntimeError("rank 1 has no cumulative average")
        return super().forward(x)


@bncheck.sync_implementation("bad-sync-breaks-on-momentum-none", expect={"momentum-none", "sync-local-count"})
def build(spec, group):
    return BreaksOnMomentumNone(spec.num_features, eps=spec.eps, momentum=spec.momentum, affine=spec.affine,
                                track_running_stats=spec.track_running_stats, process_group=group, dtype=spec.dtype)

"""Rank 1's process exits in forward when momentum is None (so the rank must be replaced before the next scenario);
and running_var is unbiased with the local count. Both must be named: a crash that breaks the ranks does not end
the search."""
import os
import sys
from pathlib import Path

import torch.distributed as dist

import bncheck

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from zoo.sync_mutants import LocalCount   # noqa: E402


class DiesOnMomentumNone(LocalCount):
    def forward(self, x):
        if self.momentum is None and dist.get_rank(self.process_group) == 1:
            os._exit(5)
        return super().forward(x)


@bncheck.sync_implementation("bad-sync-dies-on-momentum-none", expect={"momentum-none", "sync-local-count"})
def build(spec, group):
    return DiesOnMomentumNone(spec.num_features, eps=spec.eps, momentum=spec.momentum, affine=spec.affine,
                              track_running_stats=spec.track_running_stats, process_group=group, dtype=spec.dtype)

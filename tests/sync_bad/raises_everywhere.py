"""Raises in forward on every rank for 3-D input, before any collective: the pool stays usable."""
import bncheck
from bncheck.sync.syncbn import SyncBatchNorm


class NoRank3(SyncBatchNorm):
    def forward(self, x):
        if x.dim() == 3:
            raise NotImplementedError("sequence input not wired up")
        return super().forward(x)


@bncheck.sync_implementation("bad-sync-raises-everywhere")
def build(spec, group):
    return NoRank3(spec.num_features, eps=spec.eps, momentum=spec.momentum, affine=spec.affine,
                   track_running_stats=spec.track_running_stats, process_group=group, dtype=spec.dtype)

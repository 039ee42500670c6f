"""bncheck's synchronised BatchNorm (bncheck/sync/syncbn.py): any backend, any input rank. It must come out clean."""
import bncheck
from bncheck.sync.syncbn import SyncBatchNorm


@bncheck.sync_implementation("bncheck-syncbn")
def build(spec: bncheck.Spec, group):
    return SyncBatchNorm(spec.num_features, eps=spec.eps, momentum=spec.momentum, affine=spec.affine,
                         track_running_stats=spec.track_running_stats, process_group=group, device=spec.device,
                         dtype=spec.dtype)

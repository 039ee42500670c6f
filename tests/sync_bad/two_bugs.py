"""Two distributed bugs in one plugin (mean of variances, and local-count unbiasing): both must be named."""
import sys
from pathlib import Path

import bncheck

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from zoo.sync_mutants import LocalCount, MeanOfVariances   # noqa: E402


class TwoBugs(MeanOfVariances, LocalCount):
    pass


@bncheck.sync_implementation("bad-sync-two-bugs", expect={"sync-mean-of-variances", "sync-local-count"})
def build(spec, group):
    return TwoBugs(spec.num_features, eps=spec.eps, momentum=spec.momentum, affine=spec.affine,
                   track_running_stats=spec.track_running_stats, process_group=group, dtype=spec.dtype)

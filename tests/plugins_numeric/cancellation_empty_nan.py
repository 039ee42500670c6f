"""Two bugs: the variance by E[x^2] - E[x]^2 (cancellation), and an empty training batch writing the mean of nothing
(NaN) into the running statistics (nan-inf)."""
import sys
from pathlib import Path

import torch

import bncheck

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from zoo.mutants import Cancellation  # noqa: E402


class CancellationEmptyNaN(Cancellation):
    def _update_running(self, mean, var, n):
        if n == 0:
            with torch.no_grad():
                self.running_mean.copy_(self._channel(mean))
                self.running_var.copy_(self._channel(var))
            return
        super()._update_running(mean, var, n)


@bncheck.implementation("cancellation-empty-nan", expect={"cancellation", "nan-inf"})
def build(spec):
    return CancellationEmptyNaN(spec.num_features, eps=spec.eps, momentum=spec.momentum, affine=spec.affine,
                                track_running_stats=spec.track_running_stats, device=spec.device, dtype=spec.dtype)

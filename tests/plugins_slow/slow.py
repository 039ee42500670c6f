"""torch's BatchNorm2d behind a forward that takes 1.5 s per call: slow, but advancing (like an implementation that
compiles every new configuration)."""
import time

import torch

import bncheck


class SlowBatchNorm(torch.nn.BatchNorm2d):
    def forward(self, x):
        time.sleep(1.5)
        return super().forward(x)


@bncheck.implementation("slow-bn2d")
def build(spec):
    if spec.ndim != 4:
        raise bncheck.Unsupported("rank 4 only")
    return SlowBatchNorm(spec.num_features, eps=spec.eps, momentum=spec.momentum, affine=spec.affine,
                         track_running_stats=spec.track_running_stats, device=spec.device, dtype=spec.dtype)

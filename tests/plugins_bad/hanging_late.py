"""Correct (torch's own BatchNorm) until it sees a half-precision input, then it never returns."""
import time

import torch

import bncheck


class HangsOnHalf(torch.nn.BatchNorm2d):
    def forward(self, x):
        while x.dtype in (torch.float16, torch.bfloat16):
            time.sleep(1)
        return super().forward(x)


@bncheck.implementation("bad-hanging-late")
def build(spec):
    if spec.ndim != 4:
        raise bncheck.Unsupported("2-d BatchNorm only")
    return HangsOnHalf(spec.num_features, eps=spec.eps, momentum=spec.momentum, affine=spec.affine,
                       track_running_stats=spec.track_running_stats, device=spec.device, dtype=spec.dtype)

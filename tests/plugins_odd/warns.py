"""torch's BatchNorm behind a forward that raises the same UserWarning on every call, and appends one byte per call
to the file named by BNCHECK_TEST_CALLS (when set), so a test can count the calls."""
import os
import warnings

import torch

import bncheck


class ChattyBatchNorm(torch.nn.Module):
    def __init__(self, spec):
        super().__init__()
        cls = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}
        self.bn = cls[spec.ndim](spec.num_features, eps=spec.eps, momentum=spec.momentum, affine=spec.affine,
                                 track_running_stats=spec.track_running_stats, device=spec.device, dtype=spec.dtype)

    def forward(self, x):
        warnings.warn("this layer is deprecated, use the new one", UserWarning)
        calls = os.environ.get("BNCHECK_TEST_CALLS")
        if calls:
            with open(calls, "ab") as f:
                f.write(b".")
        return self.bn(x)


@bncheck.implementation("odd-warns", state={k: "bn." + k for k in ("weight", "bias", "running_mean", "running_var",
                                                                    "num_batches_tracked")})
def build(spec: bncheck.Spec):
    return ChattyBatchNorm(spec)

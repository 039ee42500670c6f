"""Seed document 000 (Vietnamese notebook "Cách BatchNorm hoạt động"): the BatchNorm class, as written.

Reproduced with its bugs. The adapter maps the Spec to the constructor (training_mode=True: the class decides
train/eval from this constructor flag, never from ``module.training``) and tells bncheck where the state lives.
"""
import torch
import torch.nn as nn

import bncheck


class BatchNorm(nn.Module):
    def __init__(self, num_features, eps=0, momentum=0.1, training_mode=False):
        super().__init__()

        self.training_mode = training_mode
        self.momentum = 0.1
        self.eps = eps

        # trainable parameters
        self.gamma = nn.Parameter(torch.ones(1, num_features, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, num_features, 1, 1))

        # running mean & variance
        self.r_mean = torch.zeros(1, num_features, 1, 1)
        self.r_var = torch.ones(1, num_features, 1, 1)

    def forward(self, x):
        if self.training_mode:
            x_mean = x.mean([0, 2, 3], keepdim=True)
            x_var = x.var([0, 2, 3], keepdim=True, unbiased=False)

            # Update running mean and variance
            self.r_mean = (1 - self.momentum) * self.r_mean + self.momentum * x_mean
            self.r_var = (1 - self.momentum) * self.r_var + self.momentum * x_var

        else:
            x_mean = self.r_mean
            x_var = self.r_var

        x_norm = (x - x_mean) / torch.sqrt(x_var + self.eps)         # Normalize
        x_out = x_norm * self.gamma + self.beta                      # Scale and Shift
        return x_out


@bncheck.implementation(
    "seed-000",
    state={"weight": "gamma", "bias": "beta", "running_mean": "r_mean", "running_var": "r_var"},
    expect={
        # verified against the code: the constructor flag (always True here) decides train/eval, so it always
        # trains whatever .eval() says; momentum fixed at 0.1, biased running var, stats as plain (1, C, 1, 1)
        # attributes (not buffers, left in float32 by .to(), and they keep the graph); written for 4-d input:
        # ranks 2/3 crash, rank 5 reduces over (0, 2, 3) only; float32 attributes promote half input
        "eval-mode-ignored", "momentum-ignored", "biased-running-var", "stats-not-buffers", "state-shape-drift",
        "running-stats-hold-graph", "rank-unsupported", "wrong-reduction-axes", "dtype-promotion",
        # an empty batch (always a training step here) poisons the running statistics with NaN; torch leaves
        # them unchanged
        "nan-inf",
        # no batch-size check: one value per channel in training gives x.var(..., unbiased=False) = 0 and an
        # output of 0 where torch raises "Expected more than 1 value per channel when training"
        "missing-error",
    },
)
def build(spec: bncheck.Spec) -> nn.Module:
    if not spec.affine:
        raise bncheck.Unsupported("the class always has gamma/beta (no affine=False)")
    if not spec.track_running_stats:
        raise bncheck.Unsupported("the class always tracks running stats (no track_running_stats=False)")
    return BatchNorm(spec.num_features, eps=spec.eps, momentum=spec.momentum, training_mode=True).to(
        spec.device, spec.dtype)

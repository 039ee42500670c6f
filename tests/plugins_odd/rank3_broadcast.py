"""A from-scratch BatchNorm written for rank 2 and rank 4 input: every other rank gets its statistics viewed as
(1, C, 1, 1), which broadcasts a rank-3 input (N, C, L) against the wrong axes (into (1, N, C, L) when N == C)."""
import torch

import bncheck


class FourDBatchNorm(torch.nn.Module):
    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = torch.nn.Parameter(torch.ones(num_features))
        self.bias = torch.nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x):
        c = self.weight.numel()
        view = (1, c) if x.dim() == 2 else (1, c, 1, 1)
        dims = [0] + list(range(2, x.dim()))
        if self.training:
            n = x.numel() // c
            if n <= 1:
                raise ValueError("Expected more than 1 value per channel when training")
            mean = x.mean(dims)
            var = x.var(dims, unbiased=False)
            with torch.no_grad():
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * var * n / (n - 1))
                self.num_batches_tracked += 1
        else:
            mean, var = self.running_mean, self.running_var
        y = (x - mean.view(view)) / torch.sqrt(var.view(view) + self.eps)
        return y * self.weight.view(view) + self.bias.view(view)


@bncheck.implementation("odd-rank3-broadcast")
def build(spec: bncheck.Spec):
    if spec.momentum is None or not spec.affine or not spec.track_running_stats:
        raise bncheck.Unsupported("momentum=None, affine=False and track_running_stats=False are not written")
    return FourDBatchNorm(spec.num_features, spec.eps, spec.momentum).to(spec.device, spec.dtype)

"""A BatchNorm2d written from scratch: the kind of layer a project writes, ports or fuses, and wants checked."""
from __future__ import annotations

import torch
from torch import nn

LOW_PRECISION = (torch.float16, torch.bfloat16)


class MyBatchNorm2d(nn.Module):
    """Same constructor, parameters, buffers and semantics as ``torch.nn.BatchNorm2d``."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 device=None, dtype=None):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.ones(num_features, **factory)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features, **factory)) if affine else None
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"expected 4D input (got {x.dim()}D input)")
        if x.shape[1] != self.num_features:
            raise ValueError(f"expected {self.num_features} channels, got input of shape {tuple(x.shape)}")
        self._check_dtypes(x)
        use_batch = self.training or not self.track_running_stats
        update = self.training and self.track_running_stats
        n = x.shape[0] * x.shape[2] * x.shape[3]          # values per channel
        if use_batch and n == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.size()}")
        if self.eps < 0 or (use_batch and self.eps == 0):
            raise ValueError(f"eps must be positive, got {self.eps}")
        xc = x.float() if x.dtype in LOW_PRECISION else x     # half precision is reduced in float32
        if use_batch:
            mean = xc.mean((0, 2, 3))
            var = (xc - mean[None, :, None, None]).square().mean((0, 2, 3))          # biased, for the output
        else:
            mean, var = self.running_mean.to(xc.dtype), self.running_var.to(xc.dtype)
        if update:
            self.num_batches_tracked.add_(1)
            if n > 0:
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                with torch.no_grad():
                    self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                    unbiased = var.detach() * (n / (n - 1))                          # unbiased, for the estimate
                    self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        y = (xc - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight.to(y.dtype)[None, :, None, None] + self.bias.to(y.dtype)[None, :, None, None]
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous() \
            else torch.contiguous_format
        return y.to(x.dtype).contiguous(memory_format=fmt)

    def _check_dtypes(self, x):
        """As torch on the CPU: parameters in the input's dtype, or float32 for float16/bfloat16 input."""
        dtypes = {t.dtype for t in (self.weight, self.bias, self.running_mean, self.running_var) if t is not None}
        ok = not dtypes or dtypes == {x.dtype} or (x.dtype in LOW_PRECISION and dtypes == {torch.float32})
        if x.numel() and not ok:
            raise RuntimeError(f"mixed dtype: input {x.dtype}, parameters {sorted(map(str, dtypes))}")


class MyBatchNormReLU2d(MyBatchNorm2d):
    """The same BatchNorm with its ReLU fused after it, relu(bn(x)): what a residual block's kernel computes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(super().forward(x))

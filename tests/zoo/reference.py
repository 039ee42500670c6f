"""Correct BatchNorm implementations written from scratch with plain torch ops.

``ScratchBN`` reproduces ``torch.nn.BatchNorm{1,2,3}d`` (see BATCHNORM_SEMANTICS.md) without calling
``F.batch_norm``: same constructor, same parameter and buffer names, ranks 2..5, any memory format, mixed
precision, ``momentum=None``, zero-size batches, and torch's errors (one value per channel, or eps <= 0, when batch
statistics are needed; parameter dtypes that torch's CPU kernel rejects).

Its forward pass is a sequence of small hook methods, so that each mutant in ``mutants.py`` can be a subclass that
overrides exactly one of them. The variants at the bottom compute the batch statistics differently (Welford,
float64 accumulation, ``torch.var_mean``) and are just as correct.
"""
from __future__ import annotations

import math

import torch
from torch import nn

LOW_PRECISION = (torch.float16, torch.bfloat16)


def bcast_shape(x: torch.Tensor) -> tuple[int, ...]:
    """Shape that broadcasts a per-channel vector against ``x``: ``(1, C, 1, ...)``."""
    return (1, x.shape[1]) + (1,) * (x.dim() - 2)


def values_per_channel(x: torch.Tensor) -> int:
    """How many values each channel's statistics are taken over: N times the spatial size."""
    return x.shape[0] * math.prod(x.shape[2:])


def output_memory_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format torch gives BatchNorm's output: channels-last in, channels-last out; otherwise contiguous."""
    if x.is_contiguous():
        return torch.contiguous_format
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


class ScratchBN(nn.Module):
    """BatchNorm for inputs of rank 2..5, equivalent to ``torch.nn.BatchNorm{1,2,3}d``."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory))
            self.bias = nn.Parameter(torch.empty(num_features, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self._init_running_stats(num_features, factory)
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    # -- state --------------------------------------------------------------------------------------------
    def _init_running_stats(self, num_features: int, factory: dict) -> None:
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("running_var", torch.ones(num_features, **factory))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=factory["device"]))

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.zero_()
                self.running_var.fill_(1)
                self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            with torch.no_grad():
                self.weight.fill_(1)
                self.bias.zero_()

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}")

    # -- forward ------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        training = self._training_mode()
        use_batch = self._use_batch_stats(training)
        update = self._updates_running(training)
        if update:
            self._count_batch()
        xc = x.to(self._compute_dtype(x))     # one conversion, so low-precision input gradients are rounded once
        mean = var = None
        if use_batch or update:
            self._check_batch_size(x)
        self._check_eps(use_batch or update)
        self._check_dtypes(x)
        if use_batch or update:
            mean, var = self._batch_stats(x, xc)
        if update:
            self._update_running(mean, var, math.prod(x.shape[d] for d in self._reduce_dims(x)))
        mean, var = self._norm_stats(x, training, mean, var)
        y = self._normalize(xc, mean, var)
        y = self._affine(y)
        return self._finish(y, x)

    # -- hooks (each mutant overrides one) ----------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 3, 4, 5):
            raise ValueError(f"expected 2D, 3D, 4D or 5D input (got {x.dim()}D input)")

    def _training_mode(self) -> bool:
        return self.training

    def _use_batch_stats(self, training: bool) -> bool:
        """Normalise with batch statistics: in training, and in every mode without running statistics."""
        return training or not self.track_running_stats

    def _updates_running(self, training: bool) -> bool:
        return training and self.track_running_stats

    def _count_batch(self) -> None:
        with torch.no_grad():
            self.num_batches_tracked.add_(1)

    def _check_batch_size(self, x: torch.Tensor) -> None:
        if values_per_channel(x) == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.size()}")

    def _check_eps(self, batch_stats: bool) -> None:
        if batch_stats and self.eps <= 0.0:
            raise ValueError(f"batch_norm eps must be positive during training, but got {self.eps}")
        if self.eps < 0.0:
            raise ValueError(f"batch_norm eps must be non-negative, but got {self.eps}")

    def _check_dtypes(self, x: torch.Tensor) -> None:
        """torch's CPU rule: parameters and buffers have the input's dtype, or float32 for float16/bfloat16 input."""
        if x.numel() == 0:
            return
        dtypes = {t.dtype for t in (self.weight, self.bias, self.running_mean, self.running_var) if t is not None}
        if not dtypes or dtypes == {x.dtype} or (x.dtype in LOW_PRECISION and dtypes == {torch.float32}):
            return
        if dtypes == {torch.float32}:
            raise RuntimeError("mixed dtype (CPU): all inputs must share same datatype.")
        raise RuntimeError("mixed dtype (CPU): expect parameter to have scalar type of Float")

    def _compute_dtype(self, x: torch.Tensor) -> torch.dtype:
        """float16/bfloat16 inputs are normalised and reduced in float32."""
        return torch.float32 if x.dtype in LOW_PRECISION else x.dtype

    def _reduce_dims(self, x: torch.Tensor) -> tuple[int, ...]:
        return (0,) + tuple(range(2, x.dim()))

    def _batch_stats(self, x: torch.Tensor, xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch mean and biased variance of ``xc`` (``x`` in the compute dtype), shaped to broadcast against it.

        Two passes: the mean, then the mean squared deviation from it.
        """
        dims = self._reduce_dims(x)
        mean = xc.mean(dims, keepdim=True)
        var = (xc - mean).square().mean(dims, keepdim=True)
        return mean, var

    def _channel(self, stat: torch.Tensor) -> torch.Tensor:
        """Collapse a broadcastable statistic to one value per channel, shape ``(C,)``."""
        return stat.reshape(stat.shape[1], -1).mean(1)

    def _momentum_factor(self) -> float:
        if self.momentum is None:       # cumulative moving average
            return 1.0 / float(self.num_batches_tracked)
        return self.momentum

    def _unbiased(self, var: torch.Tensor, n: int) -> torch.Tensor:
        """Bessel's correction for a variance over ``n`` values (the size of the reduction)."""
        return var * (n / max(n - 1, 1))

    def _blend(self, old: torch.Tensor, new: torch.Tensor, factor: float) -> torch.Tensor:
        return (1 - factor) * old + factor * new

    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
        if n == 0:      # an empty batch has no statistics; the running estimates stay as they are
            return
        with torch.no_grad():
            factor = self._momentum_factor()
            self.running_mean.copy_(self._blend(self.running_mean, self._channel(mean), factor))
            self.running_var.copy_(self._blend(self.running_var, self._unbiased(self._channel(var), n), factor))

    def _norm_stats(self, x, training, mean, var):
        """The statistics the output is normalised with: the batch's, or the running estimates."""
        if self._use_batch_stats(training):
            return mean, var
        dtype, shape = self._compute_dtype(x), bcast_shape(x)
        return self.running_mean.to(dtype).reshape(shape), self.running_var.to(dtype).reshape(shape)

    def _normalize(self, xc: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        return (xc - mean) / torch.sqrt(var + self.eps)

    def _affine(self, y: torch.Tensor) -> torch.Tensor:
        if not self.affine:
            return y
        shape = bcast_shape(y)
        return y * self.weight.to(y.dtype).reshape(shape) + self.bias.to(y.dtype).reshape(shape)

    def _finish(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Back to the input's dtype and memory format."""
        return y.to(x.dtype).contiguous(memory_format=output_memory_format(x))


# -- correct variants: different statistics algorithms, same semantics ----------------------------------------

def welford(xf: torch.Tensor, max_steps: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean and biased variance of ``xf`` (shape ``(C, n)``) in one pass over the data.

    The n values of a row are dealt to ``ceil(n / steps)`` lanes of at most ``max_steps`` values; each lane runs
    Welford's update over its values (all lanes in lockstep), then the lanes are merged pairwise with Chan et
    al.'s formula. Every step is differentiable, so gradients flow through the statistics.
    """
    rows, n = xf.shape
    if n == 0:
        empty = xf.sum(1) / 0.0     # NaN, as the mean of nothing
        return empty, empty
    steps = min(n, max_steps)
    lanes = -(-n // steps)
    padded = torch.cat([xf, xf.new_zeros(rows, lanes * steps - n)], 1).reshape(rows, lanes, steps)
    index = torch.arange(lanes * steps, device=xf.device).reshape(lanes, steps)
    valid = (index < n).to(xf.dtype)
    count = xf.new_zeros(lanes)
    mean = xf.new_zeros(rows, lanes)
    m2 = xf.new_zeros(rows, lanes)
    for j in range(steps):
        v = valid[:, j]
        count = count + v
        xj = padded[:, :, j]
        delta = xj - mean
        mean = mean + delta * (v / count.clamp(min=1))
        m2 = m2 + delta * (xj - mean) * v
    while mean.shape[1] > 1:
        if mean.shape[1] % 2:
            mean = torch.cat([mean, mean.new_zeros(rows, 1)], 1)
            m2 = torch.cat([m2, m2.new_zeros(rows, 1)], 1)
            count = torch.cat([count, count.new_zeros(1)])
        na, nb = count[0::2], count[1::2]
        total = na + nb
        delta = mean[:, 1::2] - mean[:, 0::2]
        mean = mean[:, 0::2] + delta * (nb / total.clamp(min=1))
        m2 = m2[:, 0::2] + m2[:, 1::2] + delta.square() * (na * nb / total.clamp(min=1))
        count = total
    return mean[:, 0], m2[:, 0] / n


class WelfordBN(ScratchBN):
    """Batch statistics by Welford's single-pass algorithm with pairwise merging."""

    def _batch_stats(self, x, xc):
        channels = xc.shape[1]
        flat = xc.transpose(0, 1).reshape(channels, values_per_channel(x))
        mean, var = welford(flat)
        shape = bcast_shape(x)
        return mean.reshape(shape), var.reshape(shape)


class Float64StatsBN(ScratchBN):
    """Batch statistics accumulated in float64, then cast back to the compute dtype."""

    def _batch_stats(self, x, xc):
        xd = xc.to(torch.float64)
        dims = self._reduce_dims(x)
        mean = xd.mean(dims, keepdim=True)
        var = (xd - mean).square().mean(dims, keepdim=True)
        return mean.to(xc.dtype), var.to(xc.dtype)


class VarMeanBN(ScratchBN):
    """Batch statistics from ``torch.var_mean`` (biased: ``correction=0``)."""

    def _batch_stats(self, x, xc):
        if xc.numel() == 0:     # var_mean warns about an empty reduction; the statistics are unused anyway
            return super()._batch_stats(x, xc)
        var, mean = torch.var_mean(xc, dim=self._reduce_dims(x), correction=0, keepdim=True)
        return mean, var


CORRECT = {
    "scratch": ScratchBN,
    "welford": WelfordBN,
    "float64-stats": Float64StatsBN,
    "var-mean": VarMeanBN,
}

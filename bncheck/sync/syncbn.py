"""bncheck's synchronised BatchNorm: statistics over the whole batch of every rank in a process group.

Works on any backend whose ``all_gather``/``all_reduce`` take the input's device (gloo on CPU, NCCL on GPUs),
for inputs of rank 2 to 5. Per channel:

* forward (training, or ``track_running_stats=False``): each rank computes its count, mean and sum of squared
  deviations M2 (two-pass, accumulated in float32, or float64 for float64 input); one ``all_gather`` and Chan's
  merge give the global mean and biased variance (M2 = sum M2_r + sum n_r (mean_r - mean)^2; no E[x^2]-E[x]^2,
  so a large offset costs nothing). A rank may hold zero samples; the global count must exceed 1.
* running statistics: ``(1 - f) old + f batch`` with the global mean and the variance unbiased with the
  *global* count; ``momentum=None`` is the cumulative average (f = 1 / num_batches_tracked).
* backward: a custom autograd function all-reduces the two gradient sums (sum dy, sum dy * xhat) and gives
  dx = w / s * (dy - sum dy / N - xhat * sum(dy xhat) / N). ``weight.grad``/``bias.grad`` are this rank's
  *local* contributions, as in ``torch.nn.SyncBatchNorm``: data-parallel training (DDP) all-reduces them.
* eval with running statistics: purely local (no communication), like ``torch.nn.BatchNorm``.

Every rank must call forward (and backward) the same number of times: the collectives pair up across ranks.
Subclasses may override ``local_statistics``, ``merge_statistics``, ``unbias_count``, ``running_variance`` and
``reduce_grad_sums`` (the zoo's mutants do).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _NormBase


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _per_channel(x: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """(N, C, *spatial) -> (C, N * prod(spatial)) in the accumulation dtype."""
    return x.transpose(0, 1).reshape(x.shape[1], -1).to(acc)


class _SyncBatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, bn, factor, update_stats):
        acc = _accumulation_dtype(x.dtype)
        c = x.shape[1]
        view = (1, c) + (1,) * (x.dim() - 2)
        xc = _per_channel(x, acc)
        n_local = xc.shape[1]
        if n_local:
            mean_l, m2_l = bn.local_statistics(xc)
        else:
            mean_l = m2_l = xc.new_zeros(c)
        counts, means, m2s = bn.gather_statistics(torch.full_like(mean_l, n_local), mean_l, m2_l)
        n_global = int(round(float(counts[:, 0].sum())))
        if n_global <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got {n_global} over all ranks "
                             f"(local input size {tuple(x.shape)})")
        mean, var = bn.merge_statistics(counts, means, m2s)
        invstd = torch.rsqrt(var + bn.eps)
        if update_stats:
            with torch.no_grad():
                bn.update_running_stats(mean, bn.running_variance(var, n_global, n_local), factor)
        xhat = (x.to(acc) - mean.view(view)) * invstd.view(view)
        y = xhat
        if weight is not None:
            y = xhat * weight.to(acc).view(view) + bias.to(acc).view(view)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.bn, ctx.n_global, ctx.n_local = bn, n_global, n_local
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, dy):
        x, weight, mean, invstd = ctx.saved_tensors
        bn = ctx.bn
        acc = _accumulation_dtype(x.dtype)
        c = x.shape[1]
        view = (1, c) + (1,) * (x.dim() - 2)
        dims = [0] + list(range(2, x.dim()))
        xhat = (x.to(acc) - mean.view(view)) * invstd.view(view)
        dy = dy.to(acc)
        if x.numel():
            local = torch.stack([dy.sum(dims), (dy * xhat).sum(dims)])
        else:
            local = dy.new_zeros(2, c)
        sums, count = bn.reduce_grad_sums(local.clone(), ctx.n_global, ctx.n_local)
        scale = invstd if weight is None else invstd * weight.to(acc)
        dx = None
        if ctx.needs_input_grad[0]:
            dx = scale.view(view) * (dy - (sums[0] / count).view(view) - xhat * (sums[1] / count).view(view))
            dx = dx.to(x.dtype)
        dweight = local[1].to(weight.dtype) if weight is not None and ctx.needs_input_grad[1] else None
        dbias = local[0].to(weight.dtype) if weight is not None and ctx.needs_input_grad[2] else None
        return dx, dweight, dbias, None, None, None


class SyncBatchNorm(_NormBase):
    """BatchNorm over the concatenated batch of every rank of ``process_group`` (default: the world group).

    Parameters and buffers are torch's own (``_NormBase``, as for ``nn.BatchNorm*d``), so state_dict, ``.to()`` and
    checkpoints behave exactly like torch's modules."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, process_group=None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.process_group = process_group

    # -- the steps a synchronised BatchNorm gets right or wrong (overridable) -------------------------------
    def local_statistics(self, xc):
        """This rank's (mean, M2) per channel from its values ``xc`` (C, n), n > 0: two passes, no E[x^2]."""
        mean = xc.mean(1)
        return mean, ((xc - mean[:, None]) ** 2).sum(1)

    def gather_statistics(self, count, mean, m2):
        """All ranks' (count, mean, M2) per channel: three (R, C) tensors."""
        local = torch.stack([count, mean, m2])
        world = dist.get_world_size(self.process_group)
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local, group=self.process_group)
        allstats = torch.stack(parts)          # (R, 3, C)
        return allstats[:, 0], allstats[:, 1], allstats[:, 2]

    def merge_statistics(self, counts, means, m2s):
        """Chan's parallel merge: global mean and biased variance, each rank weighted by its count."""
        n = counts.sum(0)
        mean = (counts * means).sum(0) / n
        m2 = m2s.sum(0) + (counts * (means - mean) ** 2).sum(0)
        return mean, m2 / n

    def unbias_count(self, n_global: int, n_local: int) -> int:
        """The count in the running variance's n / (n - 1) correction: the global one."""
        return n_global

    def running_variance(self, var, n_global: int, n_local: int):
        """The variance running_var is updated with: the batch variance unbiased with ``unbias_count``."""
        n = self.unbias_count(n_global, n_local)
        return var * n / (n - 1) if n > 1 else var * float("inf")

    def reduce_grad_sums(self, sums, n_global: int, n_local: int):
        """All-reduce (sum dy, sum dy * xhat) over the group; returns the sums and the count they average over."""
        dist.all_reduce(sums, group=self.process_group)
        return sums, n_global

    def update_running_stats(self, mean, unbiased_var, factor: float):
        self.running_mean.mul_(1 - factor).add_(factor * mean.to(self.running_mean.dtype))
        self.running_var.mul_(1 - factor).add_(factor * unbiased_var.to(self.running_var.dtype))

    # -- forward ----------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (2, 3, 4, 5):
            raise ValueError(f"expected 2D to 5D input (got {x.dim()}D input)")
        if x.shape[1] != self.num_features:
            raise ValueError(f"expected {self.num_features} channels (dim 1), got input of shape {tuple(x.shape)}")
        factor = 0.0
        update = self.training and self.track_running_stats
        if update:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        if not (self.training or not self.track_running_stats):
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return _SyncBatchNormFunction.apply(x, self.weight, self.bias, self, factor, update)

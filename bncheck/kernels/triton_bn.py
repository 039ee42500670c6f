"""BatchNorm in Triton: an autograd function, a functional entry point and a drop-in module.

``TritonBatchNorm`` takes the same constructor, parameters and buffers as ``torch.nn.BatchNorm{1,2,3}d`` and accepts
inputs of rank 2 to 5. It follows torch's semantics (see BATCHNORM_SEMANTICS.md): biased batch variance to normalise,
unbiased in the running estimate, ``momentum=None`` as a cumulative average, a zero-size batch leaving the running
statistics untouched, eval using the running statistics unless ``track_running_stats=False``.

Inputs may be float32, float16 or bfloat16, parameters and buffers float32 or the input's dtype; all arithmetic is
float32. Channels-first contiguous and channels_last / channels_last_3d inputs are read in place, and the output
(and the input gradient) has the input's memory format; other strided inputs are made contiguous first.

Without CUDA, importing this module sets ``TRITON_INTERPRET=1`` (unless already set) so the kernels run on the CPU.
"""
from __future__ import annotations

import math

import torch
from torch.autograd.function import once_differentiable
from torch.nn.modules.batchnorm import _BatchNorm

from . import triton_kernels as K

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _verify_batch_size(size: torch.Size) -> None:
    n = size[0]
    for d in size[2:]:
        n *= d
    if n == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {size}")


def _canonical(x: torch.Tensor):
    """(tensor in a layout the kernels read, its memory format, plan layout, N, C, S)."""
    N, C = x.shape[0], x.shape[1]
    S = math.prod(x.shape[2:])
    if x.is_contiguous():
        fmt = torch.contiguous_format
    elif x.dim() in (4, 5) and x.is_contiguous(
            memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d):
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    else:
        x, fmt = x.contiguous(), torch.contiguous_format
    layout = "cl" if (fmt is not torch.contiguous_format or S == 1) else "cf"
    return x, fmt, layout, N, C, S


def _like(t: torch.Tensor, fmt) -> torch.Tensor:
    return t if t.is_contiguous(memory_format=fmt) else t.contiguous(memory_format=fmt)


def _forward(x, weight, bias, running_mean, running_var, num_batches_tracked, training, momentum, eps):
    """(y, state for backward): the kernels without autograd."""
    if K.UNUSABLE:
        raise RuntimeError(K.UNUSABLE)
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"TritonBatchNorm supports float32, float16 and bfloat16 inputs, got {x.dtype}")
    if x.device.type != "cuda" and not K.INTERPRET:
        raise RuntimeError(f"TritonBatchNorm needs CUDA tensors (got {x.device}) unless TRITON_INTERPRET=1")
    x, fmt, layout, N, C, S = _canonical(x)
    y = torch.empty_like(x)
    if x.numel() == 0:          # empty batch: empty output, running statistics untouched
        return y, (x, fmt, None, None)
    plan = K.make_plan(layout, N, C, S, x.device)
    if training:
        part = K.launch_stats(plan, x)
        coef = K.launch_finalize_fwd(plan, part, weight, bias, running_mean, running_var, num_batches_tracked, eps,
                                     momentum)
        K.launch_apply(plan, y, x=x, coef=coef)
        return y, (x, fmt, plan, coef)
    K.launch_apply(plan, y, x=x, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias,
                   eps=eps)
    return y, (x, fmt, plan, None)


class TritonBatchNormFunction(torch.autograd.Function):
    """``y = batch_norm(x)``; updates the running statistics in place when training with them."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, num_batches_tracked, training, momentum, eps):
        y, (x, ctx.fmt, ctx.plan, coef) = _forward(x, weight, bias, running_mean, running_var, num_batches_tracked,
                                                   training, momentum, eps)
        ctx.training, ctx.eps = training, eps
        ctx.b_dtype = None if bias is None else bias.dtype
        if training:
            ctx.save_for_backward(x, weight, coef, None, None)
        else:
            ctx.save_for_backward(x, weight, None, running_mean, running_var)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, weight, coef, running_mean, running_var = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dw = torch.empty_like(weight) if need_w else None
        db = torch.empty(x.shape[1], device=x.device, dtype=ctx.b_dtype) if need_b else None
        dx = torch.empty_like(x) if need_x else None
        plan = ctx.plan
        if plan is None:            # empty batch: nothing flows
            for g in (dw, db):
                if g is not None:
                    g.zero_()
            return dx, dw, db, None, None, None, None, None, None
        dy = _like(dy, ctx.fmt)
        if ctx.training:            # dx goes through the batch mean and variance
            part = K.launch_bwd_reduce(plan, x, dy, coef)          # coef row 0 is the batch mean
            bcoef = K.launch_finalize_bwd(plan, part, coef, weight, None, None, ctx.eps, True, dw, db)
            if need_x:
                K.launch_apply(plan, dx, x=x, dy=dy, coef=bcoef)
        elif need_w or need_b:      # eval: the statistics are constants
            part = K.launch_bwd_reduce(plan, x, dy, running_mean)
            bcoef = K.launch_finalize_bwd(plan, part, None, weight, running_mean, running_var, ctx.eps, False,
                                          dw, db)
            if need_x:
                K.launch_apply(plan, dx, dy=dy, coef=bcoef)
        elif need_x:
            K.launch_apply(plan, dx, dy=dy, running_mean=running_mean, running_var=running_var, weight=weight,
                           eps=ctx.eps)
        return dx, dw, db, None, None, None, None, None, None


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5,
               num_batches_tracked=None):
    """Like ``torch.nn.functional.batch_norm``; ``momentum=None`` needs ``num_batches_tracked`` (already
    incremented), from which the cumulative-average factor is read on the device (no host synchronisation)."""
    if input.dim() < 2:
        raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")
    if training:
        _verify_batch_size(input.size())
    C = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight),
                    ("bias", bias)):
        if t is not None and t.numel() != C:
            raise RuntimeError(f"{name} should contain {C} elements not {t.numel()}")
    update = training and running_mean is not None
    if update and running_var is None:
        raise ValueError("running_mean and running_var must be given together")
    if update and momentum is None and num_batches_tracked is None:
        raise ValueError("momentum=None (cumulative average) needs num_batches_tracked")
    if not training and (running_mean is None or running_var is None):
        raise ValueError("running_mean and running_var must be defined in evaluation mode")
    args = (input, weight, bias, running_mean if update or not training else None,
            running_var if update or not training else None, num_batches_tracked, bool(training), momentum,
            float(eps))
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (input, weight, bias)):
        return TritonBatchNormFunction.apply(*args)
    return _forward(*args)[0]   # no graph to record: skip the autograd.Function overhead


class TritonBatchNorm(_BatchNorm):
    """Drop-in for ``torch.nn.BatchNorm1d/2d/3d`` (inputs of rank 2 to 5) running Triton kernels."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)

    def _check_input_dim(self, input):
        if input.dim() not in (2, 3, 4, 5):
            raise ValueError(f"expected 2D, 3D, 4D or 5D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        use_buffers = not self.training or self.track_running_stats
        return batch_norm(input, self.running_mean if use_buffers else None,
                          self.running_var if use_buffers else None, self.weight, self.bias, bn_training,
                          self.momentum, self.eps, self.num_batches_tracked)


__all__ = ["TritonBatchNorm", "TritonBatchNormFunction", "batch_norm", "SUPPORTED_DTYPES"]

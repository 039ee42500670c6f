"""BatchNorm with a fused ReLU epilogue in Triton: an autograd function, a functional entry point and a drop-in module.

``TritonFusedBatchNorm(..., epilogue="relu")`` computes ``relu(bn(x))``; with ``epilogue="add_relu"`` it is called
as ``forward(x, z)`` and computes ``relu(bn(x) + z)``, ``z`` of the input's shape and dtype (cuDNN's BN_ACTIVATION /
BN_ADD_ACTIVATION, apex's ``bn_add_relu``). Parameters, buffers and the BatchNorm semantics are those of
``TritonBatchNorm`` and torch (see BATCHNORM_SEMANTICS.md); the gradients are torch's for the same expression
written eagerly: the ReLU's gradient is masked by the saved *output* (0 where ``y <= 0``, as ``threshold_backward``
does), ``dz`` is the masked upstream gradient, and the BatchNorm backward runs on that masked gradient (in eval,
``dx`` uses the running statistics). Neither ``x`` nor ``z`` is written to.

Memory formats and dtypes as ``TritonBatchNorm``: float32, float16 or bfloat16 inputs, everything computed in
float32; channels-first and channels_last inputs read in place; ``z`` (and the upstream gradient) brought to the
input's memory format when they have another; the output, ``dx`` and ``dz`` in the input's memory format. The
kernels and the number of passes over memory each path makes are in ``triton_fused``.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable
from torch.nn.modules.batchnorm import _BatchNorm

from . import triton_fused as F
from . import triton_kernels as K
from .triton_bn import SUPPORTED_DTYPES, _canonical, _like, _verify_batch_size

EPILOGUES = ("relu", "add_relu")


def _forward(x, z, weight, bias, running_mean, running_var, num_batches_tracked, training, momentum, eps):
    """(y, state for backward): the kernels without autograd."""
    if K.UNUSABLE:
        raise RuntimeError(K.UNUSABLE)
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"TritonFusedBatchNorm supports float32, float16 and bfloat16 inputs, got {x.dtype}")
    if x.device.type != "cuda" and not K.INTERPRET:
        raise RuntimeError(f"TritonFusedBatchNorm needs CUDA tensors (got {x.device}) unless TRITON_INTERPRET=1")
    x, fmt, layout, N, C, S = _canonical(x)
    if z is not None:
        z = _like(z, fmt)
    y = torch.empty_like(x)
    if x.numel() == 0:          # empty batch: empty output, running statistics untouched
        return y, (x, fmt, None, None)
    plan = F.make_plan(layout, N, C, S, x.device)
    if training:
        part = F.launch_stats(plan, x)
        coef = F.launch_finalize_fwd(plan, part, weight, bias, running_mean, running_var, num_batches_tracked, eps,
                                     momentum)
        F.launch_fwd_apply(plan, y, x, z, coef=coef)
        return y, (x, fmt, plan, coef)
    F.launch_fwd_apply(plan, y, x, z, running_mean=running_mean, running_var=running_var, weight=weight, bias=bias,
                       eps=eps)
    return y, (x, fmt, plan, None)


class TritonFusedBatchNormFunction(torch.autograd.Function):
    """``y = relu(batch_norm(x) [+ z])``; updates the running statistics in place when training with them."""

    @staticmethod
    def forward(ctx, x, z, weight, bias, running_mean, running_var, num_batches_tracked, training, momentum, eps):
        y, (x, ctx.fmt, ctx.plan, coef) = _forward(x, z, weight, bias, running_mean, running_var,
                                                   num_batches_tracked, training, momentum, eps)
        ctx.training, ctx.eps = training, eps
        ctx.b_dtype = None if bias is None else bias.dtype
        if training:
            ctx.save_for_backward(x, y, weight, coef, None, None)
        else:
            ctx.save_for_backward(x, y, weight, None, running_mean, running_var)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):
        x, y, weight, coef, running_mean, running_var = ctx.saved_tensors
        need_x, need_z, need_w, need_b = ctx.needs_input_grad[:4]
        dx = torch.empty_like(x) if need_x else None
        dz = torch.empty_like(y) if need_z else None
        dw = torch.empty_like(weight) if need_w else None
        db = torch.empty(x.shape[1], device=x.device, dtype=ctx.b_dtype) if need_b else None
        nones = (None,) * 6
        plan = ctx.plan
        if plan is None:            # empty batch: nothing flows
            for t in (dw, db):
                if t is not None:
                    t.zero_()
            return (dx, dz, dw, db) + nones
        dy = _like(dy, ctx.fmt)
        if ctx.training:            # dx goes through the batch mean and variance
            if need_x or need_w or need_b:
                part = F.launch_bwd_reduce(plan, x, dy, y, coef, g=dz)     # coef row 0 is the batch mean
                bcoef = F.launch_finalize_bwd(plan, part, coef, weight, None, None, ctx.eps, True, dw, db)
                if need_x and dz is not None:    # dz is the masked gradient already
                    F.launch_apply(plan, dx, x=x, dy=dz, coef=bcoef)
                elif need_x:
                    F.launch_bwd_apply(plan, dy, y, dx=dx, x=x, coef=bcoef)
            elif need_z:
                F.launch_bwd_apply(plan, dy, y, g=dz)
        elif need_w or need_b:      # eval: the statistics are constants, dx = k * g in the reduction's pass
            part = F.launch_bwd_reduce(plan, x, dy, y, running_mean, g=dz, dx=dx, running_var=running_var,
                                       weight=weight, eps=ctx.eps)
            F.launch_finalize_bwd(plan, part, None, weight, running_mean, running_var, ctx.eps, False, dw, db)
        elif need_x or need_z:
            F.launch_bwd_apply(plan, dy, y, dx=dx, g=dz, running_mean=running_mean, running_var=running_var,
                               weight=weight, eps=ctx.eps)
        return (dx, dz, dw, db) + nones


def fused_batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                     eps=1e-5, num_batches_tracked=None, epilogue="relu", z=None):
    """``relu(batch_norm(input, ...))`` (``epilogue="relu"``) or ``relu(batch_norm(input, ...) + z)``
    (``epilogue="add_relu"``), the BatchNorm arguments as ``torch.nn.functional.batch_norm``; ``momentum=None``
    needs ``num_batches_tracked`` (already incremented), from which the cumulative-average factor is read on the
    device."""
    if epilogue not in EPILOGUES:
        raise ValueError(f"epilogue must be one of {EPILOGUES}, got {epilogue!r}")
    if input.dim() < 2:
        raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")
    if epilogue == "add_relu":
        if z is None:
            raise TypeError("epilogue 'add_relu' needs z, the tensor added before the ReLU")
        if z.shape != input.shape or z.dtype != input.dtype or z.device != input.device:
            raise ValueError(f"z must have the input's shape, dtype and device: z {tuple(z.shape)} {z.dtype} "
                             f"{z.device}, input {tuple(input.shape)} {input.dtype} {input.device}")
    elif z is not None:
        raise TypeError("epilogue 'relu' takes no z (use epilogue='add_relu')")
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
    args = (input, z, weight, bias, running_mean if update or not training else None,
            running_var if update or not training else None, num_batches_tracked, bool(training), momentum,
            float(eps))
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (input, z, weight, bias)):
        return TritonFusedBatchNormFunction.apply(*args)
    return _forward(*args)[0]   # no graph to record: skip the autograd.Function overhead


class TritonFusedBatchNorm(_BatchNorm):
    """Drop-in for ``torch.nn.BatchNorm1d/2d/3d`` followed by a ReLU (inputs of rank 2 to 5): ``forward(x)`` is
    ``relu(bn(x))`` for ``epilogue="relu"``, ``forward(x, z)`` is ``relu(bn(x) + z)`` for ``epilogue="add_relu"``.
    Parameters, buffers and state dict as torch's BatchNorm."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None, epilogue: str = "relu"):
        if epilogue not in EPILOGUES:
            raise ValueError(f"epilogue must be one of {EPILOGUES}, got {epilogue!r}")
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        self.epilogue = epilogue

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, epilogue={self.epilogue!r}"

    def _check_input_dim(self, input):
        if input.dim() not in (2, 3, 4, 5):
            raise ValueError(f"expected 2D, 3D, 4D or 5D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        self._check_input_dim(input)
        if (z is None) != (self.epilogue == "relu"):
            raise TypeError(f"epilogue {self.epilogue!r}: call as "
                            f"{'forward(x)' if self.epilogue == 'relu' else 'forward(x, z)'}")
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        use_buffers = not self.training or self.track_running_stats
        return fused_batch_norm(input, self.running_mean if use_buffers else None,
                                self.running_var if use_buffers else None, self.weight, self.bias, bn_training,
                                self.momentum, self.eps, self.num_batches_tracked, self.epilogue, z)


__all__ = ["EPILOGUES", "TritonFusedBatchNorm", "TritonFusedBatchNormFunction", "fused_batch_norm"]

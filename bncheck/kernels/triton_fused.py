"""Triton kernels for BatchNorm with a fused epilogue: ``relu(bn(x))`` and ``relu(bn(x) + z)``.

The statistics, their finalize step and the launch plans are those of ``triton_kernels`` (split Welford reductions,
Chan merges, ``cf`` and ``cl`` layouts read in place, float32 accumulation); this module adds the passes that touch
the epilogue:

* ``launch_fwd_apply``: ``y = relu((x - center) * scale + shift [+ z])``, the coefficients from the finalize step
  (training) or inline from the running statistics (eval). The add and the ReLU happen in float32, before the one
  rounding to the output dtype.
* ``launch_bwd_reduce``: the split reduction of ``sum(g)`` and ``sum(g * (x - center))`` over the masked gradient
  ``g = dy where y > 0 else 0``. The mask is read from the saved output ``y`` (as torch's ``threshold_backward`` on
  the saved ReLU output: ``y <= 0`` gives 0, NaN passes), never recomputed from x. It can also store ``g`` (which is
  ``dz`` for ``add_relu``) and, in eval where the dx coefficient is a constant, ``dx = g * k`` in the same pass.
* ``launch_bwd_apply``: ``dx = g * k + (x - center) * scale + shift`` with ``g`` masked on the fly (training), or
  ``dx = g * k`` / ``dz = g`` from ``dy`` and ``y`` alone (eval).

Passes over memory, counted in reads (R) and writes (W) of N*C*S-element tensors (the per-channel vectors and the
``(split, C)`` partials are negligible). The eager columns count ``relu(batch_norm(x) [+ z])`` as separate kernels,
each reading its inputs and writing its output once: BatchNorm forward 3 (statistics 1R, apply 1R + 1W) in
training and 2 in eval, ReLU 2, add 3, ``threshold_backward`` 3, BatchNorm backward 5 in training (reduction 2R,
dx 2R + 1W) and 2 in eval (dx = k * dy), 4 with dweight/dbias (reduction 2R, dx 1R + 1W).

===================================  ================  =============  ==================  ==============
path                                 relu              add_relu       eager relu          eager add_relu
===================================  ================  =============  ==================  ==============
forward, training                    2R + 1W = 3       3R + 1W = 4    5                   8
forward, eval                        1R + 1W = 2       2R + 1W = 3    4                   7
backward, training                   6R + 1W = 7       5R + 2W = 7    8                   8
backward, eval, dx (and dz) only     2R + 1W = 3       2R + 2W = 4    5                   5
backward, eval, dweight/dbias too    3R + 1W = 4       3R + 2W = 5    7                   7
===================================  ================  =============  ==================  ==============

Forward training is stats (read x) + finalize + apply (read x [and z], write y). Backward training is the masked
reduction (read x, dy, y; for add_relu also write dz) + finalize + the dx pass: relu reads x, dy and y again
(3R + 1W); add_relu reads x and the dz just written (2R + 1W), which is already masked. Eval backward is one pass:
with dweight/dbias needed, the reduction writes dx (and dz) as it goes; otherwise the elementwise pass reads dy and
y only. Backward saves x as the kernels read it (the input itself unless its strides are no memory format) and the
output y itself, no mask tensor: the mask is read from y, never recomputed, so it cannot disagree with it at 0.
"""
from __future__ import annotations

import torch

from . import triton_kernels as K   # first: it sets TRITON_INTERPRET before triton is imported
from .triton_kernels import TUNING, Plan, _coefs, _p

import triton  # noqa: E402  (after triton_kernels, for the interpreter switch)
import triton.language as tl  # noqa: E402


@triton.jit
def _tile(pid, R, C, S, NUM_B, CF: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    """One elementwise tile: (channel index, channel mask, element offsets, element mask), the per-channel pair
    shaped to broadcast against the tile. cf: rows of the ``(R = N*C, S)`` view; cl: the ``(R = M, C)`` matrix."""
    ab = pid // NUM_B
    a = ab * BLOCK_A + tl.arange(0, BLOCK_A)
    b = (pid - ab * NUM_B) * BLOCK_B + tl.arange(0, BLOCK_B)
    if CF:
        amask = a < R
        ch = (a % C)[:, None]
        chmask = amask[:, None]
        off = a.to(tl.int64)[:, None] * S + b[None, :]
        mask = amask[:, None] & (b < S)[None, :]
    else:
        bmask = b < C
        ch = b[None, :]
        chmask = bmask[None, :]
        off = a.to(tl.int64)[:, None] * C + b[None, :]
        mask = (a < R)[:, None] & bmask[None, :]
    return ch, chmask, off, mask


@triton.jit
def _relu_grad(dy_ptr, y_ptr, off, mask):
    """torch's threshold_backward(dy, y, 0) on the saved output: 0 where y <= 0, dy elsewhere (also where y is
    NaN)."""
    dy = tl.load(dy_ptr + off, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + off, mask=mask, other=0.0).to(tl.float32)
    return tl.where(y <= 0.0, 0.0, dy)


@triton.jit
def _eval_k(ch, mask, rv_ptr, w_ptr, eps, HAS_W: tl.constexpr):
    """The eval dx coefficient w / sqrt(running_var + eps), as ``_coefs`` computes it inline."""
    k = tl.div_rn(1.0, tl.sqrt_rn(tl.load(rv_ptr + ch, mask=mask, other=1.0).to(tl.float32) + eps))
    if HAS_W:
        k = k * tl.load(w_ptr + ch, mask=mask, other=1.0).to(tl.float32)
    return k


@triton.jit
def _fwd_apply_kernel(x_ptr, z_ptr, y_ptr, coef_ptr, rm_ptr, rv_ptr, w_ptr, b_ptr, R, C, S, NUM_B, eps,
                      CF: tl.constexpr, HAS_Z: tl.constexpr, INLINE: tl.constexpr, HAS_W: tl.constexpr,
                      HAS_B: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    ch, chmask, off, mask = _tile(tl.program_id(0), R, C, S, NUM_B, CF, BLOCK_A, BLOCK_B)
    center, k, scale, shift = _coefs(ch, chmask, coef_ptr, C, rm_ptr, rv_ptr, w_ptr, b_ptr, eps, INLINE, HAS_W,
                                     HAS_B)
    x = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
    v = (x - center) * scale + shift
    if HAS_Z:
        v += tl.load(z_ptr + off, mask=mask, other=0.0).to(tl.float32)
    y = tl.where(v < 0.0, 0.0, v)           # ReLU; NaN stays NaN as in torch.relu
    tl.store(y_ptr + off, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_apply_kernel(x_ptr, dy_ptr, y_ptr, dx_ptr, g_ptr, coef_ptr, rm_ptr, rv_ptr, w_ptr, R, C, S, NUM_B, eps,
                      CF: tl.constexpr, HAS_X: tl.constexpr, WRITE_DX: tl.constexpr, WRITE_G: tl.constexpr,
                      INLINE: tl.constexpr, HAS_W: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr):
    ch, chmask, off, mask = _tile(tl.program_id(0), R, C, S, NUM_B, CF, BLOCK_A, BLOCK_B)
    g = _relu_grad(dy_ptr, y_ptr, off, mask)
    if WRITE_G:
        tl.store(g_ptr + off, g.to(g_ptr.dtype.element_ty), mask=mask)
    if WRITE_DX:
        center, k, scale, shift = _coefs(ch, chmask, coef_ptr, C, rm_ptr, rv_ptr, w_ptr, w_ptr, eps, INLINE, HAS_W,
                                         False)
        dx = g * k
        if HAS_X:
            x = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
            dx = (x - center) * scale + shift + dx
        tl.store(dx_ptr + off, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_reduce_cf_kernel(x_ptr, dy_ptr, y_ptr, g_ptr, dx_ptr, center_ptr, rv_ptr, w_ptr, part_ptr, N, C, S,
                          stride_n, NUM_SB, TOTAL, PER, eps, WRITE_G: tl.constexpr, WRITE_DX: tl.constexpr,
                          HAS_W: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr):
    c = tl.program_id(0)
    p = tl.program_id(1)
    split = tl.num_programs(1)
    rn = tl.arange(0, BLOCK_N)[:, None]
    rs = tl.arange(0, BLOCK_S)[None, :]
    center = tl.load(center_ptr + c).to(tl.float32)
    if WRITE_DX:
        k = _eval_k(c, True, rv_ptr, w_ptr, eps, HAS_W)
    sdy = tl.zeros([BLOCK_N, BLOCK_S], tl.float32)
    sdyx = tl.zeros([BLOCK_N, BLOCK_S], tl.float32)
    coff = c.to(tl.int64) * S
    t0 = p * PER
    for t in range(t0, tl.minimum(t0 + PER, TOTAL)):
        nb = t // NUM_SB
        n = nb * BLOCK_N + rn
        s = (t - nb * NUM_SB) * BLOCK_S + rs
        mask = (n < N) & (s < S)
        off = coff + n.to(tl.int64) * stride_n + s
        x = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
        g = _relu_grad(dy_ptr, y_ptr, off, mask)
        if WRITE_G:
            tl.store(g_ptr + off, g.to(g_ptr.dtype.element_ty), mask=mask)
        if WRITE_DX:
            tl.store(dx_ptr + off, (g * k).to(dx_ptr.dtype.element_ty), mask=mask)
        sdy += g
        sdyx += g * (x - center)
    off = p * C + c
    tl.store(part_ptr + off, tl.sum(tl.sum(sdy, 1), 0))
    tl.store(part_ptr + split * C + off, tl.sum(tl.sum(sdyx, 1), 0))


@triton.jit
def _bwd_reduce_cl_kernel(x_ptr, dy_ptr, y_ptr, g_ptr, dx_ptr, center_ptr, rv_ptr, w_ptr, part_ptr, M, C, PER, eps,
                          WRITE_G: tl.constexpr, WRITE_DX: tl.constexpr, HAS_W: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    p = tl.program_id(1)
    split = tl.num_programs(1)
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    center = tl.load(center_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    if WRITE_DX:
        k = _eval_k(cols, cmask, rv_ptr, w_ptr, eps, HAS_W)[None, :]
    rm = tl.arange(0, BLOCK_M)[:, None]
    sdy = tl.zeros([BLOCK_M, BLOCK_C], tl.float32)
    sdyx = tl.zeros([BLOCK_M, BLOCK_C], tl.float32)
    r0 = p * PER
    r1 = tl.minimum(r0 + PER, M)
    for r in range(r0, r1, BLOCK_M):
        rows = r + rm
        mask = (rows < r1) & cmask[None, :]
        off = rows.to(tl.int64) * C + cols[None, :]
        x = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
        g = _relu_grad(dy_ptr, y_ptr, off, mask)
        if WRITE_G:
            tl.store(g_ptr + off, g.to(g_ptr.dtype.element_ty), mask=mask)
        if WRITE_DX:
            tl.store(dx_ptr + off, (g * k).to(dx_ptr.dtype.element_ty), mask=mask)
        sdy += g
        sdyx += g * tl.where(mask, x - center, 0.0)
    off = p * C + cols
    tl.store(part_ptr + off, tl.sum(sdy, 0), mask=cmask)
    tl.store(part_ptr + split * C + off, tl.sum(sdyx, 0), mask=cmask)


# ---------------------------------------------------------------------------------------------------------------
# launchers (tensors already in the plan's layout; optional pointers replaced by a placeholder tensor)

def _apply_dims(plan: Plan) -> tuple:
    """(R, C, S, NUM_B) of the elementwise tiling (see ``_tile``)."""
    if plan.layout == "cf":
        return plan.N * plan.C, plan.C, plan.S, triton.cdiv(plan.S, plan.app_b)
    return plan.N * plan.S, plan.C, plan.S, triton.cdiv(plan.C, plan.app_b)


def launch_fwd_apply(plan: Plan, y, x, z=None, coef=None, running_mean=None, running_var=None, weight=None,
                     bias=None, eps=0.0):
    """``y = relu((x - center) * scale + shift [+ z])``; the coefficients come from ``coef`` (4, C) or, when it is
    None, from the running statistics (eval)."""
    ph = y
    _fwd_apply_kernel[plan.app_grid](
        x, _p(z, ph), y, _p(coef, ph), _p(running_mean, ph), _p(running_var, ph), _p(weight, ph), _p(bias, ph),
        *_apply_dims(plan), float(eps), CF=plan.layout == "cf", HAS_Z=z is not None, INLINE=coef is None,
        HAS_W=weight is not None, HAS_B=bias is not None, BLOCK_A=plan.app_a, BLOCK_B=plan.app_b,
        num_warps=TUNING["apply_warps"])
    return y


def launch_bwd_reduce(plan: Plan, x, dy, y, center, g=None, dx=None, running_var=None, weight=None, eps=0.0):
    """Partials ``(2, split, C)`` of ``sum(g)`` and ``sum(g * (x - center))`` with ``g`` the ReLU-masked ``dy``.
    Stores ``g`` into ``g`` and, given ``dx`` (eval only: needs ``running_var``), ``dx = g * w / sqrt(rv + eps)``."""
    part = torch.empty((2, plan.split, plan.C), device=x.device, dtype=torch.float32)
    ph = part
    flags = dict(WRITE_G=g is not None, WRITE_DX=dx is not None, HAS_W=weight is not None,
                 num_warps=TUNING["red_warps"])
    ptrs = (x, dy, y, _p(g, ph), _p(dx, ph), center, _p(running_var, ph), _p(weight, ph), part)
    if plan.layout == "cf":
        num_sb = triton.cdiv(plan.S, plan.red_b)
        total = triton.cdiv(plan.N, plan.red_a) * num_sb
        _bwd_reduce_cf_kernel[plan.red_grid](*ptrs, plan.N, plan.C, plan.S, plan.C * plan.S, num_sb, total,
                                             plan.per_split, float(eps), BLOCK_N=plan.red_a, BLOCK_S=plan.red_b,
                                             **flags)
    else:
        _bwd_reduce_cl_kernel[plan.red_grid](*ptrs, plan.N * plan.S, plan.C, plan.per_split, float(eps),
                                             BLOCK_M=plan.red_a, BLOCK_C=plan.red_b, **flags)
    return part


def launch_bwd_apply(plan: Plan, dy, y, dx=None, g=None, x=None, coef=None, running_mean=None, running_var=None,
                     weight=None, eps=0.0):
    """With ``g`` the ReLU-masked ``dy``: ``dx = g * k + (x - center) * scale + shift`` from ``coef`` (the
    backward finalize's (4, C)), or without ``coef`` (eval) ``dx = g * w / sqrt(running_var + eps)``; stores ``g``
    into ``g`` when given. Either output may be omitted."""
    ph = dy
    _bwd_apply_kernel[plan.app_grid](
        _p(x, ph), dy, y, _p(dx, ph), _p(g, ph), _p(coef, ph), _p(running_mean, ph), _p(running_var, ph),
        _p(weight, ph), *_apply_dims(plan), float(eps), CF=plan.layout == "cf", HAS_X=x is not None,
        WRITE_DX=dx is not None, WRITE_G=g is not None, INLINE=coef is None, HAS_W=weight is not None,
        BLOCK_A=plan.app_a, BLOCK_B=plan.app_b, num_warps=TUNING["apply_warps"])


# The statistics, both finalize steps, the plans and the plain apply pass come unchanged from triton_kernels.
make_plan = K.make_plan
launch_stats = K.launch_stats
launch_finalize_fwd = K.launch_finalize_fwd
launch_finalize_bwd = K.launch_finalize_bwd
launch_apply = K.launch_apply

__all__ = ["make_plan", "launch_stats", "launch_finalize_fwd", "launch_finalize_bwd", "launch_apply",
           "launch_fwd_apply", "launch_bwd_reduce", "launch_bwd_apply"]

"""Triton kernels for BatchNorm, and the launch plans that pick their tiling.

Two memory layouts are handled natively, both read in place:

* ``cf`` (channels-first contiguous): the input is viewed as ``(N, C, S)`` with ``S`` the product of the spatial
  sizes; every channel is ``N`` runs of ``S`` contiguous elements.
* ``cl`` (channels-last: NHWC / NDHWC, and every ``S == 1`` input such as ``(N, C)``): the input is viewed as a
  row-major ``(M, C)`` matrix with ``M = N * S``; a channel is a column.

Forward training is three launches: a split reduction writing per-(split, channel) Welford partials
``(count, mean, M2)``, a finalize that merges the partials with Chan's parallel formula, writes the per-channel
coefficients and updates the running statistics, and an elementwise pass ``y = (x - mean) * scale + shift``.
Inside a reduction program every lane runs Welford's update over its elements of successive tiles; the lanes are
then merged with the k-way form of Chan's formula (deviations from the merged mean), as are blocks of partials in
the finalize step. No E[x^2] - E[x]^2 anywhere. The split (programs per channel) is chosen from the problem size so
that small-C / large-N*HW problems still fill the GPU.
Eval is the elementwise pass alone, computing the coefficients from the running statistics inline.
Backward is the same shape: a split reduction of ``sum(dy)`` and ``sum(dy * (x - mean))``, a finalize writing
``dweight``/``dbias`` and the dx coefficients, and an elementwise pass. Everything accumulates in float32.
"""
from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass

import torch

# triton's own helpers (the combine functions behind tl.sum, ...) are built in interpreter mode or not when triton is
# first imported, so the variable only helps if it is set before that.
_LATE = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") is None
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
# Why the kernels cannot run here, or None.
UNUSABLE = ("triton was imported before TRITON_INTERPRET=1 was set, so its interpreter is off; set the variable "
            "(or import bncheck.kernels.triton_bn) before anything imports triton") if INTERPRET and _LATE else None

# Tiling knobs. ``red_tile``/``apply_tile``: elements per tile of the reduction / elementwise kernels;
# ``programs_per_sm``: how many reduction programs to aim for per SM (the split heuristic); ``min_tiles``: the
# fewest tiles a reduction program should own; ``sms``: SM count used when not on CUDA (the interpreter); ``fin_p``:
# the most partials per channel the finalize kernels merge in one step. The interpreter runs programs one after the
# other in Python, so it gets a tiny "SM" count.
TUNING = dict(red_tile=2048, apply_tile=4096, programs_per_sm=4, min_tiles=2, sms=1, red_warps=4, apply_warps=8,
              fin_p=256)
if INTERPRET:
    TUNING.update(red_tile=1024, programs_per_sm=2, min_tiles=1, sms=4, apply_warps=4)

_SM_CACHE: dict = {}


def _num_sms(device: torch.device) -> int:
    if device.type != "cuda" or INTERPRET:
        return TUNING["sms"]
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_CACHE:
        _SM_CACHE[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_CACHE[idx]


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@dataclass(frozen=True)
class Plan:
    """How one ``(layout, N, C, S)`` problem is tiled. ``a``/``b`` are the tile's two extents: ``(BLOCK_N, BLOCK_S)``
    for cf, ``(BLOCK_M, BLOCK_C)`` for cl."""
    layout: str
    N: int
    C: int
    S: int
    red_a: int
    red_b: int
    split: int            # reduction programs per channel (cf) or per column block (cl)
    per_split: int        # tiles (cf) or rows (cl) owned by one reduction program
    red_grid: tuple
    app_a: int
    app_b: int
    app_grid: tuple


def make_plan(layout: str, N: int, C: int, S: int, device: torch.device) -> Plan:
    """Choose tiles and the reduction split from the problem size.

    The split gives each channel (cf) or column block (cl) several reduction programs when there are too few
    channels to occupy the machine: aim for ``programs_per_sm * SMs`` programs in all, but never give a program
    fewer than ``min_tiles`` tiles.
    """
    return _plan(layout, N, C, S, _num_sms(device), tuple(sorted(TUNING.items())))


@functools.lru_cache(maxsize=1024)
def _plan(layout, N, C, S, sms, tuning) -> Plan:
    t = dict(tuning)
    target = t["programs_per_sm"] * sms
    if layout == "cf":
        rb = min(_pow2(S), t["red_tile"])
        ra = max(1, min(_pow2(N), t["red_tile"] // rb))
        tiles = triton.cdiv(N, ra) * triton.cdiv(S, rb)
        split = max(1, min(triton.cdiv(target, C), triton.cdiv(tiles, t["min_tiles"])))
        per = triton.cdiv(tiles, split)
        split = triton.cdiv(tiles, per)
        red_grid = (C, split)
        ab = min(_pow2(S), t["apply_tile"])
        aa = max(1, min(_pow2(N * C), t["apply_tile"] // ab))
        app_grid = (triton.cdiv(N * C, aa) * triton.cdiv(S, ab),)
    else:
        M = N * S
        rb = min(_pow2(C), 64)
        ra = max(1, min(_pow2(M), t["red_tile"] // rb))
        cblocks = triton.cdiv(C, rb)
        mblocks = triton.cdiv(M, ra)
        split = max(1, min(triton.cdiv(target, cblocks), triton.cdiv(mblocks, t["min_tiles"])))
        per = triton.cdiv(mblocks, split) * ra
        split = triton.cdiv(M, per)
        red_grid = (cblocks, split)
        ab = min(_pow2(C), 128)
        aa = max(1, min(_pow2(M), t["apply_tile"] // ab))
        app_grid = (triton.cdiv(M, aa) * triton.cdiv(C, ab),)
    return Plan(layout, N, C, S, ra, rb, split, per, red_grid, aa, ab, app_grid)


# ---------------------------------------------------------------------------------------------------------------
# kernels


@triton.jit
def _welford_combine(m1, q1, n1, m2, q2, n2):
    """Chan et al.'s merge of two (mean, M2, count) summaries."""
    n = n1 + n2
    frac = n2 / tl.maximum(n, 1.0)
    d = m2 - m1
    return m1 + d * frac, q1 + q2 + d * d * n1 * frac, n


@triton.jit
def _welford_lanes(mean, m2, cnt, AXIS: tl.constexpr):
    """Merge per-lane (mean, M2, count) along an axis in one step: the k-way form of Chan's formula,
    M2 = sum(M2_i) + sum(n_i * (mean_i - mean)^2), with deviations taken from the merged mean."""
    n = tl.sum(cnt, AXIS)
    mu = tl.sum(mean * cnt, AXIS) / tl.maximum(n, 1.0)
    d = mean - tl.expand_dims(mu, AXIS)
    return mu, tl.sum(m2, AXIS) + tl.sum(cnt * d * d, AXIS), n


@triton.jit
def _welford_step(mean, m2, cnt, v, mask):
    cnt_new = cnt + mask.to(tl.float32)
    delta = v - mean
    mean = mean + tl.where(mask, delta / tl.maximum(cnt_new, 1.0), 0.0)
    m2 = m2 + tl.where(mask, delta * (v - mean), 0.0)
    return mean, m2, cnt_new


@triton.jit
def _stats_cf_kernel(x_ptr, part_ptr, N, C, S, stride_n, NUM_SB, TOTAL, PER,
                     BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr):
    c = tl.program_id(0)
    p = tl.program_id(1)
    split = tl.num_programs(1)
    rn = tl.arange(0, BLOCK_N)[:, None]
    rs = tl.arange(0, BLOCK_S)[None, :]
    mean = tl.zeros([BLOCK_N, BLOCK_S], tl.float32)
    m2 = tl.zeros([BLOCK_N, BLOCK_S], tl.float32)
    cnt = tl.zeros([BLOCK_N, BLOCK_S], tl.float32)
    base = x_ptr + c.to(tl.int64) * S
    t0 = p * PER
    for t in range(t0, tl.minimum(t0 + PER, TOTAL)):
        nb = t // NUM_SB
        n = nb * BLOCK_N + rn
        s = (t - nb * NUM_SB) * BLOCK_S + rs
        mask = (n < N) & (s < S)
        v = tl.load(base + n.to(tl.int64) * stride_n + s, mask=mask, other=0.0).to(tl.float32)
        mean, m2, cnt = _welford_step(mean, m2, cnt, v, mask)
    mean, m2, cnt = _welford_lanes(mean, m2, cnt, 1)
    mean, m2, cnt = _welford_lanes(mean, m2, cnt, 0)
    off = p * C + c
    tl.store(part_ptr + off, cnt)
    tl.store(part_ptr + split * C + off, mean)
    tl.store(part_ptr + 2 * split * C + off, m2)


@triton.jit
def _stats_cl_kernel(x_ptr, part_ptr, M, C, PER, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    p = tl.program_id(1)
    split = tl.num_programs(1)
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    rm = tl.arange(0, BLOCK_M)[:, None]
    mean = tl.zeros([BLOCK_M, BLOCK_C], tl.float32)
    m2 = tl.zeros([BLOCK_M, BLOCK_C], tl.float32)
    cnt = tl.zeros([BLOCK_M, BLOCK_C], tl.float32)
    r0 = p * PER
    r1 = tl.minimum(r0 + PER, M)
    for r in range(r0, r1, BLOCK_M):
        rows = r + rm
        mask = (rows < r1) & cmask[None, :]
        v = tl.load(x_ptr + rows.to(tl.int64) * C + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        mean, m2, cnt = _welford_step(mean, m2, cnt, v, mask)
    mean, m2, cnt = _welford_lanes(mean, m2, cnt, 0)
    off = p * C + cols
    tl.store(part_ptr + off, cnt, mask=cmask)
    tl.store(part_ptr + split * C + off, mean, mask=cmask)
    tl.store(part_ptr + 2 * split * C + off, m2, mask=cmask)


@triton.jit
def _finalize_fwd_kernel(part_ptr, coef_ptr, w_ptr, b_ptr, rm_ptr, rv_ptr, nbt_ptr, C, SPLIT, n, eps, momentum,
                         HAS_W: tl.constexpr, HAS_B: tl.constexpr, UPDATE: tl.constexpr, USE_CMA: tl.constexpr,
                         BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = cols < C
    mean = tl.zeros([BLOCK_C], tl.float32)
    m2 = tl.zeros([BLOCK_C], tl.float32)
    cnt = tl.zeros([BLOCK_C], tl.float32)
    rp = tl.arange(0, BLOCK_P)[:, None]
    for p0 in range(0, SPLIT, BLOCK_P):      # BLOCK_P partials per step, loaded together
        pmask = (p0 + rp < SPLIT) & mask[None, :]
        off = (p0 + rp) * C + cols[None, :]
        pc = tl.load(part_ptr + off, mask=pmask, other=0.0)
        pm = tl.load(part_ptr + SPLIT * C + off, mask=pmask, other=0.0)
        pq = tl.load(part_ptr + 2 * SPLIT * C + off, mask=pmask, other=0.0)
        cm, cq, cc = _welford_lanes(pm, pq, pc, 0)
        mean, m2, cnt = _welford_combine(mean, m2, cnt, cm, cq, cc)
    var = tl.maximum(m2 / n, 0.0)                                  # biased: used to normalise
    invstd = tl.div_rn(1.0, tl.sqrt_rn(var + eps))
    scale = invstd
    if HAS_W:
        scale = scale * tl.load(w_ptr + cols, mask=mask, other=1.0).to(tl.float32)
    shift = tl.zeros([BLOCK_C], tl.float32)
    if HAS_B:
        shift = tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(coef_ptr + cols, mean, mask=mask)
    tl.store(coef_ptr + C + cols, invstd, mask=mask)
    tl.store(coef_ptr + 2 * C + cols, scale, mask=mask)
    tl.store(coef_ptr + 3 * C + cols, shift, mask=mask)
    if UPDATE:
        if USE_CMA:
            f = 1.0 / tl.load(nbt_ptr).to(tl.float32)              # cumulative moving average
        else:
            f = momentum
        rm = tl.load(rm_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        rv = tl.load(rv_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        rm = (1.0 - f) * rm + f * mean
        rv = (1.0 - f) * rv + f * (m2 / (n - 1.0))                 # unbiased in the running estimate
        tl.store(rm_ptr + cols, rm.to(rm_ptr.dtype.element_ty), mask=mask)
        tl.store(rv_ptr + cols, rv.to(rv_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_reduce_cf_kernel(x_ptr, dy_ptr, center_ptr, part_ptr, N, C, S, stride_n, NUM_SB, TOTAL, PER,
                          BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr):
    c = tl.program_id(0)
    p = tl.program_id(1)
    split = tl.num_programs(1)
    rn = tl.arange(0, BLOCK_N)[:, None]
    rs = tl.arange(0, BLOCK_S)[None, :]
    center = tl.load(center_ptr + c).to(tl.float32)
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
        g = tl.load(dy_ptr + off, mask=mask, other=0.0).to(tl.float32)
        sdy += g
        sdyx += g * (x - center)
    off = p * C + c
    tl.store(part_ptr + off, tl.sum(tl.sum(sdy, 1), 0))
    tl.store(part_ptr + split * C + off, tl.sum(tl.sum(sdyx, 1), 0))


@triton.jit
def _bwd_reduce_cl_kernel(x_ptr, dy_ptr, center_ptr, part_ptr, M, C, PER, BLOCK_M: tl.constexpr,
                          BLOCK_C: tl.constexpr):
    p = tl.program_id(1)
    split = tl.num_programs(1)
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    center = tl.load(center_ptr + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
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
        g = tl.load(dy_ptr + off, mask=mask, other=0.0).to(tl.float32)
        sdy += g
        sdyx += g * tl.where(mask, x - center, 0.0)
    off = p * C + cols
    tl.store(part_ptr + off, tl.sum(sdy, 0), mask=cmask)
    tl.store(part_ptr + split * C + off, tl.sum(sdyx, 0), mask=cmask)


@triton.jit
def _finalize_bwd_kernel(part_ptr, fcoef_ptr, bcoef_ptr, w_ptr, rm_ptr, rv_ptr, dw_ptr, db_ptr, C, SPLIT, n, eps,
                         TRAIN: tl.constexpr, HAS_W: tl.constexpr, WRITE_DW: tl.constexpr, WRITE_DB: tl.constexpr,
                         BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = cols < C
    sdy = tl.zeros([BLOCK_C], tl.float32)
    sdyx = tl.zeros([BLOCK_C], tl.float32)
    rp = tl.arange(0, BLOCK_P)[:, None]
    for p0 in range(0, SPLIT, BLOCK_P):
        pmask = (p0 + rp < SPLIT) & mask[None, :]
        off = (p0 + rp) * C + cols[None, :]
        sdy += tl.sum(tl.load(part_ptr + off, mask=pmask, other=0.0), 0)
        sdyx += tl.sum(tl.load(part_ptr + SPLIT * C + off, mask=pmask, other=0.0), 0)
    if TRAIN:
        center = tl.load(fcoef_ptr + cols, mask=mask, other=0.0)
        invstd = tl.load(fcoef_ptr + C + cols, mask=mask, other=0.0)
    else:
        center = tl.load(rm_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        invstd = tl.div_rn(1.0, tl.sqrt_rn(tl.load(rv_ptr + cols, mask=mask, other=1.0).to(tl.float32) + eps))
    if WRITE_DW:
        tl.store(dw_ptr + cols, (sdyx * invstd).to(dw_ptr.dtype.element_ty), mask=mask)
    if WRITE_DB:
        tl.store(db_ptr + cols, sdy.to(db_ptr.dtype.element_ty), mask=mask)
    k = invstd
    if HAS_W:
        k = k * tl.load(w_ptr + cols, mask=mask, other=1.0).to(tl.float32)
    if TRAIN:   # dx = k * (dy - mean(dy) - xhat * mean(dy * xhat))
        scale = -k * invstd * invstd * (sdyx / n)
        shift = -k * (sdy / n)
    else:       # the statistics are constants: dx = k * dy
        scale = tl.zeros([BLOCK_C], tl.float32)
        shift = tl.zeros([BLOCK_C], tl.float32)
    tl.store(bcoef_ptr + cols, center, mask=mask)
    tl.store(bcoef_ptr + C + cols, k, mask=mask)
    tl.store(bcoef_ptr + 2 * C + cols, scale, mask=mask)
    tl.store(bcoef_ptr + 3 * C + cols, shift, mask=mask)


@triton.jit
def _coefs(ch, mask, coef_ptr, C, rm_ptr, rv_ptr, w_ptr, b_ptr, eps,
           INLINE: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    """Per-channel (center, k, scale, shift): out = dy * k + (x - center) * scale + shift."""
    if INLINE:   # eval: from the running statistics
        center = tl.load(rm_ptr + ch, mask=mask, other=0.0).to(tl.float32)
        scale = tl.div_rn(1.0, tl.sqrt_rn(tl.load(rv_ptr + ch, mask=mask, other=1.0).to(tl.float32) + eps))
        if HAS_W:
            scale = scale * tl.load(w_ptr + ch, mask=mask, other=1.0).to(tl.float32)
        shift = tl.zeros(ch.shape, tl.float32)
        if HAS_B:
            shift = tl.load(b_ptr + ch, mask=mask, other=0.0).to(tl.float32)
        k = scale
    else:
        center = tl.load(coef_ptr + ch, mask=mask, other=0.0)
        k = tl.load(coef_ptr + C + ch, mask=mask, other=0.0)
        scale = tl.load(coef_ptr + 2 * C + ch, mask=mask, other=0.0)
        shift = tl.load(coef_ptr + 3 * C + ch, mask=mask, other=0.0)
    return center, k, scale, shift


@triton.jit
def _apply_cf_kernel(x_ptr, dy_ptr, out_ptr, coef_ptr, rm_ptr, rv_ptr, w_ptr, b_ptr, R, C, S, NUM_SB, eps,
                     HAS_X: tl.constexpr, HAS_DY: tl.constexpr, INLINE: tl.constexpr, HAS_W: tl.constexpr,
                     HAS_B: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr):
    pid = tl.program_id(0)
    rb = pid // NUM_SB
    rows = rb * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < R
    center, k, scale, shift = _coefs(rows % C, rmask, coef_ptr, C, rm_ptr, rv_ptr, w_ptr, b_ptr, eps,
                                     INLINE, HAS_W, HAS_B)
    s = (pid - rb * NUM_SB) * BLOCK_S + tl.arange(0, BLOCK_S)
    mask = rmask[:, None] & (s < S)[None, :]
    off = rows.to(tl.int64)[:, None] * S + s[None, :]
    out = tl.zeros([BLOCK_R, BLOCK_S], tl.float32)
    if HAS_X:
        x = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
        out = (x - center[:, None]) * scale[:, None] + shift[:, None]
    if HAS_DY:
        out += tl.load(dy_ptr + off, mask=mask, other=0.0).to(tl.float32) * k[:, None]
    tl.store(out_ptr + off, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _apply_cl_kernel(x_ptr, dy_ptr, out_ptr, coef_ptr, rm_ptr, rv_ptr, w_ptr, b_ptr, M, C, NUM_CB, eps,
                     HAS_X: tl.constexpr, HAS_DY: tl.constexpr, INLINE: tl.constexpr, HAS_W: tl.constexpr,
                     HAS_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    mb = pid // NUM_CB
    cols = (pid - mb * NUM_CB) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    center, k, scale, shift = _coefs(cols, cmask, coef_ptr, C, rm_ptr, rv_ptr, w_ptr, b_ptr, eps,
                                     INLINE, HAS_W, HAS_B)
    rows = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    mask = (rows < M)[:, None] & cmask[None, :]
    off = rows.to(tl.int64)[:, None] * C + cols[None, :]
    out = tl.zeros([BLOCK_M, BLOCK_C], tl.float32)
    if HAS_X:
        x = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
        out = (x - center[None, :]) * scale[None, :] + shift[None, :]
    if HAS_DY:
        out += tl.load(dy_ptr + off, mask=mask, other=0.0).to(tl.float32) * k[None, :]
    tl.store(out_ptr + off, out.to(out_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------------------------
# launchers (tensors already in the plan's layout; optional pointers replaced by a placeholder tensor)

def _fin_blocks(split: int, C: int) -> tuple:
    """(BLOCK_P, BLOCK_C) of the finalize kernels: up to ``fin_p`` partials per channel merged per step, in tiles of
    at most 4096 elements, so even a few channels with many splits take only a few dependent steps."""
    bp = min(_pow2(split), TUNING["fin_p"])
    return bp, max(16, min(128, _pow2(C), 4096 // bp))


def launch_stats(plan: Plan, x: torch.Tensor) -> torch.Tensor:
    """Per-(split, channel) Welford partials, float32 ``(3, split, C)``: count, mean, M2."""
    part = torch.empty((3, plan.split, plan.C), device=x.device, dtype=torch.float32)
    w = TUNING["red_warps"]
    if plan.layout == "cf":
        num_sb = triton.cdiv(plan.S, plan.red_b)
        total = triton.cdiv(plan.N, plan.red_a) * num_sb
        _stats_cf_kernel[plan.red_grid](x, part, plan.N, plan.C, plan.S, plan.C * plan.S, num_sb, total,
                                        plan.per_split, BLOCK_N=plan.red_a, BLOCK_S=plan.red_b, num_warps=w)
    else:
        _stats_cl_kernel[plan.red_grid](x, part, plan.N * plan.S, plan.C, plan.per_split,
                                        BLOCK_M=plan.red_a, BLOCK_C=plan.red_b, num_warps=w)
    return part


def launch_finalize_fwd(plan, part, weight, bias, running_mean, running_var, nbt, eps, momentum):
    C = plan.C
    coef = torch.empty((4, C), device=part.device, dtype=torch.float32)
    update = running_mean is not None
    cma = update and momentum is None
    bp, bc = _fin_blocks(plan.split, C)
    _finalize_fwd_kernel[(triton.cdiv(C, bc),)](
        part, coef, _p(weight, coef), _p(bias, coef), _p(running_mean, coef), _p(running_var, coef),
        nbt if cma else coef, C, plan.split, float(plan.N * plan.S), float(eps),
        0.0 if momentum is None else float(momentum),
        HAS_W=weight is not None, HAS_B=bias is not None, UPDATE=update, USE_CMA=cma, BLOCK_P=bp, BLOCK_C=bc,
        num_warps=8 if bp * bc >= 4096 else 4)
    return coef


def launch_bwd_reduce(plan: Plan, x, dy, center) -> torch.Tensor:
    part = torch.empty((2, plan.split, plan.C), device=x.device, dtype=torch.float32)
    w = TUNING["red_warps"]
    if plan.layout == "cf":
        num_sb = triton.cdiv(plan.S, plan.red_b)
        total = triton.cdiv(plan.N, plan.red_a) * num_sb
        _bwd_reduce_cf_kernel[plan.red_grid](x, dy, center, part, plan.N, plan.C, plan.S, plan.C * plan.S, num_sb,
                                             total, plan.per_split, BLOCK_N=plan.red_a, BLOCK_S=plan.red_b,
                                             num_warps=w)
    else:
        _bwd_reduce_cl_kernel[plan.red_grid](x, dy, center, part, plan.N * plan.S, plan.C, plan.per_split,
                                             BLOCK_M=plan.red_a, BLOCK_C=plan.red_b, num_warps=w)
    return part


def launch_finalize_bwd(plan, part, fcoef, weight, running_mean, running_var, eps, train, dw, db):
    C = plan.C
    bcoef = torch.empty((4, C), device=part.device, dtype=torch.float32)
    bp, bc = _fin_blocks(plan.split, C)
    _finalize_bwd_kernel[(triton.cdiv(C, bc),)](
        part, _p(fcoef, bcoef), bcoef, _p(weight, bcoef), _p(running_mean, bcoef), _p(running_var, bcoef),
        _p(dw, bcoef), _p(db, bcoef), C, plan.split, float(plan.N * plan.S), float(eps),
        TRAIN=train, HAS_W=weight is not None, WRITE_DW=dw is not None, WRITE_DB=db is not None,
        BLOCK_P=bp, BLOCK_C=bc, num_warps=8 if bp * bc >= 4096 else 4)
    return bcoef


def launch_apply(plan: Plan, out, x=None, dy=None, coef=None, running_mean=None, running_var=None, weight=None,
                 bias=None, eps=0.0):
    """``out = dy * k + (x - center) * scale + shift`` per channel; the coefficients come from ``coef`` (4, C) or,
    when it is None, from the running statistics (eval)."""
    inline = coef is None
    ph = out
    args = (_p(x, ph), _p(dy, ph), out, _p(coef, ph), _p(running_mean, ph), _p(running_var, ph), _p(weight, ph),
            _p(bias, ph))
    flags = dict(HAS_X=x is not None, HAS_DY=dy is not None, INLINE=inline, HAS_W=weight is not None,
                 HAS_B=bias is not None, num_warps=TUNING["apply_warps"])
    if plan.layout == "cf":
        _apply_cf_kernel[plan.app_grid](*args, plan.N * plan.C, plan.C, plan.S, triton.cdiv(plan.S, plan.app_b),
                                        float(eps), BLOCK_R=plan.app_a, BLOCK_S=plan.app_b, **flags)
    else:
        _apply_cl_kernel[plan.app_grid](*args, plan.N * plan.S, plan.C, triton.cdiv(plan.C, plan.app_b),
                                        float(eps), BLOCK_M=plan.app_a, BLOCK_C=plan.app_b, **flags)
    return out


def _p(t, placeholder):
    return placeholder if t is None else t


__all__ = ["INTERPRET", "TUNING", "Plan", "make_plan", "launch_stats", "launch_finalize_fwd", "launch_bwd_reduce",
           "launch_finalize_bwd", "launch_apply"]

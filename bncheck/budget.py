"""Error budgets: how far a *correct* floating-point BatchNorm may differ from the exact (float64) result.

The model (per element, per channel c, reduction size n, unit roundoff u of a dtype: 2^-53, 2^-24, 2^-11, 2^-8):

    s      = sqrt(var_c + eps)                          the normaliser actually used
    cond_e = (|x_e| + |center_c|) / s                   cancellation in x - center, relative to s
    cond_c = (|center_c| + std_c) / s + 1               conditioning of the channel's statistics
    cond_m = mean_c|x| / s   (batch statistics; 0 when the statistics are given, n = 1)
                                                        the computed mean's own error, relative to s
    g(n)   = 1 + log2(1 + n)                            error growth of a pairwise/blocked reduction
    d_c    = var_err_c / (2 s^2)                        only under ``Knobs.naive_variance`` (a variance by
                                                        E[x^2]-E[x]^2, assumed once ``cancellation`` is named):
                                                        var_err = u_in (E[x^2] + 2|mean| E|x| + |var|), see below

    output      K * g(n) * [u_in * (cond_e + cond_m + cond_c * |xhat_e|) * |w_c| + u_out * (|y_e| + |b_c|)]
    running_mean K * g(n) * [u_p * (|(1-f) rm_old| + |f mean|) + f * u_in * (|mean| + std)]
    running_var  K * g(n) * [u_p * (|(1-f) rv_old| + |f var_unb|) + f * u_in * (var + |mean| std) * n/(n-1)]
                 (both + K * u_p * (|old| + |batch|) where f itself is computed at run time: a zero-debiased
                 f = w / (1 - (1 - w)^k), whose own relative error of a few u leaves 1 - f off by that much)
    dx (train)  K * g(n) * u_in * |w|/s * [|dy_e| + mean|dy| + (1 + |xhat_e|) * cond_c * (mean|dy xhat| + mean|dy|)]
                + K * u_out * |dx_e|
    dx (eval)   K * (u_in * |dy_e| * |w| / s + u_out * |dx_e|)
    dweight     K * g(n) * [u_in * cond_c * sum|dy| (1 + |xhat|) + u_p * |dweight|]
    dbias       K * g(n) * [u_in * sum|dy| + u_p * |dbias|]

    epilogue    relu(y + z): the output's budget + K * u_out * |z| (ReLU is 1-Lipschitz; the add rounds once); the
                gradients with the masked upstream gradient in place of dy; dz: K * u * |dz| (a masked copy of dy).
                Where the exact pre-activation lies within the output's budget of 0 it may round to either side:
                there the gradients follow the implementation's own mask (its output > 0), never a finding.
    fused conv  K * g(n) * u * [(|W'| conv |x|)_e + |s_c b_c| + |s_c mean_c| + |beta_c|] + K * u * |y_e|
                (a folded conv-BN, ``bncheck.folding.check``: u of the conv's dtype, n = C_in/groups * prod(kernel) + 1;
                covers rounding W' and b' to the dtype and the conv's own accumulation, even where b' cancels)

Where the terms come from (first order in u; m, v the exact batch mean and biased variance, m', v', s' computed):

- The mean. A sum of n terms accumulated pairwise (or in blocks) is off by at most g(n) * u * sum|x_i|, so
  |m' - m| <= g(n) * u * mean|x| (+ u |m| for the division, smaller). This does not depend on the element: it
  shifts every x - m' of the channel alike, so the output carries |m' - m| / s * |w| even where x_e is at the
  mean (xhat_e = 0). That is cond_m. It differs from |center| / s in cond_e when the mean is near zero but the
  values are not (outliers): mean|x| can be as large as std while |m| is not.
- The variance. Two-pass, v' = mean((x - m')^2): the shift m' - m changes v only to second order (v + (m'-m)^2);
  rounding x - m' (to u_in: u * (|x| + |m|) each) and squaring and summing give
  |v' - v| <= g(n) * u * (v + 2 std * (mean|x| + |m|)). Welford's update and float64 accumulation have the same
  first-order bound; E[x^2] - E[x]^2 has u * (m^2 + v) instead, which is the ``cancellation`` defect.
- Into y = (x - m') / s' * w + b: s' = sqrt(v' + eps) has |s' - s| / s <= |v' - v| / (2 s^2) (+ u for the sqrt),
  and it enters as xhat_e * (s' - s) / s. With mean|x| <= sqrt(m^2 + v) <= |m| + std (Cauchy-Schwarz) and
  std <= s, |v' - v| / (2 s^2) <= g(n) * u * (1/2 + (2 |m| + std) / s) <= 2 g(n) * u * cond_c: the term
  cond_c * |xhat_e| (K covers the 2). The subtraction x - m' rounds to u * (|x| + |m|): cond_e. The affine step
  and the output cast: u_out * (|y| + |b|).
- The same gap in the other fields. Each already has the mean's error independent of xhat: dx through
  (1 + |xhat_e|) * cond_c (xhat' - xhat = -((m' - m) + xhat (s' - s)) / s, and cond_c >= cond_m + 1), dweight
  through cond_c * sum|dy| (1 + |xhat|) (sum dy * (xhat' - xhat)); the running statistics through
  f * u_in * (|mean| + std) >= f * u_in * mean|x| and f * u_in * (var + |mean| std), the variance's bound above.
  Only the output multiplied cond_c by |xhat_e|, which vanishes at the mean.

Under ``naive_variance`` the variance is known to come from E[x^2] - E[x]^2 in the input precision. The oracle
emulates it (the means and the difference rounded to the input dtype) but not the implementation's summation order,
which moves E[x^2] by up to g(n) u E[x^2]: var_err is that allowance (relative to var, u (mean/std)^2, the defect
itself), and it enters wherever s does, as the relative error d_c of s (the output, xhat in dx and dweight:
+ K g(n) d_c |xhat| |w|, + K g(n) d_c (|dx| + 2 |w|/s |xhat| mean|dy xhat|), + K g(n) d_c sum|dy xhat|), and the
running variance as + K g(n) f var_err n/(n-1).

Results stored below the dtype's smallest normal number (float16 gradients of 1e-6) are rounded to its subnormal
spacing, an absolute error that no relative term covers: the output and dx budgets add K * u * smallest normal.

u_in is the input dtype's roundoff: a correct implementation may round intermediates (x - mean, the mean
itself) to the input precision, but must accumulate reductions in float32 or better. A reduction accumulated in
float16 grows like n * u_half and an E[x^2]-E[x]^2 variance like u * mean^2 / var: both leave this budget as n or
|mean|/std grows, which is what ``cancellation`` and ``low-precision-accumulation`` findings rest on.

K = 8 covers the constant factors of the individual roundings (each term above stands for a handful of
operations). The model is cross-checked against torch's native kernels in ``tests/test_oracle.py``: torch's own
error versus the oracle must stay below one budget on every generated scenario, and the report shows torch's
worst ratio next to each implementation's.
"""
from __future__ import annotations

import math

import torch

K = 8.0
UNIT_ROUNDOFF = {torch.float64: 2.0 ** -53, torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11,
                 torch.bfloat16: 2.0 ** -8}
TINY = 1e-300


def u(dtype: torch.dtype) -> float:
    return UNIT_ROUNDOFF.get(dtype, 2.0 ** -24)


def underflow(u_: float) -> float:
    """The absolute error of rounding a result below the smallest normal number of the dtype whose roundoff is
    ``u_``: half the spacing of its subnormals, u * smallest normal (float16: 3e-8; relative terms miss it)."""
    dtype = next((d for d, v in UNIT_ROUNDOFF.items() if v == u_), None)
    return u_ * torch.finfo(dtype).smallest_normal if dtype is not None else 0.0


def growth(n: int) -> float:
    return 1.0 + math.log2(1 + max(n, 0))


def _chan(t: torch.Tensor, rank: int) -> torch.Tensor:
    return t.view((1, -1) + (1,) * (rank - 2))


def _dims(rank: int) -> list[int]:
    return [0] + list(range(2, rank))


def _naive(var_err, s, rank):
    """Relative error of s = sqrt(var + eps) from a variance off by ``var_err`` (per channel): var_err / (2 s^2)."""
    return _chan(var_err / (2 * s * s), rank) if var_err is not None else 0.0


def output(x, y_ref, center, var, eps, weight, bias, n, u_in, u_out, eps_outside=False, var_err=None):
    """Per-element budget for the forward output (float64 tensors; center/var/weight/bias per channel).

    ``n``: the reduction size of the statistics used, 1 when they are given (running statistics), not computed.
    ``var_err``: where the normalising variance is E[x^2] - E[x]^2 (``Knobs.naive_variance``), its allowance per
    channel (``oracle.naive_variance``); it scales the output like any error of s: |xhat| * var_err / (2 s^2)."""
    rank = x.dim()
    var = var.clamp_min(0)
    s = torch.sqrt(var) + eps if eps_outside else torch.sqrt(var + eps)
    s = s.clamp_min(TINY)
    c, sc = _chan(center, rank), _chan(s, rank)
    xhat = (x - c) / sc
    cond_e = (x.abs() + c.abs()) / sc
    cond_c = (c.abs() + _chan(var.sqrt(), rank)) / sc + 1
    w = _chan(weight.abs(), rank) if weight is not None else 1.0
    b = _chan(bias.abs(), rank) if bias is not None else 0.0
    cond_m = 0.0
    if n > 1 and x.numel():   # batch statistics: the computed mean's own error, the same for every element
        cond_m = x.abs().mean(_dims(rank), keepdim=True) / sc
    return K * growth(n) * ((u_in * (cond_e + cond_m + cond_c * xhat.abs()) + _naive(var_err, s, rank) * xhat.abs())
                            * w + u_out * (y_ref.abs() + b)) + K * underflow(u_out) + TINY


def _factor_term(factor_computed: bool, u_p: float, old, batch):
    """A blend factor computed at run time (a zero-debiased w / (1 - (1 - w)^k)) carries its own relative error of
    a few u; it moves the result by that times |batch - old|, even where 1 - w is exactly 0 (the first step)."""
    return K * u_p * (old.abs() + batch.abs()) if factor_computed else 0.0


def running_mean(old, new_ref, batch_mean, batch_var, factor, n, u_in, u_p, factor_computed=False):
    f = factor if factor is not None else 0.0
    std = batch_var.clamp_min(0).sqrt()
    return K * growth(n) * (u_p * ((1 - f) * old.abs() + f * batch_mean.abs() + new_ref.abs())
                            + f * u_in * (batch_mean.abs() + std)) \
        + _factor_term(factor_computed, u_p, old, batch_mean) + TINY


def running_var(old, new_ref, batch_mean, batch_var, factor, n, u_in, u_p, var_err=None, factor_computed=False):
    f = factor if factor is not None else 0.0
    bessel = n / (n - 1) if n > 1 else 1.0
    std = batch_var.clamp_min(0).sqrt()
    naive = 0.0 if var_err is None else var_err
    return K * growth(n) * (u_p * ((1 - f) * old.abs() + f * batch_var.abs() * bessel + new_ref.abs())
                            + f * (u_in * (batch_var.abs() + batch_mean.abs() * std) + naive) * bessel) \
        + _factor_term(factor_computed, u_p, old, batch_var * bessel) + TINY


def input_grad(x, dy, dx_ref, center, var, eps, weight, n, u_in, u_out, batch_stats: bool, var_err=None):
    rank = x.dim()
    s = torch.sqrt(var.clamp_min(0) + eps).clamp_min(TINY)
    w = _chan(weight.abs(), rank) if weight is not None else 1.0
    ws = w / _chan(s, rank)
    if not batch_stats:
        return K * (u_in * dy.abs() * ws + u_out * dx_ref.abs() + underflow(u_out)) + TINY
    dims = _dims(rank)
    c = _chan(center, rank)
    xhat = (x - c) / _chan(s, rank)
    cond_c = (c.abs() + _chan(var.clamp_min(0).sqrt(), rank)) / _chan(s, rank) + 1
    mdy = dy.abs().mean(dims, keepdim=True) if dy.numel() else dy.new_zeros(c.shape)
    mdyx = (dy * xhat).abs().mean(dims, keepdim=True) if dy.numel() else dy.new_zeros(c.shape)
    # a variance off by var_err (naive_variance): s and xhat off by d = var_err / (2 s^2) relative, dx by at most
    # d * (|dx| + 2 |w| / s * |xhat| * mean|dy xhat|)
    d = _naive(var_err, s, rank)
    return (K * growth(n) * (u_in * ws * (dy.abs() + mdy + (1 + xhat.abs()) * cond_c * (mdyx + mdy))
                             + d * (dx_ref.abs() + 2 * ws * xhat.abs() * mdyx))
            + K * (u_out * dx_ref.abs() + underflow(u_out)) + TINY)


def weight_grad(x, dy, dw_ref, center, var, eps, n, u_in, u_p, var_err=None):
    rank = x.dim()
    dims = _dims(rank)
    s = torch.sqrt(var.clamp_min(0) + eps).clamp_min(TINY)
    xhat = (x - _chan(center, rank)) / _chan(s, rank)
    cond_c = (center.abs() + var.clamp_min(0).sqrt()) / s + 1
    total = (dy.abs() * (1 + xhat.abs())).sum(dims) if dy.numel() else dw_ref.new_zeros(dw_ref.shape)
    naive = 0.0
    if var_err is not None and dy.numel():   # sum dy * xhat with xhat off by var_err / (2 s^2) relative
        naive = var_err / (2 * s * s) * (dy * xhat).abs().sum(dims)
    return K * growth(n) * (u_in * cond_c * total + naive + u_p * dw_ref.abs()) + TINY


def bias_grad(dy, db_ref, n, u_in, u_p):
    dims = _dims(dy.dim())
    total = dy.abs().sum(dims) if dy.numel() else db_ref.new_zeros(db_ref.shape)
    return K * growth(n) * (u_in * total + u_p * db_ref.abs()) + TINY


def fused_output(magnitude, y_ref, n, u_):
    """Per-element budget for a folded convolution's output (float64 tensors).

    ``magnitude``: per element, the sum over the convolution of |W'|*|x| plus the per-channel sum of |terms| that
    make up b' (|s*b| + |s*mean| + |beta|); ``n``: the conv's reduction size.
    """
    return K * growth(n) * u_ * magnitude + K * u_ * y_ref.abs() + TINY


def epilogue_output(bn_budget: torch.Tensor, z: torch.Tensor | None, u_out: float) -> torch.Tensor:
    """An epilogue's output relu(y + z): ReLU is 1-Lipschitz, so the BatchNorm output's budget carries over; the add
    rounds once more, u_out * |y + z| <= u_out * (|y| + |z|), of which the z part is new."""
    if z is None:
        return bn_budget
    return bn_budget + K * u_out * z.to("cpu", torch.float64).abs()


def residual_grad(dz_ref: torch.Tensor, u: float) -> torch.Tensor:
    """dz: the upstream gradient where the mask passes it, 0 elsewhere, stored in the input dtype (one rounding)."""
    return K * u * dz_ref.abs() + K * underflow(u) + TINY

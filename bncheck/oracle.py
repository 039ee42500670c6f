"""The float64 reference: torch's BatchNorm semantics written out from BATCHNORM_SEMANTICS.md, with knobs.

One parameterised reference (not torch's batch_norm): ``Knobs()`` is torch's behaviour; each flipped knob is a
hypothesis about a bug (inverted momentum, eps outside the sqrt, ...) used by diagnosis. The oracle is
*step-local*: given the state before a step (running stats, num_batches_tracked) it computes that step's output,
gradients and new state, so a divergence is pinned to the step that made it.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields, replace

import torch
from torch.nn.modules.batchnorm import _NormBase


@dataclass(frozen=True)
class Knobs:
    momentum_direction: str = "torch"       # torch: new=(1-m)old+m*batch | inverted: new=m*old+(1-m)*batch
    momentum_override: float | None = None  # a fixed factor used whatever the momentum argument says
    momentum_none: str = "cumulative"       # momentum=None: cumulative | as-0.1 | zero | last-batch (factor 1)
    momentum_debias: bool = False           # zero-debiased moving average (TensorFlow's ExponentialMovingAverage
                                            # with zero_debias=True): training step k weights the batch by
                                            # w / (1 - (1 - w)^k), w the batch's weight; the first step copies it
                                            # (a momentum only: momentum=None stays a cumulative average)
    counter: str = "torch"                  # num_batches_tracked: torch (+1 per training step) | frozen (never
                                            # counts) | double (+2) | eval-too (also counts in eval steps)
    running_var_unbiased: bool = True       # running_var update with n/(n-1)
    norm_var_unbiased: bool = False         # normalise with the unbiased variance
    eps_placement: str = "inside"           # inside: sqrt(var+eps) | outside: sqrt(var)+eps
    eps_override: float | None = None       # a fixed eps used whatever the eps argument says
    eval_stats: str = "running"             # running | batch   (eval with track_running_stats=True)
    train_stats: str = "batch"              # batch | running-before | running-after
    mode_source: str = "training"           # training | grad | always-train | always-eval
    update_in_eval: bool | str = False      # True: eval also updates the running stats (after its output) |
                                            # before-output: updated first, and eval normalises with the new ones
    update_stats: bool = True
    count_frozen: bool = False              # with update_stats=False: num_batches_tracked still counts
    untracked_eval_stats: str = "batch"     # batch | zero-one  (eval with track_running_stats=False)
    affine_mode: str = "normal"             # normal | ignored | swapped | weight-only | bias-only | one-plus-weight |
                                            # positive-weight: relu(w) + 1e-6 (a scale constrained positive)
    reduction: str = "torch"                # torch: (N, spatial) | batch-only: N | per-sample: spatial |
                                            # fixed-0-2-3: dims (0, 2, 3) whatever the rank
    detach_stats: str = "none"              # none | mean | var | both: input gradient ignores these
    detach_affine: bool = False             # weight/bias receive no gradient
    stats_broadcast: str = "channel"        # channel | last-axis: (C,) running stats broadcast against the last axis
    # Epilogues (``Scenario.epilogue``: relu(bn(x)) or relu(bn(x) + z)); no effect without one
    relu_mask: str = "output"               # the ReLU's gradient mask: output (torch: where the output is > 0) |
                                            # input (x > 0) | bn (bn(x) > 0, before the add) | ignored (none) |
                                            # at-zero (recomputed as pre-activation >= 0: passes where it is 0)
    relu_at: str = "end"                    # end | before-affine: relu(xhat) * weight + bias (+ z)
    residual: str = "after-bn"              # after-bn (torch) | before-bn: relu(bn(x + z)) | after-relu:
                                            # relu(bn(x)) + z
    dz: str = "masked"                      # the residual's gradient: masked (torch) | unmasked (dy) | missing
    stats_from: str = "x"                   # x | x+z: running statistics from the batch statistics of x + z
    naive_variance: str | None = None       # None: a stable batch variance | "input": E[x^2] - E[x]^2, the two means
                                            # and the difference rounded to the input dtype (``naive_variance``)
    # Not a semantic knob: the dtype an implementation keeps its running statistics in, once diagnosis has found
    # it below the parameter dtype (plain attributes that .to() does not convert). The oracle ignores it;
    # comparisons widen the budgets of everything computed from those statistics to that dtype's roundoff.
    stats_dtype: str | None = None
    # Not a semantic knob either: the precision an implementation computes in when it is below its dtype's (a
    # float64 layer computing in float32 and casting back). The oracle ignores it; comparisons widen every budget to
    # that dtype's roundoff (``reduced-precision``).
    compute_dtype: str | None = None

    def flipped(self) -> dict:
        """The knobs that differ from torch's behaviour."""
        base = Knobs()
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != getattr(base, f.name)}

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.flipped().items()) or "torch semantics"


TORCH = Knobs()


@dataclass
class State:
    running_mean: torch.Tensor | None = None   # float64 (C,)
    running_var: torch.Tensor | None = None
    num_batches_tracked: int = 0
    trained: int = 0       # training updates so far, as torch counts them (the cumulative average's count)

    def clone(self) -> "State":
        return State(None if self.running_mean is None else self.running_mean.clone(),
                     None if self.running_var is None else self.running_var.clone(), self.num_batches_tracked,
                     self.trained)


@dataclass
class Config:
    eps: float
    momentum: float | None
    track_running_stats: bool


@dataclass
class StepResult:
    error: str | None = None          # the exception class torch raises on this step, if any
    y: torch.Tensor | None = None     # float64
    dx: torch.Tensor | None = None
    dweight: torch.Tensor | None = None
    dbias: torch.Tensor | None = None
    state: State | None = None        # after the step
    center: torch.Tensor | None = None  # per-channel statistics used to normalise (C,), for error budgets
    var: torch.Tensor | None = None
    batch_mean: torch.Tensor | None = None
    batch_var: torch.Tensor | None = None
    n: int = 0
    factor: float | None = None       # the running-stat update factor used, if any (the batch's weight)
    factor_computed: bool = False     # the factor is computed at run time (zero-debiased), with its own roundoff
    used_batch_stats: bool = False
    # naive_variance: how far a variance computed that way may be from the one emulated here, per channel (C,),
    # of the batch variance and of the variance the output is normalised with (None: a stable variance)
    batch_var_err: torch.Tensor | None = None
    var_err: torch.Tensor | None = None
    # epilogues: the pre-activation (bn(x) + z, float64), the ReLU's gradient mask in use, the residual's gradient
    pre: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    dz: torch.Tensor | None = None


def _dims(rank: int, reduction: str) -> list[int]:
    spatial = list(range(2, rank))
    if reduction == "fixed-0-2-3":     # dims hard-coded for 4-d input, applied to any rank
        return [d for d in (0, 2, 3) if d < rank]
    return {"torch": [0] + spatial, "batch-only": [0], "per-sample": spatial}[reduction]


def _per_channel(t: torch.Tensor) -> torch.Tensor:
    """Collapse keepdim statistics of any reduction to one value per channel (C,)."""
    if t.dim() <= 1:
        return t.reshape(-1)
    return t.transpose(0, 1).reshape(t.shape[1], -1).mean(1)


def naive_variance(x: torch.Tensor, dims: list, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """E[x^2] - E[x]^2 as an implementation computes it in ``dtype``: each mean, the square of the mean and the
    difference rounded to ``dtype`` (float64 ``x``; differentiable, rounding passes gradients through).

    Returns (variance, allowance): the summation order of the implementation's own sums is unknown, so its
    result may differ from this emulation by the accumulated roundoff of those sums, u * (E[x^2] + 2 |E[x]| E|x|
    + |var|) per channel, times the reduction's growth (applied by ``budget``). That is the cancellation itself:
    relative to var it is u * (mean/std)^2."""
    def rnd(t):
        return t.to(dtype).to(torch.float64)
    mean = rnd(x.mean(dims, keepdim=True))
    var = rnd(rnd((x * x).mean(dims, keepdim=True)) - rnd(mean * mean))
    with torch.no_grad():
        u = {torch.float64: 2.0 ** -53, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}.get(dtype, 2.0 ** -24)
        allowance = u * ((x * x).mean(dims, keepdim=True) + 2 * mean.abs() * x.abs().mean(dims, keepdim=True)
                         + var.abs())
    return var, allowance


def training_mode(training: bool, grad_enabled: bool, knobs: Knobs) -> bool:
    return {"training": training, "grad": grad_enabled, "always-train": True,
            "always-eval": False}[knobs.mode_source]


def forward(x: torch.Tensor, weight, bias, state: State, cfg: Config, *, training: bool, grad_enabled: bool,
            knobs: Knobs = TORCH, in_dtype: torch.dtype = torch.float64, epilogue: str = "none", z=None,
            relu_mask: torch.Tensor | None = None) -> StepResult:
    """Differentiable float64 forward of one step. ``x``, ``weight``, ``bias`` are float64 (may require grad);
    ``in_dtype``: the dtype the input came in (what ``naive_variance="input"`` rounds to). ``epilogue``: relu or
    add_relu (``z``, float64, the residual); ``relu_mask``: the ReLU's gradient mask to use instead of the knob's
    (comparisons pass the implementation's where the pre-activation is within budget of 0).

    Returns the output in ``StepResult.y`` (connected to the autograd graph) and the updated state.
    """
    x_in = x
    if epilogue == "add_relu" and knobs.residual == "before-bn":
        x = x + z                         # the residual added to the input: statistics and all
    rank, c = x.dim(), x.shape[1]
    n_torch = x.numel() // c if c else 0
    mode = training_mode(training, grad_enabled, knobs)
    track = cfg.track_running_stats
    res = StepResult(state=state.clone())
    if (mode or not track) and (n_torch == 1 or cfg.eps <= 0.0):
        # torch: "Expected more than 1 value per channel when training", and (torch >= 2.13)
        # "batch_norm eps must be positive during training"
        res.error = "ValueError"
        return res
    dims = _dims(rank, knobs.reduction)
    shape = (1, c) + (1,) * (rank - 2)
    n = 1
    for d in dims:
        n *= x.shape[d]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")    # the mean of a zero-size batch is NaN, by design
        mean_b = x.mean(dims, keepdim=True) if dims else x
        var_b = ((x - mean_b) ** 2).mean(dims, keepdim=True) if dims else torch.zeros_like(x)
        if knobs.naive_variance is not None and dims and n_torch > 0:
            var_b, allowance = naive_variance(x, dims, in_dtype)
            res.batch_var_err = _per_channel(allowance)
    res.n = n_torch
    res.batch_mean, res.batch_var = _per_channel(mean_b.detach()), _per_channel(var_b.detach())
    if epilogue == "add_relu" and knobs.stats_from == "x+z" and knobs.residual != "before-bn" and dims:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            xz = (x + z).detach()
            m2 = xz.mean(dims, keepdim=True)
            res.batch_mean, res.batch_var = _per_channel(m2), _per_channel(((xz - m2) ** 2).mean(dims, keepdim=True))

    # running statistics
    before = state.clone()
    count = {"torch": 1, "frozen": 0, "double": 2, "eval-too": 1}[knobs.counter]
    if track and not knobs.update_stats and knobs.count_frozen and (mode or knobs.update_in_eval):
        res.state.num_batches_tracked += count
    if track and knobs.update_stats and (mode or knobs.update_in_eval):
        st = res.state
        st.trained = k = before.trained + 1      # this update's number, counted as torch counts
        st.num_batches_tracked += count
        if n_torch > 0:
            if knobs.momentum_override is not None:
                f = knobs.momentum_override
            elif cfg.momentum is None:
                f = {"cumulative": 1.0 / k, "as-0.1": 0.1, "zero": 0.0, "last-batch": 1.0}[knobs.momentum_none]
            else:
                f = cfg.momentum
            w = 1 - f if knobs.momentum_direction == "inverted" else f     # the batch's weight
            if knobs.momentum_debias and cfg.momentum is not None and 0 < w < 1:
                w = min(1.0, w / (1 - (1 - w) ** k))   # (the first step copies the batch: exactly 1)
                res.factor_computed = True
            res.factor = w
            bm = res.batch_mean
            bv = res.batch_var
            if knobs.running_var_unbiased:
                bv = bv * n / (n - 1) if n > 1 else bv * math.inf
            st.running_mean = (1 - w) * st.running_mean + w * bm
            st.running_var = (1 - w) * st.running_var + w * bv
    elif track and knobs.counter == "eval-too" and not (mode or knobs.update_in_eval):
        res.state.num_batches_tracked += 1

    # statistics used to normalise
    if mode or not track:
        source = knobs.train_stats if (mode and track) else (
            "batch" if mode else {"batch": "batch", "zero-one": "zero-one"}[knobs.untracked_eval_stats])
    else:
        source = "batch" if knobs.eval_stats == "batch" else (
            "running-after" if track and knobs.update_in_eval == "before-output" else "running-before")
    if source == "batch":
        center = mean_b
        var = var_b * n / (n - 1) if (knobs.norm_var_unbiased and n > 1) else var_b
        if knobs.detach_stats in ("mean", "both"):
            center = center.detach()
        if knobs.detach_stats in ("var", "both"):
            var = var.detach()
        res.used_batch_stats = True
        res.var_err = res.batch_var_err
    elif source == "zero-one":
        center, var = x.new_zeros(shape), x.new_ones(shape)
    else:
        st = before if source == "running-before" else res.state
        if st.running_mean is None:
            center, var = x.new_zeros(shape), x.new_ones(shape)
        elif knobs.stats_broadcast == "last-axis" and rank > 2:
            center, var = st.running_mean, st.running_var
        else:
            center, var = st.running_mean.view(shape), st.running_var.view(shape)
    eps = cfg.eps if knobs.eps_override is None else knobs.eps_override
    try:
        if knobs.eps_placement == "outside":
            y = (x - center) / (torch.sqrt(var) + eps)
        else:
            y = (x - center) / torch.sqrt(var + eps)
    except RuntimeError:
        if knobs.stats_broadcast == "channel":
            raise
        res.error = "RuntimeError"     # last-axis broadcasting fails on this shape, as such an implementation does
        return res
    if center.dim() == 1 and rank > 2:   # last-axis broadcast: report the per-channel values as stored
        res.center, res.var = center.detach(), var.detach()
    else:
        res.center, res.var = _per_channel(center.detach()), _per_channel(var.detach())

    if epilogue != "none" and knobs.relu_at == "before-affine":
        y = _Relu.apply(y, y.detach() > 0)
    if weight is not None:
        w, b = weight.view(shape), bias.view(shape)
        if knobs.detach_affine:
            w, b = w.detach(), b.detach()
        y = {"normal": lambda: y * w + b, "ignored": lambda: y, "swapped": lambda: y * b + w,
             "weight-only": lambda: y * w, "bias-only": lambda: y + b,
             "one-plus-weight": lambda: y * (1 + w) + b,
             "positive-weight": lambda: y * (torch.relu(w) + 1e-6) + b}[knobs.affine_mode]()
    if epilogue != "none":
        y = _epilogue(y, x_in, z, epilogue, knobs, relu_mask, res)
    res.y = y
    return res


class _Relu(torch.autograd.Function):
    """max(pre, 0) whose backward multiplies by a given mask (torch's: where the output is > 0)."""

    @staticmethod
    def forward(ctx, pre, mask):
        ctx.save_for_backward(mask)
        return pre.clamp_min(0.0)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask, None


def _epilogue(y, x, z, epilogue: str, knobs: Knobs, relu_mask, res: StepResult):
    """relu(y) or relu(y + z) with torch's gradient semantics (the mask from the output; ``dz`` the masked
    upstream gradient), or the knob's variant; records the pre-activation and the mask in ``res``."""
    add = epilogue == "add_relu" and knobs.residual == "after-bn"
    if epilogue == "add_relu" and knobs.dz != "masked":
        z = z.detach()                    # its gradient is set by the knob (step), not by autograd
    pre = y + z if add else y
    res.pre = pre.detach()
    if knobs.relu_at == "before-affine":  # the ReLU came earlier: only the residual is added here
        res.mask = torch.ones_like(res.pre, dtype=torch.bool)
        return pre + (z if epilogue == "add_relu" and knobs.residual == "after-relu" else 0.0)
    mask = {"output": lambda: res.pre > 0, "input": lambda: x.detach() > 0, "bn": lambda: y.detach() > 0,
            "ignored": lambda: torch.ones_like(res.pre, dtype=torch.bool),
            "at-zero": lambda: res.pre >= 0}[knobs.relu_mask]()
    if relu_mask is not None:
        mask = relu_mask
    res.mask = mask
    out = _Relu.apply(pre, mask.to(pre.dtype))
    if epilogue == "add_relu" and knobs.residual == "after-relu":
        out = out + z
    return out


def step(x: torch.Tensor, dy: torch.Tensor | None, weight, bias, state: State, cfg: Config, *, training: bool,
         grad_enabled: bool, knobs: Knobs = TORCH, epilogue: str = "none", z: torch.Tensor | None = None,
         relu_mask: torch.Tensor | None = None) -> StepResult:
    """One step with gradients: ``x``/``dy`` of any dtype (taken exactly, in float64), ``weight``/``bias`` float64
    values or None. Gradients are computed when ``grad_enabled`` (dx, and dweight/dbias when affine; dz with an
    add_relu epilogue, whose residual is ``z``). ``relu_mask``: see ``forward``."""
    x64 = x.detach().to(torch.float64).contiguous().requires_grad_(grad_enabled)
    z64 = None if z is None else z.detach().to("cpu", torch.float64).contiguous().requires_grad_(grad_enabled)
    w = None if weight is None else weight.detach().to(torch.float64).clone().requires_grad_(grad_enabled)
    b = None if bias is None else bias.detach().to(torch.float64).clone().requires_grad_(grad_enabled)
    with torch.enable_grad() if grad_enabled else torch.no_grad():
        res = forward(x64, w, b, state, cfg, training=training, grad_enabled=grad_enabled, knobs=knobs,
                      in_dtype=x.dtype, epilogue=epilogue, z=z64, relu_mask=relu_mask)
    if res.error is None:
        # (a knob that broadcasts statistics against the wrong axis can change the output's shape: no gradients)
        if grad_enabled and dy is not None and res.y.requires_grad and res.y.shape == dy.shape:
            dy64 = dy.detach().to("cpu", torch.float64)
            res.y.backward(dy64)
            res.dx = x64.grad
            res.dweight = None if w is None else w.grad
            res.dbias = None if b is None else b.grad
            if z64 is not None:
                res.dz = {"masked": lambda: z64.grad, "unmasked": lambda: dy64,
                          "missing": lambda: None}[knobs.dz]()
        res.y = res.y.detach()
    return res


def with_knobs(**flips) -> Knobs:
    return replace(TORCH, **flips)


class OracleBatchNorm(_NormBase):
    """The oracle as a module: float64 computation, output cast back to the input's dtype and memory format.
    Parameters and buffers are torch's own (``_NormBase``, as for ``nn.BatchNorm*d``)."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 device=None, dtype=None, knobs: Knobs = TORCH):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.cfg = Config(eps, momentum, track_running_stats)
        self.knobs = knobs

    def forward(self, x):
        if x.dim() not in (2, 3, 4, 5):
            raise ValueError(f"expected 2D to 5D input (got {x.dim()}D input)")
        track = self.cfg.track_running_stats
        state = State(self.running_mean.double() if track else None, self.running_var.double() if track else None,
                      int(self.num_batches_tracked) if track else 0, int(self.num_batches_tracked) if track else 0)
        w = None if self.weight is None else self.weight.double()
        b = None if self.bias is None else self.bias.double()
        res = forward(x.double().contiguous(), w, b, state, self.cfg, training=self.training,
                      grad_enabled=torch.is_grad_enabled(), knobs=self.knobs, in_dtype=x.dtype)
        if res.error:
            if self.cfg.eps <= 0.0:
                raise ValueError(f"batch_norm eps must be positive during training, but got {self.cfg.eps}")
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.size()}")
        if track:
            with torch.no_grad():
                self.running_mean.copy_(res.state.running_mean)
                self.running_var.copy_(res.state.running_var)
                self.num_batches_tracked.fill_(res.state.num_batches_tracked)
        fmt = torch.preserve_format
        if x.dim() in (4, 5) and not x.is_contiguous() and x.is_contiguous(
                memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d):
            fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        return res.y.to(x.dtype).contiguous(memory_format=fmt) if fmt != torch.preserve_format else res.y.to(x.dtype)

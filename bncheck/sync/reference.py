"""The float64 sync reference: BatchNorm over the concatenated batch of all ranks, with knobs, and the comparison.

``SyncKnobs()`` is torch semantics (BATCHNORM_SEMANTICS.md, "Synchronised BatchNorm"): every rank's output, input
gradient and running statistics equal single-process BatchNorm on the whole batch. Each flipped knob is a
hypothesis about a distributed bug, computed from the shards the ranks actually saw:

    var_merge   exact | mean-of-variances   global var = sum a_r (var_r + (mean_r - mean)^2)  |  sum a_r var_r
    weighting   count | unweighted          rank weights a_r = n_r / N  |  1 / R (means and variances)
    unbias      global | local              running_var correction n / (n - 1) with the global N | the rank's n_r
    grad_sums   reduced | local | local-mean   dx from sum dy, sum dy*xhat over all ranks / over the rank's shard
                                            (divided by N, as an autograd through a non-differentiable
                                            all_reduce gives; or by n_r)
    backward    formula | autograd          dx by the closed form with the statistics in use | the exact
                                            derivative of the (knobbed) forward; identical under torch knobs
    variance    two-pass | one-pass         a stable variance | E[x^2] - E[x]^2 from all-reduced sums of x and x^2,
                                            emulated in the input dtype (``one_pass``); with var_merge=
                                            mean-of-variances each rank's E_r[x^2] - E_r[x]^2, merged by a_r
    unbias      ... | none                  (also) running_var updated with the biased variance

``track_running_stats=False``: batch statistics in every mode and no running statistics (none is compared). In
eval mode two conventions are accepted, whichever is closer: the statistics of the whole batch (single-process
BatchNorm on the concatenated batch) or each rank's own shard (``torch.nn.SyncBatchNorm`` does not synchronise in
eval mode: "Don't sync batchnorm stats in inference mode"; offered only where every rank has more than one value
per channel, as torch needs).

What is compared, for every rank r and step (step-local: each rank's running statistics before a step are the
ones it reported, so a divergence is pinned to the step that made it):

* output, input gradient: rank r's slice of the global result;
* running_mean, running_var, num_batches_tracked: on every rank (they must agree with the global update);
* weight/bias gradients: torch.nn.SyncBatchNorm leaves each rank its *local* contribution (sum over its shard of
  dy * xhat, dy, with the global statistics) and data parallelism (DDP) all-reduces them. Either convention is
  accepted: every rank holds its local contribution (so the sum over ranks is the global gradient), or every rank
  already holds the global gradient. Anything else is a discrepancy.

Budgets come from ``bncheck.budget`` with the *global* reduction size N (g(N) = 1 + log2(1 + N) covers the
cross-rank merge, itself a reduction over R <= N terms) and the global statistics' conditioning.

Under ``variance="one-pass"`` the implementation's own variance v' may differ from the emulated v by
delta = K g(N) * allowance (``one_pass``: the accumulated roundoff of sums in an unknown order, as
``oracle.naive_variance`` allows for one process). Where delta is comparable to v the first-order term of
``budget`` (d = var_err / (2 s^2)) no longer bounds what a normaliser s' = sqrt(v' + eps) does, so ``Spread``
derives the exact interval: rho = s / s' lies in [s / sqrt(v + delta + eps), s / sqrt(max(v - delta, 0) + eps)];
the output, xhat and dweight scale by rho (error |rho - 1| |value|) and dx = rho w/s (dy - mean dy - rho^2 xhat
mean(dy xhat)) by at most |rho^3 - 1| (|dx| + 2 |w|/s |xhat| mean|dy xhat|). Each bound is handed to ``budget``
as the var_err whose first-order term equals it; the budget's other terms (the mean's error, the roundings) are
divided by s' rather than s, so they grow by rho (rho^3 for dx) and are multiplied by it. Where
v - delta + eps <= 0 the implementation's variance may be negative: a non-finite value in that channel is what one
that does not clamp it gives, and is accepted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

import torch

from .. import budget as B
from ..compare import Comparison, _channel_values, _count, _values
from ..scenario import DTYPES

FIELDS = ("output", "dx", "dweight", "dbias", "running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class SyncKnobs:
    var_merge: str = "exact"
    weighting: str = "count"
    unbias: str = "global"           # global | local | none
    grad_sums: str = "reduced"
    backward: str = "formula"
    variance: str = "two-pass"       # two-pass | one-pass
    counter: str = "torch"           # torch (+1 a training step) | frozen: num_batches_tracked never counts

    def flipped(self) -> dict:
        base = SyncKnobs()
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != getattr(base, f.name)}

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.flipped().items()) or "torch semantics"


TORCH_SYNC = SyncKnobs()


@dataclass(frozen=True)
class SyncScenario:
    """One distributed test case: the shards of each rank, the module configuration and the step sequence."""
    shards: tuple = (2, 2)            # local batch size of each rank; world size = len(shards)
    channels: int = 3
    spatial: tuple = ()               # input rank = 2 + len(spatial)
    dtype: str = "float32"            # input, parameter and buffer dtype
    steps: tuple = (True,)            # True: a train step, False: an eval step (each with backward)
    momentum: float | None = 0.1
    eps: float = 1e-5
    affine: bool = True
    offset: float = 0.0               # channel mean magnitude (large-offset inputs when >> 1)
    rank_shift: float = 0.0           # each rank's mean shifted by this many channel standard deviations
    seed: int = 0
    device: str = field(default="cpu", compare=False)
    track_running_stats: bool = True

    def __post_init__(self):
        if not self.shards or any(n < 0 for n in self.shards):
            raise ValueError(f"SyncScenario.shards={self.shards}: one non-negative batch size per rank")
        if len(self.spatial) > 3:
            raise ValueError(f"SyncScenario.spatial={self.spatial}: at most 3 spatial axes (input rank 5)")
        if self.dtype not in DTYPES:
            raise ValueError(f"SyncScenario.dtype={self.dtype!r}: one of {list(DTYPES)}")

    @property
    def world_size(self) -> int:
        return len(self.shards)

    @property
    def rank(self) -> int:
        return 2 + len(self.spatial)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def count(self, r: int | None = None) -> int:
        """Values per channel on rank r (or over all ranks)."""
        n = sum(self.shards) if r is None else self.shards[r]
        return n * math.prod(self.spatial)

    def shape(self, r: int | None = None) -> tuple:
        return (sum(self.shards) if r is None else self.shards[r], self.channels) + tuple(self.spatial)

    def spec_kwargs(self) -> dict:
        return dict(num_features=self.channels, ndim=self.rank, eps=self.eps, momentum=self.momentum,
                    affine=self.affine, track_running_stats=self.track_running_stats)

    def facets(self) -> dict:
        """What a scope can say about this scenario (``bncheck.scope``): one value per facet of ``sync.facets``."""
        from .facets import FACETS
        return {name: f.read(self) for name, f in FACETS.items()}

    def describe(self) -> str:
        steps = " ".join("train" if s else "eval" for s in self.steps)
        extra = (f" offset={self.offset:g}" if self.offset else "") + \
            (f" rank_shift={self.rank_shift:g}" if self.rank_shift else "") + \
            (" track_running_stats=False" if not self.track_running_stats else "")
        return (f"world size {self.world_size}, shards {tuple(self.shards)} (global batch {sum(self.shards)}), "
                f"input {self.shape()} {self.dtype} momentum={self.momentum} eps={self.eps:g} affine={self.affine} "
                f"steps=[{steps}]{extra}")


@dataclass
class SyncData:
    xs: list            # per step: global input, float64 values exactly representable in the dtype
    dys: list
    weight: torch.Tensor
    bias: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor


def shard(sc: SyncScenario, t: torch.Tensor, r: int) -> torch.Tensor:
    """Rank r's slice (along the batch axis) of a global tensor."""
    start = sum(sc.shards[:r])
    return t[start:start + sc.shards[r]]


def materialize(sc: SyncScenario) -> SyncData:
    g = torch.Generator().manual_seed(sc.seed)
    c, dt = sc.channels, sc.torch_dtype
    view = (1, c) + (1,) * len(sc.spatial)

    def rand(*s):
        return torch.rand(*s, generator=g, dtype=torch.float64)

    def randn(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64)

    sign = torch.where(rand(c) < 0.5, -1.0, 1.0)
    mu = sign * sc.offset * (0.5 + 0.5 * rand(c)) if sc.offset else 0.5 * randn(c)
    sigma = 0.5 + 1.5 * rand(c)
    xs, dys = [], []
    for _ in sc.steps:
        parts = []
        for r in range(sc.world_size):
            shift = sc.rank_shift * sigma * randn(c)
            z = randn(*sc.shape(r))
            parts.append((mu + shift).view(view) + sigma.view(view) * z)
        xs.append(torch.cat(parts).to(dt).double())
        dys.append(randn(*sc.shape()).to(dt).double())
    weight = (sign * (0.5 + rand(c))).to(dt).double()
    bias = randn(c).to(dt).double()
    running_mean = (0.5 * randn(c)).to(dt).double()
    running_var = (0.5 + 1.5 * rand(c)).to(dt).double()
    return SyncData(xs, dys, weight, bias, running_mean, running_var)


# -- the reference ----------------------------------------------------------------------------------------------

def _chan(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(0, 1).reshape(t.shape[1], -1)


def _v(t: torch.Tensor, rank: int) -> torch.Tensor:
    return t.view((1, -1) + (1,) * (rank - 2))


def merge(xs: list, knobs: SyncKnobs, dtype: torch.dtype = torch.float64):
    """Global (mean, biased var, one-pass allowance or None) per channel from the rank shards, under the knobs
    (differentiable). ``dtype``: the input dtype, where ``variance="one-pass"`` rounds."""
    counts = [_chan(x).shape[1] for x in xs]
    total = sum(counts)
    live = [(x, n) for x, n in zip(xs, counts) if n]
    means = [_chan(x).mean(1) for x, _ in live]
    a = [n / total if knobs.weighting == "count" else 1.0 / len(live) for _, n in live]
    if knobs.variance == "one-pass":
        return one_pass([x for x, _ in live], a, dtype, knobs.var_merge)
    vars_ = [((_chan(x) - m[:, None]) ** 2).mean(1) for (x, _), m in zip(live, means)]
    mean = sum(ai * m for ai, m in zip(a, means))
    var = sum(ai * v for ai, v in zip(a, vars_))
    if knobs.var_merge == "exact":
        var = var + sum(ai * (m - mean) ** 2 for ai, m in zip(a, means))
    return mean, var, None


def one_pass(xs: list, a: list, dtype: torch.dtype, var_merge: str = "exact"):
    """E[x^2] - E[x]^2 from the ranks' moments merged with weights ``a`` (all-reduced sums of x and x^2), each
    mean, the square of the mean and the difference rounded to ``dtype``, as ``oracle.naive_variance`` emulates
    one process (with count weights it is exactly that on the concatenated batch). With
    ``var_merge="mean-of-variances"`` each rank takes its own E_r[x^2] - E_r[x]^2 (rounded the same way) and the
    variances are merged with weights ``a``: the spread of the rank means is lost, as with a stable variance (without
    this the knob would change nothing under a one-pass variance, and a diagnosis could credit it for free). The
    variance is clamped at 0, as implementations that take this shortcut do (one that does not: see ``Spread``).

    Returns (mean, var, allowance): the implementation's summation order is unknown, so its variance may differ
    from this one by the roundoff of those sums, u * (E[x^2] + 2 |E[x]| E|x| + |var|) per channel (per rank,
    merged with weights ``a``, for a mean of variances; times the reduction's growth, applied by ``Spread``);
    relative to var that is u * (mean/std)^2, the defect itself."""
    def rnd(t):
        return t.to(dtype).to(torch.float64)
    mean = rnd(sum(ai * _chan(x).mean(1) for ai, x in zip(a, xs)))
    if var_merge == "exact":
        sq = rnd(sum(ai * (_chan(x) ** 2).mean(1) for ai, x in zip(a, xs)))
        var = rnd(sq - rnd(mean * mean))
        with torch.no_grad():
            abs_mean = sum(ai * _chan(x).abs().mean(1) for ai, x in zip(a, xs))
            allowance = B.u(dtype) * (sq.detach() + 2 * mean.detach().abs() * abs_mean + var.detach().abs())
        return mean, var.clamp_min(0.0), allowance
    parts = []
    for x in xs:
        m, sq = rnd(_chan(x).mean(1)), rnd((_chan(x) ** 2).mean(1))
        parts.append((m, sq, rnd(sq - rnd(m * m)), _chan(x).abs().mean(1)))
    var = rnd(sum(ai * v for ai, (_, _, v, _) in zip(a, parts)))
    with torch.no_grad():
        allowance = B.u(dtype) * (sum(ai * (sq + 2 * m.abs() * am + v.abs()) for ai, (m, sq, v, am)
                                      in zip(a, [tuple(t.detach() for t in p) for p in parts])) + var.detach().abs())
    return mean, var.clamp_min(0.0), allowance


@dataclass
class Spread:
    """How far results normalised by a one-pass variance may legitimately be from the reference, per channel
    (module docstring): the var_err to hand ``budget`` for the output and dweight (``scale``), for dx
    (``grad``) and for the running variance (``running``); ``rho``, the largest s / s', by which every other
    term of those budgets grows too (the mean's error and the roundings are divided by s', not s: the output and
    dweight budgets are multiplied by rho, dx's by rho^3); and the channels where a non-finite value is accepted
    (``nonfinite_ok``)."""
    scale: torch.Tensor
    grad: torch.Tensor
    running: torch.Tensor
    rho: torch.Tensor
    nonfinite_ok: torch.Tensor

    @classmethod
    def of(cls, var: torch.Tensor, allowance: torch.Tensor, eps: float, n: int) -> "Spread":
        var = var.detach().clamp_min(0.0)
        kg = B.K * B.growth(n)
        delta = kg * allowance
        s2 = var + eps
        lo, hi = (var - delta).clamp_min(0.0) + eps, var + delta + eps
        rho_hi, rho_lo = torch.sqrt(s2 / lo.clamp_min(B.TINY)), torch.sqrt(s2 / hi)
        e1 = torch.maximum(rho_hi - 1, 1 - rho_lo)
        e3 = torch.maximum(rho_hi ** 3 - 1, 1 - rho_lo ** 3)
        return cls(2 * s2 * e1 / kg, 2 * s2 * e3 / kg, allowance, rho_hi, var - delta + eps <= 0)

    def grow(self, budget: torch.Tensor, power: int = 1) -> torch.Tensor:
        """``budget`` (a batch tensor, or one value per channel) with each channel's terms grown by rho**power."""
        r = self.rho ** power
        return budget * (r.view((1, -1) + (1,) * (budget.dim() - 2)) if budget.dim() >= 2 else r)


@dataclass
class Expected:
    """One rank's expected values for one step (float64), with per-element budgets."""
    values: dict = field(default_factory=dict)     # field -> tensor or int
    budgets: dict = field(default_factory=dict)    # field -> tensor
    reduced: dict = field(default_factory=dict)    # dweight/dbias under the 'already reduced' convention: (ref, bud)
    nonfinite_ok: torch.Tensor | None = None       # (C,) channels where a non-finite value is accepted (one-pass)


def step(sc: SyncScenario, x: torch.Tensor, dy: torch.Tensor, weight, bias, befores: list, train: bool,
         knobs: SyncKnobs = TORCH_SYNC) -> list[Expected]:
    """Every rank's expected results for one step. ``befores[r]`` = (running_mean, running_var, nbt) of rank r
    before the step (float64 tensors, int; not used without running statistics)."""
    R, rank, u = sc.world_size, sc.rank, B.u(sc.torch_dtype)
    xs = [shard(sc, x, r) for r in range(R)]
    dys = [shard(sc, dy, r) for r in range(R)]
    w = weight if sc.affine else None
    b = bias if sc.affine else None
    N = sc.count()
    out = [Expected() for _ in range(R)]
    spread = None
    if train or not sc.track_running_stats:        # batch statistics
        leaves = [t.clone().requires_grad_(knobs.backward == "autograd") for t in xs]
        with torch.enable_grad():
            mean, var, allowance = merge(leaves, knobs, sc.torch_dtype)
            invstd = torch.rsqrt(var + sc.eps)
            xhats = [(t - _v(mean, rank)) * _v(invstd, rank) for t in leaves]
            ys = [xh * _v(w, rank) + _v(b, rank) if sc.affine else xh for xh in xhats]
        if knobs.backward == "autograd":
            total = sum((y * d).sum() for y, d in zip(ys, dys))
            dxs = list(torch.autograd.grad(total, leaves)) if total.requires_grad else [torch.zeros_like(t) for t in xs]
        mean, var, invstd = mean.detach(), var.detach(), invstd.detach()
        xhats, ys = [t.detach() for t in xhats], [t.detach() for t in ys]
        if allowance is not None:
            spread = Spread.of(var, allowance, sc.eps, N)
        if knobs.backward != "autograd":
            dims = [0] + list(range(2, rank))
            loc = [(d.sum(dims), (d * xh).sum(dims)) for d, xh in zip(dys, xhats)]
            glob = (sum(s for s, _ in loc), sum(s for _, s in loc))
            scale = invstd * (w if w is not None else 1.0)
            dxs = []
            for r in range(R):
                sums, cnt = {"reduced": (glob, N), "local": (loc[r], N),
                             "local-mean": (loc[r], max(sc.count(r), 1))}[knobs.grad_sums]
                dxs.append(_v(scale, rank) * (dys[r] - _v(sums[0] / cnt, rank) - xhats[r] * _v(sums[1] / cnt, rank)))
        centers = [mean] * R
        variances = [var] * R
        yg, dxg = torch.cat(ys), torch.cat(dxs)
        bud_y = B.output(x, yg, mean, var, sc.eps, w, b, N, u, u, var_err=spread and spread.scale)
        bud_dx = B.input_grad(x, dy, dxg, mean, var, sc.eps, w, N, u, u, True, var_err=spread and spread.grad)
        if spread is not None:
            bud_y, bud_dx = spread.grow(bud_y), spread.grow(bud_dx, 3)
        for r in range(R):
            out[r].values["output"], out[r].values["dx"] = ys[r], dxs[r]
            out[r].budgets["output"] = shard(sc, bud_y, r)
            out[r].budgets["dx"] = shard(sc, bud_dx, r)
            out[r].nonfinite_ok = spread and spread.nonfinite_ok
            if not (train and sc.track_running_stats):
                continue
            rm, rv, nbt = befores[r]
            f = sc.momentum if sc.momentum is not None else 1.0 / (nbt + 1)
            n_unb = {"global": N, "local": sc.count(r), "none": None}[knobs.unbias]
            unb = var if n_unb is None else var * n_unb / (n_unb - 1) if n_unb > 1 else var * math.inf
            new_rm, new_rv = (1 - f) * rm + f * mean, (1 - f) * rv + f * unb
            out[r].values.update(running_mean=new_rm, running_var=new_rv,
                                 num_batches_tracked=nbt + (0 if knobs.counter == "frozen" else 1))
            out[r].budgets["running_mean"] = B.running_mean(rm, new_rm, mean, var, f, N, u, u)
            out[r].budgets["running_var"] = B.running_var(rv, new_rv, mean, var, f, N, u, u,
                                                          var_err=spread and spread.running)
    else:
        centers, variances = [], []
        for r in range(R):
            rm, rv, nbt = befores[r]
            invstd = torch.rsqrt(rv + sc.eps)
            xh = (xs[r] - _v(rm, rank)) * _v(invstd, rank)
            y = xh * _v(w, rank) + _v(b, rank) if sc.affine else xh
            dxr = dys[r] * _v(invstd * (w if w is not None else 1.0), rank)
            out[r].values.update(output=y, dx=dxr, running_mean=rm, running_var=rv, num_batches_tracked=nbt)
            out[r].budgets["output"] = B.output(xs[r], y, rm, rv, sc.eps, w, b, 1, u, u)
            out[r].budgets["dx"] = B.input_grad(xs[r], dys[r], dxr, rm, rv, sc.eps, w, 1, u, u, False)
            out[r].budgets["running_mean"] = B.running_mean(rm, rm, rm, rv, 0.0, 1, u, u)
            out[r].budgets["running_var"] = B.running_var(rv, rv, rm, rv, 0.0, 1, u, u)
            centers.append(rm)
            variances.append(rv)
    if sc.affine:
        dims = [0] + list(range(2, rank))
        for r in range(R):
            s = torch.rsqrt(variances[r] + sc.eps)
            xh = (xs[r] - _v(centers[r], rank)) * _v(s, rank)
            dw, db = (dys[r] * xh).sum(dims), dys[r].sum(dims)
            out[r].values.update(dweight=dw, dbias=db)
            out[r].budgets["dweight"] = B.weight_grad(xs[r], dys[r], dw, centers[r], variances[r], sc.eps, N, u, u,
                                                      var_err=spread and spread.scale)
            if spread is not None:
                out[r].budgets["dweight"] = spread.grow(out[r].budgets["dweight"])
            out[r].budgets["dbias"] = B.bias_grad(dys[r], db, N, u, u)
        _reduce(out)
    return out


def _reduce(out: list):
    """dweight/dbias under the 'already reduced' convention: the sum over ranks, with the sum of the budgets."""
    for key in ("dweight", "dbias"):
        ref = sum(o.values[key] for o in out)
        bud = sum(o.budgets[key] for o in out)
        for o in out:
            o.reduced[key] = (ref, bud)


def torch_raises_at(sc: SyncScenario) -> int | None:
    """The step (1-based) at which ``torch.nn.SyncBatchNorm`` raises on this scenario, or None: an untracked eval
    step where a rank has fewer than 2 values per channel (it normalises each shard alone there, module docstring,
    and torch's BatchNorm raises on one value per channel). An implementation that raises there too follows torch;
    the whole-batch convention, which runs, is accepted as well."""
    if sc.track_running_stats or all(sc.count(r) >= 2 for r in range(sc.world_size)):
        return None
    return next((k for k, train in enumerate(sc.steps, 1) if not train), None)


def step_local(sc: SyncScenario, x: torch.Tensor, dy: torch.Tensor, weight, bias,
               knobs: SyncKnobs = TORCH_SYNC) -> list[Expected] | None:
    """An untracked eval step as ``torch.nn.SyncBatchNorm`` computes it: every rank normalises its shard with that
    shard's own batch statistics (module docstring). None where a rank has fewer than 2 values per channel (torch
    raises there)."""
    if any(sc.count(r) < 2 for r in range(sc.world_size)):
        return None
    out = []
    for r in range(sc.world_size):
        alone = replace(sc, shards=(sc.shards[r],))
        out += step(alone, shard(sc, x, r), shard(sc, dy, r), weight, bias, [None], False, knobs)
    if sc.affine:
        _reduce(out)
    return out


def expectations(sc: SyncScenario, x, dy, weight, bias, befores: list, train: bool,
                 knobs: SyncKnobs = TORCH_SYNC) -> list[list[Expected]]:
    """The accepted conventions for one step, each every rank's expected results (one, or two for an untracked
    eval step)."""
    out = [step(sc, x, dy, weight, bias, befores, train, knobs)]
    if not train and not sc.track_running_stats:
        local = step_local(sc, x, dy, weight, bias, knobs)
        if local is not None:
            out.append(local)
    return out


# -- comparison ---------------------------------------------------------------------------------------------------

@dataclass
class SyncDiscrepancy:
    step: int
    rank: int
    field: str
    ratio: float
    detail: str

    def where(self, sc: SyncScenario) -> str:
        mode = "train" if sc.steps[self.step] else "eval"
        return f"{self.field} on rank {self.rank} after step {self.step + 1} ({mode})"


@dataclass
class SyncComparison:
    discrepancies: list = field(default_factory=list)
    ratios: dict = field(default_factory=dict)       # field -> worst ratio over ranks and steps
    grad_convention: str = "local"                   # weight/bias grads: local contributions | already reduced

    def failing(self, owned) -> list:
        return [d for d in self.discrepancies if d.field in owned]

    def worst(self, owned) -> float:
        return max((self.ratios.get(f, 0.0) for f in owned), default=0.0)


def _t(a):
    """A rank's value as a tensor; what cannot be one is passed on as it is (compare reports it)."""
    try:
        return None if a is None else torch.as_tensor(a)
    except Exception:
        return a


def _excused(got, ref, ok):
    """``got`` with non-finite values replaced by the reference in the channels ``ok`` (C,) excuses (dim 1 of a
    batch tensor, dim 0 of a per-channel one)."""
    if ok is None or not bool(ok.any()) or not isinstance(got, torch.Tensor) or not isinstance(ref, torch.Tensor) \
            or got.shape != ref.shape or got.dim() == 0:
        return got
    mask = ok.view((1, -1) + (1,) * (got.dim() - 2)) if got.dim() >= 2 else ok
    if mask.numel() != (got.shape[1] if got.dim() >= 2 else got.shape[0]):
        return got
    return torch.where(mask & ~torch.isfinite(got), ref.to(got.dtype), got)


def _cmp(k: int, r: int, name: str, got, ref, bud, dtype) -> tuple[float, list]:
    if bud is not None:            # an infinite reference (n / (n - 1) with n = 1) must be met exactly, not by inf/inf
        bud = torch.where(torch.isfinite(bud), bud, torch.full_like(bud, B.TINY))
    tmp = Comparison()
    _values(tmp, k, name, got, ref, bud, dtype)
    return tmp.ratios.get(name, 0.0), [SyncDiscrepancy(k, r, name, d.ratio, d.detail) for d in tmp.discrepancies]


@dataclass
class _Step:
    """One step compared under one convention: per-field worst ratios, discrepancies, and the weight/bias
    gradients under both of their conventions."""
    ratios: dict = field(default_factory=dict)
    discrepancies: list = field(default_factory=list)
    grads: dict = field(default_factory=dict)        # (convention, key) -> worst ratio
    grad_found: dict = field(default_factory=lambda: {"local": [], "reduced": []})

    @property
    def worst(self) -> float:
        """The worst ratio, the weight/bias gradients under their closer convention."""
        grads = min((max(v for (c, _), v in self.grads.items() if c == conv) for conv in ("local", "reduced")),
                    default=0.0) if self.grads else 0.0
        return max(list(self.ratios.values()) + [grads, 0.0])


def _compare_step(sc: SyncScenario, k: int, observed: list, exp: list) -> _Step:
    out, dt = _Step(), sc.torch_dtype
    fields_ = ["output", "dx"] + (["running_mean", "running_var"] if sc.track_running_stats else [])
    for r in range(sc.world_size):
        got, e = observed[r]["steps"][k], exp[r]
        after = got["after"]
        raw = {"output": got["y"], "dx": got["dx"], "running_mean": after["running_mean"],
               "running_var": after["running_var"]}
        for name in fields_:
            g = _excused(_t(raw[name]), e.values[name], e.nonfinite_ok)
            ratio, ds = _cmp(k, r, name, g, e.values[name], e.budgets[name], dt)
            out.ratios[name] = max(out.ratios.get(name, 0.0), ratio)
            out.discrepancies += ds
        nbt = after["num_batches_tracked"]
        if sc.track_running_stats and nbt is not None and _count(nbt) != e.values["num_batches_tracked"]:
            out.discrepancies.append(SyncDiscrepancy(k, r, "num_batches_tracked", math.inf,
                                                     f"num_batches_tracked {nbt}, expected "
                                                     f"{e.values['num_batches_tracked']}"))
            out.ratios["num_batches_tracked"] = math.inf
        if sc.affine:
            for key in ("dweight", "dbias"):
                for conv, (ref, bud) in (("local", (e.values[key], e.budgets[key])), ("reduced", e.reduced[key])):
                    g = _excused(_t(got[key]), ref, e.nonfinite_ok)
                    ratio, ds = _cmp(k, r, key, g, ref, bud, dt)
                    out.grads[conv, key] = max(out.grads.get((conv, key), 0.0), ratio)
                    out.grad_found[conv] += [replace(d, detail=d.detail + f" (expected this rank's {conv} "
                                                     f"{'contribution' if conv == 'local' else 'global sum'})")
                                             for d in ds]
    return out


def compare(sc: SyncScenario, data: SyncData, observed: list, knobs: SyncKnobs = TORCH_SYNC) -> SyncComparison:
    """``observed[r]`` is rank r's result (``ranks.run_shard``); compared step by step, rank by rank (an untracked
    eval step under whichever accepted convention is closer)."""
    cmp = SyncComparison()
    R = sc.world_size
    own = [(data.running_mean, data.running_var, 0) for _ in range(R)]
    convention = {(c, key): 0.0 for c in ("local", "reduced") for key in ("dweight", "dbias")}
    found = {"local": [], "reduced": []}
    for k, train in enumerate(sc.steps):
        befores = []
        for r in range(R):
            bf = observed[r]["steps"][k]["before"]
            rm, rv = (_channel_values(_t(bf[key]), sc.channels) for key in ("running_mean", "running_var"))
            nbt = _count(bf["num_batches_tracked"])
            befores.append((own[r][0] if rm is None else rm, own[r][1] if rv is None else rv,
                            own[r][2] if nbt is None else nbt))
        candidates = expectations(sc, data.xs[k], data.dys[k], data.weight, data.bias, befores, train, knobs)
        done = [(_compare_step(sc, k, observed, exp), exp) for exp in candidates]
        st, exp = min(done, key=lambda d: d[0].worst)
        for name, ratio in st.ratios.items():
            cmp.ratios[name] = max(cmp.ratios.get(name, 0.0), ratio)
        cmp.discrepancies += st.discrepancies
        for key, ratio in st.grads.items():
            convention[key] = max(convention[key], ratio)
        for conv in found:
            found[conv] += st.grad_found[conv]
        if sc.track_running_stats:
            own = [(e.values["running_mean"], e.values["running_var"], e.values["num_batches_tracked"])
                   for e in exp]
    if sc.affine:
        worst = {c: max(convention[c, "dweight"], convention[c, "dbias"]) for c in ("local", "reduced")}
        conv = "reduced" if worst["reduced"] < worst["local"] else "local"
        cmp.grad_convention = conv
        cmp.discrepancies += found[conv]
        for key in ("dweight", "dbias"):
            cmp.ratios[key] = convention[conv, key]
    return cmp

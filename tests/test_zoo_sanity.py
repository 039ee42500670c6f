"""The zoo is what it claims to be, checked against torch directly (no bncheck checking code involved).

* every correct variant agrees with ``torch.nn.BatchNorm{1,2,3}d`` (outputs, input and parameter gradients, running
  statistics, ``num_batches_tracked``, dtype, memory format, errors) over ranks, dtypes and options;
* every mutant differs from torch where its defect must show (the test asserts the specific difference), and agrees
  with torch everywhere in a scenario where the defect cannot show, so it has only that one defect;
* the plugin file registers all of them with the catalog ids they declare.

Tolerance (``budget``). Two stable implementations of y = (x - mean) / sqrt(var + eps) * weight + bias differ only
by rounding, so a fixed rtol/atol is not the right model. With u the unit roundoff of the compute dtype (float32
for float16/bfloat16 input), a reduction of n terms computed in another order (pairwise, blocked, or Welford over at
most 32 sequential steps per lane) differs by at most about (log2 n + 32) * u * sum|terms|, and the few elementwise
operations around it add a few u more. We therefore allow

    |got - torch| <= K * u * S + 4 * u_out * max|torch|,    K = 4 * (log2 n + 34)

where S is the magnitude the rounding errors scale with, computed in float64 from the step's data (so the input's
conditioning |mean|/std enters through S, not through a hand-picked constant):

* output:           S = max|weight| * max_c((max|x_c| + |mean_c|) * invstd_c) + max|bias|
* input gradient:   S = max|weight| * max(invstd) * max|dy| * (2 + c^2), c the same conditioned max|x_hat| (training;
                    in eval the statistics are constants and S = max|weight| * max(invstd) * max|dy|)
* weight gradient:  S = max_c sum(|dy_c| * c_c);  bias gradient: S = max_c sum|dy_c|
* running stats:    S = max|old| + max|batch mean| + max(unbiased batch var)

The last term covers float16/bfloat16 results (u_out = 0 when the output dtype is the compute dtype). The zoo rounds
its float32 result once (error <= u_out * |value|), but torch's CPU kernels are not correctly rounded in these
dtypes: its input gradient was measured up to 1.65 * u_out * max|dx| from the exact float64 gradient (about one
unit in the last place of the largest element, not of each element), its output up to 0.97 * u_out * max|y|. Their
difference is therefore bounded by 4 * u_out * max|torch|, two units in the last place of the largest element.
torch's bfloat16 channels-last backward also reduces the parameter gradients at bfloat16 precision (bias gradient
measured up to 0.42 * u_in * sum|dy| from the exact sum), so for float16/bfloat16 input the weight and bias gradients
get an extra 2 * u_in * S.
The factor 4 in K is headroom over the measured float32 differences (a few u * S); every mutant's defect is
orders of magnitude above this budget.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bncheck                                   # noqa: E402
from bncheck.catalog import CATALOG               # noqa: E402
from zoo import mutants as M                      # noqa: E402
from zoo.mutants import MUTANTS, findings_of      # noqa: E402
from zoo.reference import CORRECT, LOW_PRECISION, ScratchBN   # noqa: E402

PLUGIN_FILE = Path(__file__).resolve().parent / "zoo" / "plugins.py"
TORCH_BN = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}


# -- scenarios ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cfg:
    ndim: int = 4
    channels: int = 3
    batch: int = 4
    spatial: int = 3
    eps: float = 1e-5
    momentum: float | None = 0.1
    affine: bool = True
    track: bool = True
    dtype: torch.dtype = torch.float32          # parameters and buffers
    xdtype: torch.dtype | None = None           # input (None: same as dtype)
    channels_last: bool = False
    offset: float = 0.5                         # input = offset + scale * randn (+ per-channel shift)
    scale: float = 1.5
    random_state: bool = False                  # start from random running statistics instead of 0 / 1
    # steps: (mode, grad) with mode "train" | "eval"; grad: input requires grad and a backward pass is run
    steps: tuple = (("train", True), ("train", True), ("eval", True))
    batches: tuple = ()                         # per-step batch sizes overriding ``batch`` (e.g. 0 for an empty batch)

    def shape(self, step: int) -> tuple[int, ...]:
        n = self.batches[step] if step < len(self.batches) else self.batch
        return (n, self.channels) + (self.spatial,) * (self.ndim - 2)

    @property
    def input_dtype(self) -> torch.dtype:
        return self.xdtype or self.dtype


def build_pair(cls, cfg: Cfg, seed: int = 0):
    """A torch module and a zoo module of class ``cls`` with identical parameters and buffers."""
    kw = dict(eps=cfg.eps, momentum=cfg.momentum, affine=cfg.affine, track_running_stats=cfg.track, dtype=cfg.dtype)
    ref, mod = TORCH_BN[cfg.ndim](cfg.channels, **kw), cls(cfg.channels, **kw)
    g = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        if cfg.affine:
            w = 1 + 0.5 * torch.randn(cfg.channels, generator=g)
            b = torch.randn(cfg.channels, generator=g)
            for m in (ref, mod):
                m.weight.copy_(w)
                m.bias.copy_(b)
        if cfg.track and cfg.random_state:
            rm = torch.randn(cfg.channels, generator=g)
            rv = 0.5 + torch.rand(cfg.channels, generator=g)
            for m in (ref, mod):
                m.running_mean.copy_(rm)
                m.running_var.copy_(rv)
    return ref, mod


def make_input(cfg: Cfg, step: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 100 + step)
    shape = cfg.shape(step)
    shift = torch.randn(cfg.channels, generator=g).reshape((1, -1) + (1,) * (cfg.ndim - 2))
    x = (cfg.offset + shift + cfg.scale * torch.randn(shape, generator=g)).to(cfg.input_dtype)
    if cfg.channels_last:
        x = x.to(memory_format=torch.channels_last if cfg.ndim == 4 else torch.channels_last_3d)
    return x


def upstream(y: torch.Tensor, cfg: Cfg, step: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 100 + step + 50)
    return torch.randn(y.shape, generator=g).to(y.dtype)


def _clone(t):
    return None if t is None else t.detach().clone()


@dataclass
class Record:
    x: torch.Tensor
    dy: torch.Tensor | None = None
    y: torch.Tensor | None = None
    x_grad: torch.Tensor | None = None
    w_grad: torch.Tensor | None = None
    b_grad: torch.Tensor | None = None
    state: dict = field(default_factory=dict)
    error: BaseException | None = None
    input_mutated: bool = False


def state_of(mod) -> dict:
    return {k: _clone(getattr(mod, k, None)) for k in ("running_mean", "running_var", "num_batches_tracked")}


def run(mod, cfg: Cfg, seed: int = 0) -> list[Record]:
    """Run the scenario's steps on ``mod``; every step sees the same inputs and upstream gradients."""
    records = []
    for i, (mode, grad) in enumerate(cfg.steps):
        x = make_input(cfg, i, seed)
        rec = Record(x=x)
        records.append(rec)
        xin = x.clone().requires_grad_(grad)
        pristine = xin.detach().clone()
        mod.train(mode == "train")
        for p in mod.parameters():
            p.grad = None
        try:
            with torch.set_grad_enabled(grad):
                y = mod(xin)
                rec.y = y.detach().clone()
                if grad:
                    rec.dy = upstream(y, cfg, i, seed)
                    y.backward(rec.dy)
        except Exception as e:   # compared with torch's behaviour by the caller
            rec.error = e
        rec.input_mutated = not torch.equal(xin.detach(), pristine)
        rec.x_grad = _clone(xin.grad)
        if cfg.affine:
            rec.w_grad, rec.b_grad = _clone(mod.weight.grad), _clone(mod.bias.grad)
        rec.state = state_of(mod)
    return records


# -- tolerance ----------------------------------------------------------------------------------------------------

def unit_roundoff(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in LOW_PRECISION else dtype


@dataclass
class Scales:
    n: int
    y: float
    dx: float
    dw: float
    db: float
    stats: float


def scales(rec: Record, prev_state: dict, cfg: Cfg, mode: str, weight, bias) -> Scales:
    x = rec.x.double()
    dims = (0,) + tuple(range(2, x.dim()))
    n = x.numel() // x.shape[1]
    if n == 0:      # nothing to round: outputs are empty and the state must be unchanged, exactly
        return Scales(n=0, y=0.0, dx=0.0, dw=0.0, db=0.0, stats=0.0)
    use_batch = mode == "train" or not cfg.track
    if use_batch:
        mean, var = x.mean(dims), x.var(dims, unbiased=False)
    else:
        mean, var = prev_state["running_mean"].double(), prev_state["running_var"].double()
    invstd = (var + cfg.eps).rsqrt()
    wmax = weight.double().abs().max().item() if weight is not None else 1.0
    bmax = bias.double().abs().max().item() if bias is not None else 0.0
    xabs = x.abs().amax(dims)
    cond = (xabs + mean.abs()) * invstd                 # conditioned max|x_hat| per channel
    s_y = wmax * cond.max().item() + bmax
    s_dx = s_dw = s_db = 0.0
    if rec.dy is not None:
        dy = rec.dy.double().abs()
        s_dx = wmax * invstd.max().item() * dy.max().item() * ((2 + cond.max().item() ** 2) if use_batch else 1)
        s_dw = (dy.sum(dims) * cond).max().item()
        s_db = dy.sum(dims).max().item()
    s_stats = 2.0
    if prev_state.get("running_mean") is not None:
        unbiased = x.var(dims, unbiased=True) if n > 1 else x.new_zeros(1)
        s_stats = (prev_state["running_mean"].double().abs().max() + prev_state["running_var"].double().abs().max()
                   + mean.abs().max() + unbiased.max()).item()
    return Scales(n=n, y=s_y, dx=s_dx, dw=s_dw, db=s_db, stats=s_stats)


def assert_budget(got, ref, scale: float, n: int, cdtype: torch.dtype, what: str, extra: float = 0.0):
    assert got is not None and ref is not None, f"{what}: got {got is not None}, torch {ref is not None}"
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)}, torch {tuple(ref.shape)}"
    assert got.dtype == ref.dtype, f"{what}: dtype {got.dtype}, torch {ref.dtype}"
    if ref.numel() == 0:
        return
    k = 4 * (math.log2(max(n, 2)) + 34)
    u_out = unit_roundoff(ref.dtype) if ref.dtype != cdtype else 0.0
    allowed = k * unit_roundoff(cdtype) * scale + 4 * u_out * ref.double().abs().max().item() + extra
    diff = (got.double() - ref.double()).abs()
    finite = torch.isfinite(ref.double())
    assert torch.equal(torch.isfinite(got.double()), finite), f"{what}: non-finite values where torch has none"
    excess = torch.where(finite, diff - allowed, torch.zeros_like(diff)).flatten()
    worst = int(excess.argmax())
    assert (excess <= 0).all(), (f"{what}: max |diff| {diff.flatten()[worst].item():.3g} at flat index {worst} "
                                 f"exceeds the budget {allowed:.3g}")


def memory_format_of(t: torch.Tensor) -> str:
    if t.is_contiguous():
        return "contiguous"
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return "channels_last"
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return "channels_last_3d"
    return "strided"


def assert_agrees(cls, cfg: Cfg, seed: int = 0):
    """``cls`` behaves like torch, step by step, throughout the scenario."""
    ref_mod, mod = build_pair(cls, cfg, seed)
    weight, bias = (ref_mod.weight.detach().clone(), ref_mod.bias.detach().clone()) if cfg.affine else (None, None)
    prev = state_of(ref_mod)
    got_prev = state_of(mod)
    assert all(torch.equal(prev[k], got_prev[k]) if prev[k] is not None else got_prev[k] is None for k in prev)
    refs, gots = run(ref_mod, cfg, seed), run(mod, cfg, seed)
    cdtype = compute_dtype(cfg.input_dtype)
    stats_scale = 0.0       # the running statistics of both start out equal
    for i, ((mode, _), r, g) in enumerate(zip(cfg.steps, refs, gots)):
        where = f"step {i} ({mode}) {cfg}"
        if r.error is not None or g.error is not None:
            assert type(g.error) is type(r.error) and str(g.error) == str(r.error), \
                f"{where}: error {g.error!r}, torch {r.error!r}"
        else:
            s = scales(r, prev, cfg, mode, weight, bias)
            if s.n == 0:    # an empty batch leaves the running statistics exactly as they were
                for key in ("running_mean", "running_var"):
                    if g.state[key] is not None:
                        assert torch.equal(g.state[key], got_prev[key]), f"{where}: {key} changed on an empty batch"
            else:
                stats_scale = max(stats_scale, s.stats)
            assert memory_format_of(g.y) == memory_format_of(r.y), f"{where}: output memory format"
            assert_budget(g.y, r.y, s.y, s.n, cdtype, f"{where} output")
            assert not g.input_mutated, f"{where}: input modified in place"
            if r.dy is not None:
                assert_budget(g.x_grad, r.x_grad, s.dx, s.n, cdtype, f"{where} input grad")
                if cfg.affine:
                    pdtype = compute_dtype(cfg.dtype)
                    u_in = unit_roundoff(cfg.input_dtype) if cfg.input_dtype in LOW_PRECISION else 0.0
                    assert_budget(g.w_grad, r.w_grad, s.dw, s.n, pdtype, f"{where} weight grad", 2 * u_in * s.dw)
                    assert_budget(g.b_grad, r.b_grad, s.db, s.n, pdtype, f"{where} bias grad", 2 * u_in * s.db)
            for key in ("running_mean", "running_var"):
                if r.state[key] is None:
                    assert g.state[key] is None, f"{where}: {key} should be None"
                else:
                    assert_budget(g.state[key], r.state[key], stats_scale, s.n, compute_dtype(cfg.dtype),
                                  f"{where} {key}")
        nbt_r, nbt_g = r.state["num_batches_tracked"], g.state["num_batches_tracked"]
        assert (nbt_g is None) == (nbt_r is None), f"{where}: num_batches_tracked presence"
        if nbt_r is not None:
            assert nbt_g.dtype == nbt_r.dtype and nbt_g.shape == nbt_r.shape and int(nbt_g) == int(nbt_r), \
                f"{where}: num_batches_tracked {nbt_g}, torch {nbt_r}"
        prev, got_prev = r.state, g.state
    assert list(mod.state_dict()) == list(ref_mod.state_dict()), "state_dict keys differ from torch's"
    for name, buf in mod.named_buffers():
        assert buf.grad_fn is None and not buf.requires_grad, f"buffer {name} carries autograd history"


def trace_pair(cls, cfg: Cfg, seed: int = 0):
    ref_mod, mod = build_pair(cls, cfg, seed)
    return ref_mod, mod, run(ref_mod, cfg, seed), run(mod, cfg, seed)


# -- the correct variants -----------------------------------------------------------------------------------------

TRAIN_EVAL_NOGRAD = (("train", True), ("train", False), ("eval", True), ("eval", False))

CORRECT_CFGS = {
    "rank2": Cfg(ndim=2, batch=16, steps=TRAIN_EVAL_NOGRAD),
    "rank3": Cfg(ndim=3, spatial=5),
    "rank4": Cfg(ndim=4, steps=TRAIN_EVAL_NOGRAD),
    "rank5": Cfg(ndim=5, spatial=2),
    "channels_last": Cfg(ndim=4, channels_last=True),
    "channels_last_3d": Cfg(ndim=5, spatial=2, channels_last=True),
    "half-mixed": Cfg(ndim=4, xdtype=torch.float16),
    "bfloat16-mixed": Cfg(ndim=4, xdtype=torch.bfloat16, channels_last=True),
    "half-params": Cfg(ndim=3, dtype=torch.float16, spatial=4),
    "float64": Cfg(ndim=4, dtype=torch.float64),
    "float64-params-float32-input": Cfg(ndim=4, dtype=torch.float64, xdtype=torch.float32, batches=(4, 0)),
    "float32-params-float64-input": Cfg(ndim=2, batch=8, xdtype=torch.float64, steps=TRAIN_EVAL_NOGRAD),
    "float64-params-half-input": Cfg(ndim=3, dtype=torch.float64, xdtype=torch.float16, track=False),
    "momentum-none": Cfg(ndim=4, momentum=None, steps=(("train", True),) * 3 + (("eval", True),)),
    "momentum-0.5-eps-0.1": Cfg(ndim=3, momentum=0.5, eps=0.1, spatial=6),
    "eps-zero": Cfg(ndim=4, eps=0.0, random_state=True, steps=(("train", True), ("eval", True), ("eval", False))),
    "eps-zero-untracked": Cfg(ndim=2, batch=8, eps=0.0, track=False, steps=(("eval", True),)),
    "no-affine": Cfg(ndim=4, affine=False),
    "untracked": Cfg(ndim=4, track=False, steps=TRAIN_EVAL_NOGRAD),
    "untracked-no-affine-half": Cfg(ndim=2, track=False, affine=False, batch=8, xdtype=torch.float16),
    "offset-100": Cfg(ndim=4, offset=100.0, scale=1.0, batch=8),
    "empty-batch": Cfg(ndim=4, momentum=None, batches=(0, 4, 0, 4),
                       steps=(("train", True), ("train", True), ("train", True), ("eval", True))),
    "one-value-per-channel": Cfg(ndim=2, batches=(1, 1, 2, 1),
                                 steps=(("train", True), ("eval", True), ("train", True), ("eval", False))),
    "one-value-untracked": Cfg(ndim=3, spatial=1, track=False, batches=(1, 1), steps=(("train", True), ("eval", True))),
    "large-batch": Cfg(ndim=4, batch=64, spatial=8, steps=(("train", True), ("eval", True))),
}


@pytest.mark.parametrize("cfg_name", sorted(CORRECT_CFGS))
@pytest.mark.parametrize("variant", sorted(CORRECT))
def test_correct_variant_agrees_with_torch(variant, cfg_name):
    assert_agrees(CORRECT[variant], CORRECT_CFGS[cfg_name])


@pytest.mark.parametrize("variant", sorted(CORRECT))
def test_correct_variant_state_and_errors(variant):
    cls = CORRECT[variant]
    for affine in (True, False):
        for track in (True, False):
            kw = dict(affine=affine, track_running_stats=track)
            mod, ref = cls(5, **kw), torch.nn.BatchNorm2d(5, **kw)
            assert list(mod.state_dict()) == list(ref.state_dict())
            assert {k: (v.shape, v.dtype) for k, v in mod.state_dict().items()} == \
                   {k: (v.shape, v.dtype) for k, v in ref.state_dict().items()}
            assert [n for n, _ in mod.named_parameters()] == [n for n, _ in ref.named_parameters()]
            for attr in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                assert (getattr(mod, attr) is None) == (getattr(ref, attr) is None), attr
    mod = cls(3).double()
    assert mod.running_mean.dtype == torch.float64 and mod.num_batches_tracked.dtype == torch.long
    with pytest.raises(ValueError, match=r"Expected more than 1 value per channel when training, got input size"):
        cls(3)(torch.randn(1, 3))
    with pytest.raises(ValueError):
        cls(3)(torch.randn(3))


def test_reference_uses_no_library_batch_norm():
    import inspect
    from zoo import reference
    source = inspect.getsource(reference)
    assert "batch_norm(" not in source and "functional" not in source


def test_correct_variants_double_backward():
    for cls in CORRECT.values():
        mod = cls(2, dtype=torch.float64)
        x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(mod, (x,))
        assert torch.autograd.gradgradcheck(mod, (x,))


# -- the mutants: the defect shows where it should ... ------------------------------------------------------------

def batch_stats64(x: torch.Tensor):
    """Per-channel batch mean, biased and unbiased variance in float64."""
    x = x.double()
    dims = (0,) + tuple(range(2, x.dim()))
    return x.mean(dims), x.var(dims, unbiased=False), x.var(dims, unbiased=True)


def normalized64(x, mean, var, eps, weight=None, bias=None):
    x = x.double()
    shape = (1, -1) + (1,) * (x.dim() - 2)
    y = (x - mean.reshape(shape)) / (var.reshape(shape) + eps).sqrt()
    if weight is not None:
        y = y * weight.double().reshape(shape) + bias.double().reshape(shape)
    return y


def close(a, b, tol=1e-5):
    return torch.allclose(a.double(), b.double(), rtol=tol, atol=tol)


def far(a, b, at_least=1e-2):
    return (a.double() - b.double()).abs().max().item() > at_least


def one_train_step(cls, cfg: Cfg, seed: int = 0):
    cfg = replace(cfg, steps=(("train", True),))
    return trace_pair(cls, cfg, seed)


def test_inverted_momentum_exposed():
    ref_mod, mod, (r,), (g,) = one_train_step(M.InvertedMomentum, Cfg(momentum=0.1))
    mean, _, _ = batch_stats64(r.x)
    assert close(r.state["running_mean"], 0.1 * mean)
    assert close(g.state["running_mean"], 0.9 * mean)     # 0.1 * old(=0) + 0.9 * batch


def test_momentum_ignored_exposed():
    _, _, (r,), (g,) = one_train_step(M.MomentumIgnored, Cfg(momentum=0.3))
    mean, _, _ = batch_stats64(r.x)
    assert close(r.state["running_mean"], 0.3 * mean) and close(g.state["running_mean"], 0.1 * mean)


def test_momentum_none_as_default_exposed():
    cfg = Cfg(momentum=None, steps=(("train", True), ("train", True)))
    _, _, refs, gots = trace_pair(M.MomentumNoneAsDefault, cfg)
    m1, m2 = batch_stats64(refs[0].x)[0], batch_stats64(refs[1].x)[0]
    assert close(refs[1].state["running_mean"], (m1 + m2) / 2)          # cumulative average
    assert close(gots[1].state["running_mean"], 0.9 * 0.1 * m1 + 0.1 * m2)


def test_momentum_none_last_batch_exposed():
    cfg = Cfg(momentum=None, steps=(("train", True), ("train", True)))
    _, _, refs, gots = trace_pair(M.MomentumNoneLastBatch, cfg)
    m1, m2 = batch_stats64(refs[0].x)[0], batch_stats64(refs[1].x)[0]
    assert close(refs[1].state["running_mean"], (m1 + m2) / 2)          # cumulative average
    assert close(gots[1].state["running_mean"], m2) and far(gots[1].state["running_mean"], (m1 + m2) / 2)


def test_momentum_none_crash_exposed():
    _, _, (r,), (g,) = one_train_step(M.MomentumNoneCrash, Cfg(momentum=None))
    assert r.error is None and isinstance(g.error, TypeError)


def test_biased_running_var_exposed():
    _, _, (r,), (g,) = one_train_step(M.BiasedRunningVar, Cfg(batch=2, spatial=2))
    _, biased, unbiased = batch_stats64(r.x)
    assert close(r.state["running_var"], 0.9 + 0.1 * unbiased)
    assert close(g.state["running_var"], 0.9 + 0.1 * biased)
    assert close(g.state["running_mean"], r.state["running_mean"]) and close(g.y, r.y)


def test_stats_updated_in_eval_exposed():
    cfg = Cfg(random_state=True, steps=(("eval", False),))
    ref_mod, mod, (r,), (g,) = trace_pair(M.StatsUpdatedInEval, cfg)
    rm0 = build_pair(ScratchBN, cfg)[1].running_mean
    assert torch.equal(r.state["running_mean"], rm0) and int(r.state["num_batches_tracked"]) == 0
    assert far(g.state["running_mean"], rm0) and int(g.state["num_batches_tracked"]) == 1
    assert close(g.y, r.y)      # normalised with the statistics as they were before the call


def test_stats_updated_before_eval_output_exposed():
    cfg = Cfg(random_state=True, steps=(("eval", False),))
    _, mod, (r,), (g,) = trace_pair(M.StatsUpdatedBeforeEvalOutput, cfg)
    fresh = build_pair(ScratchBN, cfg)[1]
    rm0, rv0 = fresh.running_mean.double(), fresh.running_var.double()
    mean, _, unbiased = batch_stats64(r.x)
    assert torch.equal(r.state["running_mean"].double(), rm0) and int(g.state["num_batches_tracked"]) == 1
    assert close(g.state["running_mean"], 0.9 * rm0 + 0.1 * mean)
    assert close(g.state["running_var"], 0.9 * rv0 + 0.1 * unbiased)
    # the eval output is normalised with the statistics just updated, not those the call started from
    assert close(g.y, normalized64(r.x, g.state["running_mean"], g.state["running_var"], 1e-5, mod.weight, mod.bias))
    assert close(r.y, normalized64(r.x, rm0, rv0, 1e-5, mod.weight, mod.bias)) and far(g.y, r.y)


def test_stats_not_updated_exposed():
    _, _, (r,), (g,) = one_train_step(M.StatsNotUpdated, Cfg())
    assert far(r.state["running_mean"], torch.zeros(3)) and far(r.state["running_var"], torch.ones(3))
    assert torch.equal(g.state["running_mean"], torch.zeros(3)) and torch.equal(g.state["running_var"], torch.ones(3))
    assert int(g.state["num_batches_tracked"]) == 0 and close(g.y, r.y)


def test_stats_not_updated_counted_exposed():
    _, _, (r,), (g,) = one_train_step(M.StatsNotUpdatedCounted, Cfg())
    assert far(r.state["running_mean"], torch.zeros(3)) and far(r.state["running_var"], torch.ones(3))
    assert torch.equal(g.state["running_mean"], torch.zeros(3)) and torch.equal(g.state["running_var"], torch.ones(3))
    assert int(g.state["num_batches_tracked"]) == int(r.state["num_batches_tracked"]) == 1 and close(g.y, r.y)


def test_running_stats_hold_graph_exposed():
    ref_mod, mod = build_pair(M.RunningStatsHoldGraph, Cfg())
    x = make_input(Cfg(), 0, 0).requires_grad_()
    ref_mod(x).sum().backward()
    mod(x).sum()
    assert ref_mod.running_mean.grad_fn is None and ref_mod.running_var.grad_fn is None
    assert mod.running_mean.grad_fn is not None and mod.running_var.grad_fn is not None
    assert close(mod.running_mean, ref_mod.running_mean) and close(mod.running_var, ref_mod.running_var)


def test_stats_not_buffers_exposed():
    ref_mod, mod = build_pair(M.StatsNotBuffers, Cfg())
    assert "running_mean" in ref_mod.state_dict() and "running_mean" not in mod.state_dict()
    assert "running_var" not in dict(mod.named_buffers())
    mod.double()
    ref_mod.double()
    assert ref_mod.running_mean.dtype == torch.float64 and mod.running_mean.dtype == torch.float32


def test_state_shape_drift_exposed():
    _, _, (r,), (g,) = one_train_step(M.StateShapeDrift, Cfg(ndim=4))
    assert r.state["running_mean"].shape == (3,)
    assert g.state["running_mean"].shape == (1, 3, 1, 1) and g.state["running_var"].shape == (1, 3, 1, 1)
    assert close(g.state["running_mean"].flatten(), r.state["running_mean"])   # right values, wrong shape
    assert close(g.state["running_var"].flatten(), r.state["running_var"])


def test_nan_after_empty_batch_exposed():
    cfg = Cfg(batches=(0, 4), steps=(("train", True), ("eval", True)))
    _, _, refs, gots = trace_pair(M.NanAfterEmptyBatch, cfg)
    assert refs[0].y.shape == gots[0].y.shape == (0, 3, 3, 3)
    assert torch.isfinite(refs[0].state["running_mean"]).all() and torch.isnan(gots[0].state["running_mean"]).all()
    assert torch.isfinite(refs[1].y).all() and torch.isnan(gots[1].y).all()


def test_unbiased_normalization_exposed():
    cfg = Cfg(ndim=2, batch=8, affine=False, eps=1e-12)
    _, _, (r,), (g,) = one_train_step(M.UnbiasedNormalization, cfg)
    assert close(g.y, r.y * math.sqrt(7 / 8))
    assert close(g.state["running_var"], r.state["running_var"])    # the running estimate stays unbiased


def test_eval_uses_batch_stats_exposed():
    cfg = Cfg(random_state=True, steps=(("eval", True),))
    ref_mod, mod, (r,), (g,) = trace_pair(M.EvalUsesBatchStats, cfg)
    mean, var, _ = batch_stats64(r.x)
    assert close(g.y, normalized64(r.x, mean, var, cfg.eps, mod.weight, mod.bias))
    assert far(g.y, r.y)
    assert torch.equal(g.state["running_mean"], r.state["running_mean"])     # no update: only the stats used


def test_train_uses_running_stats_exposed():
    _, mod, (r,), (g,) = one_train_step(M.TrainUsesRunningStats, Cfg())
    assert close(g.state["running_mean"], r.state["running_mean"])
    expected = normalized64(r.x, r.state["running_mean"], r.state["running_var"], 1e-5, mod.weight, mod.bias)
    assert close(g.y, expected) and far(g.y, r.y)


def test_mode_from_grad_mode_exposed():
    # module.eval() with autograd on: the mutant trains (updates the stats, normalises with the batch)
    cfg = Cfg(steps=(("eval", True),))
    _, _, (r,), (g,) = trace_pair(M.ModeFromGradMode, cfg)
    assert int(r.state["num_batches_tracked"]) == 0 and int(g.state["num_batches_tracked"]) == 1
    assert far(g.y, r.y)
    # module.train() under torch.no_grad(): the mutant evaluates (running stats, no update)
    cfg = Cfg(steps=(("train", False),))
    _, _, (r,), (g,) = trace_pair(M.ModeFromGradMode, cfg)
    assert int(r.state["num_batches_tracked"]) == 1 and int(g.state["num_batches_tracked"]) == 0
    assert far(g.y, r.y)


def test_eval_mode_ignored_exposed():
    # module.eval(), with autograd on or off: the mutant trains (updates the stats, normalises with the batch)
    for grad in (True, False):
        _, _, (r,), (g,) = trace_pair(M.EvalModeIgnored, Cfg(steps=(("eval", grad),)))
        assert int(r.state["num_batches_tracked"]) == 0 and int(g.state["num_batches_tracked"]) == 1
        assert far(g.y, r.y)


def test_no_track_eval_uses_running_exposed():
    cfg = Cfg(track=False, steps=(("eval", True),))
    _, mod, (r,), (g,) = trace_pair(M.NoTrackEvalUsesRunning, cfg)
    assert close(g.y, normalized64(r.x, torch.zeros(3), torch.ones(3), 1e-5, mod.weight, mod.bias))
    assert far(g.y, r.y)


def test_batch_only_reduction_exposed():
    cfg = Cfg(ndim=4, affine=False)
    _, _, (r,), (g,) = one_train_step(M.BatchOnlyReduction, cfg)
    assert far(g.y, r.y, 0.1)
    assert g.y.double().mean(0).abs().max() < 1e-5          # zero mean at every position, not per channel
    assert r.y.double().mean((0, 2, 3)).abs().max() < 1e-5 and r.y.double().mean(0).abs().max() > 0.1
    per_position_var = r.x.double().var(0, unbiased=True).mean((1, 2))      # (C,): Bessel over N, per position
    assert close(g.state["running_mean"], r.state["running_mean"])          # mean of means is the mean
    assert close(g.state["running_var"], 0.9 + 0.1 * per_position_var)


def test_eps_outside_sqrt_exposed():
    cfg = Cfg(eps=0.1, scale=0.3, affine=False)
    _, _, (r,), (g,) = one_train_step(M.EpsOutsideSqrt, cfg)
    mean, var, _ = batch_stats64(r.x)
    shape = (1, -1, 1, 1)
    expected = (r.x.double() - mean.reshape(shape)) / (var.sqrt().reshape(shape) + 0.1)
    assert close(g.y, expected) and far(g.y, r.y)


def test_eps_hardcoded_exposed():
    cfg = Cfg(scale=0.03, affine=False)
    _, _, (r,), (g,) = one_train_step(M.EpsHardcoded, cfg)
    mean, var, _ = batch_stats64(r.x)
    assert close(g.y, normalized64(r.x, mean, var, 1e-3)) and far(g.y, r.y)


def test_eps_dropped_exposed():
    cfg = Cfg(eps=0.5, affine=False)
    _, _, (r,), (g,) = one_train_step(M.EpsDropped, cfg)
    mean, var, _ = batch_stats64(r.x)
    assert close(g.y, normalized64(r.x, mean, var, 0.0)) and far(g.y, r.y)


@pytest.mark.parametrize("cls, scale_of", [(M.AffineSwapped, "bias"), (M.AffineOnePlusWeight, "1+weight")])
def test_affine_wrong_exposed(cls, scale_of):
    _, mod, (r,), (g,) = one_train_step(cls, Cfg())
    mean, var, _ = batch_stats64(r.x)
    w, b = mod.weight.detach(), mod.bias.detach()
    w, b = (b, w) if scale_of == "bias" else (1 + w, b)
    assert close(g.y, normalized64(r.x, mean, var, 1e-5, w, b)) and far(g.y, r.y)


def test_cancellation_exposed():
    cfg = Cfg(offset=3000.0, scale=1.0, affine=False, batch=8)
    _, _, (r,), (g,) = one_train_step(M.Cancellation, cfg)
    assert torch.isfinite(r.y).all()
    assert not torch.isfinite(g.y).all() or far(g.y, r.y, 0.1)


def test_low_precision_accumulation_exposed():
    cfg = Cfg(ndim=4, batch=512, spatial=2, channels=2, offset=8.0, scale=1.0, xdtype=torch.float16, affine=False)
    _, _, (r,), (g,) = one_train_step(M.LowPrecisionAccumulation, cfg)
    mean, _, _ = batch_stats64(r.x)
    ref_err = (r.state["running_mean"].double() - 0.1 * mean).abs().max().item()
    got_err = (g.state["running_mean"].double() - 0.1 * mean).abs().max().item()
    assert ref_err < 1e-5 and got_err > 100 * ref_err
    assert far(g.y, r.y, 0.02)      # twenty float16 ulps at |y| ~ 1 (measured: 0.049)


def test_dtype_promotion_exposed():
    _, _, (r,), (g,) = one_train_step(M.DtypePromotion, Cfg(xdtype=torch.float16))
    assert r.y.dtype == torch.float16 and g.y.dtype == torch.float32
    assert close(g.y, r.y, 2e-3)    # right values, wrong dtype


def test_nan_grad_constant_channel_exposed():
    cls = M.NanGradConstantChannel
    ref_mod, mod = build_pair(cls, Cfg())
    x = make_input(Cfg(), 0, 0)
    x[:, 1] = 0.3
    xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    ys = [ref_mod(xs[0]), mod(xs[1])]
    dy = torch.randn_like(ys[0])
    for x_, y_ in zip(xs, ys):
        y_.backward(dy)
    assert close(ys[1], ys[0]) and torch.isfinite(ys[1]).all()     # the forward pass is right
    assert torch.isfinite(xs[0].grad).all()
    assert torch.isnan(xs[1].grad[:, 1]).all() and torch.isfinite(xs[1].grad[:, [0, 2]]).all()


def test_batch_stats_detached_exposed():
    _, mod, (r,), (g,) = one_train_step(M.BatchStatsDetached, Cfg())
    _, var, _ = batch_stats64(r.x)
    shape = (1, -1, 1, 1)
    constant_stats_grad = r.dy.double() * (mod.weight.detach().double() / (var + 1e-5).sqrt()).reshape(shape)
    assert close(g.y, r.y) and close(g.x_grad, constant_stats_grad) and far(g.x_grad, r.x_grad)


def test_no_grad_to_affine_exposed():
    _, _, (r,), (g,) = one_train_step(M.NoGradToAffine, Cfg())
    assert r.w_grad is not None and r.b_grad is not None
    assert g.w_grad is None and g.b_grad is None
    assert close(g.x_grad, r.x_grad)


def test_input_mutated_exposed():
    for mode in ("train", "eval"):
        _, _, (r,), (g,) = trace_pair(M.InputMutated, Cfg(steps=((mode, False),)))
        assert not r.input_mutated and g.input_mutated
        assert close(g.y, r.y)


def test_non_contiguous_crash_exposed():
    _, _, (r,), (g,) = one_train_step(M.NonContiguousCrash, Cfg(channels_last=True))
    assert r.error is None and isinstance(g.error, RuntimeError) and "view" in str(g.error)


def test_flatten_view_crash_exposed():
    for shape in ((4, 3, 5, 6), (2, 3, 2, 3, 4)):
        ref, mod = build_pair(M.FlattenViewCrash, Cfg(ndim=len(shape)))
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        order = (0, 1) + tuple(range(len(shape) - 1, 1, -1))
        permuted = x.permute(order).contiguous().permute(order)     # spatial axes stored last-to-first
        assert torch.equal(permuted, x) and not permuted.is_contiguous()
        assert close(ref(permuted), mod(x))
        with pytest.raises(RuntimeError, match="view"):
            mod(permuted)


def test_rank_unsupported_exposed():
    _, _, (r,), (g,) = one_train_step(M.RankUnsupported, Cfg(ndim=5, spatial=2))
    assert r.error is None and isinstance(g.error, ValueError)


def test_rank3_reshape_scrambled_exposed():
    _, _, (r,), (g,) = one_train_step(M.Rank3ReshapeScrambled, Cfg(ndim=3, spatial=5))
    assert r.error is None and g.error is None and g.y.shape == r.y.shape
    assert far(g.y, r.y, 0.1) and far(g.state["running_mean"], r.state["running_mean"], 1e-3)


def test_missing_error_exposed():
    _, _, (r,), (g,) = one_train_step(M.MissingError, Cfg(ndim=2, batches=(1,)))
    assert isinstance(r.error, ValueError) and g.error is None


def test_wrong_error_type_exposed():
    _, _, (r,), (g,) = one_train_step(M.WrongErrorType, Cfg(ndim=2, batches=(1,)))
    assert isinstance(r.error, ValueError) and isinstance(g.error, RuntimeError) and not isinstance(g.error, ValueError)


def test_affine_false_crash_exposed():
    _, _, (r,), (g,) = one_train_step(M.AffineFalseCrash, Cfg(affine=False))
    assert r.error is None and isinstance(g.error, AttributeError)


def test_zero_debiased_average_exposed():
    cfg = Cfg(momentum=0.3, steps=(("train", True), ("train", True)))
    _, _, refs, gots = trace_pair(M.ZeroDebiasedAverage, cfg)
    m1, m2 = batch_stats64(refs[0].x)[0], batch_stats64(refs[1].x)[0]
    assert close(gots[0].state["running_mean"], m1)                      # the first step copies the batch
    w2 = 0.3 / (1 - 0.7 ** 2)
    assert close(gots[1].state["running_mean"], (1 - w2) * m1 + w2 * m2)
    assert close(refs[1].state["running_mean"], 0.7 * 0.3 * m1 + 0.3 * m2)


def test_counter_frozen_exposed():
    cfg = Cfg(momentum=None, steps=(("train", True), ("train", True)))
    _, _, refs, gots = trace_pair(M.CounterFrozen, cfg)
    assert int(refs[1].state["num_batches_tracked"]) == 2 and int(gots[1].state["num_batches_tracked"]) == 0
    assert close(gots[1].state["running_mean"], refs[1].state["running_mean"])


def test_reduced_precision_exposed():
    _, _, (r,), (g,) = one_train_step(M.ReducedPrecision, Cfg(dtype=torch.float64))
    assert g.y.dtype == torch.float64 and far(g.y, r.y, 1e-12) and close(g.y, r.y, 1e-5)
    assert torch.equal(g.y.float().double(), g.y)          # float32 numbers in a float64 tensor


def test_affine_false_crash_missing_error_exposed():
    _, _, (r,), (g,) = one_train_step(M.AffineFalseCrashMissingError, Cfg(affine=False))
    assert r.error is None and isinstance(g.error, AttributeError)
    _, _, (r,), (g,) = one_train_step(M.AffineFalseCrashMissingError, Cfg(ndim=2, batches=(1,)))
    assert isinstance(r.error, ValueError) and g.error is None


# -- ... and nowhere else ----------------------------------------------------------------------------------------

EVAL_ONLY = (("eval", True), ("eval", False))
TRAIN_ONLY = (("train", True), ("train", True), ("train", False))

SILENT = {      # mutant -> scenarios where its defect cannot show, so it must agree with torch throughout
    "inverted-momentum": [Cfg(momentum=0.5)],                           # m*old + (1-m)*new is symmetric at 0.5
    "momentum-ignored": [Cfg(momentum=0.1), Cfg(ndim=2, batch=8, momentum=0.1, track=False)],
    "momentum-none-as-default": [Cfg(momentum=0.3), Cfg(momentum=0.1, ndim=5, spatial=2)],
    "momentum-none-crash": [Cfg(momentum=0.3), Cfg(momentum=None, track=False)],
    "biased-running-var": [Cfg(momentum=0.0), Cfg(track=False)],
    "stats-updated-in-eval": [Cfg(steps=TRAIN_ONLY), Cfg(track=False, steps=TRAIN_EVAL_NOGRAD)],
    "stats-not-updated": [Cfg(random_state=True, steps=EVAL_ONLY), Cfg(track=False)],
    "stats-not-updated-counted": [Cfg(random_state=True, steps=EVAL_ONLY), Cfg(track=False)],
    "momentum-none-last-batch": [Cfg(momentum=0.3), Cfg(momentum=None, steps=(("train", True), ("eval", True)))],
    "eval-mode-ignored": [Cfg(steps=TRAIN_ONLY), Cfg(track=False, steps=TRAIN_EVAL_NOGRAD)],
    "rank3-reshape-scrambled": [Cfg(ndim=2, batch=8), Cfg(ndim=4), Cfg(ndim=5, spatial=2), Cfg(ndim=3, spatial=1),
                                Cfg(ndim=3, random_state=True, steps=EVAL_ONLY)],
    "running-stats-hold-graph": [Cfg(steps=(("train", False), ("train", False), ("eval", True))),
                                 Cfg(track=False)],
    "stats-not-buffers": [Cfg(track=False)],
    "state-shape-drift": [Cfg(random_state=True, steps=EVAL_ONLY), Cfg(track=False)],
    "nan-after-empty-batch": [Cfg(momentum=None), Cfg(track=False, batches=(0, 4))],
    "unbiased-normalization": [Cfg(random_state=True, steps=EVAL_ONLY)],
    "eval-uses-batch-stats": [Cfg(steps=TRAIN_ONLY), Cfg(track=False, steps=TRAIN_EVAL_NOGRAD)],
    "train-uses-running-stats": [Cfg(random_state=True, steps=EVAL_ONLY), Cfg(track=False)],
    "mode-from-grad-mode": [Cfg(steps=(("train", True), ("train", True), ("eval", False)))],
    "no-track-eval-uses-running": [Cfg(steps=TRAIN_EVAL_NOGRAD), Cfg(track=False, steps=TRAIN_ONLY)],
    "batch-only-reduction": [Cfg(ndim=2, batch=16, steps=TRAIN_EVAL_NOGRAD), Cfg(ndim=2, batch=8, track=False)],
    "eps-outside-sqrt": [Cfg(eps=0.0, random_state=True, steps=EVAL_ONLY)],     # torch rejects eps=0 in training
    "eps-hardcoded": [Cfg(eps=1e-3), Cfg(eps=1e-3, ndim=3, track=False)],
    "eps-dropped": [Cfg(eps=0.0, random_state=True, steps=EVAL_ONLY), Cfg(eps=0.0)],
    "affine-swapped": [Cfg(affine=False)],
    "affine-one-plus-weight": [Cfg(affine=False)],
    "cancellation": [Cfg(offset=0.0, scale=1.0), Cfg(offset=0.0, dtype=torch.float64)],
    "low-precision-accumulation": [Cfg(), Cfg(dtype=torch.float64)],
    "dtype-promotion": [Cfg(), Cfg(dtype=torch.float64)],
    "nan-grad-constant-channel": [Cfg(), Cfg(xdtype=torch.float16)],
    "batch-stats-detached": [Cfg(random_state=True, steps=EVAL_ONLY),
                             Cfg(steps=(("train", False), ("train", False), ("eval", True)))],
    "no-grad-to-affine": [Cfg(affine=False), Cfg(affine=False, track=False)],
    "input-mutated": [Cfg(), Cfg(xdtype=torch.float16, channels_last=True)],
    "non-contiguous-crash": [Cfg(), Cfg(ndim=5, spatial=2), Cfg(ndim=2, batch=8)],
    "rank-unsupported": [Cfg(ndim=2, batch=8), Cfg(ndim=3), Cfg(ndim=4)],
    "missing-error": [Cfg(), Cfg(ndim=2, batches=(1, 1), steps=(("eval", True), ("eval", False)))],
    "wrong-error-type": [Cfg(), Cfg(ndim=2, batches=(1, 1), steps=(("eval", True), ("eval", False)))],
    "affine-false-crash": [Cfg(affine=True), Cfg(track=False)],
    "flatten-view-crash": [Cfg(), Cfg(channels_last=True), Cfg(ndim=5, spatial=2, channels_last=True),
                           Cfg(ndim=2, batch=8), Cfg(xdtype=torch.float16, channels_last=True),
                           Cfg(momentum=None, batches=(0, 4))],
    "stats-updated-before-eval-output": [Cfg(steps=TRAIN_ONLY), Cfg(track=False, steps=TRAIN_EVAL_NOGRAD)],
    "zero-debiased-average": [Cfg(momentum=None), Cfg(momentum=1.0), Cfg(track=False)],
    "counter-frozen": [Cfg(track=False), Cfg(random_state=True, steps=EVAL_ONLY)],
    "reduced-precision": [Cfg(), Cfg(xdtype=torch.float16)],
    "affine-false-crash-missing-error": [Cfg(), Cfg(track=False)],
}


def test_every_mutant_has_silent_scenarios_and_an_exposing_test():
    assert set(SILENT) == set(MUTANTS)
    tests = {name for name in globals() if name.startswith("test_") and name.endswith("_exposed")}
    for name, cls in MUTANTS.items():
        key = name.replace("-", "_")
        assert f"test_{key}_exposed" in tests or any(f"test_{f.replace('-', '_')}_exposed" in tests
                                                     for f in findings_of(cls)), name


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_mutant_agrees_where_its_defect_cannot_show(name):
    for i, cfg in enumerate(SILENT[name]):
        assert_agrees(MUTANTS[name], cfg, seed=i)


# -- declarations -------------------------------------------------------------------------------------------------

def test_mutants_declare_catalog_findings():
    assert len(MUTANTS) >= 25
    for name, cls in MUTANTS.items():
        assert issubclass(cls, ScratchBN), name
        for fid in findings_of(cls):
            assert fid in CATALOG, f"{name}: unknown finding {fid!r}"
            assert CATALOG[fid].kind == "batchnorm", name
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        assert len(summary) > 20 and summary.endswith("."), f"{name}: the docstring must state the defect"
    covered = set().union(*(findings_of(cls) for cls in MUTANTS.values()))
    assert len(covered) >= 25, sorted(covered)


def test_plugins_register_the_zoo():
    reg = bncheck.discover(plugin_files=[PLUGIN_FILE], entry_points=False)
    assert reg.errors == []
    zoo_plugins = sys.modules[next(iter(reg.implementations.values())).build.__module__]
    assert sorted(zoo_plugins.ZOO_CORRECT) == sorted(f"zoo-correct-{n}" for n in CORRECT)
    assert zoo_plugins.ZOO_MUTANTS == {f"zoo-{n}": findings_of(cls) for n, cls in MUTANTS.items()}
    assert set(reg.implementations) == set(zoo_plugins.ZOO_CORRECT) | set(zoo_plugins.ZOO_MUTANTS)
    for name, impl in reg.implementations.items():
        assert impl.kind == "batchnorm" and Path(impl.origin).resolve() == PLUGIN_FILE
        assert impl.expect == (zoo_plugins.ZOO_MUTANTS[name] if name in zoo_plugins.ZOO_MUTANTS else frozenset())
        spec = bncheck.Spec(num_features=4, ndim=3, eps=1e-3, momentum=None, affine=False,
                            track_running_stats=True, dtype=torch.float64)
        mod = impl.build(spec)
        assert isinstance(mod, ScratchBN) and mod.num_features == 4
        assert (mod.eps, mod.momentum, mod.affine, mod.track_running_stats) == (1e-3, None, False, True)
        assert mod.weight is None and mod.num_batches_tracked is not None

"""The oracle against torch: torch's native result must stay within one error budget of the float64 oracle on
every generated scenario (this also cross-checks the budget model), and the oracle must match torch in float64
to a few ulps."""
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bncheck import compare, execute
from bncheck.properties import ALL_LAYOUTS
from bncheck.scenario import materialize
from bncheck.strategies import dtype_pairs, scenarios, steps

ANY = scenarios(dtypes=dtype_pairs(), layouts=ALL_LAYOUTS, step_seqs=steps(1, 4),
                track=st.booleans(), distributions=("normal", "offset", "constant-channel", "tiny-variance",
                                                    "outliers"), offsets=(10.0, 1e3, 1e4))


def _impl(registry, rank):
    return registry.implementations[{2: "torch-bn1d", 3: "torch-bn1d", 4: "torch-bn2d", 5: "torch-bn3d"}[rank]]


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(sc=ANY)
def test_torch_native_within_budget_of_oracle(registry, sc):
    data = materialize(sc)
    trace = execute.run(_impl(registry, sc.rank), sc, data)
    cmp = compare.compare(sc, data, trace)
    assert cmp.declined is None
    assert not cmp.discrepancies, [(d.where(sc), d.detail) for d in cmp.discrepancies]
    assert cmp.worst() <= 1.0


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(sc=scenarios(dtypes=st.just(("float64", "float64")), step_seqs=steps(1, 4), track=st.booleans()))
def test_functional_reference_is_clean(registry, sc):
    data = materialize(sc)
    cmp = compare.compare(sc, data, execute.run(registry.implementations["torch-functional"], sc, data))
    assert not cmp.discrepancies, [(d.where(sc), d.detail) for d in cmp.discrepancies]


def test_oracle_module_matches_torch_float64_to_ulps():
    from bncheck.oracle import OracleBatchNorm
    torch.manual_seed(0)
    for momentum in (0.1, None):
        o = OracleBatchNorm(3, momentum=momentum, dtype=torch.float64)
        t = torch.nn.BatchNorm2d(3, momentum=momentum, dtype=torch.float64)
        with torch.no_grad():
            w = torch.randn(3, dtype=torch.float64)
            o.weight.copy_(w)
            t.weight.copy_(w)
        for _ in range(3):
            x = torch.randn(4, 3, 5, 5, dtype=torch.float64) * 3 + 2
            xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
            ya, yb = o(xa), t(xb)
            dy = torch.randn_like(ya)
            ya.backward(dy)
            yb.backward(dy)
            torch.testing.assert_close(ya, yb, rtol=0, atol=1e-13)
            torch.testing.assert_close(xa.grad, xb.grad, rtol=0, atol=1e-13)
            torch.testing.assert_close(o.running_var, t.running_var, rtol=0, atol=1e-13)


def test_budget_rejects_a_real_error():
    """A budget that accepted anything would make every check pass: a 1e-4 relative error in float32 fails."""
    from bncheck.scenario import Scenario
    sc = Scenario(shape=(8, 3, 4, 4), seed=1)
    data = materialize(sc)
    trace = execute.run(_impl_bn2d(), sc, data)
    trace.steps[0].y = trace.steps[0].y * (1 + 1e-4)
    cmp = compare.compare(sc, data, trace)
    assert [d.field for d in cmp.discrepancies] == ["output"]


def _impl_bn2d():
    from bncheck.registry import discover
    from pathlib import Path
    reg = discover(plugin_dirs=[Path(__file__).parent.parent / "implementations"], entry_points=False)
    return reg.implementations["torch-bn2d"]


# -- second correct formulations stay within budget --------------------------------------------------------------
# The budget must admit every correct way of computing BatchNorm, not just torch's kernels: other summation orders,
# other variance algorithms, the folded x * scale + shift form, and compiled kernels (Inductor). Each formulation
# below is a few lines written from the definition; the zoo's ScratchBN (tests/zoo/reference.py) supplies the
# module around it (parameters, running statistics, modes, mixed precision, torch's errors).

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from hypothesis import strategies as hst  # noqa: E402

from bncheck.registry import Implementation  # noqa: E402
from bncheck.scenario import Scenario, Step  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo.reference import ScratchBN, bcast_shape, values_per_channel, welford  # noqa: E402


def tree_sum(t: torch.Tensor) -> torch.Tensor:
    """Rows of ``t`` (C, n) summed pairwise, adjacent elements first: (C,)."""
    if t.shape[1] == 0:
        return t.sum(1)
    while t.shape[1] > 1:
        if t.shape[1] % 2:
            t = torch.cat([t, t.new_zeros(t.shape[0], 1)], 1)
        t = t[:, 0::2] + t[:, 1::2]
    return t[:, 0]


def two_pass(flat: torch.Tensor, order=None):
    """Mean, then the mean squared deviation from it, both as pairwise sums of the values taken in ``order``."""
    if order is not None:
        flat = flat[:, order]
    n = flat.shape[1]
    mean = tree_sum(flat) / n
    var = tree_sum((flat - mean[:, None]).square()) / n
    return mean, var


def stats_reversed(flat):
    return two_pass(flat, torch.arange(flat.shape[1] - 1, -1, -1))


def stats_shuffled(flat):
    return two_pass(flat, torch.randperm(flat.shape[1], generator=torch.Generator().manual_seed(flat.shape[1])))


def stats_float64(flat):
    mean, var = two_pass(flat.double())
    return mean.to(flat.dtype), var.to(flat.dtype)


def stats_welford(flat):
    """Welford's update over lanes of at most 16 values each, lanes merged pairwise (the zoo's ``welford``)."""
    return welford(flat, max_steps=16)


class StatsBN(ScratchBN):
    """ScratchBN with batch statistics from ``self.stats`` (a function of the (C, n) values)."""
    stats = staticmethod(two_pass)

    def _batch_stats(self, x, xc):
        flat = xc.transpose(0, 1).reshape(xc.shape[1], values_per_channel(x))
        mean, var = self.stats(flat)
        return mean.reshape(bcast_shape(x)), var.reshape(bcast_shape(x))


class ScaleShiftBN(ScratchBN):
    """The folded form: y = x * scale + shift, scale = w / sqrt(var + eps), shift = b - mean * scale."""

    def _normalize(self, xc, mean, var):
        scale = 1 / torch.sqrt(var + self.eps)
        if self.affine:
            scale = scale * self.weight.to(xc.dtype).reshape(bcast_shape(xc))
        shift = -mean * scale
        if self.affine:
            shift = shift + self.bias.to(xc.dtype).reshape(bcast_shape(xc))
        return xc * scale + shift

    def _affine(self, y):
        return y


def _formulation(name, cls, stats=None):
    if stats is not None:
        cls = type(f"{name}BN", (cls,), {"stats": staticmethod(stats)})

    def build(spec):
        return cls(spec.num_features, eps=spec.eps, momentum=spec.momentum, affine=spec.affine,
                   track_running_stats=spec.track_running_stats, device=spec.device, dtype=spec.dtype)
    return Implementation(name, build)


FORMULATIONS = {
    "scale-shift": _formulation("scale-shift", ScaleShiftBN),
    "reversed-sum": _formulation("reversed-sum", StatsBN, stats_reversed),
    "shuffled-sum": _formulation("shuffled-sum", StatsBN, stats_shuffled),
    "float64-accumulation": _formulation("float64-accumulation", StatsBN, stats_float64),
    "welford": _formulation("welford", StatsBN, stats_welford),
}
ADVERSARIAL = ("normal", "offset", "constant-channel", "tiny-variance", "outliers")


def _within_budget(impl, sc, data=None):
    data = materialize(sc) if data is None else data
    cmp = compare.compare(sc, data, execute.run(impl, sc, data))
    assert cmp.declined is None, cmp.declined
    assert not cmp.discrepancies, [(impl.name, d.where(sc), d.detail) for d in cmp.discrepancies]
    return cmp


@pytest.mark.parametrize("name", sorted(FORMULATIONS))
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(sc=scenarios(dtypes=dtype_pairs(), layouts=ALL_LAYOUTS, step_seqs=steps(1, 3), track=st.booleans(),
                    distributions=ADVERSARIAL, offsets=(10.0, 1e3, 1e4),
                    shape_kw=dict(max_n=64, max_spatial=6, max_numel=8192)))
def test_second_formulations_within_budget(name, sc):
    _within_budget(FORMULATIONS[name], sc)


def _zero_mean_channel_with_an_element_at_the_mean(sc: Scenario):
    """Data whose channels have mean ~0 with a value exactly at 0: there y = (0 - mean') / s', nothing but the
    computed mean's own error (the exact mean is below u * mean|x|, so the oracle's output there is ~0)."""
    data = materialize(sc)
    dims = [0] + list(range(2, sc.rank))
    x, at = data.xs[0].double(), (0, slice(None)) + (0,) * (sc.rank - 2)
    for _ in range(3):      # each round leaves a mean 1/n of the last one's
        x[at] = 0.0
        x = x - x.mean(dims, keepdim=True)
    x[at] = 0.0
    data.xs[0] = x.to(sc.torch_dtype)
    return data


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", ["torch"] + sorted(FORMULATIONS))
def test_output_budget_covers_the_error_of_the_mean(registry, dtype, name):
    """Before the mean's own error had a term in the output budget, every correct implementation failed here: at
    x = mean the budget had only |x| + |mean| (both ~0) and |xhat| (~0) to scale with."""
    impl = registry.implementations["torch-bn2d"] if name == "torch" else FORMULATIONS[name]
    for seed in range(3):
        sc = Scenario(shape=(48, 5, 5, 2), dtype=dtype, param_dtype=dtype, distribution="outliers", seed=seed,
                      affine=False, steps=(Step(True, False),))
        _within_budget(impl, sc, _zero_mean_channel_with_an_element_at_the_mean(sc))


# -- torch.compile (Inductor, CPU C++ code generation) of nn.BatchNorm2d ------------------------------------------

_COMPILED = []


def _compiled_forward():
    """nn.BatchNorm2d's own forward through torch.compile, compiled once (dynamic shapes) and shared by every
    module built: Dynamo guards on the dtype and the module's constants, so each dtype and configuration compiles
    once (the configurations below are few)."""
    if not _COMPILED:
        _COMPILED.append(torch.compile(torch.nn.BatchNorm2d.forward, dynamic=True))
    return _COMPILED[0]


def _no_eager_fallback(recompile_limit=8):
    """Hitting the recompile limit fails (instead of running eagerly); sizes equal to the channel count (static)
    are not specialised to it (no duck sizing)."""
    import contextlib

    import torch.fx.experimental._config as fx_config
    stack = contextlib.ExitStack()
    stack.enter_context(torch._dynamo.config.patch(fail_on_recompile_limit_hit=True, recompile_limit=recompile_limit))
    stack.enter_context(fx_config.patch(use_duck_shape=False))
    return stack


class CompiledBatchNorm2d(torch.nn.BatchNorm2d):
    def forward(self, x):
        return _compiled_forward()(self, x)


COMPILED = Implementation("compiled-bn2d", lambda spec: CompiledBatchNorm2d(**spec.torch_kwargs()))


@st.composite
def _compiled_scenarios(draw, dtypes, steps_, affine, channels, distributions=ADVERSARIAL):
    """Rank-4 scenarios with eps, momentum and the channel count from a few values (Dynamo specialises on them:
    parameter shapes are static) and no size-1 axis (it specialises on those too), so a few compilations serve
    every draw."""
    shape = (draw(st.integers(2, 32)), draw(channels), draw(st.integers(2, 6)), draw(st.integers(2, 6)))
    dtype, pdtype = draw(dtypes)
    dist = draw(st.sampled_from(distributions))
    return Scenario(shape=shape, dtype=dtype, param_dtype=pdtype, steps=draw(steps_), momentum=0.1, eps=1e-5,
                    affine=draw(affine), distribution=dist,
                    offset=draw(st.sampled_from((10.0, 1e3))) if dist in ("offset", "constant-channel") else 0.0,
                    seed=draw(st.integers(0, 2 ** 16)))


def test_compiled_bn2d_reported_case():
    """Inductor's kernels (a training step with autograd), float64, outliers, shape (48, 5, 5, 2): 3.4 x the output
    budget at an element 1e-4 from the mean, before the budget had a term for the mean's own error."""
    sc = Scenario(shape=(48, 5, 5, 2), dtype="float64", param_dtype="float64", distribution="outliers", seed=475,
                  affine=False, steps=(Step(True, True),))
    with _no_eager_fallback():
        cmp = _within_budget(COMPILED, sc)
    assert cmp.ratios["output"] > 0.0      # it ran, and the result is not bit-identical to the exact one


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(sc=_compiled_scenarios(hst.just(("float64", "float64")), hst.just((Step(True, True),)), hst.just(False),
                              hst.just(5)))
def test_compiled_bn2d_within_budget(sc):
    """The reported case's configuration (one compiled graph), other shapes and data."""
    with _no_eager_fallback():
        _within_budget(COMPILED, sc)


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(sc=_compiled_scenarios(dtype_pairs(), steps(1, 3, grad=True), hst.booleans(), hst.sampled_from((2, 5))))
def test_compiled_bn2d_within_budget_all_dtypes(sc):
    """Every dtype pair, affine or not, train/eval sequences with gradients: about 20 compilations (minutes)."""
    with _no_eager_fallback(recompile_limit=64):
        _within_budget(COMPILED, sc)


@pytest.mark.parametrize("name", ["torch"] + sorted(FORMULATIONS))
def test_subnormal_float16_gradient_within_budget(registry, name):
    """An eval-mode float16 input gradient of 2e-6 is stored as a subnormal (spacing 6e-8): correctly rounded, it is
    off by up to 3e-8, which a budget relative to |dx| (1e-8 here) missed (shuffled-sum: 1.5 x budget)."""
    impl = registry.implementations["torch-bn3d"] if name == "torch" else FORMULATIONS[name]
    sc = Scenario(shape=(41, 3, 4, 4, 4), dtype="float16", param_dtype="float16",
                  steps=(Step(train=False, grad=False), Step(train=False, grad=True)), distribution="outliers",
                  seed=1853)
    _within_budget(impl, sc)

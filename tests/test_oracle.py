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

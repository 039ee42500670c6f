"""Diagnosis names the bug a user would recognise, also where two explanations coincide on one example.

A running update with a fixed factor (the momentum argument ignored, e.g. a hard-coded ``0.9 * old + 0.1 * batch``)
and an inverted momentum (``m * old + (1 - m) * batch``) give the same numbers when the scenario's momentum is 0.9:
only a second momentum tells them apart, so an explanation that involves the momentum is confirmed at another one.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from bncheck import compare, diagnose, execute
from bncheck.oracle import TORCH
from bncheck.registry import Registry
from bncheck.scenario import Scenario, Step, materialize

ZOO = Path(__file__).parent / "zoo" / "plugins.py"


def _zoo(name):
    reg = Registry()
    reg.load_file(ZOO)
    return reg.implementations[name]


def _named(impl, momentum):
    sc = Scenario(shape=(6, 3, 4), dtype="float64", param_dtype="float64", momentum=momentum,
                  steps=(Step(True, False), Step(True, False)), seed=11)
    data = materialize(sc)
    trace = execute.run(impl, sc, data)
    cmp = compare.compare(sc, data, trace)
    owned = frozenset({"running_mean", "running_var", "num_batches_tracked"})
    failing = [d for d in cmp.discrepancies if d.field in owned]
    assert failing, "the running statistics must differ from torch's in this scenario"
    return {n.id for n in diagnose.name(impl, sc, data, trace, cmp, owned, failing, TORCH)}


@pytest.mark.parametrize("momentum", [0.9, 0.5])
def test_a_fixed_factor_is_momentum_ignored_even_where_it_equals_the_inverted_momentum(momentum):
    # zoo-momentum-ignored always uses factor 0.1: at momentum 0.9 that is exactly the inverted update
    assert _named(_zoo("zoo-momentum-ignored"), momentum) == {"momentum-ignored"}


@pytest.mark.parametrize("momentum", [0.9, 0.3])
def test_an_inverted_momentum_stays_inverted_momentum(momentum):
    assert _named(_zoo("zoo-inverted-momentum"), momentum) == {"inverted-momentum"}


def test_running_statistics_kept_as_1c11_name_the_drift_not_a_wrong_shape_or_layout():
    """seed-000 keeps its statistics as (1, C, 1, 1): in eval at rank 5 they broadcast into a (N, C, C, H, W)
    output. That is the state's shape drift (declared), not a separate output-shape or layout-not-preserved bug;
    a wrong-shaped output has no memory format to compare. At the quick profile, seed 0 drew exactly that case."""
    import bncheck
    seed_000 = Path(__file__).parent.parent / "implementations" / "seed_000.py"
    r = bncheck.check(str(seed_000), profile="quick", seed=0)
    assert "state-shape-drift" in r.ids and not r.ids & {"output-shape", "layout-not-preserved"}, \
        [f.line() for f in r.findings]
    assert r.verdict == "as expected", (r.unexpected, r.missing)


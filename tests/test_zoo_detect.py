"""The mutant zoo through the whole pipeline: every mutant is detected and named with its catalog id, and every
correct variant comes out clean.

CI runs seed 0 at the ``quick`` profile (the whole zoo in ~35 s of two cores); ``-m slow`` runs the ``default``
profile on seeds 0, 1 and 2, the profile ``bncheck run`` uses (~2.5 min per seed). Each implementation is checked
in a worker process by the same runner ``bncheck run`` uses, so a hang or crash of the harness shows up here too.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from bncheck import runner
from bncheck.registry import Registry

ZOO = Path(__file__).parent / "zoo" / "plugins.py"


def _zoo() -> Registry:
    reg = Registry()
    reg.load_file(ZOO)
    assert not reg.errors, reg.errors
    return reg


ZOO_NAMES = sorted(_zoo().implementations)


def _check_all(seed: int, profile: str) -> dict:
    reg = _zoo()
    impls = [reg.implementations[n] for n in ZOO_NAMES]
    results = runner.run_all(impls, jobs=os.cpu_count() or 2, profile=profile, seed=seed,
                             progress=runner.Progress(len(impls), stream=open(os.devnull, "w")))
    return {r.name: r for r in results}


_RESULTS: dict[tuple, dict] = {}


def _result(seed: int, profile: str, name: str) -> dict:
    if (seed, profile) not in _RESULTS:
        _RESULTS[seed, profile] = _check_all(seed, profile)
    return _RESULTS[seed, profile][name]


def _verify(seed: int, name: str, profile: str = "default"):
    reg_impl = _zoo().implementations[name]
    r = _result(seed, profile, name)
    found = {f.id for f in r.findings}
    detail = "; ".join(f"{f.id} ({f.property}: {f.evidence[-1][:160]})" for f in r.findings)
    if name.startswith("zoo-correct-"):
        assert not found, f"{name} is correct but got findings: {detail}"
        least = 100 if profile == "default" else 50   # quick: a 20 s budget per plugin, shared with the machine
        assert r.cases > least, f"{name}: only {r.cases} cases checked"
    else:
        want = set(reg_impl.expect)
        assert found, f"{name} (defects: {sorted(want)}) was not detected"
        assert found == want, f"{name}: expected exactly {sorted(want)}, got {sorted(found)}: {detail}"
        for named in r.findings:
            assert named.evidence, f"{name}: {named.id} without evidence"
            assert named.scope, f"{name}: {named.id} without a scope"
            assert named.repro or named.id in ("crash", "timeout"), f"{name}: {named.id} without a reproducer"


@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_seed0_quick(name):
    _verify(0, name, "quick")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_default_profile(seed, name):
    _verify(seed, name)


def test_zoo_size():
    reg = _zoo()
    mutants = [n for n in reg.implementations if not n.startswith("zoo-correct-")]
    correct = [n for n in reg.implementations if n.startswith("zoo-correct-")]
    assert len(mutants) >= 25 and len(correct) >= 3
    ids = set().union(*(reg.implementations[n].expect for n in mutants))
    assert len(ids) >= 25, f"the zoo covers only {len(ids)} distinct catalog ids"

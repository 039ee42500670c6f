"""The fusion search: each property with Hypothesis, round after round, until its examples pass.

A round fails on the first case with an owned problem (not excluded or explained by what is named), Hypothesis
shrinks it, ``diagnosis`` names it with its region, and ``record`` enters it in the ledger (its knobs applied to the
reference); the next round goes on outside it. ``database`` (a directory) replays failing examples first and saves
new ones, under a key per plugin, property and round; ``phases`` limits the Hypothesis phases (as for the
BatchNorm kind: the seed is set without switching the database off).
"""
from __future__ import annotations

import math
import time
import unittest
from dataclasses import dataclass, replace

import hypothesis
from hypothesis import HealthCheck, Phase, example, given, reject, settings, target
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.errors import Unsatisfiable

from ..registry import Implementation
from ..results import Finding, PropertyFailure, PropertyResult
from .cases import DIRECTED, FoldScenario, evaluate, fold_scenarios
from .diagnosis import KEY, Named, State, diagnose, owned_problems
from .repro import script

PROFILES = {
    "quick": dict(max_examples=40, rounds=8),
    "default": dict(max_examples=150, rounds=12),
    "thorough": dict(max_examples=1000, rounds=16),
}
PROPERTY_DEADLINE_S = 150.0     # no new round starts after this long (the runner's heartbeat limit is 240 s)


@dataclass(frozen=True)
class FusionProperty:
    name: str
    owns: frozenset            # problem categories
    check_output: bool
    targeted: bool


PROPERTIES = (
    FusionProperty("fold-output", frozenset({"crash", "value", "nan-inf", "dtype"}), True, True),
    FusionProperty("fold-module", frozenset({"module", "dtype", "mutated"}), False, False),
)
BY_NAME = {p.name: p for p in PROPERTIES}
_FAILURES: dict = {}


def _failure(key: str) -> type:
    if key not in _FAILURES:        # one class per failure kind: Hypothesis shrinks each separately
        _FAILURES[key] = type("FoldFailure_" + key.replace("-", "_"), (PropertyFailure,), {})
    return _FAILURES[key]


def record(impl, state: State, res: PropertyResult, prop: str, n: Named, source: str = "search",
           note: str = "") -> bool:
    """Name ``n`` in the ledger (a new id is listed under ``res``); its knobs are assumed. Returns progress."""
    before = state.knobs
    if n.knobs:
        state.knobs = replace(state.knobs, **n.knobs)
    new = n.id not in state.ledger
    f = Finding(n.id, prop, n.where, list(n.evidence) + ([note] if note else []), n.ratio, n.scenario,
                script(impl, n.id, n.where, n.scenario), source=source)
    progress = state.ledger.record(f, n.region, blocking=n.blocking, fields=n.keys)
    if new:
        res.findings.append(f)
    return progress or state.knobs != before


def search_property(impl: Implementation, prop: FusionProperty, *, profile: str = "default", seed: int = 0,
                    device: str = "cpu", index: int = 0, state: State | None = None, database: str | None = None,
                    phases=None) -> PropertyResult:
    """Rounds of one property until one passes. ``state``: what earlier properties established (default:
    nothing); it is updated in place. ``database``, ``phases``: as in ``check_fusion``."""
    conf = PROFILES[profile]
    res = PropertyResult(prop.name)
    t0 = time.monotonic()
    state = state if state is not None else State()
    for rnd in range(conf["rounds"]):
        if time.monotonic() - t0 > PROPERTY_DEADLINE_S:
            break
        last = {}

        def check(sc: FoldScenario):
            # out of the scopes of excluded findings (a crash, a feature with an id of its own) by removing the
            # features their regions hold on (a bias added, groups=1, ...), as the fusion search has always removed a
            # named feature from later draws: each example is spent on a case that can still fail another way
            sc = state.ledger.outside(replace(sc, device=device))
            if sc is None:
                reject()             # inside a finding of every case: nothing to compare
            facets = sc.facets()
            out = evaluate(impl, sc, state.knobs, check_output=prop.check_output)
            if out.unrepresentable:
                hypothesis.assume(False)
            res.cases += 1
            if out.declined is not None:
                res.declined += 1
                return
            owned = owned_problems(out, prop, state, facets)
            if owned or (prop.check_output and out.ratio is not None):
                res.ratios.add(max((p.ratio for p in owned), default=0.0) if owned else out.ratio)
            if prop.check_output and out.ratio is not None and not owned:
                res.worst[sc.dtype] = max(res.worst.get(sc.dtype, 0.0), out.ratio)
            if prop.targeted and out.ratio is not None and math.isfinite(out.ratio):
                target(min(out.ratio, 1e6), label="error/budget")
            if owned:
                last["case"] = (sc, out)
                key = KEY[max(owned, key=lambda p: p.ratio).category]
                raise _failure(key)(f"{prop.name}: {key} on {sc.describe()}")

        phases_ = [Phase.explicit, Phase.generate] + ([Phase.target] if prop.targeted else []) + [Phase.shrink]
        db = None
        if database is not None:
            db, phases_ = DirectoryBasedExampleDatabase(database), [Phase.reuse] + phases_
            check._hypothesis_internal_add_digest = f"bncheck:{impl.name}:{prop.name}:{rnd}".encode()
        if phases is not None:
            phases_ = [ph for ph in phases_ if ph.name in phases]
        test = given(fold_scenarios())(check)
        for sc in DIRECTED:
            test = example(sc)(test)
        test = settings(max_examples=conf["max_examples"], deadline=None, database=db, phases=phases_,
                        suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
                        verbosity=hypothesis.Verbosity.quiet)(test)
        if db is None:
            test = hypothesis.seed(seed * 1000003 + index * 101 + rnd)(test)
        else:         # the same seed, set as hypothesis.seed sets it, without its switching the database off
            test._hypothesis_internal_use_seed = seed * 1000003 + index * 101 + rnd
        try:
            test()
            break
        except (Unsatisfiable, unittest.SkipTest):
            break        # every case drawn was excluded; or no case ran (replay-only phases, nothing stored)
        except PropertyFailure:
            pass
        if "case" not in last:
            break
        sc, out = last["case"]
        progress = False
        for n in diagnose(impl, sc, out, prop, state):
            progress |= record(impl, state, res, prop.name, n)
        if not progress:
            break
    res.seconds = time.monotonic() - t0
    res.assumed = state.knobs
    return res

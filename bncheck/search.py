"""Search: drive Hypothesis over each property for one implementation, shrink, diagnose, repeat.

Per property, search rounds run until one passes: a round's failure is shrunk by Hypothesis to a minimal
scenario and diagnosed, and the ledger (``ledger.py``) records what it named and where it holds (its scope). The
next round searches on outside that: a case in the scope of a named crash is excluded, a field a knob-less finding
explains in its scope is not judged there, a knobbed finding's oracle knobs are assumed. A failure that names an
id already named widens that finding's scope ("also: ...") and the search goes on; a property ends when its
examples are spent without a new failure (or a round learns nothing new). Every property also tries its edge
inputs (``Property.explicit``) on every run. Runs are reproducible: every round's Hypothesis seed derives from
``--seed``, and no example database is used unless one is given (``database``: a directory; the pytest plugin
passes Hypothesis' own, so a failure found once is replayed first, under a key per implementation, property and
round). After the search, expected ids it did not reach are run through their directed probes (``probes.py``),
on top of what the search assumed.
"""
from __future__ import annotations

import math
import time
import unittest
from dataclasses import replace

import hypothesis
from hypothesis import HealthCheck, Phase, given, reject, settings, target
from hypothesis.control import currently_in_test_context
from hypothesis.database import DirectoryBasedExampleDatabase

from . import diagnose, execute, probes
from .compare import compare
from .search_ledger import SearchLedger
from .properties import PROPERTIES, Property
from .registry import Implementation
from .repro import script
from .results import Finding, PropertyFailure, PropertyResult, Result, accepts, summary
from .scenario import Scenario, materialize
from .spend import MIN_CASES, Spending, Spent
from .spec import Spec

PROFILES = {
    "quick": dict(max_examples=12, rounds=3),
    "default": dict(max_examples=40, rounds=4),
    "thorough": dict(max_examples=300, rounds=6),
}
# Structural discrepancies after which nothing else of that step can be compared: a case with only such failures,
# each explained by a finding named before, is excluded (not counted as a pass)
BLOCKING = {"crash", "output-shape", "missing-error"}
CONSEQUENCE_ROUNDS = 3     # rounds that only widen a finding's scope may take up to this many times the new ones


_FAILURES: dict[str, type] = {}


def _failure(key: str) -> type:
    if key not in _FAILURES:   # one exception class per failure kind: Hypothesis shrinks each separately
        _FAILURES[key] = type("Failure_" + key.replace("-", "_").replace(":", "_"), (PropertyFailure,), {})
    return _FAILURES[key]


def dtype_label(sc: Scenario) -> str:
    return sc.dtype if sc.dtype == sc.param_dtype else f"{sc.dtype}+{sc.param_dtype}"


def search_property(impl: Implementation, prop: Property, *, profile: str = "default", seed: int = 0,
                    device: str = "cpu", index: int = 0, ledger: SearchLedger | None = None,
                    database: str | None = None,
                    phases=None, spending: Spending | None = None, share_s: float | None = None) -> PropertyResult:
    """``ledger``: what earlier properties named, where each finding holds and the oracle knobs they established
    (updated in place); this property searches outside those scopes, with those knobs assumed, so a bug named once
    is neither re-diagnosed (and mis-named) nor a reason to stop. ``database``: a Hypothesis example directory to
    replay from and save to (None: none); ``phases``: names of the Hypothesis phases allowed (None: all the
    search uses). ``spending``: the plugin's configurations seen and their measured cost (``spend.py``);
    ``share_s``: this property's share of the plugin's time budget (None: no limit)."""
    conf = PROFILES[profile]
    ledger = ledger if ledger is not None else SearchLedger()
    spending = spending if spending is not None else Spending(None)
    res = PropertyResult(prop.name)
    res.spent = Spent(share_s)
    t0 = time.monotonic()
    deadline = None if share_s is None else t0 + share_s
    named_rounds = 0
    for rnd in range(conf["rounds"] * CONSEQUENCE_ROUNDS):
        if named_rounds >= conf["rounds"]:
            break
        last = {}

        def keys_of(sc, cmp):
            """The failures of this case that nothing named explains here, and whether the case was blocked by a
            failure named before (a crash in its scope: nothing else of that step could be compared)."""
            facets = sc.facets()
            keys, blocked = [], False
            for d in cmp.discrepancies:
                if not prop.owns(d):
                    continue
                if d.structural and d.finding == "nan-inf" and "cancellation" in ledger.known and \
                        sc.reduction_size > 0:
                    continue        # a negative E[x^2]-E[x]^2 variance; an empty batch's NaN is not that
                if ledger.known_discrepancy(d, facets):
                    blocked |= d.structural and d.finding in BLOCKING
                    continue
                keys.append(d.finding if d.structural else "value:" + d.field)
            return sorted(set(keys)), blocked

        def check(sc: Scenario):
            sc = sc.with_(device=device, epilogue=impl.epilogue)
            if deadline is not None and res.spent.ran >= MIN_CASES and \
                    time.monotonic() > deadline + (share_s if "case" in last else 0.0):
                raise _OutOfTime          # (a failure found is shrunk for up to one more share)
            if not spending.affordable(sc, deadline, res.spent):
                res.spent.skipped += 1    # it would compile a new configuration the share cannot pay for
                _skip()
            data = materialize(sc)
            started = time.monotonic()
            trace = execute.run(impl, sc, data)
            spending.ran(sc, time.monotonic() - started, res.spent)
            cmp = compare(sc, data, trace, ledger.base)
            res.cases += 1
            if cmp.declined is not None:     # not a test of this implementation: Hypothesis draws another
                res.declined += 1
                _skip()
            keys, blocked = keys_of(sc, cmp)
            if not keys and blocked:         # nothing but a failure named before, in its scope: excluded
                res.excluded += 1
                _skip()
            ratio = max((cmp.ratios.get(f, 0.0) for f in prop.values), default=0.0)
            label = dtype_label(sc)
            structural = any(d.structural and prop.owns(d) for d in cmp.discrepancies)
            res.ratios.add(math.inf if structural else ratio)
            if not any(d.structural or prop.owns(d) for d in cmp.discrepancies):   # a passing case: how close
                res.worst[label] = max(res.worst.get(label, 0.0), ratio)         # to its budget it came
            if prop.targeted and math.isfinite(ratio) and currently_in_test_context():
                target(min(ratio, 1e6), label="error/budget")
            if keys:
                last["case"] = (sc, data, trace, cmp)
                raise _failure(keys[0])(f"{prop.name}: {keys} on {sc.describe()}")

        use = [Phase.explicit, Phase.generate, Phase.target, Phase.shrink] if prop.targeted else \
            [Phase.explicit, Phase.generate, Phase.shrink]
        db = None
        if database is not None:
            db, use = DirectoryBasedExampleDatabase(database), [Phase.reuse] + use
            check._hypothesis_internal_add_digest = f"bncheck:{impl.name}:{prop.name}:{rnd}".encode()
        if phases is not None:
            use = [ph for ph in use if ph.name in phases]
        test = settings(max_examples=conf["max_examples"], deadline=None, database=db,
                        suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
                        verbosity=hypothesis.Verbosity.quiet, phases=use)(given(prop.strategy)(check))
        if db is None:
            test = hypothesis.seed(seed * 1000003 + index * 101 + rnd)(test)
        else:          # the same seed, set as hypothesis.seed sets it, without its switching the database off
            test._hypothesis_internal_use_seed = seed * 1000003 + index * 101 + rnd
        try:
            test()
            failed = False              # the property holds outside what earlier rounds named
        except hypothesis.errors.Unsatisfiable:
            failed = False              # every scenario drawn was declined or excluded: nothing left to hold
        except unittest.SkipTest:
            failed = False              # no example ran: phases without generation and nothing stored to replay
        except PropertyFailure:
            failed = True
        except _OutOfTime:
            failed, res.spent.ran_out = "case" in last, True
        if not failed and Phase.explicit in use and not res.spent.ran_out:
            try:
                failed = _edges(check, prop)
            except _OutOfTime:
                res.spent.ran_out = True
        if not failed or "case" not in last:
            break
        sc, data, trace, cmp = last["case"]
        facets = sc.facets()
        owned = [d for d in cmp.discrepancies if prop.owns(d) and not ledger.known_discrepancy(d, facets)]
        before = ledger.base
        named = diagnose.name(impl, sc, data, trace, cmp, prop.values, owned, before, numeric_first=prop.targeted)

        def make(n):
            return Finding(n.id, prop.name, n.where, n.evidence, n.ratio, sc,
                           script(impl.name, impl.source, n.id, n.where, sc))
        if named:
            new, changed = ledger.record(impl, sc, named, prop.name, make, before, device)
            res.findings.extend(new)
            named_rounds += bool(new)
        else:
            values = [d for d in owned if not d.structural]
            worst = max(values, key=lambda d: d.ratio) if values else None
            changed = worst is not None and ledger.unattributed(
                impl, sc, data, trace, {d.field for d in values}, worst.where(sc), worst.detail, prop.name, before,
                device)
        if not changed or res.spent.ran_out:
            break                       # nothing learnt from this failure (searching on would find it again),
                                        # or the property's share of the time budget is spent
    res.seconds = res.spent.seconds = time.monotonic() - t0
    res.assumed = ledger.base
    return res


class _OutOfTime(BaseException):
    """The property's share of the time budget is spent (a BaseException: Hypothesis lets it through at once)."""


class _Skipped(Exception):
    """A case that is not a test (declined, or excluded), outside a Hypothesis test (an edge input)."""


def _skip():
    if currently_in_test_context():
        reject()                   # Hypothesis draws another
    raise _Skipped


def _edges(check, prop: Property) -> bool:
    """The property's edge inputs (``Property.explicit``), tried on every run once the drawn examples pass (a
    failure drawn and shrunk is the smaller reproducer); True when one fails."""
    for sc in prop.explicit:
        try:
            check(sc)
        except _Skipped:                # declined, or excluded by what was named
            continue
        except PropertyFailure:
            return True
    return False


CAPABILITIES = {
    "rank 2": dict(ndim=2), "rank 3": dict(ndim=3), "rank 4": dict(ndim=4), "rank 5": dict(ndim=5),
    "float64": dict(dtype="float64"), "float16": dict(dtype="float16"), "bfloat16": dict(dtype="bfloat16"),
    "momentum=None": dict(momentum=None), "affine=False": dict(affine=False),
    "track_running_stats=False": dict(track_running_stats=False),
}


def capabilities(impl: Implementation, device: str = "cpu") -> dict:
    """Which configurations the builder accepts: 'yes', 'declined: why' or 'build error: why'."""
    import torch

    def spec(kw):
        kw = dict(kw)
        if "dtype" in kw:
            kw["dtype"] = getattr(torch, kw["dtype"])
        return Spec(num_features=3, device=device, epilogue=impl.epilogue, **kw)
    return accepts({label: (lambda kw=kw: impl.build(spec(kw))) for label, kw in CAPABILITIES.items()})


def check_implementation(impl: Implementation, *, profile: str = "default", seed: int = 0, device: str = "cpu",
                         properties=None, on_property=None, on_partial=None, database: str | None = None,
                         phases=None, budget_s: float | None = None) -> Result:
    """Search every property; returns the plugin's ``Result`` for the report (``database``, ``phases``: as in
    ``search_property``).

    ``on_partial(result)`` receives the result so far after each property (what survives a later hang)."""
    props = [p for p in PROPERTIES if properties is None or p.name in properties]
    t0 = time.monotonic()
    results = []
    ledger = SearchLedger()
    spending = Spending.for_profile(profile, budget_s)
    for i, prop in enumerate(props):
        if on_property:
            on_property(prop.name, None)     # started
        r = search_property(impl, prop, profile=profile, seed=seed, device=device, index=i, ledger=ledger,
                            database=database, phases=phases, spending=spending,
                            share_s=spending.share(len(props) - i))
        results.append(r)
        if on_property:
            on_property(prop.name, r)
        if on_partial:
            on_partial(summarize(impl, results, {}, time.monotonic() - t0))
    # expected ids a shorter search did not reach: their directed probes, on top of what the search assumed
    if on_property:
        on_property("probes", None)
    probed = probes.confirm_expected(impl, ledger, device)
    if probed is not None:
        results.append(probed)
        if on_property:
            on_property("probes", probed)
    ledger.consolidate()                  # one bug, one id
    for r in results:
        r.findings = [f for f in r.findings if ledger.findings.get(f.id) is f]
    return summarize(impl, results, capabilities(impl, device), time.monotonic() - t0)


def summarize(impl: Implementation, results: list, caps: dict, seconds: float) -> Result:
    return summary(impl, "batchnorm", results, caps, seconds,
                   size=lambda f: (len(f.scenario.steps), math.prod(f.scenario.shape)))

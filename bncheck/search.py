"""Search: drive Hypothesis over each property for one implementation, shrink, diagnose, repeat.

Per property, search rounds run until one passes: a round's failure is shrunk by Hypothesis to a minimal
scenario, diagnosed, and its named bug is then *assumed* by the next round (its oracle knobs applied, its
structural id ignored), so the next round can only fail on a different bug. Runs are reproducible: every
round's Hypothesis seed derives from ``--seed``, and no example database is used unless one is given (``database``:
a directory; the pytest plugin passes Hypothesis' own, so a failure found once is replayed first, under a key per
implementation, property and round). After the search, expected ids it did not reach are run through their
directed probes (``probes.py``), on top of what the search assumed.
"""
from __future__ import annotations

import math
import time
import unittest
from dataclasses import replace

import hypothesis
from hypothesis import HealthCheck, Phase, given, reject, settings, target
from hypothesis.database import DirectoryBasedExampleDatabase

from . import diagnose, execute, probes
from .compare import compare
from .oracle import TORCH, Knobs
from .properties import PROPERTIES, Property
from .registry import Implementation
from .repro import script
from .results import Finding, PropertyFailure, PropertyResult, Result, accepts, summary
from .scenario import Scenario, materialize
from .spec import Spec

PROFILES = {
    "quick": dict(max_examples=12, rounds=3),
    "default": dict(max_examples=40, rounds=4),
    "thorough": dict(max_examples=300, rounds=6),
}
CRASH_FAMILY = {"crash", "momentum-none", "non-contiguous-crash", "rank-unsupported"}
UNEXPLAINED = {"output-mismatch", "cancellation", "low-precision-accumulation"}


_FAILURES: dict[str, type] = {}


def _failure(key: str) -> type:
    if key not in _FAILURES:   # one exception class per failure kind: Hypothesis shrinks each separately
        _FAILURES[key] = type("Failure_" + key.replace("-", "_").replace(":", "_"), (PropertyFailure,), {})
    return _FAILURES[key]


def dtype_label(sc: Scenario) -> str:
    return sc.dtype if sc.dtype == sc.param_dtype else f"{sc.dtype}+{sc.param_dtype}"


def search_property(impl: Implementation, prop: Property, *, profile: str = "default", seed: int = 0,
                    device: str = "cpu", index: int = 0, base: Knobs = TORCH,
                    named: frozenset = frozenset(), database: str | None = None,
                    phases=None) -> PropertyResult:
    """``base`` and ``named``: the knob settings and finding ids earlier properties established; this property
    assumes them, so a bug named once is not re-diagnosed (and mis-named) in another property's scenarios.
    ``database``: a Hypothesis example directory to replay from and save to (None: none); ``phases``: names of the
    Hypothesis phases allowed (None: all the search uses)."""
    conf = PROFILES[profile]
    res = PropertyResult(prop.name)
    t0 = time.monotonic()
    ignore: set[str] = set(named)
    ignored_fields: set[str] = set()
    for rnd in range(conf["rounds"]):
        last = {}

        def keys_of(sc, cmp):
            keys = []
            for d in cmp.discrepancies:
                if not prop.owns(d):
                    continue
                if d.structural:
                    fid = d.finding
                    if fid == "crash" and ignore & CRASH_FAMILY:
                        fid = diagnose.classify_crash(impl, sc, base)[0]
                    if fid == "nan-inf" and "cancellation" in ignore and sc.reduction_size > 0:
                        continue        # a negative E[x^2]-E[x]^2 variance; an empty batch's NaN is not that
                    if fid not in ignore:
                        keys.append(fid)
                elif d.field not in ignored_fields:
                    keys.append("value:" + d.field)
            return sorted(set(keys))

        def check(sc: Scenario):
            sc = sc.with_(device=device)
            data = materialize(sc)
            trace = execute.run(impl, sc, data)
            cmp = compare(sc, data, trace, base)
            res.cases += 1
            if cmp.declined is not None:     # not a test of this implementation: Hypothesis draws another
                res.declined += 1
                reject()
            ratio = max((cmp.ratios.get(f, 0.0) for f in prop.values), default=0.0)
            label = dtype_label(sc)
            structural = any(d.structural and prop.owns(d) for d in cmp.discrepancies)
            res.ratios.add(math.inf if structural else ratio)
            if not any(d.structural or prop.owns(d) for d in cmp.discrepancies):   # a passing case: how close
                res.worst[label] = max(res.worst.get(label, 0.0), ratio)         # to its budget it came
            if prop.targeted and math.isfinite(ratio):
                target(min(ratio, 1e6), label="error/budget")
            keys = keys_of(sc, cmp)
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
            break                       # the property holds (given what earlier rounds named)
        except hypothesis.errors.Unsatisfiable:
            break                       # every scenario drawn was declined: nothing to hold against it
        except unittest.SkipTest:
            break                       # no example ran: phases without generation and nothing stored to replay
        except PropertyFailure:
            pass
        if "case" not in last:
            break
        sc, data, trace, cmp = last["case"]
        owned = [d for d in cmp.discrepancies if prop.owns(d)]
        named = diagnose.name(impl, sc, data, trace, cmp, prop.values, owned, base, numeric_first=prop.targeted)
        new = [n for n in named if n.id not in ignore]
        if not new:
            # named before (by an earlier property): assume it here too, and search on if that changes anything
            before = (base, len(ignored_fields))
            for n in named:
                base = replace(base, **n.knobs)
                if n.id in UNEXPLAINED:
                    ignored_fields.update(d.field for d in owned if not d.structural)
            if (base, len(ignored_fields)) == before:
                break
            continue
        for n in new:
            res.findings.append(Finding(n.id, prop.name, n.where, n.evidence, n.ratio, sc,
                                        script(impl.name, impl.source, n.id, n.where, sc)))
            ignore.add(n.id)
            if n.knobs:
                base = replace(base, **n.knobs)
            if n.id in UNEXPLAINED:
                ignored_fields.update(d.field for d in owned if not d.structural)
    res.seconds = time.monotonic() - t0
    res.assumed = base
    return res


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
        return Spec(num_features=3, device=device, **kw)
    return accepts({label: (lambda kw=kw: impl.build(spec(kw))) for label, kw in CAPABILITIES.items()})


def check_implementation(impl: Implementation, *, profile: str = "default", seed: int = 0, device: str = "cpu",
                         properties=None, on_property=None, on_partial=None, database: str | None = None,
                         phases=None) -> Result:
    """Search every property; returns the plugin's ``Result`` for the report (``database``, ``phases``: as in
    ``search_property``).

    ``on_partial(result)`` receives the result so far after each property (what survives a later hang)."""
    props = [p for p in PROPERTIES if properties is None or p.name in properties]
    t0 = time.monotonic()
    results = []
    base, named = TORCH, frozenset()
    for i, prop in enumerate(props):
        if on_property:
            on_property(prop.name, None)     # started
        r = search_property(impl, prop, profile=profile, seed=seed, device=device, index=i, base=base, named=named,
                            database=database, phases=phases)
        base, named = r.assumed, named | {f.id for f in r.findings}
        results.append(r)
        if on_property:
            on_property(prop.name, r)
        if on_partial:
            on_partial(summarize(impl, results, {}, time.monotonic() - t0))
    # expected ids a shorter search did not reach: their directed probes, on top of what the search assumed
    if on_property:
        on_property("probes", None)
    probed = probes.confirm_expected(impl, named, base, device)
    if probed is not None:
        results.append(probed)
        if on_property:
            on_property("probes", probed)
    return summarize(impl, results, capabilities(impl, device), time.monotonic() - t0)


def summarize(impl: Implementation, results: list, caps: dict, seconds: float) -> Result:
    return summary(impl, "batchnorm", results, caps, seconds,
                   size=lambda f: (len(f.scenario.steps), math.prod(f.scenario.shape)))

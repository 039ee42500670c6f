"""Directed probes for sync plugins: for each id a sync search can name, the few scenarios that show it.

As for the BatchNorm kind (``bncheck.probes``): after the search, each id a plugin declares in ``expect`` that the
search did not name is probed. Its scenarios run on the same rank pool, one after another, judged by the property
that owns the id on top of what the search established (its knobs applied, each scenario moved out of its
crashes' scopes by changing what they hold on to its plain value: rank 4 for a plugin that rejects rank 3), until
one is named that id by the search's own diagnosis (``diagnosis.diagnose`` for values, the isolated region for a
crash). Then the finding is reported with ``source="probe"``; otherwise the id stays *not reproduced*.

Scenarios are built for the largest world size checked (``R``): uneven shards with a single-sample rank and rank
means far apart (where merging, weighting and the running variance's count differ most), large offsets in float32
for a one-pass variance, and a sweep over input ranks, momentum=None, track_running_stats=False, affine=False,
float64 and an empty shard for crashes and what no knob expresses. ``timeout`` has no probe: a hang cannot be
provoked without hanging the check.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable

from ..catalog import CATALOG
from ..results import Finding, PropertyResult
from ..scope import isolate
from .cases import discriminating, uneven_shards
from .diagnosis import crash_id, diagnose
from .facets import FACETS
from .ranks import Declined, RankFailure
from .reference import SyncScenario, compare, materialize
from .search import BY_NAME, EVERY_FIELD, PROPERTIES, SyncSearch

CRASHES = {"crash", "rank-unsupported", "momentum-none"}


@dataclass(frozen=True)
class Probe:
    property: str | None                                  # the judging property (None: every field)
    scenarios: Callable[[int], tuple]                     # world size -> scenarios, tried in order


def _uneven(R: int, **kw) -> SyncScenario:
    return replace(discriminating(R), **kw)


def _sweep(R: int) -> tuple:
    base = _uneven(R, steps=(True, False))
    empty = (0,) + uneven_shards(R)[1:] if R > 1 else (3,)
    return (tuple(replace(base, spatial=s) for s in ((3,), (), (2, 3), (2, 1, 3)))
            + (replace(base, momentum=None, steps=(True, True, False)), replace(base, track_running_stats=False),
               replace(base, affine=False), replace(base, dtype="float64"), replace(base, shards=empty),
               replace(base, offset=1e4)))


SWEEP = Probe(None, _sweep)
PROBES: dict[str, Probe] = {
    # rank means far apart: the spread between rank means is all a mean of variances loses
    "sync-mean-of-variances": Probe("sync-forward", lambda R: (_uneven(R), _uneven(R, spatial=(), rank_shift=3.0))),
    # a single-sample rank among larger ones: equal weights are far from count weights
    "sync-uneven-batch": Probe("sync-forward", lambda R: (_uneven(R), _uneven(R, spatial=(), rank_shift=3.0))),
    # the single-sample rank's n / (n - 1) is infinite, the others' far from the global one
    "sync-local-count": Probe("sync-running-stats", lambda R: (_uneven(R, spatial=()), _uneven(R))),
    "biased-running-var": Probe("sync-running-stats", lambda R: (_uneven(R, spatial=()), _uneven(R))),
    "num-batches-tracked-wrong": Probe("sync-running-stats", lambda R: (_uneven(R, spatial=()), _uneven(R))),
    "sync-grad-not-reduced": Probe("sync-gradients", lambda R: (_uneven(R, steps=(True,)),
                                                                _uneven(R, spatial=(), steps=(True,)))),
    # channel means 1e4 (then 1e2) std from 0 in float32: E[x^2]-E[x]^2 keeps few digits of the variance
    "cancellation": Probe("sync-forward", lambda R: tuple(_uneven(R, steps=(True,), offset=o, rank_shift=0.0)
                                                          for o in (1e4, 100.0))),
}
NO_PROBE = {"timeout"}


def probe_for(fid: str) -> Probe | None:
    """The probe of an id a sync search can name (the sweep for crashes and ``sync-mismatch``), or None."""
    entry = CATALOG.get(fid)
    if entry is None or fid in NO_PROBE:
        return None
    if fid in PROBES:
        return PROBES[fid]
    if fid in CRASHES or fid == "sync-mismatch":
        return SWEEP
    return None


def _property_of(fields) -> str:
    return next((p.name for p in PROPERTIES if set(p.fields) & set(fields)), PROPERTIES[0].name)


def run_probe(search: SyncSearch, res: PropertyResult, fid: str, world_size: int) -> tuple[list, int]:
    """Probe ``fid``: the ids newly named by the first scenario that shows it (``fid`` among them), recorded in
    ``search``'s ledger and listed under ``res``; and how many scenarios ran."""
    probe = probe_for(fid)
    if probe is None:
        return [], 0
    owned = BY_NAME[probe.property].fields if probe.property else EVERY_FIELD
    scenarios = probe.scenarios(world_size)
    note = f"the search did not reach it; confirmed by the directed probe for {fid} (scenario {{}} of " \
           f"{len(scenarios)})"
    for i, sc in enumerate(scenarios, 1):
        sc = search.ledger.outside(replace(sc, device=search.device))   # what a named crash excludes, removed
        if sc is None or not search.fits(sc):
            continue
        facets = sc.facets()
        data = materialize(sc)
        try:
            observed = search.run(sc, data)
        except Declined:
            continue
        except RankFailure as e:
            if fid not in CRASHES or e.kind != "crash":
                continue
            region, lines = isolate(sc, FACETS, search.crashes)
            if crash_id(region, sc) != fid:
                continue
            where = f"rank {e.ranks[0]}" if e.ranks else "ranks"
            f = Finding(fid, PROPERTIES[0].name, where, [e.message] + lines + [note.format(i)], float("inf"), sc,
                        search.script(fid, where, sc), source="probe")
            search.record(res, f, region, blocking=True)
            return [fid], i
        if fid in CRASHES:
            continue
        open_fields = [f for f in owned if not search.ledger.explains(f, facets)]
        cmp = compare(sc, data, observed, search.base)
        failing = sorted({d.field for d in cmp.failing(open_fields)})
        if not failing:
            continue
        before = search.base
        named, shows = diagnose(search.run, before, sc, data, observed, cmp, open_fields)
        if not any(n.id == fid for n in named):
            continue
        region, lines = isolate(shows, FACETS, lambda v: search.mismatches(v, before, failing))
        prop = probe.property or _property_of(failing)
        out = []
        for n in named:
            if n.knobs:
                search.base = replace(search.base, **n.knobs)
            if n.id in search.ledger:
                continue
            f = Finding(n.id, prop, n.where, list(n.evidence) + lines + [note.format(i)], n.ratio, sc,
                        search.script(n.id, n.where, sc), source="probe")
            search.record(res, f, region, fields=() if n.knobs else failing)
            out.append(n.id)
        return out, i
    return [], len(scenarios)


def confirm_expected(search: SyncSearch, found, world_size: int) -> PropertyResult | None:
    """Probe every expected id the search did not name; confirmed ones become findings with ``source='probe'``.
    None when nothing was left to probe."""
    # crashes first: a crash the search did not name would otherwise hide the scenarios of the ids behind it
    todo = sorted((fid for fid in CATALOG if fid in search.impl.expect and fid not in found and probe_for(fid)),
                  key=lambda fid: fid not in CRASHES)
    if not todo:
        return None
    res = PropertyResult("probes")
    t0 = time.monotonic()
    for fid in todo:
        if fid in search.ledger:       # named by an earlier probe, with the id probed then
            continue
        _, ran = run_probe(search, res, fid, world_size)
        res.cases += ran
    res.seconds = time.monotonic() - t0
    return res

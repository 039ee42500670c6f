"""The distributed search: each property at each world size, with Hypothesis, until its examples pass.

A round draws scenarios (``cases.scenarios``) and runs each on every rank; it fails on the first case that crashes
or whose owned fields are over budget against the sync reference, and Hypothesis shrinks that case. The case is
named (``diagnosis``) and its region isolated (``scope.isolate``: for a crash, which single change makes it run;
for wrong values, which single change makes them right), and the next round goes on *outside* what is named
(``ledger``): a case inside a named crash's scope is excluded, a field inside the scope of a knob-less finding
(``sync-mismatch``) is ignored there, a knobbed finding's knobs are applied to the reference. A failure that names
an id named before widens that finding's scope and is kept under it as "also: ..." evidence. A property ends when
a round's examples pass (or every case drawn is excluded); ``rounds`` only bounds the search.

Rank failures: a crash that leaves every rank alive (one raised; the ranks waiting on it in a collective fail
as soon as it abandons the group) is shrunk like any failure. One that breaks the pool (a rank died, or did not
answer within the grace) is not shrunk, since each try would cost replacing that rank (``RankPool.respawn``: about
2 s per rank, starting a process that imports torch); it is isolated on the case as drawn, each crashing variant
replacing it again, and the search goes on. A timeout ends the check: every further try would wait for the full
limit again.

Runs are reproducible: each round's Hypothesis seed derives from ``seed``, the world size, the property and the
round. ``database`` (a directory) is where failing examples are saved and replayed from first, under a key per
plugin, property, world size and round; ``phases`` limits the Hypothesis phases, as for the BatchNorm kind.
"""
from __future__ import annotations

import math
import re
import time
import unittest
from dataclasses import dataclass, replace

import hypothesis
from hypothesis import HealthCheck, Phase, example, given, reject, settings
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.errors import Flaky, Unsatisfiable

from ..ledger import Ledger
from ..results import Finding, PropertyFailure, PropertyResult
from ..scope import EVERY, isolate
from .cases import edges, payloads, scenarios
from .diagnosis import crash_id, diagnose
from .facets import FACETS
from .ranks import Declined, RankFailure, RankPool
from .reference import TORCH_SYNC, SyncKnobs, SyncScenario, compare, materialize, torch_raises_at

PROFILES = {
    "quick": dict(max_examples=8, rounds=8),
    "default": dict(max_examples=20, rounds=12),
    "thorough": dict(max_examples=100, rounds=20),
}
HEARTBEAT_S = 2.0


@dataclass(frozen=True)
class SyncProperty:
    name: str
    fields: tuple


PROPERTIES = (
    SyncProperty("sync-forward", ("output",)),
    SyncProperty("sync-running-stats", ("running_mean", "running_var", "num_batches_tracked")),
    SyncProperty("sync-gradients", ("dx", "dweight", "dbias")),
)
BY_NAME = {p.name: p for p in PROPERTIES}
EVERY_FIELD = tuple(f for p in PROPERTIES for f in p.fields)


def raises_as_torch(sc: SyncScenario, failure: RankFailure) -> bool:
    """A rank failure at or after the step where torch's SyncBatchNorm raises too (``reference.torch_raises_at``):
    not a finding."""
    k = torch_raises_at(sc)
    at = re.search(r"(?:forward|backward) of step (\d+)", failure.message)
    return failure.kind != "timeout" and k is not None and at is not None and int(at.group(1)) >= k


class _Abort(BaseException):
    """A crash that broke the pool, or a timeout: not shrunk (Hypothesis re-raises BaseExceptions at once)."""

    def __init__(self, failure: RankFailure, sc: SyncScenario):
        super().__init__(failure.message)
        self.failure, self.sc = failure, sc


_FAILURES: dict[str, type] = {}


def _failure(key: str) -> type:
    if key not in _FAILURES:     # one class per failure kind: Hypothesis shrinks each separately
        _FAILURES[key] = type("SyncFailure_" + key.replace("-", "_"), (PropertyFailure,), {})
    return _FAILURES[key]


class SyncSearch:
    """The state of one ``check_sync`` call: pool, assumed knobs, the ledger of findings, results, heartbeat."""

    def __init__(self, impl, profile: str, seed: int, device: str, on_property, timeout_s: float,
                 database: str | None = None, phases=None, script=None):
        self.impl, self.conf, self.seed, self.device = impl, PROFILES[profile], seed, device
        self.on_property, self.timeout_s = on_property, timeout_s
        self.database, self.phases = database, phases
        self.script = script or (lambda fid, where, sc: "")
        self.base: SyncKnobs = TORCH_SYNC
        self.ledger = Ledger(FACETS)
        self.results = {p.name: PropertyResult(p.name) for p in PROPERTIES}
        self.declines: dict[int, list] = {}
        self.compared: dict[int, int] = {}
        self.notes: dict[int, str] = {}
        self.restarts: dict[int, tuple] = {}          # world size -> (ranks replaced, seconds)
        self.pool: RankPool | None = None
        self._beat = 0.0

    def beat(self, prop: str, force: bool = False):
        now = time.monotonic()
        if self.on_property and (force or now - self._beat > HEARTBEAT_S):
            self._beat = now
            self.on_property(prop, None)

    # -- running scenarios -----------------------------------------------------------------------------------------
    def run(self, sc: SyncScenario, data) -> list:
        """Every rank's results (raises ``Declined`` / ``RankFailure``; after a crash that broke the group, the
        pool has replaced its stuck and dead workers and a new group is formed here)."""
        if self.pool.world != sc.world_size:
            self.pool.join(sc.world_size)
        return self.pool.run(payloads(sc, data), self.timeout_s)

    def fits(self, sc: SyncScenario) -> bool:
        return sc.world_size <= self.pool.size

    def crashes(self, sc: SyncScenario) -> bool:
        """Whether ``sc`` fails to run (a variant that cannot be run here, or is declined, cannot tell: True)."""
        sc = replace(sc, device=self.device)
        if not self.fits(sc):
            return True
        try:
            self.run(sc, materialize(sc))
            return False
        except (Declined, RankFailure):     # incl. where torch raises too (raises_as_torch): that cannot tell either
            return True

    def mismatches(self, sc: SyncScenario, knobs: SyncKnobs, fields) -> bool:
        """Whether ``sc`` still fails in ``fields`` under ``knobs`` (one that cannot tell: True)."""
        sc = replace(sc, device=self.device)
        if not self.fits(sc):
            return True
        data = materialize(sc)
        try:
            observed = self.run(sc, data)
        except (Declined, RankFailure):
            return True
        return bool(compare(sc, data, observed, knobs).failing(fields))

    # -- naming --------------------------------------------------------------------------------------------------
    def record(self, res: PropertyResult, f: Finding, region, **kw) -> bool:
        """``ledger.record``; a new id's finding is listed under ``res`` (the property that named it)."""
        new = f.id not in self.ledger
        progress = self.ledger.record(f, region, **kw)
        if new:
            res.findings.append(f)
        return progress

    def name_crash(self, prop: str, sc: SyncScenario, failure: RankFailure, shrunk: bool = True) -> bool:
        """A crash (or a timeout): isolated (a timeout is not: every case), named, recorded. Returns progress."""
        where = f"rank {failure.ranks[0]}" if failure.ranks else "ranks"
        evidence = [failure.message]
        if failure.kind == "timeout":
            region, fid = EVERY.regions[0], "timeout"
        else:
            region, lines = isolate(sc, FACETS, self.crashes)
            fid = crash_id(region, sc)
            evidence += lines
            if not shrunk:
                evidence.append("not shrunk: a rank died or hung (each try replaces it, about 2 s)")
        f = Finding(fid, prop, where, evidence, math.inf, sc, self.script(fid, where, sc))
        return self.record(self.results[prop], f, region, blocking=True)

    def name_values(self, prop: SyncProperty, sc: SyncScenario, data, observed, cmp, open_fields) -> bool:
        """Wrong values: named by the knobs (assumed from then on) or as ``sync-mismatch`` (its fields ignored
        within its scope). The region: the single changes that make the mismatch go away, tried on the case itself
        for ``sync-mismatch`` and, for a knob, on the scenario that confirmed it (where its effect is largest: a
        shrunk case is often only just over budget, and a change of dtype or size would hide it there). Returns
        progress."""
        before = self.base
        failing = sorted({d.field for d in cmp.failing(open_fields)})
        named, shows = diagnose(self.run, before, sc, data, observed, cmp, open_fields)
        region, lines = isolate(shows, FACETS, lambda v: self.mismatches(v, before, failing))
        progress = False
        for n in named:
            if n.knobs:
                self.base = replace(self.base, **n.knobs)
            f = Finding(n.id, prop.name, n.where, list(n.evidence) + lines, n.ratio, sc,
                        self.script(n.id, n.where, sc))
            progress |= self.record(self.results[prop.name], f, region, fields=() if n.knobs else failing)
        return progress or self.base != before

    # -- one property at one world size --------------------------------------------------------------------------
    def search(self, prop: SyncProperty, ws: int, index: int) -> str:
        """Rounds until one passes; 'ok', or 'stop-all' after a timeout."""
        res = self.results[prop.name]
        t0 = time.monotonic()
        outcome = "ok"
        for rnd in range(self.conf["rounds"]):
            last = {}

            def check(sc: SyncScenario):
                sc = replace(sc, device=self.device)
                facets = sc.facets()
                if self.ledger.blocked(facets) is not None:
                    reject()            # inside a named crash's scope: nothing to compare
                self.beat(prop.name)
                data = materialize(sc)
                try:
                    observed = self.run(sc, data)
                except Declined as e:
                    res.cases += 1      # cases count every scenario drawn, declined ones too (as for every kind)
                    res.declined += 1
                    self.declines.setdefault(ws, []).append(str(e))
                    return
                except RankFailure as e:
                    res.cases += 1
                    if raises_as_torch(sc, e):
                        return          # torch's SyncBatchNorm raises there too
                    if e.broken or e.kind == "timeout":
                        raise _Abort(e, sc)
                    res.ratios.add(math.inf)
                    last["case"] = (sc, data, None, e)
                    raise _failure(e.kind)(e.message)
                res.cases += 1
                self.compared[ws] = self.compared.get(ws, 0) + 1
                cmp = compare(sc, data, observed, self.base)
                open_fields = [f for f in prop.fields if not self.ledger.explains(f, facets)]
                worst = cmp.worst(open_fields)
                res.ratios.add(worst)
                keys = sorted({d.field for d in cmp.failing(open_fields)})
                if not keys:          # a passing case: how close to its budget it came
                    res.worst[sc.dtype] = max(res.worst.get(sc.dtype, 0.0), worst)
                    return
                last["case"] = (sc, data, observed, cmp)
                last["open"] = open_fields
                raise _failure(keys[0])(f"{prop.name}: {keys} on {sc.describe()}")

            try:
                self._hypothesis(check, prop, ws, index, rnd)()
                break
            except (Unsatisfiable, unittest.SkipTest):
                break        # every case drawn was excluded or declined; or no case ran (replay-only phases)
            except (PropertyFailure, Flaky):   # flaky: a plugin that fails only sometimes
                pass
            except _Abort as a:
                f = a.failure
                progress = self.name_crash(prop.name, a.sc, f, shrunk=False)
                if f.kind == "timeout":
                    self.notes[ws] = f"after a timeout ({f.message[:200]})"
                    outcome = "stop-all"
                    break
                if not progress:
                    break
                continue
            if "case" not in last:
                break
            sc, data, observed, cmp = last["case"]
            if observed is None:
                progress = self.name_crash(prop.name, sc, cmp)
            else:
                progress = self.name_values(prop, sc, data, observed, cmp, last["open"])
            if not progress:
                break
        res.seconds += time.monotonic() - t0
        return outcome

    def _hypothesis(self, check, prop: SyncProperty, ws: int, index: int, rnd: int):
        use = [Phase.explicit, Phase.generate, Phase.shrink]
        db = None
        if self.database is not None:
            db, use = DirectoryBasedExampleDatabase(self.database), [Phase.reuse] + use
            check._hypothesis_internal_add_digest = f"bncheck:{self.impl.name}:{prop.name}:{ws}:{rnd}".encode()
        if self.phases is not None:
            use = [ph for ph in use if ph.name in self.phases]
        test = settings(max_examples=self.conf["max_examples"], deadline=None, database=db,
                        suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
                        verbosity=hypothesis.Verbosity.quiet, phases=use)(given(scenarios(ws))(check))
        for edge in edges(ws):
            test = example(edge)(test)
        seed = self.seed * 1000003 + ws * 7919 + index * 101 + rnd
        if db is None:
            return hypothesis.seed(seed)(test)
        test._hypothesis_internal_use_seed = seed   # as hypothesis.seed sets it, without switching the database off
        return test

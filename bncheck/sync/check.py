"""Distributed check: synchronised BatchNorm plugins on real torch.distributed ranks, against the sync reference.

``check_sync`` keeps one pool of rank processes (``bncheck.sync.ranks``) and, for each world size, forms a process group
and searches each property with Hypothesis: scenarios of uneven shards (a rank with a single sample included), ranks
2 to 5, float32/float64, momentum (None included), eps, affine, large offsets, rank-shifted means and several steps.
Each rank's results are compared with the float64 sync reference (``bncheck.sync.reference``) under derived budgets.

A failure is shrunk by Hypothesis and diagnosed: the reference's knobs are flipped (singly, then in pairs) and a
setting that brings every field of the property back within budget names the catalog id; it must hold again on two
fresh scenarios (reseeded; uneven shards with rank means far apart, where unweighted averaging and a mean of
variances cannot hide). Later rounds, properties and world sizes assume the named bug (its knobs applied), so every
bug of one plugin gets its own name. A rank that raises, dies or hangs is a ``crash``/``timeout`` finding naming the
rank; a crash that leaves other ranks stuck, or a timeout, is not shrunk (each try would cost a pool restart) and
ends that world size (a timeout ends the check).
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field, replace

import hypothesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Flaky

from ..catalog import knob_hypotheses
from .ranks import Declined, RankFailure, RankPool
from ..registry import Implementation
from ..repro import load_plugin
from ..results import Finding, Named, PropertyFailure, PropertyResult, Result, summary
from .reference import TORCH_SYNC, SyncKnobs, SyncScenario, compare, materialize, shard

PROFILES = {
    "quick": dict(max_examples=8, rounds=3),
    "default": dict(max_examples=20, rounds=4),
    "thorough": dict(max_examples=100, rounds=6),
}
SCENARIO_TIMEOUT_S = 30.0       # one scenario on every rank; a correct plugin needs well under a second
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


# -- scenarios ----------------------------------------------------------------------------------------------------

@st.composite
def scenarios(draw, world_size: int) -> SyncScenario:
    lo = 2 if world_size == 1 else 1            # torch needs more than one value per channel over all ranks
    shards = tuple(draw(st.integers(lo, 5), label=f"shard {r}") for r in range(world_size))
    spatial_rank = draw(st.sampled_from([0, 1, 2, 3]), label="spatial axes")
    spatial = tuple(draw(st.integers(1, 3)) for _ in range(spatial_rank))
    return SyncScenario(
        shards=shards, channels=draw(st.integers(1, 4), label="channels"), spatial=spatial,
        dtype=draw(st.sampled_from(["float32", "float64"]), label="dtype"),
        steps=tuple(draw(st.lists(st.booleans(), min_size=1, max_size=3), label="train steps")),
        momentum=draw(st.one_of(st.just(0.1), st.none(), st.sampled_from([0.5, 1.0, 0.01])), label="momentum"),
        eps=draw(st.sampled_from([1e-5, 1e-3, 0.1]), label="eps"), affine=draw(st.booleans(), label="affine"),
        offset=draw(st.sampled_from([0.0, 100.0, 1e4]), label="offset"),
        rank_shift=draw(st.sampled_from([0.0, 1.0, 3.0]), label="rank_shift"),
        seed=draw(st.integers(0, 2 ** 16), label="seed"))


def uneven_shards(world_size: int) -> tuple:
    """Distinct local batch sizes with a single-sample rank: where weighting by count matters."""
    return tuple((1, 4, 2, 5, 3, 6)[r % 6] + 6 * (r // 6) for r in range(world_size)) if world_size > 1 else (3,)


def discriminating(world_size: int, seed: int = 1) -> SyncScenario:
    """An explicit first example per world size: uneven shards incl. one sample, rank means far apart."""
    return SyncScenario(shards=uneven_shards(world_size), channels=2, spatial=(3,), steps=(True, True, False),
                        rank_shift=2.0, seed=seed)


def payloads(sc: SyncScenario, data) -> list[dict]:
    init = {"running_mean": data.running_mean.numpy(), "running_var": data.running_var.numpy()}
    if sc.affine:
        init.update(weight=data.weight.numpy(), bias=data.bias.numpy())
    return [{"spec": sc.spec_kwargs(), "dtype": sc.dtype, "init": init,
             "steps": [{"train": tr, "x": shard(sc, x, r).numpy(), "dy": shard(sc, dy, r).numpy()}
                       for tr, x, dy in zip(sc.steps, data.xs, data.dys)]} for r in range(sc.world_size)]


def run_scenario(pool: RankPool, sc: SyncScenario, data, timeout_s: float = SCENARIO_TIMEOUT_S) -> list:
    """Every rank's results for one scenario (raises ``Declined`` / ``RankFailure``)."""
    if pool.world != sc.world_size:
        pool.join(sc.world_size)
    return pool.run(payloads(sc, data), timeout_s)


# -- search -------------------------------------------------------------------------------------------------------

@dataclass
class Masks:
    """What earlier rounds named, assumed by later ones (shared across properties and world sizes)."""
    base: SyncKnobs = TORCH_SYNC
    ignore: set = field(default_factory=set)
    ignored_fields: set = field(default_factory=set)


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


class _Check:
    """The state of one check_sync call: pool, masks, results, findings, and the heartbeat."""

    def __init__(self, impl, profile, seed, device, on_property, timeout_s):
        self.impl, self.conf, self.seed, self.device = impl, PROFILES[profile], seed, device
        self.on_property, self.timeout_s = on_property, timeout_s
        self.masks = Masks()
        self.results = {p.name: PropertyResult(p.name) for p in PROPERTIES}
        self.declines: dict[int, list] = {}
        self.compared: dict[int, int] = {}
        self.notes: dict[int, str] = {}
        self.pool: RankPool | None = None
        self._beat = 0.0

    def beat(self, prop: str, force: bool = False):
        now = time.monotonic()
        if self.on_property and (force or now - self._beat > HEARTBEAT_S):
            self._beat = now
            self.on_property(prop, None)

    def finding(self, prop: str, fid: str, where: str, evidence: list, ratio: float, sc: SyncScenario):
        res = self.results[prop]
        res.findings.append(Finding(fid, prop, where, evidence, ratio, sc,
                                    script(self.impl.name, self.impl.source, fid, where, sc)))

    # one property at one world size: rounds until one passes ------------------------------------------------------
    def search(self, prop: SyncProperty, ws: int, index: int) -> str:
        res, m = self.results[prop.name], self.masks
        t0 = time.monotonic()
        outcome = "ok"
        for rnd in range(self.conf["rounds"]):
            owned = tuple(f for f in prop.fields if f not in m.ignored_fields)
            last = {}

            def check(sc: SyncScenario):
                sc = replace(sc, device=self.device)
                self.beat(prop.name)
                data = materialize(sc)
                try:
                    observed = run_scenario(self.pool, sc, data, self.timeout_s)
                except Declined as e:
                    res.cases += 1          # cases count every scenario drawn, declined ones too (as for every kind)
                    res.declined += 1
                    self.declines.setdefault(ws, []).append(str(e))
                    return
                except RankFailure as e:
                    res.cases += 1
                    if e.broken or e.kind == "timeout":
                        raise _Abort(e, sc)
                    if e.kind in m.ignore:
                        return
                    res.ratios.add(math.inf)
                    last["case"] = (sc, data, None, e)
                    raise _failure(e.kind)(e.message)
                res.cases += 1
                self.compared[ws] = self.compared.get(ws, 0) + 1
                cmp = compare(sc, data, observed, m.base)
                label = sc.dtype
                res.ratios.add(cmp.worst(owned))
                keys = sorted({d.field for d in cmp.failing(owned)})
                if not keys:          # a passing case: how close to its budget it came
                    res.worst[label] = max(res.worst.get(label, 0.0), cmp.worst(owned))
                if keys:
                    last["case"] = (sc, data, observed, cmp)
                    raise _failure(keys[0])(f"{prop.name}: {keys} on {sc.describe()}")

            test = settings(max_examples=self.conf["max_examples"], deadline=None, database=None,
                            suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
                            verbosity=hypothesis.Verbosity.quiet,
                            phases=[Phase.explicit, Phase.generate, Phase.shrink])(given(scenarios(ws))(check))
            test = hypothesis.seed(self.seed * 1000003 + ws * 7919 + index * 101 + rnd)(test)
            try:
                test()
                break
            except (PropertyFailure, Flaky):   # flaky: a plugin that fails only sometimes
                pass
            except _Abort as a:
                f = a.failure
                if f.kind not in m.ignore:
                    where = f"rank {f.ranks[0]}" if f.ranks else "ranks"
                    self.finding(prop.name, f.kind, where, [f.message], math.inf, a.sc)
                    m.ignore.add(f.kind)
                self.notes[ws] = f"after a {f.kind} ({f.message[:200]})"
                outcome = "stop-all" if f.kind == "timeout" else "stop-world-size"
                break
            if "case" not in last:
                break
            sc, data, observed, cmp = last["case"]
            if observed is None:           # a crash that left the pool intact: shrunk like any failure
                e = cmp
                self.finding(prop.name, e.kind, f"rank {e.ranks[0]}" if e.ranks else "ranks", [e.message],
                             math.inf, sc)
                m.ignore.add(e.kind)
                continue
            progress = False
            for n in diagnose(self, sc, data, observed, cmp, owned):
                if n.id not in m.ignore:
                    self.finding(prop.name, n.id, n.where, n.evidence, n.ratio, sc)
                    m.ignore.add(n.id)
                    progress = True
                if n.knobs and replace(m.base, **n.knobs) != m.base:
                    m.base = replace(m.base, **n.knobs)
                    progress = True
                if not n.knobs:            # unexplained: its fields are left out from now on
                    m.ignored_fields.update(d.field for d in cmp.failing(owned))
                    progress = True
            if not progress:
                break
        res.seconds += time.monotonic() - t0
        return outcome


# -- diagnosis ----------------------------------------------------------------------------------------------------

def alternatives() -> list[tuple[str, dict]]:
    return [(e.id, flip) for e in knob_hypotheses("sync") for flip in e.knobs]


def confirm(chk: _Check, sc: SyncScenario, knobs: SyncKnobs, owned) -> SyncScenario | None:
    """The explanation must hold on fresh data: the example reseeded, and uneven shards with rank-shifted means."""
    steps = sc.steps if any(sc.steps) else (True,) + sc.steps
    variants = [replace(sc, seed=sc.seed + 7919),
                replace(sc, seed=sc.seed + 2 * 7919, shards=uneven_shards(sc.world_size), steps=steps,
                        rank_shift=max(sc.rank_shift, 2.0))]
    for v in variants:
        try:
            data = materialize(v)
            if compare(v, data, run_scenario(chk.pool, v, data, chk.timeout_s), knobs).worst(owned) > 1.0:
                return None
        except (Declined, RankFailure):
            return None
    return variants[-1]


def diagnose(chk: _Check, sc: SyncScenario, data, observed, cmp, owned) -> list[Named]:
    base = chk.masks.base
    failing = cmp.failing(owned)
    first = max(failing, key=lambda d: d.ratio)
    where, ratio = first.where(sc), cmp.worst(owned)
    head = f"{first.detail}"
    every = tuple({d.field for d in cmp.discrepancies} | set(owned))
    tried = []
    singles = [(i, f) for i, f in alternatives() if any(getattr(base, k) != v for k, v in f.items())]
    combos = [[s] for s in singles] + [[a, b] for a, b in itertools.combinations(singles, 2) if a[0] != b[0]]
    for size in (1, 2):
        scored = []
        for combo in (c for c in combos if len(c) == size):
            flips = {k: v for _, f in combo for k, v in f.items()}
            knobs = replace(base, **flips)
            c = compare(sc, data, observed, knobs)
            scored.append((c.worst(owned), c.worst(every), combo, knobs))
        tried += scored
        for r, _, combo, knobs in sorted((s for s in scored if s[0] <= 1.0), key=lambda s: (s[1], s[0])):
            conf = confirm(chk, sc, knobs, owned)
            if conf is None:
                continue
            text = (f"matches the sync reference with {knobs.describe()} to {r:.3g} x budget (torch semantics: "
                    f"{ratio:.3g} x budget); confirmed on 2 fresh scenarios incl. shards {conf.shards} with rank "
                    f"means {conf.rank_shift:g} std apart")
            return [Named(i, where, [head, text], ratio, f) for i, f in combo]
    r, _, combo, knobs = min(tried, key=lambda s: s[0]) if tried else (math.inf, 0, [], base)
    closest = f"closest knob setting: {knobs.describe()} leaves {r:.3g} x budget" if combo else "no knob to try"
    return [Named("sync-mismatch", where, [head, f"no sync knob setting explains it; {closest}"], ratio)]


# -- results ------------------------------------------------------------------------------------------------------

def check_sync(impl: Implementation, *, profile: str = "default", seed: int = 0, device: str = "cpu",
               world_sizes=(2, 3, 4), on_property=None, on_partial=None,
               scenario_timeout_s: float = SCENARIO_TIMEOUT_S, pool: RankPool | None = None) -> Result:
    """Check a sync plugin on real process groups of each world size; its ``Result`` for the report.

    ``on_property(name, None)`` is called as each property starts and every few seconds while it runs (the
    runner's heartbeat); ``on_partial(result)`` gets the result so far after each property and world size.
    ``pool``: rank processes to reuse (several checks in one process, e.g. tests); it is left running, with
    ``use(impl)`` switched to this plugin. By default a pool is started here and always torn down."""
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r}: one of {', '.join(PROFILES)}")
    sizes = sorted(set(int(w) for w in world_sizes))
    if not sizes or sizes[0] < 1:
        raise ValueError(f"world_sizes={tuple(world_sizes)}: at least one world size, each >= 1")
    t0 = time.monotonic()
    chk = _Check(impl, profile, seed, device, on_property, scenario_timeout_s)
    if pool is not None and (pool.size < sizes[-1] or pool.device != device):
        raise ValueError(f"pool of {pool.size} workers on {pool.device}: needs {sizes[-1]} on {device}")
    chk.pool = pool or RankPool(impl, sizes[-1], device=device, collective_timeout_s=scenario_timeout_s)
    try:
        for ws in sizes:
            chk.beat(PROPERTIES[0].name, force=True)
            try:
                chk.pool.use(impl)
                chk.pool.join(ws)
            except RankFailure as e:
                if e.kind not in chk.masks.ignore:
                    chk.finding(PROPERTIES[0].name, e.kind, "starting ranks", [e.message], math.inf,
                                discriminating(ws))
                    chk.masks.ignore.add(e.kind)
                chk.notes[ws] = f"ranks did not start: {e.message}"
                if e.kind == "timeout":
                    break
                continue
            outcome = "ok"
            for i, prop in enumerate(PROPERTIES):
                chk.beat(prop.name, force=True)
                outcome = chk.search(prop, ws, i)
                if on_partial:
                    on_partial(summarize(impl, chk, sizes, time.monotonic() - t0))
                if outcome != "ok":
                    break
                if chk.declines.get(ws) and not chk.compared.get(ws) and not chk.notes.get(ws):
                    break        # every scenario declined: the other properties draw the same configurations
            if outcome == "stop-all":
                break
    finally:
        if pool is None:
            chk.pool.close()
    return summarize(impl, chk, sizes, time.monotonic() - t0)


def summarize(impl: Implementation, chk: _Check, sizes: list, seconds: float) -> Result:
    results = list(chk.results.values())
    caps = {}
    for ws in sizes:
        if ws in chk.notes:
            caps[f"world size {ws}"] = f"stopped: {chk.notes[ws]}"
        elif chk.compared.get(ws):
            some = chk.declines.get(ws)
            caps[f"world size {ws}"] = f"yes; declined {len(some)} case(s): {some[0]}" if some else "yes"
        elif chk.declines.get(ws):
            caps[f"world size {ws}"] = f"declined: {chk.declines[ws][0]}"
        else:
            caps[f"world size {ws}"] = "not run: the check stopped earlier"
    if not chk.compared and chk.declines:       # every case declined: one line, for the report's notes
        caps = {chk.device: f"declined: {next(iter(chk.declines.values()))[0]}"}
    return summary(impl, "sync", results, caps, seconds, size=_size, world_sizes=sizes)


def _size(f: Finding) -> tuple:
    return (len(f.scenario.steps), f.scenario.world_size, math.prod(f.scenario.shape()))


# -- reproducers --------------------------------------------------------------------------------------------------

TEMPLATE = '''\
"""bncheck reproducer: {name}  {fid}  ({where})

scenario: {config}
Run: python this_file.py   (spawns {world} ranks with gloo on 127.0.0.1, runs the plugin on each rank's shard and
prints how far each rank is from single-process float64 BatchNorm on the concatenated batch; exits 1 while the
finding reproduces)
"""
import sys

import torch

from bncheck.sync.check import run_scenario
from bncheck.sync.ranks import Declined, RankFailure, RankPool
from bncheck.registry import Registry
from bncheck.sync.reference import SyncScenario, compare, materialize, shard


def main():
{load}    scenario = {scenario!r}
    data = materialize(scenario)      # global inputs, upstream gradients, weight/bias/initial stats from the seed
    with RankPool(impl, scenario.world_size) as pool:
        try:
            observed = run_scenario(pool, scenario, data, timeout_s=60)
        except Declined as e:
            print(f"declined by the plugin: {{e}}")
            return 0
        except RankFailure as e:
            print(f"{{e.kind}}: {{e.message}}")
            return 1
    # single-process float64 BatchNorm on the concatenated batch, side by side with every rank
    cls = {{2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}}
    ref = cls[scenario.rank](scenario.channels, eps=scenario.eps, momentum=scenario.momentum,
                             affine=scenario.affine, dtype=torch.float64)
    with torch.no_grad():
        ref.running_mean.copy_(data.running_mean); ref.running_var.copy_(data.running_var)
        if scenario.affine:
            ref.weight.copy_(data.weight); ref.bias.copy_(data.bias)
    for k, train in enumerate(scenario.steps):
        ref.train(train)
        x = data.xs[k].clone().requires_grad_(True)
        ref.zero_grad()
        y = ref(x)
        y.backward(data.dys[k])
        print(f"step {{k + 1}} ({{'train' if train else 'eval'}}):")
        for r in range(scenario.world_size):
            got = observed[r]["steps"][k]
            diffs = {{"output": (torch.as_tensor(got["y"]).double() - shard(scenario, y.detach(), r)).abs().max(),
                     "dx": (torch.as_tensor(got["dx"]).double() - shard(scenario, x.grad, r)).abs().max()
                     if got["dx"] is not None else float("nan")}}
            for key in ("running_mean", "running_var"):
                if got["after"][key] is not None:
                    diffs[key] = (torch.as_tensor(got["after"][key]).double() - getattr(ref, key)).abs().max()
            print(f"  rank {{r}} (shard of {{scenario.shards[r]}}): max |diff| " +
                  ", ".join(f"{{key}} {{float(v):.3g}}" for key, v in diffs.items()))
        if scenario.affine and all(observed[r]["steps"][k]["dweight"] is not None for r in range(scenario.world_size)):
            dw = sum(torch.as_tensor(observed[r]["steps"][k]["dweight"]).double() for r in range(scenario.world_size))
            print(f"  sum over ranks of weight.grad vs global: max |diff| {{float((dw - ref.weight.grad).abs().max()):.3g}}")
    result = compare(scenario, data, observed)      # within derived budgets, step-local
    for d in result.discrepancies:
        print(d.where(scenario), "-", d.detail)
    return 1 if result.discrepancies else 0


if __name__ == "__main__":
    sys.exit(main())
'''


def script(name: str, source: str, fid: str, where: str, sc: SyncScenario) -> str:
    return TEMPLATE.format(name=name, fid=fid, where=where, config=sc.describe(), world=sc.world_size,
                           load=load_plugin(name, source, indent="    "), scenario=replace(sc, device="cpu"))

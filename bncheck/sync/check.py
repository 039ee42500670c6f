"""Distributed check: synchronised BatchNorm plugins on real torch.distributed ranks, against the sync reference.

``check_sync`` keeps one pool of rank processes (``bncheck.sync.ranks``) and, for each world size, forms a process
group and searches each property (``search``: sync-forward, sync-running-stats, sync-gradients) over scenarios of
uneven shards (a single-sample rank, now and then an empty one), ranks 2 to 5, float32/float64, momentum (None
included), eps, affine, track_running_stats, large offsets, rank-shifted means and several train/eval steps. Each
rank's results are compared with the float64 sync reference (``reference``) under derived budgets.

A failure is shrunk, named (``diagnosis``: the reference's knobs for wrong values, the crash family for a crash)
and scoped (``scope.isolate``), and the search goes on outside what is named until a round's examples pass: every
bug of one plugin gets its own name, each with the region it shows in. A rank that raises or dies is a crash
finding naming the rank; a hang is a ``timeout`` and ends the check. Expected ids the search did not reach are
then probed (``probes``).
"""
from __future__ import annotations

import math
import time
from dataclasses import replace

from ..registry import Implementation
from ..repro import load_plugin
from ..results import Finding, Result, summary
from ..scope import EVERY
from .cases import SCENARIO_TIMEOUT_S, discriminating, payloads, run_scenario, scenarios, uneven_shards  # noqa: F401
from .probes import confirm_expected
from .ranks import RankFailure, RankPool
from .reference import SyncScenario
from .search import PROFILES, PROPERTIES, SyncSearch  # noqa: F401

# -- results ------------------------------------------------------------------------------------------------------

def check_sync(impl: Implementation, *, profile: str = "default", seed: int = 0, device: str = "cpu",
               world_sizes=(2, 3, 4), on_property=None, on_partial=None,
               scenario_timeout_s: float = SCENARIO_TIMEOUT_S, pool: RankPool | None = None,
               database: str | None = None, phases=None) -> Result:
    """Check a sync plugin on real process groups of each world size; its ``Result`` for the report.

    ``on_property(name, None)`` is called as each property starts and every few seconds while it runs (the
    runner's heartbeat); ``on_partial(result)`` gets the result so far after each property and world size.
    ``pool``: rank processes to reuse (several checks in one process, e.g. tests); it is left running, with
    ``use(impl)`` switched to this plugin. By default a pool is started here and always torn down.
    ``database``: a Hypothesis example directory to replay failures from and save them to (None: none);
    ``phases``: names of the Hypothesis phases allowed (None: all the search uses), as for the BatchNorm kind."""
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r}: one of {', '.join(PROFILES)}")
    sizes = sorted(set(int(w) for w in world_sizes))
    if not sizes or sizes[0] < 1:
        raise ValueError(f"world_sizes={tuple(world_sizes)}: at least one world size, each >= 1")
    t0 = time.monotonic()
    chk = SyncSearch(impl, profile, seed, device, on_property, scenario_timeout_s, database, phases,
                     script=lambda fid, where, sc: script(impl.name, impl.source, fid, where, sc))
    if pool is not None and (pool.size < sizes[-1] or pool.device != device):
        raise ValueError(f"pool of {pool.size} workers on {pool.device}: needs {sizes[-1]} on {device}")
    chk.pool = pool or RankPool(impl, sizes[-1], device=device, collective_timeout_s=scenario_timeout_s)
    results = list(chk.results.values())
    try:
        outcome, joined = "ok", 0
        for ws in sizes:
            chk.beat(PROPERTIES[0].name, force=True)
            try:
                chk.pool.use(impl)
                chk.pool.join(ws)
            except RankFailure as e:
                f = Finding(e.kind, PROPERTIES[0].name, "starting ranks", [e.message], math.inf, discriminating(ws))
                chk.record(chk.results[PROPERTIES[0].name], f, EVERY.regions[0], blocking=True)
                chk.notes[ws] = f"ranks did not start: {e.message}"
                if e.kind == "timeout":
                    break
                continue
            joined, respawned, respawn_s = ws, chk.pool.respawned, chk.pool.respawn_s
            for i, prop in enumerate(PROPERTIES):
                chk.beat(prop.name, force=True)
                outcome = chk.search(prop, ws, i)
                if on_partial:
                    on_partial(summarize(impl, chk, sizes, results, time.monotonic() - t0))
                if outcome != "ok":
                    break
                if chk.declines.get(ws) and not chk.compared.get(ws) and not chk.notes.get(ws):
                    break        # every scenario declined: the other properties draw the same configurations
            if chk.pool.respawned > respawned:
                chk.restarts[ws] = (chk.pool.respawned - respawned, chk.pool.respawn_s - respawn_s)
            if outcome == "stop-all":
                break
        if outcome == "ok" and joined:
            chk.beat("probes", force=True)
            probed = confirm_expected(chk, set(chk.ledger.known), joined)
            if probed is not None:
                results.append(probed)
    finally:
        if pool is None:
            chk.pool.close()
    return summarize(impl, chk, sizes, results, time.monotonic() - t0)


def summarize(impl: Implementation, chk: SyncSearch, sizes: list, results: list, seconds: float) -> Result:
    caps = {}
    for ws in sizes:
        if ws in chk.notes:
            caps[f"world size {ws}"] = f"stopped: {chk.notes[ws]}"
        elif chk.compared.get(ws):
            some = chk.declines.get(ws)
            caps[f"world size {ws}"] = f"yes; declined {len(some)} case(s): {some[0]}" if some else "yes"
            if ws in chk.restarts:
                n, secs = chk.restarts[ws]
                caps[f"world size {ws}"] += f"; {n} stuck or dead rank(s) replaced after crashes ({secs:.0f} s)"
        elif chk.declines.get(ws):
            caps[f"world size {ws}"] = f"declined: {chk.declines[ws][0]}"
        elif any(k.blocking for k in chk.ledger.known.values()):
            caps[f"world size {ws}"] = "no case compared: every case drawn was inside a named crash's scope"
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

from bncheck.sync.cases import run_scenario
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
                             affine=scenario.affine, track_running_stats=scenario.track_running_stats,
                             dtype=torch.float64)
    with torch.no_grad():
        if scenario.track_running_stats:
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
                if got["after"][key] is not None and getattr(ref, key) is not None:
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

"""Distributed BatchNorm: the sync reference, the rank harness, and bncheck's verdicts on real gloo process groups.

* the float64 sync reference with torch knobs equals torch's BatchNorm (float64) on the concatenated batch;
* bncheck-syncbn comes out clean on world sizes 2, 3, 4 with uneven shards, a single-sample rank included;
* every sync mutant of the zoo is caught and named with exactly its catalog ids, a crash in part of the scenarios
  with its scope and whatever bug hides behind it; a crash that breaks the ranks does not end the search;
* every sync id has a directed probe that names it when the search does not; a failure replays from the Hypothesis
  example database;
* a rank that raises, dies or hangs is a crash/timeout finding naming it, within bounded time, and no rank process
  is left behind (also when the runner kills a hung checking process);
* torch.nn.SyncBatchNorm declines on CPU with its reason: no findings, every case declined.
"""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

import bncheck
from bncheck import runner
from bncheck.catalog import CATALOG, knob_hypotheses
from bncheck.results import Result
from bncheck.sync.check import check_sync, run_scenario, script, uneven_shards
from bncheck.sync.facets import FACETS
from bncheck.sync.probes import probe_for
from bncheck.sync.ranks import RankFailure, RankPool, free_port
from bncheck.registry import discover
from bncheck.sync.reference import (TORCH_SYNC, SyncKnobs, SyncScenario, compare, materialize, shard, step,
                                    step_local)

ROOT = Path(__file__).resolve().parent.parent
BAD = Path(__file__).resolve().parent / "sync_bad"
ZOO = Path(__file__).resolve().parent / "zoo" / "sync_plugins.py"

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo.sync_plugins import ZOO_SYNC_MUTANTS   # noqa: E402


@pytest.fixture(scope="module")
def reg():
    return discover(plugin_dirs=[ROOT / "implementations"], plugin_files=[ZOO] + sorted(BAD.glob("*.py")),
                    entry_points=False)


@pytest.fixture(scope="module")
def pool(reg):
    """One set of 4 rank processes for the checks below that test verdicts, not process handling (starting
    processes that import torch dominates the time otherwise); each check switches it to its plugin."""
    with RankPool(reg.implementations["bncheck-syncbn"], 4) as p:
        yield p


@pytest.fixture
def tag(monkeypatch):
    """Marks every process started from here on (children inherit the environment), to find leftovers."""
    value = uuid.uuid4().hex
    monkeypatch.setenv("BNCHECK_TEST_TAG", value)
    return value


def tagged(tag: str) -> list[int]:
    """Live processes carrying the tag (zombies have an empty environ and are not counted), other than
    multiprocessing's resource tracker, which serves this test process until it exits."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                if f"BNCHECK_TEST_TAG={tag}".encode() in (d / "environ").read_bytes() and \
                        b"resource_tracker" not in (d / "cmdline").read_bytes():
                    out.append(int(d.name))
            except OSError:
                pass
    return out


def no_leftovers(tag: str, within_s: float = 5.0) -> list[int]:
    deadline = time.monotonic() + within_s
    while tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.2)
    return tagged(tag)


needs_proc = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")


# -- the reference ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("track", [True, False])
@pytest.mark.parametrize("spatial", [(), (3,), (2, 2), (2, 1, 2)])
def test_sync_reference_is_torch_batchnorm_on_the_concatenated_batch(spatial, track):
    sc = SyncScenario(shards=(1, 4, 2), channels=3, spatial=spatial, dtype="float64", steps=(True, False, True),
                      momentum=None, rank_shift=2.0, seed=3, track_running_stats=track)
    data = materialize(sc)
    bn = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d,
          5: torch.nn.BatchNorm3d}[sc.rank](3, momentum=None, dtype=torch.float64, track_running_stats=track)
    with torch.no_grad():
        for k in ("weight", "bias") + (("running_mean", "running_var") if track else ()):
            getattr(bn, k).copy_(getattr(data, k))
    befores = [(data.running_mean, data.running_var, 0)] * 3
    for k, train in enumerate(sc.steps):
        bn.train(train)
        bn.zero_grad()
        x = data.xs[k].clone().requires_grad_(True)
        bn(x).backward(data.dys[k])
        exp = step(sc, data.xs[k], data.dys[k], data.weight, data.bias, befores, train, TORCH_SYNC)
        for r, e in enumerate(exp):
            assert torch.allclose(e.values["dx"], shard(sc, x.grad, r), rtol=1e-12, atol=1e-12)
            if not track:
                assert "running_mean" not in e.values and "running_var" not in e.values
                continue
            assert torch.allclose(e.values["running_var"], bn.running_var, rtol=1e-12, atol=1e-12)
            assert torch.allclose(e.values["running_mean"], bn.running_mean, rtol=1e-12, atol=1e-12)
            assert e.values["num_batches_tracked"] == int(bn.num_batches_tracked)
        assert torch.allclose(sum(e.values["dweight"] for e in exp), bn.weight.grad, rtol=1e-12, atol=1e-12)
        assert torch.allclose(sum(e.values["dbias"] for e in exp), bn.bias.grad, rtol=1e-12, atol=1e-12)
        if track:
            befores = [(e.values["running_mean"], e.values["running_var"], e.values["num_batches_tracked"])
                       for e in exp]


def _observed(sc: SyncScenario, per_rank) -> list:
    """Rank results in ``ranks.run_shard``'s form for one eval step: ``per_rank[r] = (y, dx, dweight, dbias)``."""
    none = {"running_mean": None, "running_var": None, "num_batches_tracked": None}
    return [{"steps": [{"y": y.numpy(), "dx": dx.numpy(), "dweight": dw.numpy(), "dbias": db.numpy(),
                        "before": none, "after": none}]} for y, dx, dw, db in per_rank]


def test_an_untracked_eval_step_accepts_global_or_per_rank_batch_statistics():
    """Single-process BatchNorm on the concatenated batch, or torch.nn.SyncBatchNorm's per-rank statistics in eval
    mode ("Don't sync batchnorm stats in inference mode"); statistics that are neither are a discrepancy."""
    sc = SyncScenario(shards=(2, 4, 3), channels=2, spatial=(3,), dtype="float64", steps=(False,), rank_shift=2.0,
                      seed=5, track_running_stats=False)
    data = materialize(sc)

    def bn(x, dy):
        x = x.clone().requires_grad_(True)
        w, b = data.weight.clone().requires_grad_(True), data.bias.clone().requires_grad_(True)
        y = torch.nn.functional.batch_norm(x, None, None, w, b, True, 0.0, sc.eps)
        y.backward(dy)
        return y.detach(), x.grad, w.grad, b.grad

    x, dy = data.xs[0], data.dys[0]
    whole = bn(x, dy)
    glob = _observed(sc, [(shard(sc, whole[0], r), shard(sc, whole[1], r)) + bn(shard(sc, x, r), shard(sc, dy, r))[2:]
                          for r in range(3)])
    # global dweight/dbias contributions: recompute each rank's share with the global statistics
    exp = step(sc, x, dy, data.weight, data.bias, [None] * 3, False)
    for r, o in enumerate(glob):
        o["steps"][0]["dweight"], o["steps"][0]["dbias"] = (exp[r].values[k].numpy() for k in ("dweight", "dbias"))
    per_rank = [bn(shard(sc, x, r), shard(sc, dy, r)) for r in range(3)]
    assert not compare(sc, data, glob).discrepancies
    assert not compare(sc, data, _observed(sc, per_rank)).discrepancies
    wrong = _observed(sc, [(y * 1.01, dx, dw, db) for y, dx, dw, db in per_rank])
    assert {d.field for d in compare(sc, data, wrong).discrepancies} == {"output"}
    # a rank with a single value per channel: torch's per-rank statistics would raise, only the global ones apply
    assert step_local(SyncScenario(shards=(1, 4), spatial=(), track_running_stats=False), x[:5, :, 0], dy[:5, :, 0],
                      data.weight, data.bias) is None


@pytest.mark.parametrize("flip, field", [({"var_merge": "mean-of-variances"}, "output"),
                                         ({"weighting": "unweighted"}, "output"),
                                         ({"unbias": "local"}, "running_var"), ({"unbias": "none"}, "running_var"),
                                         ({"grad_sums": "local"}, "dx"), ({"grad_sums": "local-mean"}, "dx")])
def test_every_sync_knob_changes_what_it_claims(flip, field):
    sc = SyncScenario(shards=(1, 4, 2), channels=2, spatial=(3,), dtype="float64", rank_shift=2.0, seed=1)
    data = materialize(sc)
    befores = [(data.running_mean, data.running_var, 0)] * 3
    ref = step(sc, data.xs[0], data.dys[0], data.weight, data.bias, befores, True, TORCH_SYNC)
    alt = step(sc, data.xs[0], data.dys[0], data.weight, data.bias, befores, True, SyncKnobs(**flip))
    gap = max(float((a.values[field] - b.values[field]).abs().max() / b.budgets[field].max()) for a, b in zip(alt, ref))
    assert gap > 100, f"{flip} moves {field} by only {gap:.3g} x budget"


def test_every_catalog_entry_with_a_sync_knob_is_a_sync_hypothesis():
    """Entries of other kinds a sync reference knob expresses (a one-pass variance, a biased running variance) are
    sync hypotheses with the sync knobs; the BatchNorm kind still sees its own knobs for them."""
    sync = {e.id: e.knobs for e in knob_hypotheses("sync")}
    assert sync["cancellation"] == ({"variance": "one-pass"},) and sync["biased-running-var"] == ({"unbias": "none"},)
    assert CATALOG["cancellation"].kind == "batchnorm" and CATALOG["cancellation"].kinds == ("batchnorm", "sync")
    assert {e.id: e.knobs for e in knob_hypotheses()}["cancellation"] == ({"naive_variance": "input"},)
    for knobs in sync.values():
        for flip in knobs:
            SyncKnobs(**flip)          # every setting names real knobs


def test_a_one_pass_variance_is_within_the_one_pass_allowance_and_outside_torch_budgets(reg, pool):
    """E[x^2]-E[x]^2 from all-reduced sums: at an offset of 1e4 float32 keeps no digit of the variance and the
    output, dx and dweight are anything; the one-pass knob's allowance (``reference.Spread``) covers every field of
    an actual one-pass implementation there, where torch semantics reject it."""
    pool.use(reg.implementations["zoo-sync-one-pass-variance"])
    for dtype, offset, seed in (("float32", 1e4, 1), ("float32", 1e4, 2), ("float64", 1e4, 3), ("float32", 100.0, 4)):
        sc = SyncScenario(shards=(1, 4, 3), channels=3, spatial=(3,), dtype=dtype, offset=offset, momentum=None,
                          steps=(True, False, True), seed=seed)
        data = materialize(sc)
        observed = run_scenario(pool, sc, data)
        under = compare(sc, data, observed, SyncKnobs(variance="one-pass"))
        assert not under.discrepancies, [d.where(sc) + ": " + d.detail for d in under.discrepancies]
        assert compare(sc, data, observed).failing(("output",)), (dtype, offset)


def test_free_port_is_free_and_on_loopback():
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", port))          # nothing holds it


# -- the bundled implementations ----------------------------------------------------------------------------------

def test_bncheck_syncbn_matches_single_process_batchnorm_on_uneven_shards(reg, pool):
    """Direct runs on real process groups, including a single-sample rank and (beyond what the search draws) an
    empty one; every field within budget of the reference."""
    pool.use(reg.implementations["bncheck-syncbn"])
    for ws in (2, 3, 4):
        for shards, offset in ((uneven_shards(ws), 0.0), ((1,) * ws, 1e4), ((0,) + uneven_shards(ws)[1:], 0.0)):
            sc = SyncScenario(shards=shards, channels=3, spatial=(2,), dtype="float32", offset=offset,
                              steps=(True, True, False), momentum=None, rank_shift=2.0, seed=ws)
            data = materialize(sc)
            cmp = compare(sc, data, run_scenario(pool, sc, data))
            assert not cmp.discrepancies, [d.where(sc) + ": " + d.detail for d in cmp.discrepancies]
            assert set(cmp.ratios) >= {"output", "dx", "dweight", "dbias", "running_mean", "running_var"}


@needs_proc
def test_bncheck_syncbn_is_clean_on_world_sizes_2_3_4(reg, tag):
    r = check_sync(reg.implementations["bncheck-syncbn"], profile="default", seed=0, world_sizes=(2, 3, 4))
    assert no_leftovers(tag) == []
    assert r.findings == [], [(f.id, f.evidence) for f in r.findings]
    assert r.kind == "sync" and r.world_sizes == [2, 3, 4] and r.declined_cases == 0
    assert r.capabilities == {"world size 2": "yes", "world size 3": "yes", "world size 4": "yes"}
    assert all(p.cases >= 3 * 20 for p in r.properties.values()), r.properties
    assert set(r.worst_ratio_by_dtype) == {"float32", "float64"}
    assert all(0 < v < 1 for v in r.worst_ratio_by_dtype.values())


def test_torch_syncbn_declines_on_cpu_with_its_reason(reg, pool):
    r = check_sync(reg.implementations["torch-syncbn"], profile="quick", world_sizes=(2,), pool=pool)
    assert r.findings == [] and r.declined_cases > 0 and r.cases == r.declined_cases
    assert r.capabilities == {"cpu": "declined: torch.nn.SyncBatchNorm needs CUDA tensors; this run is on cpu"}


# -- mutants ------------------------------------------------------------------------------------------------------

KNOBLESS = {"sync-mismatch", "crash", "rank-unsupported", "momentum-none"}


@pytest.fixture(scope="module")
def quick(reg, pool):
    """Each zoo mutant's check at the quick profile on world sizes 2 and 3 (run once, read by several tests)."""
    done = {}

    def result(name: str) -> Result:
        if name not in done:
            done[name] = check_sync(reg.implementations[name], profile="quick", seed=0, world_sizes=(2, 3), pool=pool)
        return done[name]
    return result


@pytest.mark.parametrize("name", sorted(ZOO_SYNC_MUTANTS))
def test_every_sync_mutant_is_caught_and_named(quick, name):
    r = quick(name)
    assert {f.id for f in r.findings} == ZOO_SYNC_MUTANTS[name], [(f.id, f.evidence) for f in r.findings]
    for f in r.findings:
        assert f.error_ratio is None or f.error_ratio > 1
        assert "world size " in f.example and "shards" in f.example and "SyncScenario(" in f.scenario
        assert f.scope == "every case" or f.scope.startswith("only with "), f.scope
        if f.id not in KNOBLESS:
            assert "matches the sync reference with" in f.evidence[1] and "confirmed" in f.evidence[1]
    assert r.capabilities == {"world size 2": "yes", "world size 3": "yes"}
    assert Result.from_json(json.loads(json.dumps(r.to_json()))) == r


def test_the_zoo_covers_every_sync_id():
    ids = set().union(*ZOO_SYNC_MUTANTS.values())
    assert {e.id for e in CATALOG.values() if e.kind == "sync"} <= ids
    assert {"cancellation", "biased-running-var", "rank-unsupported", "crash"} <= ids


def test_a_crash_in_part_of_the_scenarios_does_not_hide_a_second_bug(quick):
    """A SyncBatchNorm written as a BatchNorm2d rejects 2-, 3- and 5-D input (torch's takes them): rank-unsupported,
    scoped to those ranks; searching on outside that scope finds its biased running variance too."""
    r = quick("zoo-sync-rank4-biased-running-var")
    by_id = {f.id: f for f in r.findings}
    assert set(by_id) == {"rank-unsupported", "biased-running-var"}, [(f.id, f.evidence) for f in r.findings]
    crash = by_id["rank-unsupported"]
    assert crash.scope.startswith("only with rank ") and "4" not in crash.scope, crash.scope
    assert "expected 4D input" in crash.evidence[0] and "it does not fail" in crash.evidence[1]
    assert by_id["biased-running-var"].property == "sync-running-stats"
    assert "unbias=none" in by_id["biased-running-var"].evidence[1]


def test_a_crash_only_without_tracking_is_scoped_to_it(quick):
    r = quick("zoo-sync-casts-running-stats")
    (f,) = r.findings
    assert (f.id, f.scope) == ("crash", "only with track_running_stats=False")
    assert "track_running_stats=False" in f.example and "AttributeError" in f.evidence[0]


def test_a_crash_that_breaks_the_ranks_does_not_end_the_search(reg, pool):
    """Rank 1's process exits when momentum is None: it is replaced, the crash is isolated to momentum=None (each
    crashing variant replacing it again; not shrunk) and the search goes on to name the plugin's local-count
    running variance."""
    r = check_sync(reg.implementations["bad-sync-dies-on-momentum-none"], profile="quick", world_sizes=(2,),
                   pool=pool, scenario_timeout_s=10)
    by_id = {f.id: f for f in r.findings}
    assert set(by_id) == {"momentum-none", "sync-local-count"}, [(f.id, f.evidence) for f in r.findings]
    assert by_id["momentum-none"].scope == "only with momentum=None"
    assert "rank 1 died (exit code 5)" in by_id["momentum-none"].evidence[0]
    assert "not shrunk" in by_id["momentum-none"].evidence[-1]
    assert "stuck or dead rank(s) replaced" in r.capabilities["world size 2"]


def test_a_rank_that_raises_alone_leaves_the_others_usable(reg, pool):
    """Rank 1 raises and abandons the group: rank 0, waiting on it in the statistics all_gather, fails at once
    (no rank is replaced) and the crash is shrunk like any other."""
    before = pool.respawned
    r = check_sync(reg.implementations["bad-sync-raises-on-one-rank"], profile="quick", world_sizes=(2,), pool=pool)
    (f,) = r.findings
    assert (f.id, f.where, f.scope) == ("crash", "rank 1", "every case")
    assert "rank 1 lost its shard" in f.evidence[0] and "not shrunk" not in f.evidence[-1]
    assert pool.respawned == before
    # the case Hypothesis first drew trained (rank 0 waited on rank 1 in a collective); the shrunk one may not
    sc = SyncScenario(shards=(2, 2), steps=(True,))
    data = materialize(sc)
    with pytest.raises(RankFailure, match="then rank 0: .*Connection (closed|reset)") as e:   # gloo words it either way
        run_scenario(pool, sc, data, timeout_s=10)
    assert not e.value.broken and pool.respawned == before


def test_the_repeats_of_a_named_finding_widen_its_scope_and_are_kept_as_evidence(quick):
    """The unbiased merge shows in the output, then in dx, dweight and the running variance: one sync-mismatch,
    the later sightings under it ("also")."""
    r = quick("zoo-sync-unbiased-merge")
    (f,) = r.findings
    assert f.id == "sync-mismatch" and f.also, f
    assert {a.split(": ", 1)[1].split(" on rank")[0] for a in f.also} >= {"dx", "running_var"}


@pytest.mark.parametrize("name", sorted(ZOO_SYNC_MUTANTS))
def test_every_expected_sync_id_is_confirmed_by_its_probe_without_a_search(reg, pool, name):
    """With no Hypothesis phase the search runs nothing; the directed probes name every expected id."""
    r = check_sync(reg.implementations[name], world_sizes=(3,), pool=pool, phases=[])
    assert {f.id for f in r.findings} == ZOO_SYNC_MUTANTS[name], [(f.id, f.evidence) for f in r.findings]
    assert {f.source for f in r.findings} == {"probe"} and list(r.properties)[-1] == "probes"
    assert all("confirmed by the directed probe" in f.evidence[-1] for f in r.findings)


def test_every_id_a_sync_check_names_has_a_probe():
    ids = {e.id for e in CATALOG.values() if "sync" in e.kinds} | KNOBLESS
    assert {fid for fid in ids if probe_for(fid) is None} == set()
    assert probe_for("timeout") is None


def test_a_failure_found_once_replays_from_the_example_database(reg, pool, tmp_path):
    impl = reg.implementations["zoo-sync-local-count"]
    db = str(tmp_path / "examples")
    replay = ["reuse", "shrink"]               # nothing generated: a finding can only come from the database
    nothing = check_sync(impl, world_sizes=(2,), pool=pool, database=db, phases=replay)
    assert [f.source for f in nothing.findings] == ["probe"]           # nothing stored yet: only its probe shows it
    assert all(p.cases == 0 for name, p in nothing.properties.items() if name != "probes")
    found = check_sync(impl, profile="quick", seed=3, world_sizes=(2,), pool=pool, database=db)
    assert [f.id for f in found.findings] == ["sync-local-count"]
    assert any(Path(db).rglob("*")), "the failing example was not saved"
    # replayed through bncheck.check: the runner passes database and phases on to the sync check's worker
    again = bncheck.check(impl, seed=4, world_sizes=(2,), database=db, phases=replay)
    assert [(f.id, f.source) for f in again.findings] == [("sync-local-count", "search")]


def test_sync_facets_change_one_thing_into_a_valid_scenario():
    sc = SyncScenario(shards=(0, 2, 1), spatial=(), momentum=None, steps=(True, False), offset=1e4,
                      track_running_stats=False, affine=False, dtype="float64")
    for name, facet in FACETS.items():
        v = facet.alternative(sc)
        assert v is not None and sum(v.shards) * math.prod(v.spatial) > 1, name
        changed = {k for k in FACETS if FACETS[k].read(v) != FACETS[k].read(sc)}
        assert changed == {name}, (name, changed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_sync_mutant_is_named_on_every_world_size_with_the_default_profile(reg, seed):
    impls = [reg.implementations[n] for n in ZOO_SYNC_MUTANTS] + [reg.implementations["bad-sync-two-bugs"]]
    out = runner.run_all(impls, jobs=2, profile="default", seed=seed, world_sizes=(2, 3, 4))
    expect = dict(ZOO_SYNC_MUTANTS, **{"bad-sync-two-bugs": {"sync-local-count", "sync-mean-of-variances"}})
    for r in out:
        assert {f.id for f in r.findings} == set(expect[r.name]), (r.name, [(f.id, f.source) for f in r.findings])


def test_two_bugs_in_one_plugin_are_both_named(reg, pool):
    r = check_sync(reg.implementations["bad-sync-two-bugs"], profile="quick", world_sizes=(2,), pool=pool)
    assert [f.id for f in r.findings] == ["sync-local-count", "sync-mean-of-variances"], r.findings


def test_a_reproducer_reruns_the_finding_on_real_ranks_and_passes_on_a_correct_plugin(reg, pool, tmp_path):
    r = check_sync(reg.implementations["zoo-sync-local-count"], profile="quick", world_sizes=(2,), pool=pool)
    (f,) = r.findings
    assert "gloo" in f.repro and "RankPool" in f.repro
    path = tmp_path / "repro.py"                 # as a file: spawned ranks re-import it (the __main__ guard)
    path.write_text(f.repro)
    p = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "running_var on rank" in p.stdout and "max |diff|" in p.stdout and "rank 1 (shard of" in p.stdout
    good = reg.implementations["bncheck-syncbn"]      # the same scenario on a correct plugin, as `bncheck repro` runs it
    code = script(good.name, good.source, f.id, f.where, eval(f.scenario, {"SyncScenario": SyncScenario}))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "step 1 (train)" in p.stdout


# -- broken plugins -----------------------------------------------------------------------------------------------

@needs_proc
@pytest.mark.parametrize("name, fid, rank, text", [
    ("bad-sync-raises-on-one-rank", "crash", 1, "rank 1 lost its shard"),
    ("bad-sync-raises-everywhere", "rank-unsupported", 0, "sequence input not wired up"),
    pytest.param("bad-sync-dies", "crash", 1, "rank 1 died (exit code 3)", marks=pytest.mark.slow),  # replacing
    # the dead rank for every isolating variant takes a minute; the dying rank of momentum=None is in the fast set
    ("bad-sync-hangs", "timeout", 0, "did not finish within 4 s"),
])
def test_a_failing_rank_is_a_named_finding_in_bounded_time_and_leaves_no_process(reg, tag, name, fid, rank, text):
    t0 = time.monotonic()
    r = check_sync(reg.implementations[name], profile="quick", world_sizes=(2,), scenario_timeout_s=4)
    assert time.monotonic() - t0 < 60
    assert [f.id for f in r.findings] == [fid], r.findings
    f = r.findings[0]
    assert f.where == f"rank {rank}" and text in f.evidence[0], f
    assert f.error_ratio is None and "world size 2" in f.example
    assert no_leftovers(tag) == []


@needs_proc
def test_ranks_exit_when_the_runner_kills_a_hung_check(reg, tag):
    impl = reg.implementations["bad-sync-hangs"]       # hangs for longer than the runner's limit below
    t0 = time.monotonic()
    (r,) = runner.run_all([impl], jobs=1, timeout_s=8, profile="quick", world_sizes=(2,))
    assert [f.id for f in r.findings] == ["timeout"] and "worker killed" in r.findings[0].evidence[0]
    assert time.monotonic() - t0 < 60
    assert no_leftovers(tag) == []


def test_world_sizes_and_profile_are_validated(reg):
    impl = reg.implementations["bncheck-syncbn"]
    with pytest.raises(ValueError, match="profile='fast'"):
        check_sync(impl, profile="fast")
    with pytest.raises(ValueError, match="world_sizes=\\(0,\\)"):
        check_sync(impl, world_sizes=(0,))
    with pytest.raises(ValueError, match="larger than this pool"):
        RankPool(impl, 2).join(3)

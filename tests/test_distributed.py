"""Distributed BatchNorm: the sync reference, the rank harness, and bncheck's verdicts on real gloo process groups.

* the float64 sync reference with torch knobs equals torch's BatchNorm (float64) on the concatenated batch;
* bncheck-syncbn comes out clean on world sizes 2, 3, 4 with uneven shards, a single-sample rank included;
* every sync mutant of the zoo is caught and named with its catalog id;
* a rank that raises, dies or hangs is a crash/timeout finding naming it, within bounded time, and no rank process
  is left behind (also when the runner kills a hung checking process);
* torch.nn.SyncBatchNorm declines on CPU with its reason: no findings, every case declined.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from bncheck import runner
from bncheck.sync.check import check_sync, run_scenario, script, uneven_shards
from bncheck.sync.ranks import RankPool, free_port
from bncheck.registry import discover
from bncheck.sync.reference import TORCH_SYNC, SyncKnobs, SyncScenario, compare, materialize, shard, step

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

@pytest.mark.parametrize("spatial", [(), (3,), (2, 2), (2, 1, 2)])
def test_sync_reference_is_torch_batchnorm_on_the_concatenated_batch(spatial):
    sc = SyncScenario(shards=(1, 4, 2), channels=3, spatial=spatial, dtype="float64", steps=(True, False, True),
                      momentum=None, rank_shift=2.0, seed=3)
    data = materialize(sc)
    bn = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d,
          5: torch.nn.BatchNorm3d}[sc.rank](3, momentum=None, dtype=torch.float64)
    with torch.no_grad():
        for k in ("weight", "bias", "running_mean", "running_var"):
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
            assert torch.allclose(e.values["running_var"], bn.running_var, rtol=1e-12, atol=1e-12)
            assert torch.allclose(e.values["running_mean"], bn.running_mean, rtol=1e-12, atol=1e-12)
            assert e.values["num_batches_tracked"] == int(bn.num_batches_tracked)
        assert torch.allclose(sum(e.values["dweight"] for e in exp), bn.weight.grad, rtol=1e-12, atol=1e-12)
        assert torch.allclose(sum(e.values["dbias"] for e in exp), bn.bias.grad, rtol=1e-12, atol=1e-12)
        befores = [(e.values["running_mean"], e.values["running_var"], e.values["num_batches_tracked"]) for e in exp]


@pytest.mark.parametrize("flip, field", [({"var_merge": "mean-of-variances"}, "output"),
                                         ({"weighting": "unweighted"}, "output"),
                                         ({"unbias": "local"}, "running_var"),
                                         ({"grad_sums": "local"}, "dx"), ({"grad_sums": "local-mean"}, "dx")])
def test_every_sync_knob_changes_what_it_claims(flip, field):
    sc = SyncScenario(shards=(1, 4, 2), channels=2, spatial=(3,), dtype="float64", rank_shift=2.0, seed=1)
    data = materialize(sc)
    befores = [(data.running_mean, data.running_var, 0)] * 3
    ref = step(sc, data.xs[0], data.dys[0], data.weight, data.bias, befores, True, TORCH_SYNC)
    alt = step(sc, data.xs[0], data.dys[0], data.weight, data.bias, befores, True, SyncKnobs(**flip))
    gap = max(float((a.values[field] - b.values[field]).abs().max() / b.budgets[field].max()) for a, b in zip(alt, ref))
    assert gap > 100, f"{flip} moves {field} by only {gap:.3g} x budget"


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

@pytest.mark.parametrize("name", sorted(ZOO_SYNC_MUTANTS))
def test_every_sync_mutant_is_caught_and_named(reg, pool, name):
    r = check_sync(reg.implementations[name], profile="quick", seed=0, world_sizes=(2, 3), pool=pool)
    assert [f.id for f in r.findings] == [ZOO_SYNC_MUTANTS[name]], \
        [(f.id, f.evidence) for f in r.findings]
    f = r.findings[0]
    assert f.error_ratio is None or f.error_ratio > 1
    assert "world size " in f.example and "shards" in f.example and "SyncScenario(" in f.scenario
    if f.id != "sync-mismatch":
        assert "matches the sync reference with" in f.evidence[1] and "confirmed" in f.evidence[1]
    assert r.capabilities == {"world size 2": "yes", "world size 3": "yes"}


def test_the_zoo_covers_every_sync_id():
    assert set(ZOO_SYNC_MUTANTS.values()) == {"sync-mean-of-variances", "sync-uneven-batch", "sync-local-count",
                                              "sync-grad-not-reduced", "sync-mismatch"}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_every_sync_mutant_is_named_on_every_world_size_with_the_default_profile(reg, seed):
    impls = [reg.implementations[n] for n in ZOO_SYNC_MUTANTS] + [reg.implementations["bad-sync-two-bugs"]]
    out = runner.run_all(impls, jobs=2, profile="default", seed=seed, world_sizes=(2, 3, 4))
    expect = dict(ZOO_SYNC_MUTANTS, **{"bad-sync-two-bugs": "sync-local-count,sync-mean-of-variances"})
    for r in out:
        assert ",".join(f.id for f in r.findings) == expect[r.name], (r.name, r.findings)


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
    ("bad-sync-raises-everywhere", "crash", 0, "sequence input not wired up"),
    ("bad-sync-dies", "crash", 1, "rank 1 died (exit code 3)"),
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

"""pytest-benchmark timings of the harness itself: how fast the search runs, how long one diagnosis takes, and how
long ``make run`` took per plugin.

Skipped by the default run (``--benchmark-skip``); ``make bench`` runs them and writes
``reports/harness-bench.json``, which ``pytest-benchmark compare`` compares with a later run's. Every search here
runs in this process with one torch thread, as in a ``bncheck run`` worker, with seed 0 and no example database, so
each round searches the same cases; what each benchmark measured is in its ``extra_info``.
"""
import json
import statistics
from pathlib import Path

import pytest
import torch

from bncheck import diagnose, execute
from bncheck.compare import compare
from bncheck.oracle import TORCH
from bncheck.properties import BY_NAME, PROPERTIES
from bncheck.registry import Registry
from bncheck.scenario import materialize
from bncheck.search import PROFILES, check_implementation, search_property

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = "torch-functional"           # implementations/torch_reference.py: F.batch_norm, every rank, clean
MUTANT = "zoo-inverted-momentum"         # tests/zoo/mutants.py: InvertedMomentum
MUTANT_PROPERTY = "running-stats"
ROUNDS = {"quick": 3, "default": 3, "thorough": 1}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _impl(path: str, name: str):
    reg = Registry()
    reg.load_file(ROOT / path)
    assert not reg.errors, reg.errors
    return reg.implementations[name]


@pytest.mark.parametrize("profile", list(PROFILES))
def test_search_cases_per_second(benchmark, profile):
    """``check_implementation`` of the torch reference over every property: cases per second of the whole search."""
    impl = _impl("implementations/torch_reference.py", REFERENCE)
    runs = []

    def run():
        r = check_implementation(impl, profile=profile, seed=0)
        runs.append(r)
        return r

    benchmark.group = "harness: search (torch reference, every property)"
    r = benchmark.pedantic(run, rounds=ROUNDS[profile], iterations=1, warmup_rounds=0)
    assert r.verdict in ("", "clean") and not r.findings, [f.id for f in r.findings]
    seconds = [x.seconds for x in runs]
    benchmark.extra_info.update(
        measured=f"bncheck.search.check_implementation({REFERENCE}, profile={profile!r}, seed=0) in this process, "
                 f"torch threads 1, no example database: every property's search, then the capability table",
        implementation=REFERENCE, profile=profile, seed=0, properties=[p.name for p in PROPERTIES],
        max_examples=PROFILES[profile]["max_examples"], rounds_per_property=PROFILES[profile]["rounds"],
        cases=r.cases, declined_cases=r.declined_cases, seconds=seconds,
        cases_per_second=round(r.cases / statistics.median(seconds), 1),
        per_property={name: dict(cases=s.cases, seconds=round(s.seconds, 3),
                                 cases_per_second=round(s.cases / s.seconds, 1) if s.seconds else None)
                      for name, s in r.properties.items()})


@pytest.fixture(scope="module")
def failing_comparison():
    """The inverted-momentum mutant's shrunk failing case of running-stats (from its own search), re-run."""
    impl = _impl("tests/zoo/plugins.py", MUTANT)
    prop = BY_NAME[MUTANT_PROPERTY]
    found = search_property(impl, prop, profile="default", seed=0)
    assert [f.id for f in found.findings] == ["inverted-momentum"]
    sc = found.findings[0].scenario
    data = materialize(sc)
    trace = execute.run(impl, sc, data)
    cmp = compare(sc, data, trace, TORCH)
    owned = [d for d in cmp.discrepancies if prop.owns(d)]
    assert owned
    return impl, prop, sc, data, trace, cmp, owned


def test_diagnosis_of_one_finding(benchmark, failing_comparison):
    """``diagnose.name`` on one failing comparison: naming the bug, after the search found and shrank the case."""
    impl, prop, sc, data, trace, cmp, owned = failing_comparison

    def run():
        return diagnose.name(impl, sc, data, trace, cmp, prop.values, owned, TORCH, numeric_first=prop.targeted)

    benchmark.group = "harness: diagnosis"
    named = benchmark.pedantic(run, rounds=20, iterations=1, warmup_rounds=1)
    assert [n.id for n in named] == ["inverted-momentum"]
    benchmark.extra_info.update(
        measured=f"bncheck.diagnose.name on {MUTANT}'s shrunk failing case of {MUTANT_PROPERTY} (found by "
                 f"search_property, profile 'default', seed 0), torch threads 1",
        implementation=MUTANT, property=MUTANT_PROPERTY, scenario=sc.describe(), named=[n.id for n in named],
        discrepancies=len(owned))


def test_search_of_one_property_with_a_finding(benchmark):
    """``search_property`` on the mutant's property: search, shrink, diagnosis, and the rounds after the finding."""
    impl = _impl("tests/zoo/plugins.py", MUTANT)
    prop = BY_NAME[MUTANT_PROPERTY]

    def run():
        return search_property(impl, prop, profile="default", seed=0)

    benchmark.group = "harness: diagnosis"
    r = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=0)
    assert [f.id for f in r.findings] == ["inverted-momentum"]
    benchmark.extra_info.update(
        measured=f"bncheck.search.search_property({MUTANT}, {MUTANT_PROPERTY!r}, profile='default', seed=0), "
                 f"torch threads 1, no example database",
        implementation=MUTANT, property=MUTANT_PROPERTY, cases=r.cases, findings=[f.id for f in r.findings])


def test_make_run_seconds_per_plugin(benchmark):
    """``make run``'s seconds per plugin, as its report recorded them (reports/latest.json), in ``extra_info``; the
    time measured is only reading that report."""
    path = ROOT / "reports" / "latest.json"
    if not path.exists():
        pytest.skip("no reports/latest.json: run `make run` first")

    benchmark.group = "harness: make run"
    report = benchmark.pedantic(lambda: json.loads(path.read_text()), rounds=1, iterations=1)
    env = report.get("environment", {})
    impls = report["implementations"]
    benchmark.extra_info.update(
        measured="reading reports/latest.json; seconds_per_plugin are make run's own, from that report",
        report="reports/latest.json", commit=env.get("commit"), datetime=env.get("datetime"),
        profile=env.get("profile"), seed=env.get("seed"), machine=env.get("machine"),
        seconds_per_plugin={i["name"]: i["seconds"] for i in impls},
        cases_per_plugin={i["name"]: i["cases"] for i in impls},
        kind_per_plugin={i["name"]: i["kind"] for i in impls},
        total_seconds=round(sum(i["seconds"] for i in impls), 2))

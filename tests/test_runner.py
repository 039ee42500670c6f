"""The runner survives plugins that crash, hang, kill their process or fail to import; the run completes."""
import os
import time
from pathlib import Path

from bncheck import runner
from bncheck.registry import discover

BAD = Path(__file__).parent / "plugins_bad"
ROOT = Path(__file__).parent.parent


def test_crash_hang_death_and_import_failure_are_findings_and_the_run_goes_on():
    reg = discover(plugin_dirs=[ROOT / "implementations", BAD], entry_points=False)
    errors = {Path(e.origin).name: e.message for e in reg.errors}
    assert "ModuleNotFoundError" in errors["import_fails.py"] and "import_fails.py:2" in errors["import_fails.py"]
    assert "already registered by implementations/torch_reference.py" in errors["clash.py"] or \
        "already registered by" in errors["clash.py"] and "torch_reference.py" in errors["clash.py"]
    names = ["bad-crashing", "bad-hanging", "bad-dying", "torch-bn2d"]
    impls = [reg.implementations[n] for n in names]
    out = {r.name: r for r in runner.run_all(impls, jobs=2, timeout_s=12, profile="quick", seed=0,
                                                 properties=["forward"])}
    crash = out["bad-crashing"].findings
    assert [f.id for f in crash] == ["crash"]
    assert "kernel exploded" in crash[0].evidence[0]
    hang = out["bad-hanging"].findings
    assert [f.id for f in hang] == ["timeout"] and "forward" in hang[0].evidence[0]
    died = out["bad-dying"].findings
    assert [f.id for f in died] == ["crash"] and "exit code 3" in died[0].evidence[0]
    assert out["torch-bn2d"].findings == [] and out["torch-bn2d"].cases > 0


def test_a_late_hang_keeps_the_properties_finished_before_it():
    reg = discover(plugin_dirs=[BAD], entry_points=False)
    impl = reg.implementations["bad-hanging-late"]
    (r,) = runner.run_all([impl], jobs=1, timeout_s=10, profile="quick", seed=0,
                          properties=["forward", "modes", "dtypes-layouts"])
    assert [f.id for f in r.findings] == ["timeout"]
    assert "dtypes-layouts" in r.findings[0].evidence[0]
    assert set(r.properties) == {"forward", "modes"} and r.cases > 0


def test_warnings_are_counted_per_implementation_and_not_printed(tmp_path, capfd, monkeypatch):
    calls = tmp_path / "calls"
    monkeypatch.setenv("BNCHECK_TEST_CALLS", str(calls))
    reg = discover(plugin_dirs=[Path(__file__).parent / "plugins_odd"], entry_points=False)
    (r,) = runner.run_all([reg.implementations["odd-warns"]], jobs=1, timeout_s=60, profile="quick", seed=0,
                          properties=["forward"])
    err = capfd.readouterr().err
    assert r.findings == [] and r.cases > 0
    (kind,) = r.warnings
    assert kind.category == "UserWarning" and kind.message == "this layer is deprecated, use the new one"
    assert kind.where.endswith("warns.py:19") and kind.property == "forward"
    assert kind.count == calls.stat().st_size > 0        # one per forward call, repeats included
    assert "deprecated" not in err and "UserWarning" not in err


def test_a_slow_but_advancing_implementation_is_not_taken_for_a_hung_one():
    """Progress is every finished run, not every finished property: a property of many 1.5 s runs outlasts the
    no-progress limit (6 s) without being killed."""
    reg = discover(plugin_dirs=[Path(__file__).parent / "plugins_slow"], entry_points=False)
    t0 = time.monotonic()
    (r,) = runner.run_all([reg.implementations["slow-bn2d"]], jobs=1, timeout_s=6, profile="quick", seed=0,
                          properties=["forward"], progress=runner.Progress(1, stream=open(os.devnull, "w")))
    assert [f.id for f in r.findings] == [], r.findings
    assert time.monotonic() - t0 > 2 * 6, "the property must outlast the no-progress limit for this test to mean it"
    assert r.properties["forward"].cases > 0

"""Reproducers are standalone scripts: run in a fresh interpreter, each re-creates its finding (exit 1) and says
what differs; on a correct implementation the same script exits 0."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bncheck.registry import discover
from bncheck.repro import script
from bncheck.scenario import Scenario, Step
from bncheck.search import check_implementation

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def seed_002():
    reg = discover(plugin_dirs=[ROOT / "implementations"], entry_points=False)
    impl = reg.implementations["seed-002"]
    return impl, check_implementation(impl, profile="quick", seed=0, properties=["forward", "running-stats"])


def _run(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "repro.py"
    path.write_text(code)
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.mark.slow       # one reproducer runs in the fast suite: tests/test_api.py, tests/test_example_project.py
def test_each_reproducer_recreates_its_finding(seed_002, tmp_path):
    impl, result = seed_002
    findings = [f for f in result.findings if f.repro]
    assert {"biased-running-var", "crash"} <= {f.id for f in findings}
    for f in findings:
        p = _run(f.repro, tmp_path)
        assert p.returncode == 1, f"{f.id}: exit {p.returncode}\n{p.stdout}\n{p.stderr}"
        field = f.where.split(" after ")[0].split(" ")[0]
        assert field in p.stdout, f"{f.id}: the script does not show {field!r}:\n{p.stdout}"
        assert "torch step 1" in p.stdout


def test_the_same_script_passes_on_torch(tmp_path):
    reg = discover(plugin_dirs=[ROOT / "implementations"], entry_points=False)
    impl = reg.implementations["torch-bn1d"]
    sc = Scenario(shape=(6, 3), dtype="float32", param_dtype="float32", layout="contiguous",
                  steps=(Step(True, True), Step(False, False)), momentum=0.1, eps=1e-5, affine=True,
                  track_running_stats=True, distribution="normal", offset=0.0, seed=3, device="cpu")
    p = _run(script(impl.name, impl.source, "none", "-", sc), tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr

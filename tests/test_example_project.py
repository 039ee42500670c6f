"""examples/my_bn, a project that uses bncheck as its users do: copied, tested green as shipped, then broken by one
line and tested again, with pytest in a subprocess (real workers, real searches)."""
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "my_bn"
# the one-line break: the running variance updated with the biased batch variance (torch uses the unbiased one)
GOOD_LINE = "unbiased = var.detach() * (n / (n - 1))"
BROKEN_LINE = "unbiased = var.detach()"


def _copy(tmp_path) -> Path:
    dst = tmp_path / "my_bn"
    shutil.copytree(EXAMPLE, dst, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache", "reports"))
    return dst


def _pytest(cwd, *args):
    installed = any(ep.name == "bncheck" for ep in importlib.metadata.entry_points(group="pytest11"))
    plugin = [] if installed else ["-p", "bncheck.pytest_plugin"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "pytest", *plugin, "-p", "no:cacheprovider", "-rA", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _outcomes(out: str) -> dict:
    return {m.group(2): m.group(1) for m in re.finditer(r"^(PASSED|FAILED|XFAIL|XPASS|SKIPPED|ERROR) (\S+)", out, re.M)}


def test_the_example_runs_green_as_shipped(tmp_path):
    project = _copy(tmp_path)
    r = _pytest(project, "--bncheck")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    got = _outcomes(r.stdout)
    assert {k: v for k, v in got.items() if not k.startswith("bncheck::")} == {
        "tests/test_my_bn.py::test_output_shape": "PASSED", "tests/test_my_bn.py::test_conforms_to_torch": "PASSED",
        "tests/test_my_bn.py::test_running_statistics": "PASSED"}, out
    items = {k: v for k, v in got.items() if k.startswith("bncheck::my-bn::")}
    assert len(items) >= 10 and set(items.values()) == {"PASSED"}, out
    fused = {k: v for k, v in got.items() if k.startswith("bncheck::my-bn-relu::")}    # the fused BN + ReLU
    assert len(fused) >= 10 and set(fused.values()) == {"PASSED"}, out


def test_one_broken_line_fails_with_the_bug_named(tmp_path):
    project = _copy(tmp_path)
    source = project / "my_bn.py"
    text = source.read_text()
    assert text.count(GOOD_LINE) == 1
    source.write_text(text.replace(GOOD_LINE, BROKEN_LINE))
    r = _pytest(project, "--bncheck")
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    got = _outcomes(r.stdout)
    assert got["tests/test_my_bn.py::test_output_shape"] == "PASSED"
    assert got["tests/test_my_bn.py::test_conforms_to_torch"] == "FAILED"
    assert got["tests/test_my_bn.py::test_running_statistics"] == "FAILED"
    assert got["bncheck::my-bn::running-stats"] == "FAILED"
    assert got["bncheck::my-bn::forward"] == "PASSED"      # the output is right; only the running variance is not
    assert got["bncheck::my-bn-relu::running-stats"] == "FAILED"     # the fused layer inherits the bug
    # the message names the bug, shows where, the evidence, a minimal example and how to reproduce it
    section = out.split("_ test_conforms_to_torch _", 1)[1].split("\n___", 1)[0]
    assert "verdict 'unexpected'" in section and "biased-running-var in running-stats: running_var" in section
    assert "matches the oracle with running_var_unbiased=False" in section
    assert "Minimal example: shape=" in section
    repro = re.search(r"Reproduce: python (\S+\.py)", section)
    assert repro, section
    # as printed, from another folder: the reproducer finds the project's modules by itself
    ran = subprocess.run([sys.executable, repro.group(1)], cwd=tmp_path, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)
    assert ran.returncode == 1 and "running_var" in ran.stdout, ran.stdout + ran.stderr

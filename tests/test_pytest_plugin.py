"""The pytest plugin, run as users run it: pytest in a subprocess on a small project, real worker processes."""
import importlib.metadata
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

TEST_FILE = '''
import bncheck


@bncheck.implementation("my-bn")
def build(spec):
    return spec.torch_class(**spec.torch_kwargs())


@bncheck.implementation("my-noeps")
def build_noeps(spec):
    m = spec.torch_class(**spec.torch_kwargs())
    m.eps = 0.5
    return m


@bncheck.implementation("my-known", expect={"eps-ignored"})
def build_known(spec):
    return build_noeps(spec)


@bncheck.implementation("overclaims", expect={"eps-ignored"})
def build_overclaims(spec):
    return build(spec)


def plain(spec):
    return build_noeps(spec)


def test_fixture(bncheck):
    bncheck.assert_conforms(plain, properties=["forward"])


def test_ordinary():
    assert True
'''

DIR_PLUGINS = '''
import torch
import bncheck


@bncheck.implementation("dir-bn")
def build(spec):
    return spec.torch_class(**spec.torch_kwargs())


@bncheck.fusion("dir-fold")
def fold(conv, bn):
    return torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
'''


def project(tmp_path, conftest=""):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_my_bn.py").write_text(TEST_FILE)
    (tmp_path / "implementations").mkdir()
    (tmp_path / "implementations" / "mine.py").write_text(DIR_PLUGINS)
    (tmp_path / "conftest.py").write_text(textwrap.dedent(conftest))
    return tmp_path


def pytest_run(cwd, *args, timeout=300):
    installed = any(ep.name == "bncheck" for ep in importlib.metadata.entry_points(group="pytest11"))
    plugin = [] if installed else ["-p", "bncheck.pytest_plugin"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), TRITON_INTERPRET="1")
    return subprocess.run([sys.executable, "-m", "pytest", *plugin, "-p", "no:cacheprovider", "-rA", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def outcomes(out: str) -> dict:
    """item id -> PASSED / FAILED / XFAIL / XPASS / SKIPPED, from the -rA summary."""
    return {m.group(2): m.group(1)
            for m in re.finditer(r"^(PASSED|FAILED|XFAIL|XPASS|SKIPPED|ERROR) (\S+)", out, re.M)}


def test_off_by_default_nothing_is_collected_and_torch_is_not_imported(tmp_path):
    project(tmp_path)
    r = pytest_run(tmp_path, "--co", "-q")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "bncheck::" not in r.stdout
    assert "tests/test_my_bn.py::test_fixture" in r.stdout and "2 tests collected" in r.stdout
    probe = subprocess.run([sys.executable, "-c", "import sys, bncheck.pytest_plugin; print('torch' in sys.modules)"],
                           env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True)
    assert probe.stdout.strip() == "False", probe.stderr


def test_items_are_one_per_implementation_and_property(tmp_path):
    project(tmp_path)
    r = pytest_run(tmp_path, "--bncheck", "--co", "-q")
    assert r.returncode == 0, r.stdout + r.stderr
    ids = [line for line in r.stdout.splitlines() if line.startswith("bncheck::")]
    from bncheck.properties import PROPERTIES
    props = [p.name for p in PROPERTIES]
    assert ids == ([f"bncheck::my-bn::{p}" for p in props] + [f"bncheck::my-noeps::{p}" for p in props]
                   + [f"bncheck::my-known::{p}" for p in props + ["expected"]]
                   + [f"bncheck::overclaims::{p}" for p in props + ["expected"]]
                   + [f"bncheck::dir-bn::{p}" for p in props]
                   + ["bncheck::dir-fold::fold-output", "bncheck::dir-fold::fold-module"])


def test_pass_fail_xfail_and_the_failure_message(tmp_path):
    project(tmp_path)
    r = pytest_run(tmp_path, "--bncheck", "--bncheck-property", "forward", "--bncheck-seed", "0",
                   "--bncheck-jobs", "2", "-k", "not dir-fold and not my-bn")
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "bncheck: profile quick, seed 0" in out
    assert outcomes(r.stdout) == {
        "tests/test_my_bn.py::test_fixture": "FAILED", "tests/test_my_bn.py::test_ordinary": "PASSED",
        "bncheck::dir-bn::forward": "PASSED",
        "bncheck::my-noeps::forward": "FAILED", "bncheck::my-known::forward": "XFAIL",
        "bncheck::my-known::expected": "XFAIL", "bncheck::overclaims::forward": "PASSED",
        "bncheck::overclaims::expected": "XPASS"}, out
    section = out.split("_ bncheck::my-noeps::forward _", 1)[1].split("\n___", 1)[0]
    assert "my-noeps does not behave like torch in forward: verdict 'unexpected'" in section
    assert re.search(r"^  eps-ignored in forward: output .* x budget", section, re.M), section
    assert "Minimal example: shape=" in section and "Reproduce: python " in section
    # the fixture's assert_conforms on a plain function of the test file: the same message, from a worker
    assert "plain does not behave like torch: verdict 'unexpected'" in out


def test_strict_turns_an_expected_finding_not_reproduced_into_a_failure(tmp_path):
    project(tmp_path)
    r = pytest_run(tmp_path, "--bncheck", "--bncheck-property", "forward", "--bncheck-seed", "0", "--bncheck-strict",
                   "-k", "overclaims")
    assert r.returncode == 1, r.stdout + r.stderr
    assert outcomes(r.stdout) == {"bncheck::overclaims::forward": "PASSED", "bncheck::overclaims::expected": "FAILED"}
    assert "[XPASS(strict)] overclaims declares eps-ignored; not reproduced: eps-ignored" in r.stdout


REPLAY_CONFTEST = '''
from hypothesis import Phase, settings
from hypothesis.database import DirectoryBasedExampleDatabase

settings.register_profile("record", database=DirectoryBasedExampleDatabase("examples-db"))
# replay only: no example is generated, so a finding can only come from the database
settings.register_profile("replay", database=DirectoryBasedExampleDatabase("examples-db"),
                          phases=[Phase.reuse, Phase.shrink])
'''


@pytest.mark.slow       # the fast set replays from a shared database in tests/test_pytest_xdist.py
def test_a_failure_found_once_is_replayed_from_the_hypothesis_database(tmp_path):
    project(tmp_path, REPLAY_CONFTEST)
    args = ("--bncheck", "--bncheck-property", "forward", "-k", "my-noeps")
    first = pytest_run(tmp_path, *args, "--hypothesis-profile", "replay")
    assert first.returncode == 0 and "my-noeps: forward not checked (no case ran)" in first.stdout, first.stdout
    assert "1 skipped" in first.stdout                       # nothing stored yet, nothing generated: no case
    assert "Hypothesis database " + str(tmp_path / "examples-db") in first.stdout
    found = pytest_run(tmp_path, *args, "--hypothesis-profile", "record", "--bncheck-seed", "3")
    assert outcomes(found.stdout) == {"bncheck::my-noeps::forward": "FAILED"}, found.stdout
    assert any((tmp_path / "examples-db").rglob("*")), "the failing example was not saved"
    replayed = pytest_run(tmp_path, *args, "--hypothesis-profile", "replay", "--bncheck-seed", "4")
    assert outcomes(replayed.stdout) == {"bncheck::my-noeps::forward": "FAILED"}, replayed.stdout
    assert "eps-ignored in forward" in replayed.stdout


def test_bad_option_values_are_usage_errors_naming_the_flag(tmp_path):
    project(tmp_path)
    r = pytest_run(tmp_path, "--bncheck", "--bncheck-property", "forwards", "--co")
    assert r.returncode == 4 and "--bncheck-property forwards: unknown property" in r.stderr, r.stdout + r.stderr

"""The pytest plugin under pytest-xdist: ``-n 2 --dist loadgroup`` gives the same items and outcomes as ``-n 0``,
checks each implementation once, and its workers share one Hypothesis example directory."""
import re
from collections import defaultdict

import pytest

from test_pytest_plugin import outcomes, pytest_run

pytest.importorskip("xdist")

# two plugins: one with an unexpected finding, one that declares it; each writes, from the worker process that
# checks it, its process id to checks.log (one id per check)
TEST_FILE = '''
import os
from pathlib import Path

import bncheck

LOG = Path(__file__).resolve().parent.parent / "checks.log"


def _logged(name, spec):
    with open(LOG, "a") as f:
        f.write(f"{name} {os.getpid()}\\n")
    m = spec.torch_class(**spec.torch_kwargs())
    m.eps = 0.5
    return m


@bncheck.implementation("my-noeps")
def build_noeps(spec):
    return _logged("my-noeps", spec)


@bncheck.implementation("my-known", expect={"eps-ignored"})
def build_known(spec):
    return _logged("my-known", spec)
'''

CONFTEST = '''
from hypothesis import Phase, settings
from hypothesis.database import DirectoryBasedExampleDatabase

settings.register_profile("serial", database=DirectoryBasedExampleDatabase("db-serial"))
settings.register_profile("shared", database=DirectoryBasedExampleDatabase("db-shared"))
# replay only: no example is generated, so a finding can only come from the database
settings.register_profile("replay", database=DirectoryBasedExampleDatabase("db-shared"),
                          phases=[Phase.reuse, Phase.shrink])
'''

ARGS = ("--bncheck", "--bncheck-property", "forward")
EXPECTED = {"bncheck::my-noeps::forward": "FAILED", "bncheck::my-known::forward": "XFAIL",
            "bncheck::my-known::expected": "XFAIL"}


def _project(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_two.py").write_text(TEST_FILE)
    (tmp_path / "conftest.py").write_text(CONFTEST)
    return tmp_path


def _items(out: str) -> dict:
    """Outcomes by item id, without the ``@GROUP`` that --dist loadgroup appends."""
    return {k.split("@", 1)[0]: v for k, v in outcomes(out).items()}


def _findings(out: str) -> list:
    """The finding lines of the failure messages: "  ID in PROPERTY: ..." up to the ratio."""
    return sorted(set(re.findall(r"^  (\S+ in \S+: [^;]+); ", out, re.M)))


def _checks(tmp_path) -> dict:
    """Implementation -> the worker processes that checked it."""
    got = defaultdict(set)
    for line in (tmp_path / "checks.log").read_text().split("\n"):
        if line:
            name, pid = line.split()
            got[name].add(pid)
    (tmp_path / "checks.log").unlink()
    return got


def test_xdist_loadgroup_gives_the_same_findings_checks_each_implementation_once_and_shares_the_database(tmp_path):
    project = _project(tmp_path)
    serial = pytest_run(project, *ARGS, "-n", "0", "--bncheck-seed", "5", "--hypothesis-profile", "serial")
    assert _items(serial.stdout) == EXPECTED, serial.stdout + serial.stderr
    assert {k: len(v) for k, v in _checks(project).items()} == {"my-noeps": 1, "my-known": 1}

    spread = pytest_run(project, *ARGS, "-n", "2", "--dist", "loadgroup", "--bncheck-seed", "5",
                        "--hypothesis-profile", "shared")
    out = spread.stdout + spread.stderr
    assert "2 workers [3 items]" in out, out
    assert _items(spread.stdout) == EXPECTED, out
    assert "bncheck::my-noeps::forward@my-noeps" in spread.stdout          # grouped by implementation
    assert _findings(spread.stdout) == _findings(serial.stdout) != [], out
    # each implementation checked once, though both workers collected both
    assert {k: len(v) for k, v in _checks(project).items()} == {"my-noeps": 1, "my-known": 1}, out

    # what the two workers saved in the shared directory is replayed: nothing is generated, yet the same findings
    replay = pytest_run(project, *ARGS, "-n", "0", "--bncheck-seed", "6", "--hypothesis-profile", "replay")
    assert _items(replay.stdout) == EXPECTED, replay.stdout + replay.stderr
    assert _findings(replay.stdout) == _findings(serial.stdout), replay.stdout

"""Where and when a run happened, recorded in its report so that a comparison of two runs can say what it compares.

``commit(path)``: the git commit checked out at ``path`` (the checked repository: the working directory of the
run), with ``-dirty`` appended when tracked files have uncommitted changes (untracked files do not count, as in
pytest-benchmark's ``commit_info``); None outside a git work tree or without git. ``machine()``: node name, processor
model, logical cores, operating system and Python implementation (a subset of pytest-benchmark's ``machine_info``).
``now()``: the current time in UTC, ISO 8601.
"""
from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess

GIT_TIMEOUT_S = 10


def _git(path, *args) -> str | None:
    try:
        p = subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def commit(path: str | os.PathLike = ".") -> str | None:
    """``<sha>`` or ``<sha>-dirty`` for the git work tree containing ``path``; None when there is none."""
    sha = _git(path, "rev-parse", "--verify", "HEAD")
    if not sha:
        return None
    status = _git(path, "status", "--porcelain", "--untracked-files=no")
    return sha + ("-dirty" if status else "")


def now() -> str:
    """The current UTC time, ISO 8601 to the second (``2026-01-31T12:00:00+00:00``)."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def machine() -> dict:
    from .bench import cpu_name        # bench imports torch only inside its functions
    return {"node": platform.node(), "processor": cpu_name(), "machine": platform.machine(),
            "cores": os.cpu_count(), "system": platform.system(), "release": platform.release(),
            "python_implementation": platform.python_implementation()}


def collect(path: str | os.PathLike = ".") -> dict:
    """The three entries a report's environment gets: ``commit``, ``datetime``, ``machine``."""
    return {"commit": commit(path), "datetime": now(), "machine": machine()}


# What makes two machines comparable for timings (the node name and kernel release differ between CI runners
# of one kind).
MACHINE_IDENTITY = ("processor", "machine", "cores", "system")

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault(  # tests see only the plugins they name
    "BNCHECK_DISABLE_ENTRY_POINTS", "1")


@pytest.fixture
def registry():
    from bncheck.registry import discover
    return discover(plugin_dirs=[ROOT / "implementations"], entry_points=False)

"""The corpus plugins (corpus/) load without the packages they adapt, and predict only known ids.

Fast and without the corpus packages: loading a plugin file imports only torch and bncheck (each adapter imports
its package inside the builder, and declines when it is missing). ``make corpus`` runs them for real.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bncheck.catalog import CATALOG
from bncheck.registry import Registry

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "corpus"
FILES = sorted(p for p in CORPUS.glob("*.py") if not p.name.startswith(("_", ".")))

def _constants(path: Path) -> dict:
    out = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("PACKAGE", "PREDICTED"):
                value = node.value
                if node.targets[0].id == "PREDICTED":
                    assert isinstance(value, ast.Call) and value.func.id == "frozenset", path.name
                    value = value.args[0] if value.args else ast.parse("set()").body[0].value
                    out["PREDICTED"] = set() if isinstance(value, ast.Call) else set(ast.literal_eval(value))
                else:
                    out["PACKAGE"] = ast.literal_eval(value)
    return out


def test_there_are_corpus_plugins():
    assert len(FILES) >= 6


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_corpus_plugin_loads_and_predicts_known_ids(path):
    reg = Registry()
    reg.load_file(path)
    assert not reg.errors, reg.errors
    impls = list(reg.implementations.values())
    assert impls, f"{path.name} declares no plugin"
    consts = _constants(path)
    assert consts.get("PACKAGE"), f"{path.name}: no PACKAGE"
    predicted = consts.get("PREDICTED")
    assert predicted is not None, f"{path.name}: no PREDICTED"
    unknown = predicted - set(CATALOG)
    assert not unknown, f"{path.name}: unknown ids {sorted(unknown)}"
    for impl in impls:
        assert impl.expect == frozenset(predicted), impl.name     # the registered expect is the prediction
    assert path.read_text().lstrip().startswith('"""'), f"{path.name}: the docstring says what it adapts"


def test_corpus_requirements_are_pinned():
    for req in ("requirements.txt", "requirements-nodeps.txt"):
        for line in (CORPUS / req).read_text().splitlines():
            line = line.split("#")[0].strip()
            if line:
                assert "==" in line, f"{req}: {line} is not pinned"
    assert "torch==2.13.0" in (CORPUS / "requirements.txt").read_text()

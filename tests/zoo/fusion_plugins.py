"""Registers the fusion zoo with bncheck: ``bncheck ... --plugin tests/zoo/fusion_plugins.py``.

Correct folds are named ``zoo-fold-correct-<name>`` and must pass; mutants are named ``zoo-fold-<name>`` and
declare the findings (catalog ids) they must be reported with, exactly.
"""
from __future__ import annotations

import sys
from pathlib import Path

import bncheck

try:                                    # imported as part of the tests.zoo / zoo package
    from .fusion_mutants import CORRECT, MUTANTS
except ImportError:                     # loaded by file path, as bncheck's plugin loader does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from zoo.fusion_mutants import CORRECT, MUTANTS

ZOO_FOLD_CORRECT: list[str] = []
ZOO_FOLD_MUTANTS: dict[str, frozenset] = {}

for _name, _cls in CORRECT.items():
    bncheck.fusion(f"zoo-fold-correct-{_name}")(_cls())
    ZOO_FOLD_CORRECT.append(f"zoo-fold-correct-{_name}")

for _name, _cls in MUTANTS.items():
    bncheck.fusion(f"zoo-fold-{_name}", expect=set(_cls.expect))(_cls())
    ZOO_FOLD_MUTANTS[f"zoo-fold-{_name}"] = _cls.expect

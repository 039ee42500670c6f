"""Registers the zoo with bncheck: ``bncheck ... --plugin tests/zoo/plugins.py``.

Correct variants are named ``zoo-correct-<name>`` and must pass; mutants are named ``zoo-<name>`` and declare the
one finding (catalog id) they must be reported with.
"""
from __future__ import annotations

import sys
from pathlib import Path

import bncheck

try:                                    # imported as part of the tests.zoo / zoo package
    from .mutants import MUTANTS, findings_of
    from .reference import CORRECT
except ImportError:                     # loaded by file path, as bncheck's plugin loader does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from zoo.mutants import MUTANTS, findings_of
    from zoo.reference import CORRECT


def _builder(cls):
    def build(spec: bncheck.Spec):
        return cls(spec.num_features, eps=spec.eps, momentum=spec.momentum, affine=spec.affine,
                   track_running_stats=spec.track_running_stats, device=spec.device, dtype=spec.dtype)
    build.__name__ = build.__qualname__ = f"build_{cls.__name__}"
    build.__doc__ = cls.__doc__
    return build


ZOO_CORRECT: list[str] = []
ZOO_MUTANTS: dict[str, frozenset] = {}

for _name, _cls in CORRECT.items():
    bncheck.implementation(f"zoo-correct-{_name}")(_builder(_cls))
    ZOO_CORRECT.append(f"zoo-correct-{_name}")

for _name, _cls in MUTANTS.items():
    bncheck.implementation(f"zoo-{_name}", expect=findings_of(_cls))(_builder(_cls))
    ZOO_MUTANTS[f"zoo-{_name}"] = findings_of(_cls)

"""Registers the epilogue zoo with bncheck: ``bncheck ... --plugin tests/zoo/epilogue_plugins.py``.

Correct variants are named ``zoo-epilogue-correct-<name>`` and must pass; mutants are named ``zoo-epilogue-<name>`` and
declare their epilogue and the one finding they must be reported with.
"""
from __future__ import annotations

import sys
from pathlib import Path

import bncheck

try:                                    # imported as part of the tests.zoo / zoo package
    from .epilogue_mutants import CORRECT, MUTANTS
except ImportError:                     # loaded by file path, as bncheck's plugin loader does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from zoo.epilogue_mutants import CORRECT, MUTANTS


def _builder(cls, epilogue):
    def build(spec: bncheck.Spec):
        return cls(spec.num_features, eps=spec.eps, momentum=spec.momentum, affine=spec.affine,
                   track_running_stats=spec.track_running_stats, device=spec.device, dtype=spec.dtype,
                   epilogue=epilogue)
    build.__name__ = build.__qualname__ = f"build_{cls.__name__}_{epilogue}"
    build.__doc__ = cls.__doc__
    return build


EPILOGUE_CORRECT: list[str] = []
EPILOGUE_MUTANTS: dict[str, frozenset] = {}

for _name, _c in CORRECT.items():
    bncheck.implementation(f"zoo-epilogue-correct-{_name}", epilogue=_c["epilogue"])(
        _builder(_c["cls"], _c["epilogue"]))
    EPILOGUE_CORRECT.append(f"zoo-epilogue-correct-{_name}")

for _name, _cls in MUTANTS.items():
    bncheck.implementation(f"zoo-epilogue-{_name}", epilogue=_cls.epilogue, expect={_cls.finding})(
        _builder(_cls, _cls.epilogue))
    EPILOGUE_MUTANTS[f"zoo-epilogue-{_name}"] = frozenset({_cls.finding})

"""Registers the synchronised-BatchNorm mutants: ``bncheck run --plugin tests/zoo/sync_plugins.py``.

Each is named ``zoo-sync-<name>`` and declares the findings (catalog ids) it must be reported with, exactly.
"""
from __future__ import annotations

import sys
from pathlib import Path

import bncheck

try:                                    # imported as part of the tests.zoo / zoo package
    from .sync_mutants import SYNC_MUTANTS
except ImportError:                     # loaded by file path, as bncheck's plugin loader does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from zoo.sync_mutants import SYNC_MUTANTS


def _builder(cls):
    def build(spec: bncheck.Spec, group):
        return cls(spec.num_features, eps=spec.eps, momentum=spec.momentum, affine=spec.affine,
                   track_running_stats=spec.track_running_stats, process_group=group, device=spec.device,
                   dtype=spec.dtype)
    build.__name__ = build.__qualname__ = f"build_{cls.__name__}"
    build.__doc__ = cls.__doc__
    return build


ZOO_SYNC_MUTANTS: dict[str, frozenset] = {}

for _name, _cls in SYNC_MUTANTS.items():
    bncheck.sync_implementation(f"zoo-sync-{_name}", expect=set(_cls.expect))(_builder(_cls))
    ZOO_SYNC_MUTANTS[f"zoo-sync-{_name}"] = _cls.expect

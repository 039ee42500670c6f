"""bncheck: verification and differential testing of BatchNorm implementations against torch semantics.

``check``/``assert_conforms`` (bncheck.api), ``Result`` (bncheck.results), ``Spec`` and ``Unsupported`` are imported
on first use, so importing bncheck (as the pytest plugin does on every pytest run) does not import torch.
"""
from .catalog import CATALOG
from .registry import (Implementation, RegistrationError, Registry, discover, fusion, implementation,
                       sync_implementation)

__version__ = "0.1.0"

_LAZY = {"Spec": "spec", "Unsupported": "spec", "Result": "results", "check": "api", "assert_conforms": "api"}

__all__ = ["CATALOG", "Implementation", "RegistrationError", "Registry", "Result", "Spec", "Unsupported",
           "__version__", "assert_conforms", "check", "discover", "fusion", "implementation", "sync_implementation"]


def __getattr__(name):
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

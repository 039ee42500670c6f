"""bncheck: verification and differential testing of BatchNorm implementations against torch semantics."""
from .catalog import CATALOG
from .registry import (Implementation, RegistrationError, Registry, discover, fusion, implementation,
                       sync_implementation)
from .spec import Spec, Unsupported

__version__ = "0.1.0"

__all__ = ["CATALOG", "Implementation", "RegistrationError", "Registry", "Spec", "Unsupported", "__version__",
           "discover", "fusion", "implementation", "sync_implementation"]

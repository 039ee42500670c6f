"""The construction request handed to every implementation builder."""
from __future__ import annotations

from dataclasses import dataclass, asdict

import torch


class Unsupported(Exception):
    """Raised by a builder for a configuration it deliberately does not support.

    A declared gap: the configuration is skipped and listed in the capability table, not reported as a bug.
    """


@dataclass(frozen=True)
class Spec:
    """What to build. Mirrors the constructor of ``torch.nn.BatchNorm{1,2,3}d``.

    ``ndim`` is the rank of the input (2..5); ``dtype`` is the dtype of parameters and buffers (the input may be
    of a lower precision: half input with float32 parameters is mixed precision).
    """

    num_features: int
    ndim: int = 4
    eps: float = 1e-5
    momentum: float | None = 0.1
    affine: bool = True
    track_running_stats: bool = True
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    epilogue: str = "none"       # none | relu: relu(bn(x)) | add_relu: relu(bn(x) + z), forward(x, z)

    def __post_init__(self):
        if not isinstance(self.num_features, int) or self.num_features < 1:
            raise ValueError(f"Spec.num_features={self.num_features!r} must be a positive int")
        if self.ndim not in (2, 3, 4, 5):
            raise ValueError(f"Spec.ndim={self.ndim!r} must be one of 2, 3, 4, 5")
        if self.momentum is not None and not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"Spec.momentum={self.momentum!r} must be in [0, 1] or None")
        if self.eps < 0:
            raise ValueError(f"Spec.eps={self.eps!r} must be >= 0")
        if self.epilogue not in ("none", "relu", "add_relu"):
            raise ValueError(f"Spec.epilogue={self.epilogue!r} must be one of 'none', 'relu', 'add_relu'")

    @property
    def torch_class(self) -> type[torch.nn.Module]:
        """The torch module class for this rank (BatchNorm1d for ranks 2 and 3)."""
        return {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d,
                4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}[self.ndim]

    def torch_kwargs(self) -> dict:
        """Keyword arguments accepted by torch's BatchNorm constructors."""
        return dict(num_features=self.num_features, eps=self.eps, momentum=self.momentum, affine=self.affine,
                    track_running_stats=self.track_running_stats, device=self.device, dtype=self.dtype)

    def describe(self) -> dict:
        d = asdict(self)
        d["dtype"] = str(self.dtype).replace("torch.", "")
        return d

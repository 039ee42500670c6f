"""Scenarios: plain, hashable descriptions of one test case, and their deterministic materialisation.

A scenario fixes everything: the module configuration, the input shape/dtype/layout, the sequence of steps
(train or eval, grad on or off), and the data (drawn from a seeded generator, so a scenario is reproducible
from its repr alone).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from .scope import Facet

DTYPES = {"float64": torch.float64, "float32": torch.float32, "float16": torch.float16,
          "bfloat16": torch.bfloat16}
# contiguous | channels_last | strided: a stride of 2 on the last axis (still mergeable by .view(N, C, -1)) |
# and views whose axes .view() cannot merge: permuted (spatial axes stored in reverse order), channel-slice
# (channels 1..C of a C+2-channel tensor: N and C do not merge), batch-transposed (stored as (C, N, ...))
LAYOUTS = ("contiguous", "channels_last", "strided", "permuted", "channel-slice", "batch-transposed")
LAYOUT_RANKS = {"channels_last": (4, 5), "permuted": (4, 5)}     # the input ranks a layout exists for
DISTRIBUTIONS = ("normal", "offset", "constant-channel", "tiny-variance", "outliers")
EPILOGUES = ("none", "relu", "add_relu")


@dataclass(frozen=True)
class Step:
    train: bool = True
    grad: bool = True

    def __repr__(self):
        return f"Step(train={self.train}, grad={self.grad})"


@dataclass(frozen=True)
class Scenario:
    shape: tuple = (4, 3)
    dtype: str = "float32"            # input dtype
    param_dtype: str = "float32"      # parameter/buffer dtype (float32 with a half input = mixed precision)
    layout: str = "contiguous"        # one of LAYOUTS (all but contiguous and channels_last are non-contiguous views)
    steps: tuple = (Step(),)
    momentum: float | None = 0.1
    eps: float = 1e-5
    affine: bool = True
    track_running_stats: bool = True
    distribution: str = "normal"
    offset: float = 0.0               # channel mean magnitude for the 'offset' / 'constant-channel' inputs
    seed: int = 0
    device: str = field(default="cpu", compare=False)
    epilogue: str = "none"            # what follows the BatchNorm: none | relu | add_relu (relu(bn(x) + z))

    def __post_init__(self):
        if not 2 <= len(self.shape) <= 5:
            raise ValueError(f"Scenario.shape={self.shape}: rank must be 2..5")
        if self.dtype not in DTYPES or self.param_dtype not in DTYPES:
            raise ValueError(f"Scenario dtype={self.dtype!r}/param_dtype={self.param_dtype!r}: one of {list(DTYPES)}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"Scenario.layout={self.layout!r}: one of {LAYOUTS}")
        if len(self.shape) not in LAYOUT_RANKS.get(self.layout, (2, 3, 4, 5)):
            raise ValueError(f"Scenario.layout={self.layout!r} needs rank 4 or 5, shape={self.shape}")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"Scenario.distribution={self.distribution!r}: one of {DISTRIBUTIONS}")
        if not self.steps:
            raise ValueError("Scenario.steps must hold at least one step")
        if self.epilogue not in EPILOGUES:
            raise ValueError(f"Scenario.epilogue={self.epilogue!r}: one of {EPILOGUES}")

    # -- derived ---------------------------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def channels(self) -> int:
        return self.shape[1]

    @property
    def reduction_size(self) -> int:
        n = self.shape[0]
        for s in self.shape[2:]:
            n *= s
        return n

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def torch_param_dtype(self) -> torch.dtype:
        return DTYPES[self.param_dtype]

    def spec(self):
        from .spec import Spec
        return Spec(num_features=self.channels, ndim=self.rank, eps=self.eps, momentum=self.momentum,
                    affine=self.affine, track_running_stats=self.track_running_stats, device=self.device,
                    dtype=self.torch_param_dtype, epilogue=self.epilogue)

    def with_(self, **changes) -> "Scenario":
        return replace(self, **changes)

    def facets(self) -> dict:
        """What a scope can say about this scenario (``bncheck.scope``): one value per facet of ``FACETS``."""
        return {name: f.read(self) for name, f in FACETS.items()}

    def describe(self) -> str:
        """One line, as shown in a finding's config."""
        dt = self.dtype if self.dtype == self.param_dtype else f"{self.dtype} input, {self.param_dtype} params"
        steps = " ".join(("train" if s.train else "eval") + ("" if s.grad else "/no_grad") for s in self.steps)
        extra = f" {self.distribution}" + (f"(offset={self.offset:g})" if self.offset else "")
        if self.epilogue != "none":
            extra += f" epilogue={self.epilogue}"
        return (f"shape={tuple(self.shape)} {dt} {self.layout} momentum={self.momentum} eps={self.eps:g} "
                f"affine={self.affine} track_running_stats={self.track_running_stats} steps=[{steps}]{extra}")


# -- facets: what a finding's scope is stated in ------------------------------------------------------------------
def _plain_spatial(sc: Scenario, rank: int) -> tuple:
    """Spatial sizes for ``rank`` that keep the scenario's kind of reduction: all 1 where it has one value per
    sample and channel, else sizes neither 1 nor C (nothing broadcasts by accident)."""
    if all(s == 1 for s in sc.shape[2:]):
        return (1,) * (rank - 2)
    return tuple(s if s != sc.channels else s + 3 for s in (3, 4, 5))[:rank - 2]


def _other_rank(sc: Scenario):
    """Another rank with at least as many values per channel (a rank-2 batch takes the spatial values as rows)."""
    rank = 4 if sc.rank != 4 else (5 if sc.layout in LAYOUT_RANKS else 2)
    if rank == 2:
        return sc.with_(shape=(sc.reduction_size, sc.channels))
    return sc.with_(shape=(sc.shape[0], sc.channels) + _plain_spatial(sc, rank))


def _other_dtype(sc: Scenario):
    plain = "float32" if (sc.dtype, sc.param_dtype) != ("float32", "float32") else "float64"
    return sc.with_(dtype=plain, param_dtype=plain)


def _momentum_class(m) -> str:
    return "None" if m is None else ("0" if m == 0 else ("1" if m == 1 else "a number"))


def _dtype_label(sc: Scenario) -> str:
    return sc.dtype if sc.dtype == sc.param_dtype else f"{sc.dtype} input, {sc.param_dtype} params"


def _show(name: str, fmt=str):
    sep = "" if name.endswith("=") else " "
    return lambda values: f"{name}{sep}" + " or ".join(fmt(v) for v in values)


def _flag(yes: str, no: str):
    return lambda values: " or ".join(yes if v else no for v in values)


FACETS = {f.name: f for f in [
    Facet("rank", lambda s: s.rank, _other_rank, _show("rank")),
    Facet("dtype", _dtype_label, _other_dtype, _show("dtype")),
    Facet("layout", lambda s: s.layout, lambda s: None if s.layout == "contiguous" else s.with_(layout="contiguous"),
          _show("layout")),
    Facet("affine", lambda s: s.affine, lambda s: s.with_(affine=not s.affine), _show("affine=", str)),
    Facet("track_running_stats", lambda s: s.track_running_stats,
          lambda s: s.with_(track_running_stats=not s.track_running_stats), _show("track_running_stats=", str)),
    Facet("momentum", lambda s: _momentum_class(s.momentum),
          lambda s: s.with_(momentum=0.1) if s.momentum is None or s.momentum in (0, 1) else None,
          lambda values: "momentum=" + " or ".join("a number" if v == "a number" else v for v in values)),
    Facet("empty batch", lambda s: s.shape[0] == 0,
          lambda s: s.with_(shape=(2,) + tuple(s.shape[1:])) if s.shape[0] == 0 else None,
          _flag("an empty batch", "a non-empty batch")),
    Facet("one value per channel", lambda s: s.reduction_size == 1,
          lambda s: s.with_(shape=(2,) + tuple(s.shape[1:])) if s.reduction_size == 1 else None,
          _flag("one value per channel", "more than one value per channel")),
    Facet("one channel", lambda s: s.channels == 1,
          lambda s: s.with_(shape=(s.shape[0], 3) + tuple(s.shape[2:])) if s.channels == 1 else None,
          _flag("one channel", "several channels")),
    Facet("eval step", lambda s: any(not st.train for st in s.steps),
          lambda s: s.with_(steps=tuple(Step(True, st.grad) for st in s.steps))
          if any(not st.train for st in s.steps) else None, _flag("an eval step", "training steps only")),
    Facet("no_grad step", lambda s: any(not st.grad for st in s.steps),
          lambda s: s.with_(steps=tuple(Step(st.train, True) for st in s.steps))
          if any(not st.grad for st in s.steps) else None, _flag("a no_grad step", "grad enabled in every step")),
    Facet("input", lambda s: s.distribution,
          lambda s: None if s.distribution == "normal" else s.with_(distribution="normal", offset=0.0),
          _show("input")),
    Facet("eps", lambda s: s.eps, lambda s: None if s.eps == 1e-5 else s.with_(eps=1e-5), _show("eps", "{:g}".format)),
]}


@dataclass
class Data:
    """Tensors of one scenario: per-step inputs and upstream gradients, parameter and initial-state values."""
    xs: list
    dys: list
    weight: torch.Tensor          # float64 values exactly representable in the parameter dtype
    bias: torch.Tensor
    running_mean: torch.Tensor
    running_var: torch.Tensor
    zs: list = field(default_factory=list)   # per-step residual inputs z (epilogue add_relu), else empty


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        return x.contiguous(memory_format=fmt)
    if layout == "strided":   # a view with a stride of 2 along the last axis
        big = torch.empty(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype, device=x.device)
        big.zero_()
        view = big[..., ::2]
        view.copy_(x)
        return view
    if layout == "permuted":  # spatial axes stored last-to-first: the reversal is its own inverse
        order = (0, 1) + tuple(range(x.dim() - 1, 1, -1))
        return x.permute(order).contiguous().permute(order)
    if layout == "channel-slice":
        big = x.new_zeros((x.shape[0], x.shape[1] + 2) + tuple(x.shape[2:]))
        view = big[:, 1:-1]
        view.copy_(x)
        return view
    if layout == "batch-transposed":
        return x.transpose(0, 1).contiguous().transpose(0, 1)
    return x.contiguous()


def materialize(sc: Scenario) -> Data:
    g = torch.Generator().manual_seed(sc.seed)
    c, shape = sc.channels, sc.shape
    dt, pdt = sc.torch_dtype, sc.torch_param_dtype

    def rand(*s):
        return torch.rand(*s, generator=g, dtype=torch.float64)

    def randn(*s):
        return torch.randn(*s, generator=g, dtype=torch.float64)

    view = (1, c) + (1,) * (len(shape) - 2)
    sign = torch.where(rand(c) < 0.5, -1.0, 1.0)
    if sc.distribution == "offset":
        mu = sign * sc.offset * (0.5 + 0.5 * rand(c))
        sigma = 0.5 + 1.5 * rand(c)
    elif sc.distribution == "tiny-variance":
        mu = sign * (0.5 + rand(c))
        sigma = 1e-3 * (0.1 + rand(c))
    else:
        mu = 0.5 * randn(c)
        sigma = 0.5 + 1.5 * rand(c)
    if sc.distribution == "constant-channel":
        mu[0] = sign[0] * (sc.offset or 1.0)
        sigma[0] = 0.0
    xs, dys = [], []
    for _ in sc.steps:
        z = randn(*shape)
        if sc.distribution == "outliers" and z.numel():
            mask = rand(*shape) < 0.02
            z = torch.where(mask, z * 50.0, z)
        x = (mu.view(view) + sigma.view(view) * z).to(dt)
        xs.append(_layout(x.to(sc.device), sc.layout))
        dys.append(_layout(randn(*shape).to(dt).to(sc.device), sc.layout))
    weight = (sign * (0.5 + rand(c))).to(pdt).double()
    bias = randn(c).to(pdt).double()
    running_mean = (0.5 * randn(c)).to(pdt).double()
    running_var = (0.5 + 1.5 * rand(c)).to(pdt).double()
    zs = []
    if sc.epilogue == "add_relu":    # from a generator of its own: the other tensors are those of epilogue none
        gz = torch.Generator().manual_seed(sc.seed + 104729)
        for _ in sc.steps:
            z = torch.randn(*shape, generator=gz, dtype=torch.float64)
            if sc.distribution == "constant-channel" and z.numel():
                z[:, 0] = 0.0        # with a constant channel: pre-activations of exactly 0 (affine=False)
            zs.append(_layout(z.to(dt).to(sc.device), sc.layout))
    return Data(xs, dys, weight, bias, running_mean, running_var, zs)

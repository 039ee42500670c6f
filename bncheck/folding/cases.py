"""Fusion cases: conv-BN folding scenarios, their data, the float64 oracle, plugin adapters, and one evaluation.

A ``FoldScenario`` fixes a convolution (kind, dims, channels, groups, kernel, stride, padding, dilation,
output_padding, bias), a BatchNorm (eps, affine, running statistics' scale), a dtype and an input; its values come
from a seeded generator, so a scenario is reproducible from its repr alone. ``evaluate`` calls a fusion plugin on
the eval-mode pair and returns its problems, each with a category that one property owns.
"""
from __future__ import annotations

import copy
import inspect
import math
import traceback
from dataclasses import dataclass, field, fields

import torch
from hypothesis import strategies as st
from torch import nn

from .. import budget as B
from ..registry import Implementation
from ..spec import Unsupported
from .facets import FACETS
from .fold import FOLD_REFERENCE, FoldKnobs, NotExpressible, fold_parameters, transposed_groups

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16}
HYPERPARAMETERS = ("stride", "padding", "dilation", "groups", "output_padding", "padding_mode")


@dataclass(frozen=True)
class FoldScenario:
    dim: int = 2                      # 1, 2, 3: Conv{dim}d / ConvTranspose{dim}d
    transposed: bool = False
    c_in: int = 2
    c_out: int = 2
    groups: int = 1
    kernel: tuple = (3, 3)
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    output_padding: tuple = (0, 0)    # transposed only
    bias: bool = True
    affine: bool = True
    eps: float = 1e-5
    dtype: str = "float32"            # conv, BatchNorm and input dtype
    batch: int = 2
    spatial: tuple = (5, 5)
    mean_offset: float = 0.0          # |running_mean| scale (0: standard normal)
    var_range: tuple = (-1, 1)        # running_var drawn log-uniformly in 10**lo .. 10**hi
    x_offset: float = 0.0             # per-channel input offset magnitude
    seed: int = 0
    device: str = field(default="cpu", compare=False)

    def __post_init__(self):
        n = self.dim
        if n not in (1, 2, 3):
            raise ValueError(f"FoldScenario.dim={n}: must be 1, 2 or 3")
        for name in ("kernel", "stride", "padding", "dilation", "output_padding", "spatial"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"FoldScenario.{name}={getattr(self, name)}: needs {n} entries for dim={n}")
        if self.groups < 1 or self.c_in % self.groups or self.c_out % self.groups:
            raise ValueError(f"FoldScenario: groups={self.groups} must divide c_in={self.c_in} and c_out={self.c_out}")
        if self.dtype not in DTYPES:
            raise ValueError(f"FoldScenario.dtype={self.dtype!r}: one of {list(DTYPES)}")
        for i in range(n):
            op, s, d = self.output_padding[i], self.stride[i], self.dilation[i]
            if op and (not self.transposed or op >= max(s, d)):
                raise ValueError(f"FoldScenario.output_padding={self.output_padding}: only for transposed convs, "
                                 f"and below max(stride, dilation)")
        if min(self.out_spatial) < 1:
            raise ValueError(f"FoldScenario: input {self.spatial} gives an empty output {self.out_spatial}")

    @property
    def out_spatial(self) -> tuple:
        out = []
        for L, k, s, p, d, op in zip(self.spatial, self.kernel, self.stride, self.padding, self.dilation,
                                     self.output_padding):
            out.append((L - 1) * s - 2 * p + d * (k - 1) + op + 1 if self.transposed
                       else (L + 2 * p - d * (k - 1) - 1) // s + 1)
        return tuple(out)

    @property
    def conv_name(self) -> str:
        return f"Conv{'Transpose' if self.transposed else ''}{self.dim}d"

    @property
    def reduction_size(self) -> int:
        return self.c_in // self.groups * math.prod(self.kernel) + 1

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def facets(self) -> dict:
        """What a scope can say about this scenario (``bncheck.scope``): one value per facet of ``facets.FACETS``."""
        return {name: f.read(self) for name, f in FACETS.items()}

    def with_(self, **changes) -> "FoldScenario":
        """A variant; the input is lengthened and output_padding cleared where the new conv needs it."""
        return fit(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})

    def describe(self) -> str:
        def t(v):
            return v[0] if len(set(v)) == 1 else v
        conv = [f"{self.c_in}->{self.c_out}", f"k={t(self.kernel)}"]
        for name, default in (("stride", 1), ("padding", 0), ("dilation", 1), ("output_padding", 0)):
            v = getattr(self, name)
            if any(x != default for x in v):
                conv.append(f"{name}={t(v)}")
        if self.groups > 1:
            conv.append(f"groups={self.groups}" + (" (depthwise)" if self.groups == self.c_in else ""))
        conv.append(f"bias={self.bias}")
        stats = f"var 1e{self.var_range[0]}..1e{self.var_range[1]}" + (f", |mean|~{self.mean_offset:g}"
                                                                         if self.mean_offset else "")
        x = f"x{(self.batch, self.c_in) + tuple(self.spatial)}"
        x += f" offset {self.x_offset:g}" if self.x_offset else ""
        return (f"{self.conv_name}({', '.join(conv)}) + BatchNorm{self.dim}d(eps={self.eps:g}, affine={self.affine}, "
                f"{stats}) {self.dtype} {x}")


def fit(**kw) -> FoldScenario:
    """A scenario from these fields, with the input long enough for a (non-transposed) conv and output_padding
    cleared where the conv does not allow it."""
    spatial = list(kw["spatial"])
    op = list(kw.get("output_padding") or (0,) * len(spatial))
    for i, (k, s, p, d) in enumerate(zip(kw["kernel"], kw["stride"], kw["padding"], kw["dilation"])):
        if not kw["transposed"]:
            spatial[i] = max(spatial[i], d * (k - 1) + 1 - 2 * p)
        if not kw["transposed"] or op[i] >= max(s, d):
            op[i] = 0
    return FoldScenario(**{**kw, "spatial": tuple(spatial), "output_padding": tuple(op)})


@st.composite
def fold_scenarios(draw, dims=(2, 1, 3), dtypes=("float32", "float64", "float16")) -> FoldScenario:
    """Valid conv + BatchNorm pairs; every draw shrinks towards Conv2d, one channel group, float32, bias=True."""
    # every draw is made whatever came before it (per-axis values for 3 axes, cut to dim), so changing one choice
    # while shrinking does not shift the meaning of the later ones
    dim = draw(st.sampled_from(dims))
    transposed = draw(st.booleans())
    # half the draws are dense (groups=1), and 1..4 channels per group make C_in, C_out >= 2 and C_in != C_out
    # common: a transposed weight is (C_in, C_out/groups, *k), and a fold that takes it for (C_out, C_in, *k) is
    # still right when C_in (or C_out) per group is 1, as in depthwise convs
    grouped, n_groups, depthwise = draw(st.booleans()), draw(st.integers(2, 3)), draw(st.booleans())
    per_in, per_out = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    groups = n_groups if grouped else 1
    c_in, c_out = groups * (1 if grouped and depthwise else per_in), groups * per_out
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(3))[:dim]
    stride = tuple(draw(st.integers(1, 2)) for _ in range(3))[:dim]
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(3))[:dim]
    padding = tuple(draw(st.integers(0, 2)) for _ in range(3))[:dim]
    padding = tuple(min(p, d * (k - 1) // 2) for p, k, d in zip(padding, kernel, dilation))
    output_padding = tuple(draw(st.integers(0, 1)) for _ in range(3))[:dim]
    spatial = tuple(draw(st.integers(1, 5)) for _ in range(3))[:dim]
    if dim == 3:
        spatial = tuple(min(L, 3) for L in spatial)
    dtype = draw(st.sampled_from(dtypes))
    half = dtype == "float16"           # float16 keeps |W'|*|x| + |b'| representable: narrower ranges
    lo = draw(st.integers(-8, 1))
    hi = min(lo + draw(st.integers(0, 4)), 2)
    mean_offset = draw(st.sampled_from((0.0, 10.0, 1e3, 1e4)))
    x_offset = draw(st.sampled_from((0.0, 10.0, 1e3)))
    if half:
        lo, hi, mean_offset, x_offset = max(lo, -4), max(hi, -4), min(mean_offset, 10.0), min(x_offset, 10.0)
    return fit(**dict(
        dim=dim, transposed=transposed, c_in=c_in, c_out=c_out, groups=groups, kernel=kernel, stride=stride,
        padding=padding, dilation=dilation, output_padding=output_padding,
        bias=draw(st.sampled_from([True, False])), affine=draw(st.sampled_from([True, False])),
        eps=draw(st.sampled_from([1e-5, 1e-3, 0.1, 1e-8])), dtype=dtype, batch=draw(st.integers(1, 2)),
        spatial=spatial, mean_offset=mean_offset, var_range=(lo, hi), x_offset=x_offset,
        seed=draw(st.integers(0, 2 ** 16))))


# Directed first examples, tried before the random draws of every search round: the layer shapes a random draw can
# miss at a small budget. A decoder's upsampling ConvTranspose2d with C_in = C_out = 3 and groups=1 is where a fold
# that scales the wrong axis of a transposed weight cannot be right: axis 0 (C_in), W.reshape(C_out, -1) rows,
# (C_out, C_in) rows put back in the wrong order, or the axis whose size matches C_out (both do).
DIRECTED = (
    FoldScenario(transposed=True, c_in=3, c_out=3, kernel=(3, 3), stride=(2, 2), padding=(1, 1),
                 output_padding=(1, 1), spatial=(3, 3), seed=1),
)


# -- data and oracle ------------------------------------------------------------------------------------------------

def materialize(sc: FoldScenario):
    """The eval-mode ``(conv, bn, x)`` of a scenario, with values from its seed (exact in its dtype)."""
    g = torch.Generator().manual_seed(sc.seed)
    dt, dev = sc.torch_dtype, sc.device

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    kw = dict(stride=sc.stride, padding=sc.padding, dilation=sc.dilation, groups=sc.groups, bias=sc.bias,
              dtype=dt, device=dev)
    if sc.transposed:
        kw["output_padding"] = sc.output_padding
    conv = getattr(nn, sc.conv_name)(sc.c_in, sc.c_out, sc.kernel, **kw)
    bn = getattr(nn, f"BatchNorm{sc.dim}d")(sc.c_out, eps=sc.eps, affine=sc.affine, dtype=dt, device=dev)
    c = sc.c_out
    sign = torch.where(rand(c) < 0.5, -1.0, 1.0)
    lo, hi = sc.var_range
    values = {
        (conv, "weight"): randn(*conv.weight.shape) * 0.5, (conv, "bias"): randn(c),
        (bn, "running_mean"): sign * sc.mean_offset * (0.5 + 0.5 * rand(c)) + randn(c),
        (bn, "running_var"): 10.0 ** (lo + (hi - lo) * rand(c)),
        (bn, "weight"): randn(c), (bn, "bias"): randn(c),
    }
    with torch.no_grad():
        for (mod, name), v in values.items():
            if getattr(mod, name, None) is not None:
                getattr(mod, name).copy_(v.to(dt))
    x_sign = torch.where(rand(sc.c_in) < 0.5, -1.0, 1.0).view((1, -1) + (1,) * sc.dim)
    x = randn(sc.batch, sc.c_in, *sc.spatial) + sc.x_offset * x_sign
    return conv.eval(), bn.eval(), x.to(dt).to(dev)


def _chan(t: torch.Tensor, dim: int) -> torch.Tensor:
    return t.view((1, -1) + (1,) * dim)


def oracle_output(conv, bn, x) -> torch.Tensor:
    """``bn(conv(x))`` in eval mode, computed in float64 without folding."""
    c64 = copy.deepcopy(conv).double()
    with torch.no_grad():
        y = c64(x.double())
        d = y.dim() - 2
        y = (y - _chan(bn.running_mean.double(), d)) / torch.sqrt(_chan(bn.running_var.double(), d) + bn.eps)
        if bn.weight is not None:
            y = y * _chan(bn.weight.double(), d)
        if bn.bias is not None:
            y = y + _chan(bn.bias.double(), d)
    return y


def fold_reference(conv, bn, x, knobs: FoldKnobs = FOLD_REFERENCE):
    """The knobbed fold reference: ``(y, budget, magnitude)`` in float64, or None where the knob does not fit.

    With the default knobs ``y`` is the unfolded oracle ``bn(conv(x))``; otherwise the conv with the knobbed
    float64 ``(W', b')``. The budget is ``budget.fused_output`` on the magnitudes of that fold.
    """
    transposed = isinstance(conv, nn.modules.conv._ConvTransposeNd)
    try:
        f = fold_parameters(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps,
                            transposed, knobs)
    except NotExpressible:
        return None
    c64 = copy.deepcopy(conv).double()
    with torch.no_grad():
        c64.weight.copy_(f.weight.abs())
        c64.bias = None
        mag = c64(x.double().abs()) + _chan(f.bias_terms, x.dim() - 2)
        if knobs == FOLD_REFERENCE:
            y = oracle_output(conv, bn, x)
        else:
            c64.weight.copy_(f.weight)
            c64.bias = nn.Parameter(f.bias)
            y = c64(x.double())
    n = conv.in_channels // conv.groups * math.prod(conv.kernel_size) + 1
    return y, B.fused_output(mag, y, n, B.u(conv.weight.dtype)), mag


def compare_output(got: torch.Tensor, ref: torch.Tensor, bud: torch.Tensor):
    """``(ratio, detail, category)``: worst |diff|/budget; category 'value', 'nan-inf' or None when within."""
    if got.shape != ref.shape:
        return math.inf, f"output shape {tuple(got.shape)}, bn(conv(x)) {tuple(ref.shape)}", "value"
    bad = torch.isfinite(ref) & ~torch.isfinite(got)
    if bad.any():
        idx = tuple(int(i) for i in bad.nonzero()[0])
        return (math.inf, f"{int(bad.sum())} non-finite value(s), first at {idx}: {got[idx].item()} where "
                          f"bn(conv(x)) gives {ref[idx].item():.4g}", "nan-inf")
    same = (got == ref) | (got.isnan() & ref.isnan())
    ratio = torch.where(same, torch.zeros_like(ref), (got - ref).abs() / bud)
    ratio = torch.nan_to_num(ratio, nan=math.inf)
    r = float(ratio.max()) if ratio.numel() else 0.0
    if r <= 1.0:
        return r, "", None
    idx = tuple(int(i) for i in torch.unravel_index(torch.argmax(ratio), ratio.shape))
    return r, (f"max |diff| {(got - ref)[idx].abs().item():.3g} at {idx} (got {got[idx].item():.6g}, expected "
               f"{ref[idx].item():.6g}) = {r:.3g} x budget ({bud[idx].item():.2g}); "
               f"{int((ratio > 1).sum())}/{ratio.numel()} elements over budget"), "value"


# -- plugin adapters ----------------------------------------------------------------------------------------------

class WrongReturn(TypeError):
    """A weights-form fold that did not return a ``(W', b')`` pair of tensors."""


def _form_of(fold, form):
    impl = fold if isinstance(fold, Implementation) else getattr(fold, "__bncheck_impl__", None)
    if impl is not None:
        return impl.build, form or impl.options.get("form", "module")
    return fold, form or ("weights" if len(inspect.signature(fold).parameters) >= 7 else "module")


def module_fold(fold, form: str | None = None):
    """``fold(conv, bn) -> module`` for a fusion plugin of either form (an Implementation or a plain function)."""
    fn, form = _form_of(fold, form)
    if form == "module":
        return fn

    def as_module(conv, bn):
        out = fn(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps,
                 isinstance(conv, nn.modules.conv._ConvTransposeNd))
        if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)):
            what = type(out).__name__ + (f" of {len(out)}" if isinstance(out, (tuple, list)) else "")
            raise WrongReturn(f"the weights-form fold returned {what}, not a (W', b') pair of tensors")
        fused = copy.deepcopy(conv)
        for name, t in zip(("weight", "bias"), out):
            setattr(fused, name, nn.Parameter(t.detach(), requires_grad=t.is_floating_point()
                                              and conv.weight.requires_grad))
        return fused
    return as_module


def pair_from_weights(w, b, running_mean, running_var, weight, bias, eps, transposed=False):
    """An eval-mode ``(conv, bn)`` holding these tensors (groups of a plain conv are taken as 1: W fixes the fold)."""
    d, c = w.dim() - 2, running_mean.numel()
    kw = dict(bias=b is not None, dtype=w.dtype, device=w.device)
    if transposed:
        conv = getattr(nn, f"ConvTranspose{d}d")(w.shape[0], c, tuple(w.shape[2:]),
                                                 groups=transposed_groups(w, c), **kw)
    else:
        conv = getattr(nn, f"Conv{d}d")(w.shape[1], c, tuple(w.shape[2:]), **kw)
    bn = getattr(nn, f"BatchNorm{d}d")(c, eps=eps, affine=weight is not None or bias is not None,
                                       dtype=running_mean.dtype, device=running_mean.device)
    with torch.no_grad():
        for mod, name, v in ((conv, "weight", w), (conv, "bias", b), (bn, "running_mean", running_mean),
                             (bn, "running_var", running_var), (bn, "weight", weight), (bn, "bias", bias)):
            if v is not None:
                getattr(mod, name).copy_(v)
    return conv.eval(), bn.eval()


def weights_fold(fold, form: str | None = None):
    """``fold(W, b, running_mean, running_var, weight, bias, eps, transposed) -> (W', b')`` for either form."""
    fn, form = _form_of(fold, form)
    if form == "weights":
        return fn

    def as_weights(w, b, running_mean, running_var, weight, bias, eps, transposed=False):
        fused = fn(*pair_from_weights(w, b, running_mean, running_var, weight, bias, eps, transposed))
        return fused.weight.detach(), fused.bias.detach()
    return as_weights


# -- one evaluation ---------------------------------------------------------------------------------------------

@dataclass
class Problem:
    category: str          # crash | value | nan-inf | module | dtype | mutated
    where: str
    detail: str
    ratio: float = math.inf


@dataclass
class Outcome:
    declined: str | None = None
    unrepresentable: str | None = None
    problems: list = field(default_factory=list)
    output: torch.Tensor | None = None     # fused(x) in float64, when it ran
    ratio: float | None = None             # worst |diff|/budget against the reference used


def _raised(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)
    at = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else ""
    return f"raises {type(e).__name__}: {str(e)[:200]}{at}"


def _snapshot(conv, bn) -> dict:
    snap = {"conv.training": conv.training, "bn.training": bn.training, "bn.eps": bn.eps}
    for mod, pre in ((conv, "conv"), (bn, "bn")):
        for name in ("weight", "bias", "running_mean", "running_var"):
            t = getattr(mod, name, None)
            snap[f"{pre}.{name}"] = None if not isinstance(t, torch.Tensor) else t.detach().clone()
    return snap


def _mutations(before: dict, after: dict) -> list:
    out = []
    for k, v in before.items():
        w = after[k]
        if not isinstance(v, torch.Tensor) or not isinstance(w, torch.Tensor):
            if (v is None) != (w is None) or (not isinstance(v, torch.Tensor) and not isinstance(w, torch.Tensor)
                                              and v != w):
                out.append(f"{k} changed by folding: {_short(v)} -> {_short(w)}")
        elif v.shape != w.shape or v.dtype != w.dtype:
            out.append(f"{k} replaced by folding: {tuple(v.shape)} {v.dtype} -> {tuple(w.shape)} {w.dtype}")
        elif not torch.equal(v, w):
            out.append(f"{k} changed by folding (max |change| {(w.double() - v.double()).abs().max().item():.3g})")
    return out


def _short(v) -> str:
    return f"tensor{tuple(v.shape)}" if isinstance(v, torch.Tensor) else repr(v)


def _same(a, b) -> bool:
    """Equality that never raises (a hyperparameter replaced by a tensor or an odd object is not the same)."""
    try:
        return bool(a == b)
    except Exception:
        return False


def structure(fused, conv) -> list:
    """``(category, detail)`` for every way the folded module differs from the conv in kind, shape, dtype, device."""
    if not isinstance(fused, nn.Module):
        return [("module", f"the fold returned {type(fused).__name__}, not a module")]
    out = []
    if type(fused) is not type(conv):
        out.append(("module", f"the folded module is {type(fused).__name__}, the conv is {type(conv).__name__}"))
    shapes = {"weight": tuple(conv.weight.shape), "bias": (conv.out_channels,)}
    for name, shape in shapes.items():
        t = getattr(fused, name, None)
        if not isinstance(t, torch.Tensor):
            out.append(("module", f"the folded conv has no {name}" if t is None else
                        f"the folded {name} is {type(t).__name__}, not a tensor"))
            continue
        if tuple(t.shape) != shape:
            out.append(("module", f"the folded {name} has shape {tuple(t.shape)}, expected {shape}"))
        if t.dtype != conv.weight.dtype:
            out.append(("dtype", f"the folded {name} is {t.dtype}, the conv's weight {conv.weight.dtype}"))
        if t.device != conv.weight.device:
            out.append(("module", f"the folded {name} is on {t.device}, the conv on {conv.weight.device}"))
    for h in HYPERPARAMETERS:
        if hasattr(conv, h) and not _same(getattr(fused, h, None), getattr(conv, h)):
            out.append(("module", f"the folded conv has {h}={getattr(fused, h, None)!r}, the conv "
                                  f"{getattr(conv, h)!r}"))
    return out


def evaluate(impl, sc: FoldScenario, knobs: FoldKnobs = FOLD_REFERENCE, *, check_output: bool = True) -> Outcome:
    """Fold the scenario's pair with the plugin; check the module, the inputs, and (optionally) fused(x)."""
    conv, bn, x = materialize(sc)
    ref = fold_reference(conv, bn, x, FOLD_REFERENCE)
    big = torch.finfo(sc.torch_dtype).max / 8
    if float(ref[2].max()) > big:
        return Outcome(unrepresentable=f"|W'|*|x| + |b'| up to {float(ref[2].max()):.3g} overflows {sc.dtype}")
    if check_output and knobs != FOLD_REFERENCE:
        ref = fold_reference(conv, bn, x, knobs) or ref
    before = _snapshot(conv, bn)
    res = Outcome()
    fused = missing = object()
    try:
        fused = module_fold(impl)(conv, bn)
    except Unsupported as e:
        return Outcome(declined=str(e) or "declined")
    except WrongReturn as e:
        res.problems.append(Problem("module", "fold(conv, bn)", str(e)))
    except Exception as e:
        res.problems.append(Problem("crash", "fold(conv, bn)", _raised(e)))
    res.problems += [Problem("mutated", "conv/bn after folding", m) for m in _mutations(before, _snapshot(conv, bn))]
    if fused is missing:
        return res
    shape_problems = structure(fused, conv)
    res.problems += [Problem(cat, "folded module", d) for cat, d in shape_problems]
    if shape_problems or not check_output:
        return res
    try:
        with torch.no_grad():
            got = fused(x)
    except Exception as e:
        res.problems.append(Problem("crash", "fused(x)", "the folded module " + _raised(e)))
        return res
    if not isinstance(got, torch.Tensor):
        res.problems.append(Problem("module", "fused(x)", f"the folded module returns {type(got).__name__}"))
        return res
    if got.dtype != x.dtype:
        res.problems.append(Problem("dtype", "fused(x)", f"fused(x) is {got.dtype} for {x.dtype} input"))
        return res
    if got.device != x.device or got.layout != torch.strided:
        res.problems.append(Problem("module", "fused(x)", f"fused(x) is a {got.layout} tensor on {got.device} for a "
                                                          f"{x.layout} input on {x.device}"))
        return res
    res.output = got.detach().to("cpu", torch.float64)
    y, bud, _ = ref
    res.ratio, detail, cat = compare_output(res.output, y, bud)
    if cat:
        res.problems.append(Problem(cat, "fused(x)", detail, res.ratio))
    return res

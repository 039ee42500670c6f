"""Run one implementation through one scenario and record what it did: a ``Trace`` of plain observations.

Nothing here judges; ``compare`` does. The harness sets the parameters and initial running statistics to the
scenario's random, non-trivial values (weight = 1 and bias = 0 would hide affine bugs), runs each step with the
step's mode and grad setting, back-propagates a random upstream gradient, and reads the state back through the
implementation's ``state`` mapping (flattening odd shapes such as ``(1, C, 1, 1)``, reading plain attributes).
"""
from __future__ import annotations

import copy
import traceback
from dataclasses import dataclass, field

import torch

from .registry import Implementation
from .scenario import Data, Scenario
from .spec import Unsupported

STAT_KEYS = ("running_mean", "running_var")


@dataclass
class StateRead:
    running_mean: torch.Tensor | None = None      # float64 (C,) when it holds exactly C values
    running_var: torch.Tensor | None = None
    num_batches_tracked: int | None = None
    shapes: dict = field(default_factory=dict)    # key -> raw shape (tuple) or type name when not a tensor
    present: dict = field(default_factory=dict)   # key -> whether the attribute exists (and is not None)

    @property
    def readable(self) -> bool:
        return self.running_mean is not None and self.running_var is not None


@dataclass
class Observation:
    error: str | None = None              # exception class name raised by forward/backward
    error_message: str = ""
    error_where: str = ""                 # forward | backward
    unsupported: str | None = None        # the implementation declined this step (Unsupported)
    y: torch.Tensor | None = None         # detached output, as returned (None when forward returned no tensor)
    output_kind: str = ""                 # what forward returned when it was not a tensor, e.g. "a tuple of 2"
    dx: torch.Tensor | None = None
    dz: torch.Tensor | None = None        # the residual input's gradient (epilogue add_relu)
    dweight: torch.Tensor | None = None   # flattened to (C,) float64
    dbias: torch.Tensor | None = None
    affine_grad_missing: bool = False     # weight/bias exist but got no .grad
    before: StateRead | None = None
    after: StateRead | None = None
    input_mutated: bool = False
    mutated: str = ""                     # which input was modified in place: "x", "z" or "x and z"
    stats_hold_graph: bool = False


@dataclass
class Trace:
    unsupported: str | None = None        # Unsupported raised by the builder
    build_error: str | None = None
    weight: torch.Tensor | None = None    # float64 (C,) values in use
    bias: torch.Tensor | None = None
    state_dict_keys: tuple = ()
    buffer_names: tuple = ()
    stat_attrs: dict = field(default_factory=dict)   # key -> attribute path
    # running statistics as state (before any step), per key: the tensor read through the state mapping (or its
    # storage) is among state_dict(keep_vars=True)'s tensors; .to() of a copy of the module converts it (None:
    # not testable, see stats_to_note). Empty when there is nothing to read.
    stats_in_state_dict: dict = field(default_factory=dict)
    stats_follow_to: dict = field(default_factory=dict)
    stats_to_note: str = ""
    steps: list = field(default_factory=list)


def resolve(module, path: str):
    obj = module
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _describe(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    where = f" ({tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno})" if tb else ""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{msg[:200]}{where}"


def read_state(module, impl: Implementation, channels: int) -> StateRead:
    out = StateRead()
    for key in STAT_KEYS + ("num_batches_tracked",):
        obj = resolve(module, impl.attr(key))
        out.present[key] = obj is not None
        if obj is None:
            continue
        if isinstance(obj, torch.Tensor):
            out.shapes[key] = tuple(obj.shape)
            val = obj.detach()
        elif isinstance(obj, (int, float)):
            out.shapes[key] = type(obj).__name__
            val = torch.tensor(float(obj))
        else:
            out.shapes[key] = type(obj).__name__
            continue
        if key == "num_batches_tracked":
            if val.numel() == 1:
                out.num_batches_tracked = int(val.reshape(()).item())
        elif val.numel() == channels:
            setattr(out, key, val.reshape(-1).to("cpu", torch.float64).clone())
    return out


def _write(module, path: str, values: torch.Tensor) -> torch.Tensor | None:
    obj = resolve(module, path)
    if isinstance(obj, torch.Tensor) and obj.numel() == values.numel():
        with torch.no_grad():
            obj.copy_(values.to(obj.dtype).reshape(obj.shape))
        return obj.detach().reshape(-1).to("cpu", torch.float64).clone()
    return None


def _fresh(x: torch.Tensor) -> torch.Tensor:
    """A copy of ``x`` with the same sizes and strides (so layout and non-contiguity survive)."""
    y = torch.empty_strided(x.size(), x.stride(), dtype=x.dtype, device=x.device)
    y.copy_(x)
    return y


def _grad_of(module, path: str, channels: int):
    p = resolve(module, path)
    if not isinstance(p, torch.Tensor):
        return None, False
    g = p.grad
    if g is None:
        return None, True
    return g.detach().reshape(-1).to("cpu", torch.float64).clone() if g.numel() == channels else None, False


def build(impl: Implementation, sc: Scenario):
    """Build the module for a scenario; returns (module, trace) where trace records a refusal or failure."""
    trace = Trace()
    try:
        module = impl.build(sc.spec())
    except Unsupported as e:
        trace.unsupported = str(e) or "declined"
        return None, trace
    except Exception as e:
        trace.build_error = f"{type(e).__name__}: {_describe(e)}"
        return None, trace
    if not isinstance(module, torch.nn.Module):
        trace.build_error = f"builder returned {type(module).__name__}, not a torch.nn.Module"
        return None, trace
    return module, trace


# Called after every run (search, diagnosis and probes alike): the runner's worker sets it to tell its parent that
# the check is advancing, so a slow implementation (e.g. one that compiles each new configuration) is not taken for
# a hung one. None outside a worker.
on_run = None


def run(impl: Implementation, sc: Scenario, data: Data) -> Trace:
    try:
        return _run(impl, sc, data)
    finally:
        if on_run is not None:
            on_run()


def _run(impl: Implementation, sc: Scenario, data: Data) -> Trace:
    module, trace = build(impl, sc)
    if module is None:
        return trace
    c = sc.channels
    trace.stat_attrs = {k: impl.attr(k) for k in STAT_KEYS + ("num_batches_tracked",)}
    if sc.affine:
        trace.weight = _write(module, impl.attr("weight"), data.weight)
        trace.bias = _write(module, impl.attr("bias"), data.bias)
    if sc.track_running_stats:
        _write(module, impl.attr("running_mean"), data.running_mean)
        _write(module, impl.attr("running_var"), data.running_var)
    try:
        state = module.state_dict(keep_vars=True)
        trace.state_dict_keys = tuple(state.keys())
    except Exception as e:
        state = {}
        trace.state_dict_keys = (f"<state_dict() raised {type(e).__name__}>",)
    trace.buffer_names = tuple(name for name, _ in module.named_buffers())
    if sc.track_running_stats:
        stats_as_state(impl, sc, module, trace, state)
    params = [p for p in module.parameters()]
    for k, stp in enumerate(sc.steps):
        obs = Observation(before=read_state(module, impl, c))
        trace.steps.append(obs)
        for p in params:
            p.grad = None
        x = _fresh(data.xs[k])
        inputs = [x]
        if sc.epilogue == "add_relu":
            inputs.append(_fresh(data.zs[k]))
        snapshots = [t.detach().clone() for t in inputs]
        if stp.grad and x.is_floating_point():
            for t in inputs:
                t.requires_grad_(True)
        module.train(stp.train)
        try:
            with torch.set_grad_enabled(stp.grad):
                y = module(*inputs)
        except Unsupported as e:
            obs.unsupported = str(e) or "declined"
            break
        except Exception as e:
            obs.error, obs.error_message, obs.error_where = type(e).__name__, _describe(e), "forward"
            obs.after = read_state(module, impl, c)
            _mutated(obs, inputs, snapshots)
            continue
        _mutated(obs, inputs, snapshots)
        if not isinstance(y, torch.Tensor):   # compare reports it; the state is still read
            obs.output_kind = _kind_of(y)
            obs.after = read_state(module, impl, c)
            continue
        try:
            obs.y = y.detach().clone(memory_format=torch.preserve_format)
        except Exception:
            obs.y = y.detach()
        if stp.grad and y.requires_grad:
            try:
                y.backward(data.dys[k].to(y.dtype) if y.shape == data.dys[k].shape else torch.ones_like(y))
            except Exception as e:
                obs.error, obs.error_message, obs.error_where = type(e).__name__, _describe(e), "backward"
            if x.grad is not None:
                obs.dx = x.grad.detach().clone()
            if len(inputs) > 1 and inputs[1].grad is not None:
                obs.dz = inputs[1].grad.detach().clone()
            if sc.affine:
                obs.dweight, miss_w = _grad_of(module, impl.attr("weight"), c)
                obs.dbias, miss_b = _grad_of(module, impl.attr("bias"), c)
                obs.affine_grad_missing = miss_w or miss_b
        obs.after = read_state(module, impl, c)
        for key in STAT_KEYS:
            t = resolve(module, impl.attr(key))
            if isinstance(t, torch.Tensor) and (t.requires_grad or t.grad_fn is not None):
                obs.stats_hold_graph = True
    return trace


def _mutated(obs: Observation, inputs: list, snapshots: list) -> None:
    """Whether forward modified its inputs in place (x, and z for an add_relu epilogue)."""
    changed = [name for name, t, s in zip(("x", "z"), inputs, snapshots)
               if not torch.equal(t.detach(), s) and not _same_nan(t.detach(), s)]
    obs.input_mutated = bool(changed)
    obs.mutated = " and ".join(changed)


def _kind_of(v) -> str:
    if isinstance(v, (tuple, list)):
        inner = ", ".join(type(e).__name__ for e in v[:4]) + (", ..." if len(v) > 4 else "")
        return f"a {type(v).__name__} of {len(v)} ({inner})"
    return "None" if v is None else f"a {type(v).__name__}"


def _storage(t: torch.Tensor):
    try:
        ptr = t.untyped_storage().data_ptr()
        return ptr or None
    except Exception:
        return None


_FOLLOWS_TO: dict = {}    # (implementation, module class, dtype, rank, affine) -> (stats_follow_to, note)


def stats_as_state(impl: Implementation, sc: Scenario, module, trace: Trace, state: dict):
    """Whether the running statistics are module state, decided on the objects, not on names: the tensor read
    through the state mapping (or its storage) is one of ``state_dict(keep_vars=True)``'s (``state``), and
    ``.to()`` on a copy of the module (a fresh build if it cannot be copied) converts the statistic read through
    the mapping to another dtype. Buffers, ``Parameter(requires_grad=False)`` statistics and statistics reached
    through a property path pass; plain tensor attributes fail both. The ``.to()`` test is made once per module
    class and configuration in a process."""
    tensors = [v for v in state.values() if isinstance(v, torch.Tensor)]
    ids = {id(v) for v in tensors}
    ptrs = {p for p in map(_storage, tensors) if p is not None}
    current = {}
    for key in STAT_KEYS:
        t = resolve(module, impl.attr(key))
        if isinstance(t, torch.Tensor):
            trace.stats_in_state_dict[key] = id(t) in ids or _storage(t) in ptrs
            current[key] = t.dtype
    if not current:
        return
    cache = (impl.name, impl.source, type(module), tuple(current.items()), sc.rank, sc.affine)
    if cache not in _FOLLOWS_TO:
        _FOLLOWS_TO[cache] = _follows_to(impl, sc, module, current)
    follows, trace.stats_to_note = _FOLLOWS_TO[cache]
    trace.stats_follow_to.update(follows)


def _follows_to(impl: Implementation, sc: Scenario, module, current: dict) -> tuple[dict, str]:
    follows, note = {}, ""
    try:
        other = copy.deepcopy(module)
        how = "a deep copy"
    except Exception as e:
        try:
            other = impl.build(sc.spec())
            how = f"a fresh build (deepcopy raised {type(e).__name__})"
        except Exception as e2:
            return follows, f"neither copied nor rebuilt ({type(e).__name__}, {type(e2).__name__})"
    for key, dt in current.items():
        target = torch.float32 if dt == torch.float64 else torch.float64
        try:
            converted = other.to(target)
            t = resolve(converted if isinstance(converted, torch.nn.Module) else other, impl.attr(key))
            follows[key] = isinstance(t, torch.Tensor) and t.dtype == target
            note = note or f".to({str(target)[6:]}) on {how}"
        except Exception as e:
            note = f".to({str(target)[6:]}) on {how} raised {type(e).__name__}: {str(e)[:80]}"
    return follows, note


def _same_nan(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.is_floating_point() and a.shape == b.shape and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0)) and \
        torch.equal(a.isnan(), b.isnan())

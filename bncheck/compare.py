"""Compare a Trace with the step-local float64 oracle: the list of discrepancies, each with its evidence.

Attributes (error raised, shape, dtype, memory format, state layout) are compared before values. Values are
compared element-wise against the budgets of ``budget``; a discrepancy's ``ratio`` is its worst error as a
multiple of budget. ``structural`` discrepancies name their catalog id directly (the direct probes);
``value`` discrepancies are explained by ``diagnose`` with counterfactual oracle runs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from . import budget as B
from . import oracle as O
from .execute import Observation, Trace
from .scenario import Data, Scenario

STAT_FIELDS = ("running_mean", "running_var")
VALUE_FIELDS = ("output", "running_mean", "running_var", "num_batches_tracked", "dx", "dweight", "dbias", "dz")


@dataclass
class Discrepancy:
    step: int
    field: str
    ratio: float                  # worst |diff| / budget (inf for structural)
    detail: str
    finding: str | None = None    # catalog id for structural discrepancies
    undefined: bool = False       # the worst element's reference is not finite (the oracle's model is undefined
                                  # there, e.g. a knob's variance of one value), while the implementation's is

    @property
    def structural(self) -> bool:
        return self.finding is not None

    @property
    def kind(self) -> str | None:
        """What failed, for telling one failure from another: the finding id, but ``raises`` for an error that
        torch raises too, of another type (``missing-error`` names both that and no error at all)."""
        if self.finding == "missing-error" and self.detail.startswith("raises "):
            return "raises"
        return self.finding

    def where(self, sc: Scenario) -> str:
        if self.step < 0:
            return self.field
        s = sc.steps[self.step]
        return f"{self.field} after step {self.step + 1} ({'train' if s.train else 'eval'}" \
               f"{'' if s.grad else ', no_grad'})"


@dataclass
class Comparison:
    discrepancies: list = field(default_factory=list)
    ratios: dict = field(default_factory=dict)      # field -> worst ratio seen (passing or not)
    declined: str | None = None                     # Unsupported: nothing compared
    unmatched_errors: int = 0                       # steps where the oracle raises and the implementation does not

    def worst(self) -> float:
        return max(self.ratios.values(), default=0.0)

    def value_failures(self):
        return [d for d in self.discrepancies if not d.structural]

    def add(self, d: Discrepancy):
        self.discrepancies.append(d)


def _unravel(flat: int, shape) -> tuple:
    """The index of element ``flat`` of a row-major tensor of ``shape`` (torch.unravel_index, without its cost)."""
    idx = []
    for size in reversed(tuple(shape)):
        flat, i = divmod(flat, size)
        idx.append(i)
    return tuple(reversed(idx))


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def readable(v) -> tuple[torch.Tensor | None, str | None]:
    """A detached float64 CPU copy of an observed value, or why it cannot be one (never raises).

    ``None`` stays ``None``; a non-tensor, a complex tensor with imaginary parts, or a tensor that cannot be
    brought to the CPU (e.g. on the meta device) is a problem, described."""
    if v is None:
        return None, None
    if not isinstance(v, torch.Tensor):
        return None, f"a {type(v).__name__}, not a tensor"
    try:
        t = v.detach()
        if t.layout != torch.strided:
            t = t.to_dense()
        if t.is_complex():
            if bool((t.imag != 0).any()):
                return None, f"a {str(t.dtype)[6:]} tensor with non-zero imaginary parts"
            t = t.real
        return t.to("cpu", torch.float64).clone(), None
    except Exception as e:   # meta or quantized tensors, tensor subclasses that refuse the conversion
        return None, f"a tensor bncheck cannot read on the CPU ({type(e).__name__}: {str(e)[:80]})"


def _count(v) -> int | None:
    """num_batches_tracked as an int, or None when it is not one number."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    try:
        t = torch.as_tensor(v)
        if t.numel() == 1 and not t.is_complex():
            f = float(t.reshape(()).item())
            return int(f) if math.isfinite(f) and f == int(f) else None
    except Exception:
        pass
    return None


def _values(cmp: Comparison, step: int, name: str, got, ref: torch.Tensor | None,
            bud: torch.Tensor | None, dtype: torch.dtype = torch.float64):
    """Compare ``got`` (any observed value; a tensor is taken as float64) with ``ref`` under per-element ``bud``;
    record ratio and any discrepancy. A value that is not a tensor, or not of ``ref``'s shape, is an unbounded
    discrepancy; a missing budget means the value must match exactly.

    ``dtype`` is the precision the value is stored in: where the exact value exceeds its largest finite number,
    an infinity of the right sign is the correct result (overflow), not a defect."""
    got, problem = readable(got)
    if problem is not None:
        cmp.add(Discrepancy(step, name, math.inf, f"{name} is {problem}"))
        cmp.ratios[name] = math.inf
        return
    if ref is None and got is None:
        return
    if ref is None:
        ref = torch.zeros_like(got)
        bud = None
    if got is None:
        cmp.add(Discrepancy(step, name, math.inf, "missing (torch produces a value)"))
        cmp.ratios[name] = math.inf
        return
    if got.shape != ref.shape:
        cmp.add(Discrepancy(step, name, math.inf, f"shape {tuple(got.shape)}, torch {tuple(ref.shape)}"))
        cmp.ratios[name] = math.inf
        return
    if bud is None or bud.shape != ref.shape:
        bud = torch.full_like(ref, B.TINY)
    if ref.numel() == 0:
        cmp.ratios.setdefault(name, 0.0)
        return
    big = torch.finfo(dtype).max if dtype.is_floating_point else torch.finfo(torch.float64).max
    overflow = (ref.abs() > big) & torch.isinf(got) & (torch.sign(got) == torch.sign(ref))
    ref = torch.where(overflow, got, ref)
    ref_fin, got_fin = torch.isfinite(ref), torch.isfinite(got)
    both_nan = ref.isnan() & got.isnan()
    same_inf = (~ref_fin) & (~got_fin) & (ref == got)
    bad_nonfinite = ref_fin & ~got_fin
    if bad_nonfinite.any():
        idx = tuple(int(i) for i in bad_nonfinite.nonzero()[0])
        cmp.add(Discrepancy(step, name, math.inf,
                            f"{int(bad_nonfinite.sum())} non-finite value(s), first at {idx}: {got[idx].item()} "
                            f"where torch gives {_fmt(ref[idx].item())}", finding="nan-inf"))
        cmp.ratios[name] = math.inf
        return
    diff = (got - ref).abs()
    diff = torch.where(both_nan | same_inf, torch.zeros_like(diff), diff)
    diff = torch.where(~ref_fin & ~(both_nan | same_inf), torch.full_like(diff, math.inf), diff)
    ratio = diff / bud
    # a non-finite reference (or budget) the implementation does not reproduce is an unbounded miss, never a pass
    # (an exact match passes whatever its budget, even an undefined one, e.g. on an empty batch)
    ratio = torch.where(diff == 0, torch.zeros_like(ratio), torch.nan_to_num(ratio, nan=math.inf))
    r = float(ratio.max())
    cmp.ratios[name] = max(cmp.ratios.get(name, 0.0), r)
    if r > 1.0:
        flat = int(torch.argmax(torch.nan_to_num(ratio, nan=math.inf)).item())
        idx = _unravel(flat, ratio.shape)
        bad = int((ratio > 1).sum())
        undefined = not bool(torch.isfinite(ref[idx]))
        cmp.add(Discrepancy(step, name, r,
                            f"max |diff| {_fmt(diff[idx].item())} at {idx} (got {_fmt(got[idx].item())}, expected "
                            f"{_fmt(ref[idx].item())}) = {_fmt(r)} x budget ({_fmt(bud[idx].item())}); "
                            f"{bad}/{ratio.numel()} elements over budget", undefined=undefined))


def _rejected(st: O.State, obs: Observation) -> O.State:
    """The state after a training step torch rejects (one value per channel): unchanged, but torch has already
    counted the step when it raises (its counter is incremented first), while a check that comes first does not
    count it. Either count read back is accepted, and the oracle goes on from it."""
    nbt = _count(getattr(obs.after, "num_batches_tracked", None)) if obs.after is not None else None
    if nbt is not None and nbt in (st.num_batches_tracked, st.num_batches_tracked + 1):
        st = st.clone()
        st.num_batches_tracked = nbt
    return st


def oracle_state(sc: Scenario, trace: Trace, data: Data) -> O.State:
    if not sc.track_running_stats:
        return O.State()
    return O.State(data.running_mean.clone(), data.running_var.clone(), 0)


def compare(sc: Scenario, data: Data, trace: Trace, knobs: O.Knobs = O.TORCH, *,
            structural: bool = True, budget_knobs: O.Knobs | None = None) -> Comparison:
    """Compare one run with the oracle under ``knobs``.

    ``budget_knobs``: when testing a hypothesis (diagnosis), output and input-gradient budgets are also computed
    for the oracle under these knobs and the smaller one is used, so a hypothesis whose own reference is
    degenerate (zero variance, no eps: a budget without bound) cannot fit by tolerance alone."""
    cmp = Comparison()
    if trace.unsupported is not None:
        cmp.declined = trace.unsupported
        return cmp
    if trace.build_error is not None:
        cmp.add(Discrepancy(-1, "build", math.inf, trace.build_error, finding="crash"))
        return cmp
    cfg = O.Config(sc.eps, sc.momentum, sc.track_running_stats)
    c = sc.channels
    u_in, u_p = B.u(sc.torch_dtype), B.u(sc.torch_param_dtype)
    for lower in (knobs.stats_dtype, knobs.compute_dtype):   # statistics kept, or everything computed, in a
        if lower is not None:                                   # lower precision: that precision's roundoff
            u_low = B.u(getattr(torch, lower))
            u_in, u_p = max(u_in, u_low), max(u_p, u_low)
    w = _channel_values(trace.weight, c) if sc.affine else None
    b = _channel_values(trace.bias, c) if sc.affine else None
    if sc.affine and (w is None or b is None):   # not read back: the values bncheck meant to write
        w = data.weight if w is None else w
        b = data.bias if b is None else b
    own = oracle_state(sc, trace, data)
    if structural:
        _state_probes(cmp, sc, trace)
    for k, (stp, obs) in enumerate(zip(sc.steps, trace.steps)):
        obs: Observation
        if obs.unsupported is not None:
            cmp.declined = obs.unsupported
            break
        st = own
        if sc.track_running_stats and obs.before is not None:
            rm, rv = (_before(cmp, k, key, getattr(obs.before, key, None), c) for key in STAT_FIELDS)
            if rm is not None and rv is not None:
                # the counter is the oracle's own (under the knobs), not the one read back: a wrong counter is a
                # discrepancy of num_batches_tracked, not a reason to blend the statistics with another factor
                st = O.State(rm, rv, own.num_batches_tracked, own.trained)
        x, dy = data.xs[k], data.dys[k]
        z = data.zs[k] if sc.epilogue == "add_relu" else None
        ep = dict(epilogue=sc.epilogue, z=z)
        res = O.step(x, dy, w, b, st, cfg, training=stp.train, grad_enabled=stp.grad, knobs=knobs, **ep)
        alt = None
        if budget_knobs is not None and budget_knobs != knobs:
            alt = O.step(x, dy, w, b, st, cfg, training=stp.train, grad_enabled=stp.grad, knobs=budget_knobs, **ep)
            if alt.error is not None or alt.y is None or alt.y.shape != (res.y.shape if res.y is not None else None):
                alt = None
        own = res.state if res.error is None else _rejected(st, obs)
        if structural and obs.input_mutated:
            what = {"z": "the residual input z was", "x and z": "the input and the residual z were"}.get(
                getattr(obs, "mutated", ""), "the input tensor was")
            cmp.add(Discrepancy(k, "input", math.inf, f"{what} modified in place", finding="input-mutated"))
        if structural and obs.stats_hold_graph:
            cmp.add(Discrepancy(k, "running stats", math.inf, "running buffers have requires_grad/grad_fn after "
                                "the step (they carry autograd history)", finding="running-stats-hold-graph"))
        if res.error is not None:
            if obs.error is None:
                cmp.unmatched_errors += 1
            if obs.error is None and structural:
                cmp.add(Discrepancy(k, "error", math.inf, f"no error raised; torch raises {res.error} "
                                    f"(Expected more than 1 value per channel when training)",
                                    finding="missing-error"))
            elif obs.error is not None and obs.error != res.error and structural:
                cmp.add(Discrepancy(k, "error", math.inf, f"raises {obs.error}: {obs.error_message}; torch raises "
                                    f"{res.error}", finding="missing-error"))
            continue
        if obs.error is not None:
            cmp.add(Discrepancy(k, "error", math.inf, f"{obs.error} in {obs.error_where}: {obs.error_message}",
                                finding="crash"))
            continue
        x64 = x.to("cpu", torch.float64)
        eps_used = sc.eps if knobs.eps_override is None else knobs.eps_override
        y, problem = readable(obs.y)
        if structural and isinstance(obs.y, torch.Tensor):
            _output_form(cmp, k, sc, x, obs.y)
        if y is None or y.shape != res.y.shape:
            # no values to compare: a finding of its own, unless the oracle under these knobs has that shape too
            if isinstance(obs.y, torch.Tensor) and y is None:
                detail = f"the output is {problem}"
            elif y is None:
                shown = getattr(obs, "output_kind", "") or ("None" if obs.y is None else f"a {type(obs.y).__name__}")
                detail = f"forward returned {shown}, not a tensor"
            else:
                detail = f"output shape {tuple(y.shape)}, input {tuple(x.shape)}"
                if tuple(res.y.shape) != tuple(x.shape):
                    detail += f" (the oracle under these knobs: {tuple(res.y.shape)})"
            cmp.add(Discrepancy(k, "output", math.inf, detail, finding="output-shape" if structural else None))
            cmp.ratios["output"] = math.inf
        else:
            bud = B.output(x64, res.y, res.center, res.var, eps_used, w, b, res.n if res.used_batch_stats else 1,
                           u_in, u_in, eps_outside=knobs.eps_placement == "outside", var_err=res.var_err)
            if alt is not None and alt.center is not None and alt.center.shape == res.center.shape:
                eps_alt = sc.eps if budget_knobs.eps_override is None else budget_knobs.eps_override
                bud = torch.minimum(bud, B.output(x64, res.y, alt.center, alt.var, eps_alt, w, b,
                                                  alt.n if alt.used_batch_stats else 1, u_in, u_in,
                                                  eps_outside=budget_knobs.eps_placement == "outside",
                                                  var_err=res.var_err))
            if sc.epilogue != "none":
                bud = B.epilogue_output(bud, z, u_in)
                if stp.grad and res.pre is not None and res.mask is not None and res.pre.shape == y.shape and \
                        knobs.relu_mask in ("output", "at-zero") and knobs.residual != "after-relu" and \
                        knobs.relu_at == "end":          # (where the output is the ReLU's)
                    # a pre-activation within budget of 0 (exactly 0 included: torch's own x * scale + shift leaves
                    # a constant channel at +-1e-5, not 0) may round to either side: there a mask taken from the
                    # sign of the output follows the implementation's own (its output > 0), and is judged on it
                    near = res.pre.abs() <= bud
                    if knobs.relu_mask == "at-zero":       # (an output of 0 says nothing of a pre-activation >= 0)
                        near &= y > 0
                    if bool(near.any()):
                        mask = torch.where(near, y > 0, res.mask)
                        res = O.step(x, dy, w, b, st, cfg, training=stp.train, grad_enabled=stp.grad, knobs=knobs,
                                     relu_mask=mask, **ep)
            _values(cmp, k, "output", y, res.y, bud, sc.torch_dtype)
        if sc.track_running_stats:   # every step: eval must leave the stats alone
            _stats(cmp, k, obs, st, res, u_in, u_p, sc.torch_param_dtype)
        # gradients follow from the upstream gradient only when the output had the input's shape
        if stp.grad and res.dx is not None and y is not None and y.shape == x.shape:
            # the BatchNorm's upstream gradient is the epilogue's masked one
            dy_bn = dy.to("cpu", torch.float64) * (res.mask if res.mask is not None else 1.0)
            if sc.epilogue == "add_relu":
                _values(cmp, k, "dz", obs.dz, res.dz, None if res.dz is None else B.residual_grad(res.dz, u_in),
                        sc.torch_dtype)
            dx, _ = readable(obs.dx)
            if dx is not None and dx.shape == res.dx.shape:
                bud = B.input_grad(x64, dy_bn, res.dx, res.center, res.var, eps_used, w,
                                   res.n, u_in, u_in, res.used_batch_stats, var_err=res.var_err)
                if alt is not None and alt.dx is not None and alt.center is not None and \
                        alt.center.shape == res.center.shape:
                    eps_alt = sc.eps if budget_knobs.eps_override is None else budget_knobs.eps_override
                    bud = torch.minimum(bud, B.input_grad(x64, dy_bn, res.dx, alt.center,
                                                          alt.var, eps_alt, w, alt.n, u_in, u_in,
                                                          alt.used_batch_stats, var_err=res.var_err))
                _values(cmp, k, "dx", dx, res.dx, bud, sc.torch_dtype)
            else:
                _values(cmp, k, "dx", obs.dx, res.dx, None)
            if sc.affine:
                dy64 = dy_bn
                if obs.affine_grad_missing and res.dweight is not None and structural:
                    cmp.add(Discrepancy(k, "weight/bias grad", math.inf, "weight/bias .grad is None after "
                                        "backward (gradient cut, e.g. by .data or .detach())",
                                        finding="no-grad-to-affine"))
                else:
                    bw = None if res.dweight is None else B.weight_grad(x64, dy64, res.dweight, res.center, res.var,
                                                                         eps_used, res.n, u_in, u_p,
                                                                         var_err=res.var_err)
                    bb = None if res.dbias is None else B.bias_grad(dy64, res.dbias, res.n, u_in, u_p)
                    _values(cmp, k, "dweight", obs.dweight, res.dweight, bw, sc.torch_param_dtype)
                    _values(cmp, k, "dbias", obs.dbias, res.dbias, bb, sc.torch_param_dtype)
    return cmp


def _channel_values(v, c: int) -> torch.Tensor | None:
    """``v`` as float64 (C,) values, or None when it is not C numbers."""
    t, problem = readable(v)
    if problem is not None or t is None or t.numel() != c:
        return None
    return t.reshape(c)


def _before(cmp: Comparison, k: int, key: str, v, c: int) -> torch.Tensor | None:
    """A running statistic read before step ``k``: float64 (C,) values, or None (the oracle then follows its own
    state). A read that is neither None nor C numbers is recorded as a discrepancy."""
    if v is None:
        return None
    t = _channel_values(v, c)
    if t is None:
        t_, problem = readable(v)
        what = problem or f"of shape {tuple(t_.shape)}"
        cmp.add(Discrepancy(k, key, math.inf, f"{key} read before step {k + 1} is {what}, not {c} values"))
        cmp.ratios[key] = math.inf
    return t


def _output_form(cmp: Comparison, k: int, sc: Scenario, x: torch.Tensor, y: torch.Tensor):
    """Structural checks of an output tensor: dtype, device, memory format (never raises)."""
    if y.dtype != sc.torch_dtype:
        cmp.add(Discrepancy(k, "output dtype", math.inf, f"output dtype {str(y.dtype)[6:]}, input (and "
                            f"torch's output) {sc.dtype}", finding="dtype-promotion"))
    if y.device != x.device:
        cmp.add(Discrepancy(k, "output device", math.inf, f"output on {y.device}, input on {x.device}",
                            finding="output-shape"))
    if sc.layout == "channels_last" and y.shape == x.shape and y.layout == torch.strided and y.device == x.device:
        fmt = torch.channels_last if sc.rank == 4 else torch.channels_last_3d
        if not y.is_contiguous(memory_format=fmt):
            cmp.add(Discrepancy(k, "output layout", math.inf, f"channels_last input, output strides "
                                f"{y.stride()} are not channels_last", finding="layout-not-preserved"))


def _stats(cmp: Comparison, k: int, obs: Observation, st: O.State, res: O.StepResult, u_in, u_p, pdt):
    after, new = obs.after, res.state
    if after is None or new.running_mean is None:
        return
    if getattr(after, "running_mean", None) is None or getattr(after, "running_var", None) is None:
        return   # not C values (a shape drift, a plain attribute of another type): the state probes' finding
    n = res.n
    bm = res.batch_mean if res.batch_mean is not None else torch.zeros_like(new.running_mean)
    bv = res.batch_var if res.batch_var is not None else torch.zeros_like(new.running_var)
    bm, bv = torch.nan_to_num(bm), torch.nan_to_num(bv)
    f = res.factor
    _values(cmp, k, "running_mean", after.running_mean, new.running_mean,
            B.running_mean(st.running_mean, new.running_mean, bm, bv, f, n, u_in, u_p,
                           factor_computed=res.factor_computed), pdt)
    _values(cmp, k, "running_var", after.running_var, new.running_var,
            B.running_var(st.running_var, new.running_var, bm, bv, f, n, u_in, u_p, var_err=res.batch_var_err,
                          factor_computed=res.factor_computed), pdt)
    got = getattr(after, "num_batches_tracked", None)
    if got is not None and _count(got) != new.num_batches_tracked:
        shown = got if isinstance(got, (int, float)) else f"{type(got).__name__} {str(got)[:40]}"
        cmp.add(Discrepancy(k, "num_batches_tracked", math.inf,
                            f"num_batches_tracked {shown}, expected {new.num_batches_tracked}"))
        cmp.ratios["num_batches_tracked"] = math.inf


def _shape_of(read, key: str):
    shape = read.shapes.get(key)
    return tuple(shape) if isinstance(shape, (tuple, list, torch.Size)) else (None if shape is None else str(shape))


def _not_state(trace: Trace, key: str, path: str) -> str:
    """Why the statistic at ``path`` is not module state ('' when it is). Decided on the objects (execute
    records whether the very tensor is among state_dict()'s and whether .to() converts it); a trace without those
    records falls back to names."""
    in_sd = getattr(trace, "stats_in_state_dict", {}).get(key)
    follows = getattr(trace, "stats_follow_to", {}).get(key)
    if in_sd is None and follows is None:
        if path in trace.buffer_names and path in trace.state_dict_keys:
            return ""
        return (f"{path!r} is a plain attribute, not a registered buffer: missing from state_dict() (keys: "
                f"{list(trace.state_dict_keys)[:8]}) and not moved by .to()")
    problems = []
    if in_sd is False:
        problems.append(f"the tensor at {path!r} is not among state_dict()'s tensors (keys: "
                        f"{list(trace.state_dict_keys)[:8]})")
    if follows is False:
        problems.append(f"{getattr(trace, 'stats_to_note', '') or '.to()'} left {path!r} in its dtype")
    return "; ".join(problems)


def _state_probes(cmp: Comparison, sc: Scenario, trace: Trace):
    if not sc.track_running_stats:
        return
    c = sc.channels
    for key in ("running_mean", "running_var"):
        path = trace.stat_attrs.get(key, key)
        reads = [o.before for o in trace.steps if o.before] + [o.after for o in trace.steps if o.after]
        if not reads:
            continue
        if not reads[0].present.get(key):
            cmp.add(Discrepancy(-1, key, math.inf, f"no attribute {path!r} (state mapping) on the module",
                                finding="stats-not-buffers"))
            continue
        why = _not_state(trace, key, path)
        if why:
            cmp.add(Discrepancy(-1, key, math.inf, why, finding="stats-not-buffers"))
        for i, r in enumerate(reads):
            shape = _shape_of(r, key)
            if shape is not None and shape != (c,):
                when = "initially" if i == 0 else "after a step"
                first_bad = next((j for j, o in enumerate(trace.steps) if o.after and
                                  _shape_of(o.after, key) not in (None, (c,))), -1)
                if i == 0:
                    first_bad = -1
                cmp.add(Discrepancy(first_bad, key, math.inf, f"{path!r} has shape {shape} {when}, expected ({c},)",
                                    finding="state-shape-drift"))
                break

"""Diagnosis: turn discrepancies into named findings, each with its evidence.

* Counterfactuals: value discrepancies are re-compared against the oracle with catalog knob settings flipped
  (one at a time, then greedily combined, then in pairs). A setting that brings every owned value field back
  within budget names the bug; the residual (worst error / budget under that setting) is the evidence.
* Direct probes, for what no knob expresses: a crash is re-run with momentum=0.1, with a contiguous input and
  with another rank to tell ``momentum-none``, ``non-contiguous-crash`` and ``rank-unsupported`` from a plain
  ``crash``; wrong values that only one input rank gives are ``rank-wrong-results``; growth of the error with
  |mean|/std or with the reduction size tells ``cancellation`` and ``low-precision-accumulation``.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import replace

from . import execute
from .catalog import knob_hypotheses
from .compare import Comparison, Discrepancy, compare
from .oracle import Knobs
from .registry import Implementation
from .results import Named
from .scenario import Scenario, Step, materialize

MAX_GREEDY = 3
MOMENTUM_KNOBS = ("momentum_override", "momentum_direction", "momentum_debias", "momentum_none", "counter")
MARGINAL = 100.0   # error/budget below which a divergence is first tested as a numeric (not semantic) defect


# Knobs that only act with an epilogue, and those that only act with a residual input (add_relu)
EPILOGUE_KNOBS = {"relu_mask", "relu_at", "residual", "dz", "stats_from"}
RESIDUAL_KNOBS = {"residual", "dz", "stats_from"}


def _alternatives(sc: Scenario | None = None):
    """Every catalog knob setting that can act on ``sc`` (the epilogue's only with an epilogue)."""
    epilogue = "none" if sc is None else sc.epilogue
    skip = EPILOGUE_KNOBS if epilogue == "none" else (RESIDUAL_KNOBS if epilogue == "relu" else set())
    return [(e.id, flip) for e in knob_hypotheses() for flip in e.knobs if not set(flip) & skip
            and not (epilogue == "relu" and flip == {"relu_mask": "bn"})]     # without an add, bn(x) is the output


def _implied_eps(sc: Scenario, data, trace) -> list:
    """The eps an implementation actually uses, read off its first training step: with batch statistics
    y = (x - mean) / sqrt(var + eps), so eps = ((x - mean) / y)^2 - var. Offered as an ``eps_override``
    hypothesis (rounded to 3 significant digits) when it is not the eps it was given."""
    import torch
    k = next((i for i, st in enumerate(sc.steps) if st.train), None)
    if k is None or k >= len(trace.steps) or trace.steps[k].y is None or sc.shape[0] * math.prod(sc.shape[2:]) < 2:
        return []
    x = data.xs[k].to(torch.float64)
    y = trace.steps[k].y.to(torch.float64)
    if y.shape != x.shape:
        return []
    dims = [0] + list(range(2, x.dim()))
    shape = (1, -1) + (1,) * (x.dim() - 2)
    if sc.affine:
        if trace.weight is None or trace.bias is None or bool((trace.weight.abs() < 1e-3).any()):
            return []
        y = (y - trace.bias.view(shape)) / trace.weight.view(shape)
    mean, var = x.mean(dims, keepdim=True), x.var(dims, unbiased=False, keepdim=True)
    ok = (y.abs() > 1e-4) & ((x - mean).abs() > 0)
    if not bool(ok.any()):
        return []
    est = float(torch.median((((x - mean) / y) ** 2 - var)[ok]))
    if not math.isfinite(est) or est <= 0 or abs(est - sc.eps) <= 1e-3 * max(est, sc.eps):
        return []
    return [("eps-ignored", {"eps_override": float(f"{est:.3g}")})]


def confirm(impl: Implementation, sc: Scenario, owned, knobs: Knobs, base: Knobs | None = None) -> bool:
    """An explanation found on a minimal example must hold on fresh data too (2 reseeded, larger variants)."""
    n = max(sc.shape[0], 4)
    spatial = tuple(max(s, 2) for s in sc.shape[2:])
    variants = [dict(shape=(n, sc.channels) + spatial), dict(shape=(2 * n + 1, sc.channels) + spatial)]
    base_knobs = base or Knobs()
    if sc.momentum is None and knobs.momentum_override is not None:
        variants.append(dict(shape=variants[0]["shape"], momentum=0.3))   # "ignored" must also hold for a number
    elif sc.momentum is not None and (knobs.momentum_override is not None
                                      or knobs.momentum_direction != base_knobs.momentum_direction):
        # at one momentum, "inverted" (factor 1 - m) and "a fixed factor" coincide (m = 0.9 inverted is a fixed 0.1):
        # either must also hold at another momentum
        variants.append(dict(shape=variants[0]["shape"], momentum=0.3 if abs(sc.momentum - 0.3) > 1e-9 else 0.6))
    if sc.track_running_stats and any(getattr(knobs, k) != getattr(base_knobs, k) for k in MOMENTUM_KNOBS):
        # on one training step a copy of the batch (zero-debiased, or a fixed factor of 1) and a cumulative average
        # are the same numbers: an explanation of the running update must also hold over several training steps,
        # at another momentum
        other = None if sc.momentum is None else (0.3 if abs(sc.momentum - 0.3) > 1e-9 else 0.6)
        variants.append(dict(shape=variants[0]["shape"], momentum=other, steps=(Step(True, True),) * 3))
    if knobs.relu_mask != base_knobs.relu_mask and sc.distribution != "normal":
        # a constant channel's pre-activations are all exactly 0: there a mask ignored and one recomputed at 0 are
        # the same; on ordinary data they are not
        variants.append(dict(shape=variants[0]["shape"], distribution="normal", offset=0.0))
    if not sc.affine and (knobs.relu_at != base_knobs.relu_at or knobs.residual != base_knobs.residual):
        # without weight and bias, relu(xhat) + z is both "ReLU before the affine" and "residual after the ReLU":
        # either must also hold with them
        variants.append(dict(shape=variants[0]["shape"], affine=True))
    if knobs.mode_source != base_knobs.mode_source:
        # grad on/off swapped: tells "follows is_grad_enabled()" from "ignores .train()/.eval()"
        variants.append(dict(shape=variants[0]["shape"], steps=tuple(Step(s.train, not s.grad) for s in sc.steps)))
    for i, kw in enumerate(variants):
        v = sc.with_(seed=sc.seed + 7919 * (i + 1), **kw)
        data = materialize(v)
        if _residual(v, data, execute.run(impl, v, data), knobs, owned, base=base) > 1.0:
            return False
    return True


def _residual(sc, data, trace, knobs: Knobs, owned, with_all: bool = False, base: Knobs | None = None):
    cmp = compare(sc, data, trace, knobs, structural=False, budget_knobs=base)
    if cmp.unmatched_errors:   # under these knobs the oracle would raise where the implementation ran: no fit
        return (math.inf, math.inf) if with_all else math.inf
    r = max((cmp.ratios.get(f, 0.0) for f in owned), default=0.0)
    return (r, cmp.worst()) if with_all else r


def explain(impl, sc: Scenario, data, trace, owned: frozenset, base: Knobs, exhaustive: bool = True):
    """Knob settings (on top of ``base``) under which every owned value field is within budget, on this example
    and on fresh variants of it.

    Returns (ids, flips, residual) or (None, closest_flips, residual_of_closest)."""
    alts = _alternatives(sc) + _implied_eps(sc, data, trace)
    rejected = []

    def ok(flips) -> bool:
        if confirm(impl, sc, owned, replace(base, **flips), base):
            return True
        rejected.append(flips)
        return False

    scored, fits = [], []
    for order, (fid, flip) in enumerate(alts):
        try:
            r, r_all = _residual(sc, data, trace, replace(base, **flip), owned, with_all=True, base=base)
        except Exception:
            continue
        scored.append((r, fid, flip))
        if r <= 1.0:
            fits.append((r_all > 1.0, order, r, fid, flip))
    # several settings may fit the owned fields: prefer one that also explains every other field
    for _, _, r, fid, flip in sorted(fits, key=lambda t: t[:2]):
        if ok(flip):
            return (fid,), flip, r
    scored.sort(key=lambda t: t[0])
    # greedy: keep adding the flip that lowers the residual most
    chosen_ids, chosen = [], {}
    current = min((s[0] for s in scored), default=float("inf"))
    if scored:
        chosen_ids, chosen = [scored[0][1]], dict(scored[0][2])
    for _ in range(MAX_GREEDY - 1):
        best = None
        for fid, flip in alts:
            if fid in chosen_ids or set(flip) & set(chosen):
                continue
            try:
                r = _residual(sc, data, trace, replace(base, **chosen, **flip), owned, base=base)
            except Exception:
                continue
            if best is None or r < best[0]:
                best = (r, fid, flip)
        if best is None or best[0] >= current:
            break
        current = best[0]
        chosen_ids.append(best[1])
        chosen.update(best[2])
        if current <= 1.0 and ok(chosen):
            return tuple(chosen_ids), chosen, current
    if exhaustive:
        for (a, fa), (b, fb) in itertools.combinations(alts, 2):
            if a == b or set(fa) & set(fb):
                continue
            try:
                r = _residual(sc, data, trace, replace(base, **fa, **fb), owned, base=base)
            except Exception:
                continue
            if r <= 1.0 and ok({**fa, **fb}):
                return (a, b), {**fa, **fb}, r
    closest = scored[0] if scored else (float("inf"), None, {})
    return None, closest[2], closest[0]


# -- probes ----------------------------------------------------------------------------------------------------
def _run(impl: Implementation, sc: Scenario, base: Knobs) -> Comparison:
    data = materialize(sc)
    return compare(sc, data, execute.run(impl, sc, data), base)


def _crashes(cmp: Comparison) -> bool:
    return any(d.finding == "crash" for d in cmp.discrepancies)


def _runs(cmp: Comparison) -> bool:
    """Built and ran without raising (a declined configuration ran nothing: it does not count as running)."""
    return cmp.declined is None and not _crashes(cmp)


def _plain_shapes(n: int, c: int) -> dict:
    """One shape per rank whose spatial sizes are neither 1 nor C, so nothing broadcasts by accident."""
    a, b, d = (s if s != c else s + 3 for s in (3, 4, 5))
    return {2: (n, c), 3: (n, c, a), 4: (n, c, a, b), 5: (n, c, a, b, d)}


def probe_rank(impl: Implementation, sc: Scenario, base: Knobs):
    """Wrong values that only this input rank produces, while other ranks the implementation accepts are right.

    Returns (finding id, evidence) or None: ``rank-wrong-results`` when a plain training step of this rank runs and
    is wrong; ``rank-unsupported`` when it raises there (the wrong values seen are where the rank happens to run)."""
    plain = sc.with_(layout="contiguous", momentum=0.1 if sc.momentum is None else sc.momentum,
                     steps=(Step(True, False),))
    shapes = _plain_shapes(max(sc.shape[0], 2), max(sc.channels, 2))   # with one channel anything broadcasts

    def outcome(rank) -> str:
        v = plain.with_(shape=shapes[rank])
        data = materialize(v)
        cmp = compare(v, data, execute.run(impl, v, data), base)
        if cmp.declined is not None:
            return "declined"
        if _crashes(cmp) or any(d.finding == "output-shape" for d in cmp.discrepancies):
            return "crash"
        return "wrong" if any(not d.structural for d in cmp.discrepancies) else "right"
    works = [r for r in (2, 3, 4, 5) if r != sc.rank and outcome(r) == "right"]
    if not works:
        return None
    here = outcome(sc.rank)
    right = (f"rank {', '.join(map(str, works))} is correct in the same step (ranks the builder declines are not "
             f"counted)")
    if here == "wrong":
        return "rank-wrong-results", (f"rank {sc.rank} gives wrong results (also in a plain training step on shape "
                                      f"{shapes[sc.rank]}); {right}")
    if here == "crash":
        return "rank-unsupported", (f"rank {sc.rank} gives wrong results here and fails (raises, or returns another "
                                    f"shape) in a plain training step on shape {shapes[sc.rank]}; {right}")
    return None


def _normalised_with_running_stats(sc: Scenario, step: int) -> bool:
    """Step ``step`` (0-based) normalises with the running statistics: an eval step that tracks them."""
    return sc.track_running_stats and 0 <= step < len(sc.steps) and not sc.steps[step].train


def classify_other_error(impl: Implementation, sc: Scenario, base: Knobs) -> tuple[str, str]:
    """(finding id, evidence) where the implementation raises another error than torch's rejection of ``sc``: a
    crash of its own (the same step on a 4x larger batch with a valid eps raises too: named as crashes are), or
    torch's rejection with another exception type (``error-type``)."""
    bigger = sc.with_(shape=(max(sc.shape[0], 1) * 4,) + tuple(sc.shape[1:]), eps=max(sc.eps, 1e-5))
    if _crashes(_run(impl, bigger, base)):
        return classify_crash(impl, bigger, base)
    return "error-type", (f"the same step on a larger batch {bigger.shape} with eps {bigger.eps:g} runs: it is "
                          f"torch's rejection, with another type")


def classify_crash(impl: Implementation, sc: Scenario, base: Knobs) -> tuple[str, str]:
    """(finding id, evidence) for a crash seen on ``sc``."""
    if sc.momentum is None and _runs(_run(impl, sc.with_(momentum=0.1), base)):
        return "momentum-none", "the same scenario with momentum=0.1 runs"
    if sc.layout != "contiguous" and _runs(_run(impl, sc.with_(layout="contiguous"), base)):
        return "non-contiguous-crash", f"the same scenario with a contiguous input runs ({sc.layout} crashes)"
    if sc.shape[0] == 0 and _runs(_run(impl, sc.with_(shape=(2,) + tuple(sc.shape[1:])), base)):
        return "crash", "crashes on a zero-size batch (torch returns an empty output); N=2 runs"
    if not sc.affine and _runs(_run(impl, sc.with_(affine=True), base)):
        return "crash", "crashes with affine=False; the same scenario with affine=True runs"
    if not sc.track_running_stats and _runs(_run(impl, sc.with_(track_running_stats=True), base)):
        return "crash", "crashes with track_running_stats=False; the same scenario with tracking runs"
    if sc.rank > 2 and sc.channels > 1 and sc.shape[-1] not in (1, sc.channels):
        # (C,) statistics broadcast against the last axis only fail when that axis is neither 1 nor C
        v = sc.with_(shape=tuple(sc.shape[:-1]) + (1,))
        data = materialize(v)
        trace = execute.run(impl, v, data)
        knob = compare(v, data, trace, replace(base, stats_broadcast="last-axis"), structural=False)
        if not _crashes(compare(v, data, trace, base)) and "output" in knob.ratios:
            r = knob.ratios["output"]
            if r <= 1.0:
                return "stats-broadcast-axis", (f"with a last axis of {sc.shape[-1]} (C={sc.channels}) it crashes; "
                                                f"with a last axis of 1 it runs and matches the oracle with "
                                                f"stats_broadcast=last-axis to {r:.2g} x budget")
    other = _plain_shapes(max(sc.shape[0], 2), max(sc.channels, 2))
    plain = sc.with_(layout="contiguous", momentum=0.1 if sc.momentum is None else sc.momentum,
                     steps=(Step(True, False),))
    if _crashes(_run(impl, plain.with_(shape=other[sc.rank]), base)):   # the rank fails in a plain training step too
        works = [r for r in (2, 3, 4, 5) if r != sc.rank and _runs(_run(impl, plain.with_(shape=other[r]), base))]
        if works:
            return "rank-unsupported", (f"rank {sc.rank} input crashes (also in a plain training step); rank "
                                        f"{', '.join(map(str, works))} runs (ranks the builder declines are not "
                                        f"counted)")
        return "crash", "crashes on every input rank tried"
    return "crash", (f"crashes on this scenario; a plain training step on shape {other[sc.rank]} of the same rank "
                     f"runs")


OFFSETS = {"float64": (1e2, 1e5), "float32": (1e1, 1e3), "float16": (1.0, 1e2), "bfloat16": (1.0, 30.0)}


# A numeric defect named by its probe is assumed from then on through the knob that emulates it: the oracle computes
# the variance as E[x^2] - E[x]^2 in the input precision, with the budget of that computation, so later divergences
# it explains are not named again as something else (e.g. an eps that seems off where the variance cancelled).
NUMERIC_KNOBS = {"cancellation": {"naive_variance": "input"}}
# The fields each numeric defect can move: a variance by E[x^2]-E[x]^2 reaches what is computed from the variance
# (not running_mean, dbias or the counter); a sum accumulated in half precision reaches every statistic.
NUMERIC_FIELDS = {"cancellation": frozenset({"output", "running_var", "dx", "dweight"}),
                  "low-precision-accumulation": frozenset({"output", "running_mean", "running_var", "dx", "dweight",
                                                           "dbias"})}


def probe_cancellation(impl: Implementation, sc: Scenario, base: Knobs):
    """Error growing like (|mean|/std)^2 relative to a stable algorithm's bound: E[x^2]-E[x]^2."""
    lo, hi = OFFSETS[sc.dtype]
    probe = sc.with_(shape=(64, min(sc.channels, 3)), layout="contiguous", steps=(Step(True, False),),
                     momentum=0.1, eps=1e-5, distribution="offset")
    c_lo, c_hi = _run(impl, probe.with_(offset=lo), base), _run(impl, probe.with_(offset=hi), base)
    # field by field: another defect (a running-mean bug, say) is as large at both offsets and must not hide the
    # growth of the fields the variance reaches
    for f in ("output", "running_var"):
        r_lo, r_hi = c_lo.ratios.get(f, 0.0), c_hi.ratios.get(f, 0.0)
        if r_hi > 1.0 and r_hi >= 0.1 * (hi / lo) * max(r_lo, 1e-3):
            return (f"{f} error/budget grows with |mean|/std: {r_lo:.3g} at offset {lo:g}, {r_hi:.3g} at offset "
                    f"{hi:g} (a stable variance keeps it flat; E[x^2]-E[x]^2 loses ~(mean/std)^2 relative precision)")
    return None


def probe_low_precision(impl: Implementation, sc: Scenario, base: Knobs):
    """Error growing with the reduction size in a half dtype: sums accumulated in float16/bfloat16."""
    if sc.dtype not in ("float16", "bfloat16"):
        return None
    probe = sc.with_(layout="contiguous", steps=(Step(True, False),), momentum=0.1, eps=1e-5,
                     distribution="offset", offset=4.0)
    c_small = _run(impl, probe.with_(shape=(16, min(sc.channels, 2))), base)
    c_large = _run(impl, probe.with_(shape=(8192, min(sc.channels, 2))), base)
    for f in ("output", "running_mean", "running_var"):
        small, large = c_small.ratios.get(f, 0.0), c_large.ratios.get(f, 0.0)
        if large > 1.0 and large >= 4 * max(small, 1e-3):
            return (f"{f} error/budget grows with the reduction size: {small:.3g} at n=16, {large:.3g} at n=8192 "
                    f"(float32 accumulation keeps it flat)")
    return None


def _stored_lower_precision(impl, sc: Scenario, data, trace, cmp: Comparison, fields, base: Knobs):
    """Running statistics that are plain attributes keep their dtype through ``.to()``: the initial values bncheck
    writes come back rounded. If the oracle, started from the values as stored, matches, that is the cause."""
    first = trace.steps[0].before if trace.steps else None
    if not sc.track_running_stats or first is None or not first.readable:
        return None
    attrs = [trace.stat_attrs.get(k, k) for k in ("running_mean", "running_var")]
    if all(a in trace.buffer_names for a in attrs):
        return None
    lost = max(float((first.running_mean - data.running_mean).abs().max()),
               float((first.running_var - data.running_var).abs().max()))
    if lost == 0.0:
        return None
    import torch
    kept = next((dt for dt in ("bfloat16", "float16", "float32") if all(
        bool((t == t.to(getattr(torch, dt)).double()).all()) for t in (first.running_mean, first.running_var))), None)
    if kept is None:
        return None
    # compare() starts each step from the statistics as stored; computed from them in their dtype, the result
    # may carry that dtype's roundoff
    r = _residual(sc, data, trace, replace(base, stats_dtype=kept), frozenset(f for f in fields if f in cmp.ratios))
    if r > 1.0:
        return None
    return kept, (f"running statistics are plain attributes ({', '.join(attrs)}), not buffers: .to({sc.param_dtype}) "
                  f"left them in {kept} (the initial values written come back off by up to {lost:.3g}); with "
                  f"{kept} roundoff for what is computed from them, the oracle matches to {r:.2g} x budget")


def _explained_without_error(impl, sc: Scenario, data, trace, fields, base: Knobs, exhaustive: bool):
    """No error where torch raises (one value per channel in training) can be a symptom: an implementation that
    takes the wrong mode never reaches the check. If a larger batch shows a value bug whose knob setting, applied
    here, makes the oracle accept this input too, that bug is the finding."""
    bigger = sc.with_(shape=(max(sc.shape[0], 1) * 4,) + tuple(sc.shape[1:]), eps=max(sc.eps, 1e-5))
    bdata = materialize(bigger)
    btrace = execute.run(impl, bigger, bdata)
    bcmp = compare(bigger, bdata, btrace, base)
    if not bcmp.value_failures():
        return None
    failing = frozenset(d.field for d in bcmp.value_failures()) | frozenset(
        f for f in fields if bcmp.ratios.get(f, 0.0) <= 1.0)
    ids, flips, resid = explain(impl, bigger, bdata, btrace, failing, base, exhaustive=exhaustive)
    if not ids:
        return None
    again = compare(sc, data, trace, replace(base, **flips))
    if any(x.finding == "missing-error" for x in again.discrepancies):
        return None
    desc = ", ".join(f"{k}={v}" for k, v in flips.items())
    return ids, flips, [f"on a batch of {bigger.shape[0]} the results match the oracle with {desc} to {resid:.2g} x "
                        f"budget, and with that setting this input raises nothing either"]


def name(impl: Implementation, sc: Scenario, data, trace, cmp: Comparison, owned_values: frozenset,
         owned: list, base: Knobs, exhaustive: bool = True, numeric_first: bool = False) -> list[Named]:
    """Name every owned discrepancy of one comparison."""
    out: dict[str, Named] = {}

    def add(fid, d: Discrepancy, lines, knobs=None, fields=()):
        if fid not in out:
            out[fid] = Named(fid, d.where(sc), lines, d.ratio, knobs or {},
                             trigger=d.kind if d.structural else None,
                             fields=tuple(sorted(set(fields) | ({d.field} if not d.structural else set()))))

    drift_step = None   # the first step whose state cannot be read as (C,): the oracle cannot follow from there
    if sc.track_running_stats:
        for k, o in enumerate(trace.steps):
            if o.before is not None and not o.before.readable and o.before.present.get("running_mean"):
                drift_step = k
                break
    graph_step = min((d.step for d in cmp.discrepancies if d.finding == "running-stats-hold-graph"), default=None)
    for d in owned:
        if not d.structural:
            continue
        if d.finding == "crash":
            if graph_step is not None and d.step > graph_step and "backward" in d.detail:
                add("running-stats-hold-graph", d, [d.detail, "backward reaches a previous step's graph through "
                                                    "the running statistics"])
                continue
            if d.field == "error" and "value per channel" in d.detail:
                continue
            fid, why = classify_crash(impl, sc, base)
            add(fid, d, [d.detail, why])
        elif d.finding == "nan-inf":
            fid, why = "nan-inf", None
            if sc.distribution in ("offset", "constant-channel") and (why := probe_cancellation(impl, sc, base)):
                fid = "cancellation"
            elif (why := probe_low_precision(impl, sc, base)):   # e.g. a float16 sum that overflows
                fid = "low-precision-accumulation"
            add(fid, d, [d.detail] + ([why] if why else []), knobs=NUMERIC_KNOBS.get(fid))
        elif d.finding == "missing-error" and d.detail.startswith("no error raised") and (
                found := _explained_without_error(impl, sc, data, trace, owned_values, base, exhaustive)):
            ids, flips, lines = found
            for fid in ids:
                add(fid, d, [d.detail] + lines, knobs=flips)
        elif d.finding == "missing-error" and d.detail.startswith("raises "):
            fid, why = classify_other_error(impl, sc, base)
            add(fid, d, [d.detail, why])
        elif d.finding == "output-shape":
            if drift_step is not None and d.step >= drift_step and any(
                    x.finding == "state-shape-drift" for x in cmp.discrepancies):
                continue   # computed from statistics the oracle cannot read: the drift is the cause
            if _normalised_with_running_stats(sc, d.step) and any(
                    x.finding == "state-shape-drift" and x.step <= d.step for x in cmp.discrepancies):
                continue   # running statistics of another shape (e.g. (1, C, 1, 1)) broadcast into the output
            # a semantic bug can change the output's shape (statistics broadcast against the wrong axis): a knob
            # setting that reproduces the shape and the values names it
            fields = frozenset({"output"} | {f for f in owned_values if cmp.ratios.get(f, 0.0) <= 1.0})
            ids, flips, resid = explain(impl, sc, data, trace, fields, base, exhaustive=exhaustive)
            if ids:
                desc = ", ".join(f"{k}={v}" for k, v in flips.items())
                for fid in ids:
                    add(fid, d, [d.detail, f"matches the oracle with {desc} to {resid:.2g} x budget"], knobs=flips)
            elif (ranked := probe_rank(impl, sc, base)):   # only this input rank comes out in another shape
                add(ranked[0], d, [d.detail, ranked[1]])
            else:
                add("output-shape", d, [d.detail])
        else:
            add(d.finding, d, [d.detail])
    values = [d for d in owned if not d.structural]
    if base.flipped():
        # where the model of a bug already named is undefined (a NaN variance of one value under an assumed knob)
        # the implementation's finite numbers are no new bug
        values = [d for d in values if not d.undefined]
    if drift_step is not None:   # the oracle cannot follow a state it cannot read: the drift is the cause
        if any(d.finding == "state-shape-drift" for d in cmp.discrepancies):
            values = [d for d in values if d.step < drift_step]
    if values and (kept := _stored_lower_precision(impl, sc, data, trace, cmp, owned_values, base)):
        worst = max(values, key=lambda d: d.ratio)
        add("stats-not-buffers", worst, [worst.detail, kept[1]], knobs={"stats_dtype": kept[0]})
        values = []
    # adversarial inputs, or a divergence within a few budgets (semantic bugs are orders of magnitude off): test
    # the numeric hypotheses before the semantic ones
    if values and (numeric_first or max(d.ratio for d in values) < MARGINAL):
        worst = max(values, key=lambda d: d.ratio)
        for fid, probe in (("cancellation", probe_cancellation), ("low-precision-accumulation", probe_low_precision)):
            # the defect can only explain the fields it reaches (a variance cannot move running_mean): its evidence
            # is the worst of those, and the rest are explained on their own, with the defect assumed
            reached = [d for d in values if d.field in NUMERIC_FIELDS[fid]]
            if not reached:
                continue
            # with the defect already assumed (its knob), its probe would see no growth: probe without it
            why = probe(impl, sc, replace(base, naive_variance=None) if fid == "cancellation" else base)
            if why:
                worst = max(reached, key=lambda d: d.ratio)
                add(fid, worst, [worst.detail, why], knobs=NUMERIC_KNOBS.get(fid), fields={d.field for d in reached})
                values = [d for d in values if d.field not in NUMERIC_FIELDS[fid]]
                base = replace(base, **NUMERIC_KNOBS.get(fid, {}))
                break
    if values:
        worst = max(values, key=lambda d: d.ratio)
        # a hypothesis must explain the failing value fields and keep the passing ones within budget; a field
        # failing only structurally (e.g. no gradient at all) is named above, and no knob can bring it back
        failing = {d.field for d in values}
        fields = frozenset(failing | {f for f in owned_values if cmp.ratios.get(f, 0.0) <= 1.0})
        ids, flips, resid = explain(impl, sc, data, trace, fields, base, exhaustive=exhaustive)
        if ids:
            desc = ", ".join(f"{k}={v}" for k, v in flips.items())
            for fid in ids:
                add(fid, worst, [worst.detail, f"matches the oracle with {desc} to {resid:.2g} x budget"],
                    knobs=flips, fields=failing)
        else:
            why = probe_cancellation(impl, sc, base)
            if why:
                add("cancellation", worst, [worst.detail, why], knobs=NUMERIC_KNOBS["cancellation"], fields=failing)
            elif (why := probe_low_precision(impl, sc, base)):
                add("low-precision-accumulation", worst, [worst.detail, why], fields=failing)
            elif (ranked := probe_rank(impl, sc, base)):
                add(ranked[0], worst, [worst.detail, ranked[1]], fields=failing)
            elif base.flipped() and (worst.ratio < MARGINAL or min(sc.shape[0], sc.reduction_size) <= 1):
                # within a few budgets of the model of a bug already named, or where that model is undefined
                # (one value or none per channel): that bug, not a new one
                pass
            else:
                desc = ", ".join(f"{k}={v}" for k, v in flips.items()) or "none"
                closest = (f"closest: {desc} fits this example ({resid:.3g} x budget) but not fresh variants of it "
                           f"(other data, sizes, weights)" if resid <= 1.0 else
                           f"closest: {desc} (residual {resid:.3g} x budget)")
                add("output-mismatch", worst, [worst.detail, f"no catalog knob setting explains it; {closest}"],
                    fields=failing)
    return list(out.values())

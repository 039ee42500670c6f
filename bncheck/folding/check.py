"""Fusion: verify conv-BN folding plugins (``@bncheck.fusion``) the way BatchNorm plugins are verified.

Two properties, each searched by Hypothesis over ``cases.fold_scenarios`` (Conv/ConvTranspose 1-3d,
groups and depthwise, stride/padding/dilation/output_padding, bias on/off, affine on/off, eps, running stats over
orders of magnitude, float32/float64/float16, offset inputs):

- ``fold-output``: in eval mode ``fused(x)`` equals ``bn(conv(x))`` computed unfolded in float64, within
  ``budget.fused_output`` (error of rounding W' and b' to the conv dtype and of the conv itself);
- ``fold-module``: the folded module is the conv's type with its weight shape, dtype, device and
  hyperparameters, has a bias, and folding leaves the conv and BatchNorm unchanged.

A failure is shrunk, then named: counterfactual runs of the one knobbed float64 fold reference (``fold.FoldKnobs``:
catalog ``knobs`` of the fusion entries), then structural probes (the same scenario with a bias, with groups=1,
not transposed, as a 2-d conv, ...): a feature that still fails on its own, and passes once removed, is the
cause, named on the scenario that isolates it. The next search round assumes the named bug (its knobs applied,
or that feature removed from every drawn scenario), so an implementation with several bugs gets each one named.
Rounds are seeded from ``seed``; no example database.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace

import hypothesis
import torch
from hypothesis import HealthCheck, Phase, example, given, settings, target

from ..catalog import knob_hypotheses
from ..registry import Implementation
from ..repro import load_plugin
from ..results import Finding, PropertyFailure, PropertyResult, Result, accepts, summary
from .cases import DIRECTED, FoldScenario, evaluate, fold_reference, fold_scenarios, materialize, module_fold
from .fold import FOLD_REFERENCE, FoldKnobs

PROFILES = {
    "quick": dict(max_examples=40, rounds=6),
    "default": dict(max_examples=150, rounds=8),
    "thorough": dict(max_examples=1000, rounds=10),
}
PROPERTY_DEADLINE_S = 150.0     # no new round starts after this long (the runner's heartbeat limit is 240 s)


@dataclass(frozen=True)
class FusionProperty:
    name: str
    owns: frozenset            # problem categories
    check_output: bool
    targeted: bool


PROPERTIES = (
    FusionProperty("fold-output", frozenset({"crash", "value", "nan-inf", "dtype"}), True, True),
    FusionProperty("fold-module", frozenset({"module", "dtype", "mutated"}), False, False),
)
KEY = {"crash": "crash", "value": "value", "nan-inf": "value", "module": "module", "dtype": "dtype",
       "mutated": "mutated"}
FALLBACK = {"crash": "crash", "value": "fold-mismatch", "nan-inf": "nan-inf", "module": "fold-wrong-module",
            "dtype": "dtype-promotion", "mutated": "input-mutated"}


def _dim2(sc: FoldScenario) -> dict:
    def two(t):
        return tuple(t[:2]) if len(t) >= 2 else (t[0], t[0])
    return {k: two(getattr(sc, k)) for k in ("kernel", "stride", "padding", "dilation", "output_padding",
                                             "spatial")} | {"dim": 2}


# Structural probes, in order: (feature, applies to, the same scenario without the feature, id it names or None for
# the failure's own category). A probe names the cause when the variant no longer fails that way.
PROBES = (
    ("a conv without bias", lambda s: not s.bias, lambda s: s.with_(bias=True), "fold-bias-none-crash"),
    ("groups > 1", lambda s: s.groups > 1, lambda s: s.with_(groups=1), "fold-groups"),
    ("a transposed conv", lambda s: s.transposed, lambda s: s.with_(transposed=False), "fold-transposed-axis"),
    ("a 1-d or 3-d conv", lambda s: s.dim != 2, lambda s: s.with_(**_dim2(s)), "rank-unsupported"),
    ("affine=False", lambda s: not s.affine, lambda s: s.with_(affine=True), None),
    ("float16", lambda s: s.dtype == "float16", lambda s: s.with_(dtype="float32"), None),
    ("a single output channel", lambda s: s.c_out == 1, lambda s: s.with_(c_out=2), None),
)
UNDO = {"a conv without bias": "with a conv bias", "groups > 1": "with groups=1",
        "a transposed conv": "as a plain (non-transposed) conv", "a 1-d or 3-d conv": "as a 2-d conv",
        "affine=False": "with affine=True", "float16": "in float32",
        "a single output channel": "with 2 output channels"}


@dataclass
class Assumed:
    """What earlier rounds named: knobs applied to the reference, features left out, categories no longer failing."""
    knobs: FoldKnobs = FOLD_REFERENCE
    masked: set = field(default_factory=set)       # probe feature names
    ignored: set = field(default_factory=set)      # failure keys

    def apply(self, sc: FoldScenario) -> FoldScenario:
        """The scenario with every named feature removed (bias added, groups=1, ...): the bug is assumed."""
        for feat, applies, undo, _ in PROBES:
            if feat in self.masked and applies(sc):
                try:
                    sc = undo(sc)
                except ValueError:
                    pass
        return sc


@dataclass
class Named:
    id: str
    where: str
    evidence: list
    ratio: float
    scenario: FoldScenario
    knobs: dict | None = None
    mask: str | None = None
    ignore: str | None = None


_FAILURES: dict = {}


def _failure(key: str) -> type:
    if key not in _FAILURES:        # one class per failure kind: Hypothesis shrinks each separately
        _FAILURES[key] = type("FoldFailure_" + key.replace("-", "_"), (PropertyFailure,), {})
    return _FAILURES[key]


def _owned(out, prop: FusionProperty, assumed: Assumed) -> list:
    return [p for p in out.problems if p.category in prop.owns and KEY[p.category] not in assumed.ignored]


def knob_flips() -> list:
    """(catalog id, knob setting) for every fusion entry that a fold-reference knob expresses."""
    return [(e.id, flip) for e in knob_hypotheses("fusion") for flip in e.knobs]


def discriminating(sc: FoldScenario) -> list:
    """Fresh variants of a scenario on which the knob hypotheses differ more: new data, running variances over
    many decades and tiny ones (where eps and the square root matter), a large running mean."""
    low = -4 if sc.dtype == "float16" else -8
    return [sc.with_(seed=sc.seed + 7919, var_range=(low, 2)),
            sc.with_(seed=sc.seed + 2 * 7919, var_range=(low, low + 2)),
            sc.with_(seed=sc.seed + 3 * 7919, mean_offset=10.0)]


def explain_by_knobs(impl, sc: FoldScenario, out, assumed: Assumed):
    """The knob setting whose fold reference the plugin's output matches: ``(id, flips, residual)``.

    Candidates within budget on the failing scenario are re-run on ``discriminating`` variants; the one with the
    smallest worst residual, within budget everywhere, wins. ``id`` is None when none holds (flips, residual:
    the closest setting on the failing scenario)."""
    conv, bn, x = materialize(sc)
    tried = []
    for fid, flip in knob_flips():
        knobs = replace(assumed.knobs, **flip)
        if knobs == assumed.knobs:
            continue
        ref = fold_reference(conv, bn, x, knobs)
        if ref is None or ref[0].shape != out.output.shape:
            continue
        y, bud, _ = ref
        r = float(((out.output - y).abs() / bud).nan_to_num(nan=math.inf).max())
        tried.append((r, fid, flip, knobs))
    if not tried:
        return None, {}, math.inf
    tried.sort(key=lambda t: t[0])
    best = None
    variants = discriminating(sc)
    for r, fid, flip, knobs in tried:
        if r > 1.0:
            break
        worst = r
        for v in variants:
            again = evaluate(impl, v, knobs)
            if again.declined is None and again.unrepresentable is None:
                worst = max(worst, again.ratio if again.ratio is not None else math.inf)
        if worst <= 1.0 and (best is None or worst < best[0]):
            best = (worst, fid, flip)
    if best is None:
        return None, tried[0][2], tried[0][0]
    return best[1], best[2], best[0]


def _failing(impl, sc: FoldScenario, category: str, prop: FusionProperty, assumed: Assumed):
    """The owned problems of ``sc`` of the same failure kind as ``category`` ([] when it passes that way), or None
    when the scenario cannot tell (declined, not representable)."""
    out = evaluate(impl, sc, assumed.knobs, check_output=prop.check_output)
    if out.declined is not None or out.unrepresentable is not None:
        return None
    return [p for p in _owned(out, prop, assumed) if KEY[p.category] == KEY[category]]


def _passes(impl, sc: FoldScenario, prop: FusionProperty, assumed: Assumed) -> bool:
    """The scenario runs and has no owned problem of any kind (failing another way is not passing)."""
    out = evaluate(impl, sc, assumed.knobs, check_output=prop.check_output)
    return out.declined is None and out.unrepresentable is None and not _owned(out, prop, assumed)


def _undo(sc: FoldScenario, probes) -> FoldScenario | None:
    try:
        for _, _, undo, _ in probes:
            sc = undo(sc)
        return sc
    except ValueError:
        return None


def isolate(impl, sc: FoldScenario, category: str, prop: FusionProperty, assumed: Assumed) -> list:
    """Which scenario features cause the failure: ``[(feature, id or None, isolating scenario, problem, why)]``.

    With every present feature removed the case must pass. Then each feature that still fails on its own (all
    others removed) is a cause, named on that isolating scenario; when none does alone (they act together), the
    first feature whose removal alone makes it pass is.
    """
    present = [p for p in PROBES if p[1](sc)]
    clean = _undo(sc, present)
    if not present or clean is None or _failing(impl, clean, category, prop, assumed) != []:
        return []
    causes = []
    for probe in present:
        alone = _undo(sc, [p for p in present if p is not probe])
        bad = alone is not None and _failing(impl, alone, category, prop, assumed)
        if bad:
            why = (f"only with {probe[0]}: the same scenario {UNDO[probe[0]]} passes" if len(present) == 1 else
                   f"caused by {probe[0]}: with only that feature it fails this way, {UNDO[probe[0]]} it passes")
            causes.append((probe[0], probe[3], alone, max(bad, key=lambda p: p.ratio), why))
    if causes:
        return causes
    for probe in present:
        without = _undo(sc, [probe])
        if without is not None and _passes(impl, without, prop, assumed):
            others = " and ".join(p[0] for p in present if p is not probe)
            return [(probe[0], probe[3], sc, None, f"only with {probe[0]} together with {others}: the same "
                                                   f"scenario {UNDO[probe[0]]} passes")]
    return []


def diagnose(impl, sc: FoldScenario, out, prop: FusionProperty, assumed: Assumed) -> list:
    """Name the worst owned problem of a (shrunk) failing case: ``[Named]``, each with the scenario it shows on."""
    owned = _owned(out, prop, assumed)
    worst = max(owned, key=lambda p: p.ratio)
    cat, detail = worst.category, worst.detail
    if cat == "dtype" or cat == "mutated":
        return [Named(FALLBACK[cat], worst.where, [detail], math.inf, sc, ignore=KEY[cat])]
    closest = []
    if cat == "value" and out.output is not None:
        fid, flip, resid = explain_by_knobs(impl, sc, out, assumed)
        desc = FoldKnobs(**flip).describe() if flip else "none"
        if fid:
            why = (f"matches the fold reference with {desc} to {resid:.2g} x budget (worst of this case and 3 fresh "
                   f"variants)")
            return [Named(fid, worst.where, [detail, why], worst.ratio, sc, knobs=flip)]
        closest = [f"no catalog knob setting explains it; closest: {desc} (residual {resid:.3g} x budget)"]
    named = []
    for feature, fid, where_sc, problem, why in isolate(impl, sc, cat, prop, assumed):
        p = problem or worst
        named.append(Named(fid or FALLBACK[cat], p.where, [p.detail, why], p.ratio, where_sc, mask=feature))
    return named or [Named(FALLBACK[cat], worst.where, [detail] + closest, worst.ratio, sc, ignore=KEY[cat])]


def search_property(impl: Implementation, prop: FusionProperty, *, profile: str = "default", seed: int = 0,
                    device: str = "cpu", index: int = 0) -> PropertyResult:
    conf = PROFILES[profile]
    res = PropertyResult(prop.name)
    t0 = time.monotonic()
    assumed = Assumed()
    named: set = set()
    for rnd in range(conf["rounds"]):
        if time.monotonic() - t0 > PROPERTY_DEADLINE_S:
            break
        last = {}

        def check(sc: FoldScenario):
            sc = assumed.apply(replace(sc, device=device))
            out = evaluate(impl, sc, assumed.knobs, check_output=prop.check_output)
            if out.unrepresentable:
                hypothesis.assume(False)
            res.cases += 1
            if out.declined is not None:
                res.declined += 1
                return
            owned = _owned(out, prop, assumed)
            if owned or (prop.check_output and out.ratio is not None):
                res.ratios.add(max((p.ratio for p in owned), default=0.0) if owned else out.ratio)
            if prop.check_output and out.ratio is not None and not owned:
                res.worst[sc.dtype] = max(res.worst.get(sc.dtype, 0.0), out.ratio)
            if prop.targeted and out.ratio is not None and math.isfinite(out.ratio):
                target(min(out.ratio, 1e6), label="error/budget")
            if owned:
                last["case"] = (sc, out)
                key = KEY[max(owned, key=lambda p: p.ratio).category]
                raise _failure(key)(f"{prop.name}: {key} on {sc.describe()}")

        phases = [Phase.explicit, Phase.generate] + ([Phase.target] if prop.targeted else []) + [Phase.shrink]
        test = given(fold_scenarios())(check)
        for sc in DIRECTED:
            test = example(sc)(test)
        test = settings(max_examples=conf["max_examples"], deadline=None, database=None, phases=phases,
                        suppress_health_check=list(HealthCheck), report_multiple_bugs=False,
                        verbosity=hypothesis.Verbosity.quiet)(test)
        test = hypothesis.seed(seed * 1000003 + index * 101 + rnd)(test)
        try:
            test()
            break
        except PropertyFailure:
            pass
        if "case" not in last:
            break
        sc, out = last["case"]
        progress = False
        for n in diagnose(impl, sc, out, prop, assumed):
            if n.id not in named:
                named.add(n.id)
                res.findings.append(Finding(n.id, prop.name, n.where, n.evidence, n.ratio, n.scenario,
                                            script(impl, n.id, n.where, n.scenario)))
                progress = True
            if n.knobs:
                assumed.knobs = replace(assumed.knobs, **n.knobs)
                progress = True
            if n.mask and n.mask not in assumed.masked:
                assumed.masked.add(n.mask)
                progress = True
            if n.ignore and n.ignore not in assumed.ignored:
                assumed.ignored.add(n.ignore)
                progress = True
        if not progress:
            break
    res.seconds = time.monotonic() - t0
    return res


CAPABILITIES = {
    "Conv1d": dict(dim=1, kernel=(3,), stride=(1,), padding=(0,), dilation=(1,), output_padding=(0,), spatial=(5,)),
    "Conv2d": {}, "Conv3d": dict(dim=3, kernel=(3,) * 3, stride=(1,) * 3, padding=(0,) * 3, dilation=(1,) * 3,
                                 output_padding=(0,) * 3, spatial=(4,) * 3),
    "ConvTranspose2d": dict(transposed=True, c_out=4), "groups": dict(groups=2, c_in=4, c_out=4),
    "ConvTranspose2d groups": dict(transposed=True, groups=2, c_in=4, c_out=6),
    "bias=False": dict(bias=False), "affine=False": dict(affine=False),
    "float64": dict(dtype="float64"), "float16": dict(dtype="float16"),
}


def capabilities(impl: Implementation, device: str = "cpu") -> dict:
    """Whether the fold accepts each configuration: 'yes', 'declined: why' or 'build error: why'."""
    def attempt(kw):
        conv, bn, _ = materialize(FoldScenario(device=device).with_(**kw))
        module_fold(impl)(conv, bn)
    return accepts({label: (lambda kw=kw: attempt(kw)) for label, kw in CAPABILITIES.items()})


def check_fusion(impl: Implementation, *, profile: str = "default", seed: int = 0, device: str = "cpu",
                 on_property=None, on_partial=None) -> Result:
    """Search both fusion properties; returns a plain (JSON-ready) result, shaped like ``search.summarize``.

    ``on_property(name, None)`` when a property starts (the runner's heartbeat) and ``(name, PropertyResult)`` when
    it ends; ``on_partial(result)`` receives the result so far after each property (what survives a later hang)."""
    if profile not in PROFILES:
        raise ValueError(f"check_fusion: profile={profile!r} must be one of {', '.join(PROFILES)}")
    t0 = time.monotonic()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # tiny convolutions: a thread pool costs more than it gives
    try:
        results = []
        for i, prop in enumerate(PROPERTIES):
            if on_property:
                on_property(prop.name, None)
            r = search_property(impl, prop, profile=profile, seed=seed, device=device, index=i)
            results.append(r)
            if on_property:
                on_property(prop.name, r)
            if on_partial:
                on_partial(summarize(impl, results, {}, time.monotonic() - t0))
        caps = capabilities(impl, device)
    finally:
        torch.set_num_threads(threads)
    return summarize(impl, results, caps, time.monotonic() - t0)


def _size(f: Finding) -> tuple:
    sc = f.scenario       # output findings first (their evidence has the numbers), then the simplest example
    return (f.property != PROPERTIES[0].name, sc.dim != 2, sc.transposed, sc.groups,
            sc.c_in * sc.c_out * math.prod(sc.kernel))


def summarize(impl: Implementation, results: list, caps: dict, seconds: float) -> Result:
    return summary(impl, "fusion", results, caps, seconds, size=_size)


TEMPLATE = '''\
"""bncheck reproducer: {name}  {fid}  ({where})

example: {config}
Run: python this_file.py   (prints the discrepancy; exits 1 while the finding reproduces)
"""
import sys

import torch

from bncheck.folding.cases import FoldScenario, evaluate, materialize, module_fold, oracle_output
from bncheck.registry import Registry

{load}
scenario = {scenario!r}
conv, bn, x = materialize(scenario)   # eval-mode conv + BatchNorm with the scenario's values, and an input
print(conv, bn, sep="\\n")
try:
    fused = module_fold(impl)(conv, bn)          # the plugin (a weights-form fold is wrapped into a module)
    with torch.no_grad():
        got = fused(x).double()
    ref = oracle_output(conv, bn, x)             # bn(conv(x)) in float64, not folded
    print("max |fused(x) - bn(conv(x))| =", (got - ref).abs().max().item() if got.shape == ref.shape
          else f"shapes differ: {{tuple(got.shape)}} vs {{tuple(ref.shape)}}")
except Exception as e:
    print("folding or the folded module raises", type(e).__name__, e)

outcome = evaluate(impl, scenario)               # all checks, against the derived error budget
for p in outcome.problems:
    print(p.where, "-", p.detail)
sys.exit(1 if outcome.problems else 0)
'''


def script(impl: Implementation, fid: str, where: str, sc: FoldScenario) -> str:
    return TEMPLATE.format(name=impl.name, fid=fid, where=where, config=sc.describe(),
                           load=load_plugin(impl.name, impl.source), scenario=sc)

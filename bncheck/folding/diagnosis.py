"""Naming a folding failure: the fold reference's knobs, then the structural features, and the finding's region.

A value failure is first tried against every fold-reference knob setting (``fold.FoldKnobs``, the catalog's fusion
knobs), confirmed on fresh variants. Otherwise the structural probes (``PROBES``, over the facets of
``facets.FACETS``) remove one feature at a time: a feature that still fails on its own, and passes once removed, is
the cause, named on the scenario that isolates it, its region that feature. A failure no feature explains keeps its
category's id (``FALLBACK``), its region the facets whose change alone makes it pass (``scope.isolate``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from ..catalog import knob_hypotheses
from ..ledger import Ledger
from ..scope import Region, isolate as isolate_region, region_of
from .cases import FoldScenario, evaluate, fold_reference, materialize
from .facets import FACETS
from .fold import FOLD_REFERENCE, FoldKnobs

KEY = {"crash": "crash", "value": "value", "nan-inf": "value", "module": "module", "dtype": "dtype",
       "mutated": "mutated"}
FALLBACK = {"crash": "crash", "value": "fold-mismatch", "nan-inf": "nan-inf", "module": "fold-wrong-module",
            "dtype": "dtype-promotion", "mutated": "input-mutated"}

# Structural probes, in order: (facet of ``facets.FACETS``, id it names, or None for the failure's own category).
# A probe names the cause when the scenario without that feature no longer fails that way.
PROBES = (("conv bias", "fold-bias-none-crash"), ("groups", "fold-groups"), ("transposed", "fold-transposed-axis"),
          ("conv dims", "rank-unsupported"), ("affine", None), ("dtype", None), ("output channels", None))
FEATURE = {"conv bias": "a conv without bias", "groups": "groups > 1", "transposed": "a transposed conv",
           "conv dims": "a 1-d or 3-d conv", "affine": "affine=False", "dtype": "float16",
           "output channels": "a single output channel"}
UNDO = {"conv bias": "with a conv bias", "groups": "with groups=1", "transposed": "as a plain (non-transposed) conv",
        "conv dims": "as a 2-d conv", "affine": "with affine=True", "dtype": "in float32",
        "output channels": "with 2 output channels"}


@dataclass
class State:
    """What the check has established so far, carried across rounds and properties: the knobs applied to the fold
    reference, and the ledger of named findings with their scopes."""
    knobs: FoldKnobs = FOLD_REFERENCE
    ledger: Ledger = field(default_factory=lambda: Ledger(FACETS))


@dataclass
class Named:
    """A diagnosis: the id, where and on which scenario it shows, its evidence and error/budget, its region, and
    what the search assumes from then on (its knobs; or the failure keys it explains within its scope, or, for a
    crash or a feature with an id of its own, its whole scope excluded)."""
    id: str
    where: str
    evidence: list
    ratio: float
    scenario: FoldScenario
    region: Region = Region()
    knobs: dict | None = None
    keys: tuple = ()             # failure keys it explains within its scope (knob-less findings)
    blocking: bool = False       # a crash, or a feature with an id of its own: its cases are excluded


def owned_problems(out, prop, state: State, facets: dict) -> list:
    """The problems of an outcome that ``prop`` owns and no named finding explains in this case."""
    return [p for p in out.problems if p.category in prop.owns and not state.ledger.explains(KEY[p.category], facets)]


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


def explain_by_knobs(impl, sc: FoldScenario, out, state: State):
    """The knob setting whose fold reference the plugin's output matches: ``(id, flips, residual)``.

    Candidates within budget on the failing scenario are re-run on ``discriminating`` variants; the one with the
    smallest worst residual, within budget everywhere, wins. ``id`` is None when none holds (flips, residual:
    the closest setting on the failing scenario)."""
    conv, bn, x = materialize(sc)
    tried = []
    for fid, flip in knob_flips():
        knobs = replace(state.knobs, **flip)
        if knobs == state.knobs:
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


def _failing(impl, sc: FoldScenario, category: str, prop, state: State, knobs=None):
    """The owned problems of ``sc`` of the same failure kind as ``category`` ([] when it passes that way), or None
    when the scenario cannot tell (declined, not representable)."""
    out = evaluate(impl, sc, state.knobs if knobs is None else knobs, check_output=prop.check_output)
    if out.declined is not None or out.unrepresentable is not None:
        return None
    return [p for p in owned_problems(out, prop, state, sc.facets()) if KEY[p.category] == KEY[category]]


def _passes(impl, sc: FoldScenario, prop, state: State) -> bool:
    """The scenario runs and has no owned problem of any kind (failing another way is not passing)."""
    out = evaluate(impl, sc, state.knobs, check_output=prop.check_output)
    return out.declined is None and out.unrepresentable is None and not owned_problems(out, prop, state, sc.facets())


def _undo(sc: FoldScenario, facets) -> FoldScenario | None:
    try:
        for name in facets:
            sc = FACETS[name].alternative(sc)
        return sc
    except ValueError:
        return None


def isolate(impl, sc: FoldScenario, category: str, prop, state: State) -> list:
    """Which scenario features cause the failure: ``[(facet, id or None, isolating scenario, problem, why,
    region)]``.

    With every present feature removed the case must pass. Then each feature that still fails on its own (all
    others removed) is a cause, named on that isolating scenario, its region that feature; when none does alone
    (they act together), the first feature whose removal alone makes it pass is, its region all of them.
    """
    present = [(name, fid) for name, fid in PROBES if FACETS[name].alternative(sc) is not None]
    names = [name for name, _ in present]
    clean = _undo(sc, names)
    if not present or clean is None or _failing(impl, clean, category, prop, state) != []:
        return []
    here = sc.facets()
    causes = []
    for name, fid in present:
        alone = _undo(sc, [n for n in names if n != name])
        bad = alone is not None and _failing(impl, alone, category, prop, state)
        if bad:
            why = (f"only with {FEATURE[name]}: the same scenario {UNDO[name]} passes" if len(present) == 1 else
                   f"caused by {FEATURE[name]}: with only that feature it fails this way, {UNDO[name]} it passes")
            causes.append((name, fid, alone, max(bad, key=lambda p: p.ratio), why, region_of(here, [name])))
    if causes:
        return causes
    for name, fid in present:
        without = _undo(sc, [name])
        if without is not None and _passes(impl, without, prop, state):
            others = " and ".join(FEATURE[n] for n in names if n != name)
            return [(name, fid, sc, None, f"only with {FEATURE[name]} together with {others}: the same "
                                          f"scenario {UNDO[name]} passes", region_of(here, names))]
    return []


def _region(impl, sc: FoldScenario, category: str, prop, state: State, knobs=None):
    """The region of a failure no single feature explains: the facets whose change alone makes it pass that way
    (``scope.isolate``; a variant that cannot tell counts as failing). ``knobs``: the reference to judge by."""
    return isolate_region(sc, FACETS, lambda v: _failing(impl, v, category, prop, state, knobs) != [])


def diagnose(impl, sc: FoldScenario, out, prop, state: State) -> list:
    """Name the worst owned problem of a (shrunk) failing case: ``[Named]``, each with the scenario it shows on
    and its region."""
    owned = owned_problems(out, prop, state, sc.facets())
    worst = max(owned, key=lambda p: p.ratio)
    cat, detail = worst.category, worst.detail
    key = (KEY[cat],)
    if cat == "dtype" or cat == "mutated":
        region, lines = _region(impl, sc, cat, prop, state)
        return [Named(FALLBACK[cat], worst.where, [detail] + lines, math.inf, sc, region, keys=key)]
    closest = []
    if cat == "value" and out.output is not None:
        fid, flip, resid = explain_by_knobs(impl, sc, out, state)
        desc = FoldKnobs(**flip).describe() if flip else "none"
        if fid:
            why = (f"matches the fold reference with {desc} to {resid:.2g} x budget (worst of this case and 3 fresh "
                   f"variants)")
            region, lines = _region(impl, sc, cat, prop, state)
            return [Named(fid, worst.where, [detail, why] + lines, worst.ratio, sc, region, knobs=flip)]
        closest = [f"no catalog knob setting explains it; closest: {desc} (residual {resid:.3g} x budget)"]
    named = []
    for name, fid, where_sc, problem, why, region in isolate(impl, sc, cat, prop, state):
        p = problem or worst
        # a feature with an id of its own (a conv without bias, groups, transposed, 1-d/3-d) is that id wherever
        # it fails, whichever way: its cases are excluded from then on, as for a crash
        named.append(Named(fid or FALLBACK[cat], p.where, [p.detail, why], p.ratio, where_sc, region, keys=key,
                           blocking=fid is not None or cat == "crash"))
    if named:
        return named
    region, lines = _region(impl, sc, cat, prop, state)
    return [Named(FALLBACK[cat], worst.where, [detail] + closest + lines, worst.ratio, sc, region, keys=key,
                  blocking=cat == "crash")]

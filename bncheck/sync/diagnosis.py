"""Naming a distributed failure: the sync reference's knobs for wrong values, the isolated region for a crash.

Values: the reference's knobs (catalog entries a sync knob expresses, ``knob_hypotheses("sync")``) are flipped
singly, then in pairs; a setting that brings every field of the property back within budget names the catalog id.
It must hold again on two fresh scenarios (reseeded; uneven shards with rank means far apart, where unweighted
averaging and a mean of variances cannot hide), and a one-pass variance (``cancellation``) it introduces must also
be what the large offset brings: the same scenario without the offset passes under the other knobs (an
E[x^2]-E[x]^2 variance is exact enough there; its allowance would otherwise excuse any bug where the offset is
large). Nothing holds: ``sync-mismatch``, with the closest setting.

Crashes: the region isolated on the example (``scope.isolate``) names the crash family, as the BatchNorm kind
does: only an input rank -> ``rank-unsupported``; only momentum=None -> ``momentum-none``; otherwise ``crash``.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import replace
from typing import Callable

from ..catalog import knob_hypotheses
from ..results import Named
from ..scope import Region
from .cases import uneven_shards
from .ranks import Declined, RankFailure
from .reference import TORCH_SYNC, SyncKnobs, SyncScenario, compare, materialize

ONE_PASS_OFFSET = 1e4    # mean/std ~ 1e4: a one-pass variance is off by ~1e4 times a stable one's bound, any dtype

# observed = run(scenario, data): every rank's results, or raises Declined / RankFailure
Run = Callable[[SyncScenario, object], list]


def alternatives() -> list[tuple[str, dict]]:
    return [(e.id, flip) for e in knob_hypotheses("sync") for flip in e.knobs]


def _passes(run: Run, sc: SyncScenario, knobs: SyncKnobs, owned) -> bool:
    try:
        data = materialize(sc)
        return compare(sc, data, run(sc, data), knobs).worst(owned) <= 1.0
    except (Declined, RankFailure):
        return False


def confirm(run: Run, sc: SyncScenario, knobs: SyncKnobs, owned,
            base: SyncKnobs = TORCH_SYNC) -> SyncScenario | None:
    """The explanation must hold on fresh data: the example reseeded, and uneven shards with rank-shifted means
    (for a one-pass variance that this explanation introduces, not one already named and assumed in ``base``, also
    at an offset of 1e4, and it must be the offset's doing: module docstring). Returns the last variant (where the
    bug shows most), or None."""
    steps = sc.steps if any(sc.steps) else (True,) + sc.steps
    variants = [replace(sc, seed=sc.seed + 7919),
                replace(sc, seed=sc.seed + 2 * 7919, shards=uneven_shards(sc.world_size), steps=steps,
                        rank_shift=max(sc.rank_shift, 2.0))]
    # A one-pass variance this explanation introduces: where its effect is largest, and the offset's doing. One
    # already assumed gets no offset variant: it would test nothing (at an offset of 1e4 its allowance covers almost
    # any value) and, returned as the scenario that shows the bug, be one that passes under ``base`` (``isolate``
    # would then take every change that keeps it passing for a cause: a meaningless scope).
    if knobs.variance == "one-pass" and base.variance != "one-pass":
        variants.append(replace(variants[-1], offset=max(sc.offset, ONE_PASS_OFFSET)))
        if not (sc.offset and _passes(run, replace(sc, offset=0.0), replace(knobs, variance="two-pass"), owned)):
            return None
    if not all(_passes(run, v, knobs, owned) for v in variants):
        return None
    return variants[-1]


def diagnose(run: Run, base: SyncKnobs, sc: SyncScenario, data, observed, cmp,
             owned) -> tuple[list[Named], SyncScenario]:
    """Name the failing fields of one case: the knob setting that explains them (each flipped entry a ``Named``
    with its ``knobs``), or ``sync-mismatch`` without knobs. Also returns the scenario that shows the bug best:
    the confirming one for a knob (uneven shards, rank means apart: where the knob's effect is largest), else
    the case itself."""
    failing = cmp.failing(owned)
    first = max(failing, key=lambda d: d.ratio)
    where, ratio = first.where(sc), cmp.worst(owned)
    head = f"{first.detail}"
    every = tuple({d.field for d in cmp.discrepancies} | set(owned))
    tried = []
    singles = [(i, f) for i, f in alternatives() if any(getattr(base, k) != v for k, v in f.items())]
    combos = [[s] for s in singles] + [[a, b] for a, b in itertools.combinations(singles, 2)
                                       if a[0] != b[0] and all(a[1][k] == b[1][k] for k in set(a[1]) & set(b[1]))]
    for size in (1, 2):
        scored = []
        for combo in (c for c in combos if len(c) == size):
            flips = {k: v for _, f in combo for k, v in f.items()}
            knobs = replace(base, **flips)
            c = compare(sc, data, observed, knobs)
            scored.append((c.worst(owned), c.worst(every), combo, knobs))
        tried += scored
        for r, _, combo, knobs in sorted((s for s in scored if s[0] <= 1.0), key=lambda s: (s[1], s[0])):
            conf = confirm(run, sc, knobs, owned, base)
            if conf is None:
                continue
            text = (f"matches the sync reference with {knobs.describe()} to {r:.3g} x budget (torch semantics: "
                    f"{ratio:.3g} x budget); confirmed on 2 fresh scenarios incl. shards {conf.shards} with rank "
                    f"means {conf.rank_shift:g} std apart")
            if knobs.variance == "one-pass" and base.variance != "one-pass":
                text += f"; without the offset of {sc.offset:g} it is within budget"
            out = []
            for i, f in combo:
                w, h, q = _own_evidence(sc, data, observed, knobs, base, f, owned, (where, head, ratio))
                out.append(Named(i, w, [h, text], q, f))
            return out, conf
    r, _, combo, knobs = min(tried, key=lambda s: s[0]) if tried else (math.inf, 0, [], base)
    closest = f"closest knob setting: {knobs.describe()} leaves {r:.3g} x budget" if combo else "no knob to try"
    return [Named("sync-mismatch", where, [head, f"no sync knob setting explains it; {closest}"], ratio)], sc


def _own_evidence(sc, data, observed, knobs: SyncKnobs, base: SyncKnobs, flip: dict, owned, fallback):
    """(where, first evidence line, ratio) of one knob of a pair: the worst field that fails when only this knob is
    taken back (the other kept), so each id of a pair shows the field it explains, not its partner's."""
    without = replace(knobs, **{k: getattr(base, k) for k in flip})
    failing = compare(sc, data, observed, without).failing(owned)
    if not failing:
        return fallback
    d = max(failing, key=lambda d: d.ratio)
    return d.where(sc), d.detail, d.ratio


def crash_id(region: Region, sc: SyncScenario) -> str:
    """The crash family a crash's isolated region names (module docstring)."""
    facets = {c.facet for c in region.conditions}
    if facets == {"rank"}:
        return "rank-unsupported"
    if facets == {"momentum"} and sc.momentum is None:
        return "momentum-none"
    return "crash"

"""The BatchNorm search's ledger: what the search of one implementation has named so far, and where each holds.

The BatchNorm kind's counterpart of ``ledger.Ledger`` (which the fusion and sync searches keep): the same scopes
(``bncheck.scope``), with what only the BatchNorm search does on top: regions derived by running each facet's
variant through the implementation, oracle knobs carried as findings are named, consequences folded under the
finding they depend on, and one bug kept under one id at the end.

Every named finding gets a scope (``bncheck.scope``), derived on its minimal example by isolation: each facet of
the scenario (rank, dtype, layout, affine, tracking, momentum, empty batch, ...) is changed on its own, and the
facets whose change makes the failure go away are its region. From then on the search judges a case against the
ledger (``Ledger.known_discrepancy``):

* a structural discrepancy (a crash, a misshapen output, a missing error, ...) inside the scope of a finding named
  from that discrepancy is that finding again: not a new failure (a case with nothing else to judge is excluded);
* a value field inside the region where a knob-less finding explains it (``output-mismatch``,
  ``low-precision-accumulation``, ``cancellation``, a consequence folded under a finding) is not judged there;
* a knobbed finding's oracle knobs are assumed everywhere (``Ledger.base``).

A later failure that the diagnosis names with an id already in the ledger is a *consequence*: the same cause seen
elsewhere (another field, a later step, a region outside the scope). It widens that finding's scope and is listed
under it as "also: ..." with its evidence, instead of ending the search or coming back under a second name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from . import execute
from .compare import VALUE_FIELDS, Comparison, compare
from .oracle import TORCH, Knobs
from .results import Finding, Named
from .scenario import FACETS, Scenario, materialize
from .scope import Condition, Known, Region, Scope, isolate, region_of

# Numeric findings whose model is approximate (or absent): the fields they were named from are not judged again
# inside their scope, even where a knob emulates them.
FIELD_EXPLAINING = {"output-mismatch", "cancellation", "low-precision-accumulation", "rank-wrong-results"}
# Findings whose region is set by their mechanism, not by one example's isolation. Numeric defects: a marginal error
# on one example comes and goes with any change of its data, but a variance by E[x^2]-E[x]^2 fails where |mean|/std
# is large (the adversarial inputs) and a sum in half precision wherever the input is half, as their probes show.
# Errors: torch rejects one value per channel in training, and that is where an error can be missing.
MECHANISM = {
    "cancellation": Region(frozenset([Condition("input", frozenset({"offset", "constant-channel", "tiny-variance"}))])),
    "low-precision-accumulation": Region(frozenset([Condition("dtype", frozenset(
        {"float16", "bfloat16", "float16 input, float32 params", "bfloat16 input, float32 params"}))])),
    # what torch rejects (and the implementation accepts, or rejects otherwise): one value per channel in training
    "missing-error": Region(frozenset([Condition("one value per channel", frozenset({True}))])),
    "error-type": Region(frozenset([Condition("one value per channel", frozenset({True}))])),
}
# Knob-less findings that can be another finding's consequence, when they show only inside its scope
FOLDABLE = {"output-shape", "crash", "rank-unsupported", "rank-wrong-results", "output-mismatch"}
# Findings that make every value of their region wrong (an input rank computed wrongly): not one field, all of them
ALL_FIELDS = {"rank-wrong-results", "rank-unsupported"}
MAX_ALSO = 6          # consequences listed under one finding (more are counted)


@dataclass
class SearchLedger:
    base: Knobs = TORCH
    known: dict[str, Known] = field(default_factory=dict)
    findings: dict[str, Finding] = field(default_factory=dict)
    order: list[str] = field(default_factory=list)       # ids in the order they were named
    triggers: dict[str, set] = field(default_factory=dict)   # id -> structural discrepancies it was named from
    more: dict[str, int] = field(default_factory=dict)     # id -> consequences not listed
    knobbed: dict[str, dict] = field(default_factory=dict)  # id -> the knob settings it was named with, in order

    @property
    def ids(self) -> frozenset:
        return frozenset(self.known)

    # -- judging a case -----------------------------------------------------------------------------------------
    def known_discrepancy(self, d, facets: dict) -> bool:
        """``d`` is explained by a finding already named, here (see the module docstring)."""
        if d.structural:
            return any((k.id == d.finding or d.kind in self.triggers.get(k.id, ())) and k.covers(facets)
                       for k in self.known.values())
        return any(k.explains_field(d.field, facets) for k in self.known.values())

    # -- recording ---------------------------------------------------------------------------------------------
    def record(self, impl, sc: Scenario, named: list[Named], prop: str, make_finding, base_before: Knobs,
               device: str = "cpu") -> tuple[list[Finding], bool]:
        """Record one diagnosis: new ids become findings (returned), known ids widen their scope and are listed
        under their finding as consequences. Returns (new findings, whether the ledger changed)."""
        regions = derive_regions(impl, sc, [n for n in named if n.id not in MECHANISM], base_before, device)
        for n in named:
            if n.id in MECHANISM:
                regions[n.id] = (MECHANISM[n.id], ["the region of its mechanism, shown by its probe"])
        new, changed = [], False
        for n in named:
            region, lines = regions[n.id]
            k = self.known.get(n.id)
            if k is None:
                k = self.known[n.id] = Known(n.id, Scope((region,)), blocking=n.trigger is not None)
                f = make_finding(n)
                f.scope = k.scope.describe(FACETS)
                f.evidence = list(f.evidence[:1]) + [f"scope: {f.scope} ({'; '.join(lines)})"] + list(f.evidence[1:])
                self.findings[n.id] = f
                self.order.append(n.id)
                new.append(f)
                changed = True
            else:
                widened = k.scope.widen(region)
                changed |= widened != k.scope
                k.scope = widened
                self.also(n.id, f"{n.where} in {prop} [{region.describe(FACETS)}]: "
                                f"{n.evidence[0] if n.evidence else ''}")
                self.findings[n.id].scope = k.scope.describe(FACETS)
                if n.fields:          # the same cause in these fields here: not judged again in this region
                    changed |= self._explain_fields(k, n.fields, region)
            if n.trigger is not None:
                # a crash is the same crash whether torch runs there or raises another error
                kinds = CRASHES if n.trigger in CRASHES and n.id != "error-type" else {n.trigger}
                if not kinds <= self.triggers.setdefault(n.id, set()):
                    self.triggers[n.id] |= kinds
                    changed = True
            if n.knobs and n.id not in self.knobbed:
                self.knobbed[n.id] = dict(n.knobs)
            if n.knobs and replace(self.base, **n.knobs) != self.base:
                self.base = replace(self.base, **n.knobs)
                changed = True
            if n.id in ALL_FIELDS and n.trigger is None:
                changed |= self._explain_fields(k, VALUE_FIELDS, region)
            elif n.id in FIELD_EXPLAINING and n.fields:
                changed |= self._explain_fields(k, n.fields, region)
        return new, changed

    def consolidate(self) -> list[str]:
        """One bug, one id: a knob-less finding (``FOLDABLE``) whose every region lies inside the scope of another
        finding that holds only at some input ranks (a misshapen output only on rank 5, where the reduction axes
        are already known to be wrong), or a mismatch no knob explains exactly in the region of a named bug (its
        effect beyond the knob's model), is that finding's consequence: it is folded under it as "also: ...".
        Returns the ids folded away."""
        folded = []
        for fid in list(self.order):
            k = self.known.get(fid)
            if k is None or fid not in FOLDABLE or fid in self.knobbed or k.scope.everywhere or not k.scope.regions:
                continue
            def specific(h) -> bool:
                """The host holds only at some input ranks, or (for a mismatch no knob explains) exactly in the
                region of the unexplained one: a named bug acting beyond its knob's model there."""
                if all(any(c.facet == "rank" for c in r.conditions) for r in h.scope.regions):
                    return True
                facets = {c.facet for r in k.scope.regions for c in r.conditions}
                return fid == "output-mismatch" and bool(facets) and all(
                    {c.facet for c in r.conditions} == facets for r in h.scope.regions)
            hosts = [h for h in self.known.values() if h.id != fid and h.id not in folded and h.scope.regions and
                     specific(h) and all(any(r.covers(x) for r in h.scope.regions) for x in k.scope.regions)]
            if not hosts:
                continue
            host = min(hosts, key=lambda h: (h.id not in ALL_FIELDS, h.id not in self.knobbed, self.order.index(h.id)))
            f = self.findings[fid]
            self.also(host.id, f"{f.where} in {f.property} [{f.scope}]: {f.evidence[0] if f.evidence else ''} "
                               f"(first named {fid}: only where {host.id} holds)")
            self.triggers.setdefault(host.id, set()).update(self.triggers.get(fid, ()))
            for fld, sc in k.fields.items():
                for r in sc.regions:
                    self._explain_fields(host, [fld], r)
            for r in k.scope.regions:     # its region stays set aside as the host's
                host.scope = host.scope.widen(r)
            del self.known[fid]
            del self.findings[fid]
            self.order.remove(fid)
            folded.append(fid)
        return folded

    def owner(self, sc: Scenario, data, trace, fields) -> str | None:
        """The knobbed finding whose model this case depends on most: the one whose knobs, taken away, move the
        comparison of ``fields`` the most (the latest named when none moves it)."""
        if not self.knobbed:
            return None

        def worst(knobs):
            cmp = compare(sc, data, trace, knobs, structural=False)
            return max((cmp.ratios.get(f, 0.0) for f in fields), default=0.0)
        here = worst(self.base)
        moved = []
        for fid, knobs in self.knobbed.items():
            without = replace(self.base, **{k: getattr(TORCH, k) for k in knobs})
            try:
                r = worst(without)
            except Exception:
                continue
            if r != here and not (math.isnan(r) and math.isnan(here)):
                finite = math.isfinite(r) and math.isfinite(here)
                moved.append((abs(math.log((r + 1e-300) / (here + 1e-300))) if finite else math.inf, fid))
        return max(moved)[1] if moved else list(self.knobbed)[-1]

    def unattributed(self, impl, sc: Scenario, data, trace, fields, where: str, detail: str, prop: str,
                     base_before: Knobs, device: str = "cpu") -> bool:
        """A failure the diagnosis attributes to no new cause: within a few budgets of the model of a bug already
        named, or where that model is undefined. It is listed under the knobbed finding it depends on
        (``owner``), and its fields are not judged again in its region. Returns whether the ledger changed."""
        owner = self.owner(sc, data, trace, fields)
        if owner is None:
            return False
        n = Named(owner, where, [detail], fields=tuple(sorted(fields)))
        if sc.shape[0] == 0:        # where the model is undefined: no values, or one per channel
            region = region_of(sc.facets(), ["empty batch"])
        elif sc.reduction_size <= 1:
            region = region_of(sc.facets(), ["one value per channel"])
        else:
            region, _ = derive_regions(impl, sc, [n], base_before, device)[owner]
            if not region.conditions:
                return False        # no region to set aside: the search would stop on it anyway
        self.also(owner, f"{where} in {prop} [{region.describe(FACETS)}]: {detail} (within the model of this "
                         f"finding, or where it is undefined)")
        return self._explain_fields(self.known[owner], n.fields, region)

    def _explain_fields(self, k: Known, fields, region: Region) -> bool:
        changed = False
        for f in fields:
            old = k.fields.get(f, Scope())
            widened = old.widen(region)
            if widened != old:
                k.fields[f] = widened
                changed = True
        return changed

    def also(self, fid: str, line: str):
        f = self.findings[fid]
        if len(f.also) < MAX_ALSO:
            if line not in f.also:
                f.also.append(line)
        else:
            self.more[fid] = self.more.get(fid, 0) + 1


CRASHES = {"crash", "raises"}
BLOCKS = {"crash", "raises", "output-shape", "missing-error"}


def _fails(cmp: Comparison, n: Named) -> bool | None:
    """Whether ``cmp`` shows what ``n`` was named from. None when the variant cannot tell: declined, or something
    else in the way of what failed (a crash, a misshapen output, an error torch raises: nothing compared there)."""
    if cmp.declined is not None:
        return None
    kinds = [d.kind for d in cmp.discrepancies]
    if n.trigger in CRASHES:        # it crashes or it does not: running without an error is the answer
        return any(k in CRASHES for k in kinds)
    if n.trigger is not None:
        if n.trigger in kinds:
            return True
    elif any(not d.structural and d.field in n.fields for d in cmp.discrepancies):
        return True
    if any(k in BLOCKS for k in kinds if k != n.trigger) or cmp.unmatched_errors:
        return None
    if n.trigger is None and not any(f in cmp.ratios for f in n.fields):
        return None                 # those fields were not compared at all (e.g. torch rejects the variant)
    return False


def derive_regions(impl, sc: Scenario, named: list[Named], base: Knobs, device: str = "cpu") -> dict:
    """For each named finding, (the region of its failure on ``sc``, evidence lines): ``scope.isolate`` with each
    facet's variant run once. A finding is judged under ``base`` plus the knobs of the *other* findings named
    with it, so each gets the region of its own failure."""
    runs: dict = {}

    def run(v: Scenario):
        v = v.with_(device=device)
        if v not in runs:
            data = materialize(v)
            runs[v] = (v, data, execute.run(impl, v, data))
        return runs[v]
    out = {}
    for n in named:
        others = {k: val for m in named if m.id != n.id for k, val in m.knobs.items()}
        knobs = replace(base, **others)

        def fails(v, n=n, knobs=knobs):
            v, data, trace = run(v)
            return _fails(compare(v, data, trace, knobs), n)
        out[n.id] = isolate(sc, FACETS, fails)
    return out

"""Scopes: the region of scenarios a finding explains, as a predicate over the scenario.

A scenario of any kind describes itself as *facets*, a small dict of named, hashable values (``rank``, ``dtype``,
``affine``, ``momentum`` as a class, ``empty batch``, ...). A ``Region`` is a conjunction of conditions "facet in
{values}"; a ``Scope`` is a disjunction of regions. ``EVERY`` (one region without conditions) holds everywhere.

A scope is derived by isolation (``isolate``): starting from the failing scenario, each facet is changed on its own
to a plain alternative (``Facet.alternative``); a facet whose change makes the failure go away is a cause, and the
region is the conjunction of the causes ("only with affine=False and rank 3"). When no single change removes it,
the failure does not depend on any facet tried: every case. A finding seen again outside its scope (the same cause
elsewhere) widens it by the new region (``Scope.widen``).

The search uses scopes to go on after a finding: a case inside the scope of a named crash is excluded, a value
field inside the scope of a named knob-less defect is ignored, and a property ends only when its examples are
spent without a new failure. The report shows each finding's scope.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable


@dataclass(frozen=True)
class Facet:
    """One facet of a scenario kind: its name, how to read it, how to show a condition on it, and the scenario
    with this facet changed to a plain value (None when the scenario already has the plain value)."""
    name: str
    read: Callable[[Any], Any]
    alternative: Callable[[Any], Any]
    show: Callable[[tuple], str] = None

    def describe(self, values: tuple) -> str:
        if self.show is not None:
            return self.show(values)
        shown = " or ".join(_fmt(v) for v in values)
        return f"{self.name}={shown}"


def _fmt(v) -> str:
    return str(v)


@dataclass(frozen=True)
class Condition:
    facet: str
    values: frozenset

    def holds(self, facets: dict) -> bool:
        return facets.get(self.facet) in self.values


@dataclass(frozen=True)
class Region:
    """A conjunction of conditions (none: every scenario)."""
    conditions: frozenset = frozenset()

    def holds(self, facets: dict) -> bool:
        return all(c.holds(facets) for c in self.conditions)

    def covers(self, other: "Region") -> bool:
        """Every scenario of ``other`` is in this region (each of our conditions is implied by one of its)."""
        return all(any(o.facet == c.facet and o.values <= c.values for o in other.conditions)
                   for c in self.conditions)

    def describe(self, facets: dict[str, Facet]) -> str:
        if not self.conditions:
            return "every case"
        parts = []
        for c in sorted(self.conditions, key=lambda c: c.facet):
            f = facets.get(c.facet)
            values = tuple(sorted(c.values, key=repr))
            parts.append(f.describe(values) if f else f"{c.facet} in {values}")
        return " and ".join(parts)

    def to_json(self) -> dict:
        return {c.facet: sorted((_jsonable(v) for v in c.values), key=repr) for c in self.conditions}


def _jsonable(v):
    return v if isinstance(v, (str, int, float, bool)) or v is None else repr(v)


@dataclass(frozen=True)
class Scope:
    """A disjunction of regions."""
    regions: tuple = ()

    def contains(self, facets: dict) -> bool:
        return any(r.holds(facets) for r in self.regions)

    @property
    def everywhere(self) -> bool:
        return any(not r.conditions for r in self.regions)

    def widen(self, region: Region) -> "Scope":
        """This scope or ``region``; regions the new one covers are dropped; two regions that differ in one
        condition's values only merge (rank 3 or rank 5)."""
        if any(r.covers(region) for r in self.regions):
            return self
        kept = [r for r in self.regions if not region.covers(r)]
        for i, r in enumerate(kept):
            merged = _merge(r, region)
            if merged is not None:
                kept[i] = merged
                return Scope(tuple(kept))
        return Scope(tuple(kept) + (region,))

    def describe(self, facets: dict[str, Facet]) -> str:
        if self.everywhere or not self.regions:
            return "every case"
        return "only with " + "; or with ".join(r.describe(facets) for r in self.regions)

    def to_json(self) -> list:
        return [r.to_json() for r in self.regions]


def _merge(a: Region, b: Region) -> Region | None:
    fa, fb = {c.facet: c for c in a.conditions}, {c.facet: c for c in b.conditions}
    if fa.keys() != fb.keys():
        return None
    differ = [k for k in fa if fa[k].values != fb[k].values]
    if len(differ) != 1:
        return None
    k = differ[0]
    return Region(frozenset([c for c in a.conditions if c.facet != k] +
                            [Condition(k, fa[k].values | fb[k].values)]))


EVERY = Scope((Region(),))
NOWHERE = Scope()


def region_of(facets: dict, names: Iterable[str]) -> Region:
    """The region fixing ``names`` to the values in ``facets``."""
    return Region(frozenset(Condition(n, frozenset([facets[n]])) for n in names))


def isolate(sc, facets: dict[str, Facet], fails: Callable[[Any], bool]) -> tuple[Region, list[str]]:
    """The region of ``sc``'s failure: the conjunction of the facets whose change alone makes ``fails`` false.

    Returns (region, evidence lines). ``fails(variant)`` runs the variant (it is only called on valid
    variants; a variant that cannot be built, ``alternative`` returning None, is skipped)."""
    here = {name: f.read(sc) for name, f in facets.items()}
    causes, lines = [], []
    for name, f in facets.items():
        try:
            variant = f.alternative(sc)
        except Exception:        # no valid scenario with this facet changed
            variant = None
        if variant is None:
            continue
        outcome = fails(variant)
        if outcome is False:       # None: the variant was declined, no evidence either way
            causes.append(name)
            lines.append(f"with {name} changed ({f.describe((here[name],))} -> "
                         f"{f.describe((f.read(variant),))}) it does not fail")
    if not causes:
        lines.append("no single change of " + ", ".join(facets) + " makes it go away")
        pair = _two_causes(sc, facets, fails)
        if pair is not None:      # two causes, either enough alone: this one's region; the other's is found later
            a, b = pair
            lines.append(f"with {a} and {b} changed together it does not fail: either alone makes it fail, so its "
                         f"region is taken as {facets[a].describe((here[a],))} (the other shows as a case outside it)")
            return region_of(here, [a]), lines
    return region_of(here, causes), lines


MAX_PAIRS = 10


def _two_causes(sc, facets: dict[str, Facet], fails) -> tuple[str, str] | None:
    """Two facets whose changes together (not alone) make the failure go away, trying at most ``MAX_PAIRS``."""
    names = []
    for name, f in facets.items():
        try:
            if f.alternative(sc) is not None:
                names.append(name)
        except Exception:
            continue
    tried = 0
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if tried >= MAX_PAIRS:
                return None
            tried += 1
            try:
                first = facets[a].alternative(sc)
                both = facets[b].alternative(first) if first is not None else None
            except Exception:
                both = None
            if both is not None and fails(both) is False:
                return a, b
    return None


@dataclass
class Known:
    """A named finding as the search carries it on: its id, scope, whether it blocks a case (a crash: nothing else
    can be compared there) and the value fields it explains within its scope (knob-less numeric defects and the
    consequences folded under a finding)."""
    id: str
    scope: Scope = EVERY
    blocking: bool = False
    fields: dict = field(default_factory=dict)   # value field -> Scope where that field is explained

    def explains_field(self, fld: str, facets: dict) -> bool:
        s = self.fields.get(fld)
        return s is not None and s.contains(facets)

    def covers(self, facets: dict) -> bool:
        return self.scope.contains(facets)

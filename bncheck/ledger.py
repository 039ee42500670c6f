"""The ledger of one check: every finding named so far, with its scope, and what the search assumes from them.

A search names a finding on a shrunk example and isolates its region there (``scope.isolate``). The ledger keeps,
per catalog id, the reported ``Finding`` and the ``scope.Known`` the search goes on with:

* ``blocked(facets)``: a case inside the scope of a named crash (``blocking``) cannot be compared at all; the search
  excludes it (Hypothesis ``reject()``) and looks elsewhere;
* ``explains(key, facets)``: a value field (or a failure key) inside the scope of a named knob-less finding is
  ignored there (a knobbed finding is assumed through its knobs, which the search applies to its reference);
* ``record(...)``: a new id becomes a finding; an id named before widens its scope by the new region
  (``Scope.widen``) and the new example is kept under it as "also: ..." evidence, so a second sighting of the same
  cause elsewhere neither ends the search nor becomes a second finding.

The finding's ``scope`` text follows its scope as it widens.
"""
from __future__ import annotations

from .results import Finding
from .scope import NOWHERE, Facet, Known, Region, Scope

ALSO_MAX = 12           # "also" lines kept per finding; further sightings only widen the scope


class Ledger:
    def __init__(self, facets: dict[str, Facet]):
        self.facets = facets
        self.known: dict[str, Known] = {}
        self.findings: dict[str, Finding] = {}

    def __contains__(self, fid: str) -> bool:
        return fid in self.known

    def blocked(self, facets: dict) -> Known | None:
        """The named crash whose scope holds this case, if any."""
        return next((k for k in self.known.values() if k.blocking and k.covers(facets)), None)

    def outside(self, sc, tries: int = 4):
        """``sc`` moved out of every blocking scope by changing the facets the holding region names to their
        plain values (the facets' alternatives), as a probe or a search that spends each example on a comparable
        case needs; None where that is not possible (a finding of every case, or no alternative)."""
        for _ in range(tries):
            facets = {name: f.read(sc) for name, f in self.facets.items()}
            known = self.blocked(facets)
            if known is None:
                return sc
            region = next(r for r in known.scope.regions if r.holds(facets))
            for c in sorted(region.conditions, key=lambda c: list(self.facets).index(c.facet)
                            if c.facet in self.facets else len(self.facets)):
                try:
                    moved = self.facets[c.facet].alternative(sc) if c.facet in self.facets else None
                except ValueError:
                    moved = None
                if moved is not None:
                    sc = moved
                    break
            else:
                return None
        return sc if self.blocked({n: f.read(sc) for n, f in self.facets.items()}) is None else None

    def explains(self, key: str, facets: dict) -> bool:
        """Whether a named knob-less finding explains ``key`` (a value field or failure key) in this case."""
        return any(k.explains_field(key, facets) for k in self.known.values())

    def describe(self, fid: str) -> str:
        return self.known[fid].scope.describe(self.facets)

    def record(self, finding: Finding, region: Region, *, blocking: bool = False, fields=()) -> bool:
        """Name ``finding`` with the region isolated on its example; ``blocking``: a crash (its cases are
        excluded from then on); ``fields``: the value fields (or keys) it explains within its scope. Returns whether
        anything changed (a new id, a wider scope, a newly explained field): the search's progress."""
        k = self.known.get(finding.id)
        if k is None:
            scope = Scope((region,))
            self.known[finding.id] = Known(finding.id, scope, blocking, {f: scope for f in fields})
            self.findings[finding.id] = finding
            finding.scope = self.describe(finding.id)
            return True
        before = (k.scope, dict(k.fields), k.blocking)
        k.scope = k.scope.widen(region)
        for f in fields:
            k.fields[f] = k.fields.get(f, NOWHERE).widen(region)
        k.blocking = k.blocking or blocking
        first = self.findings[finding.id]
        first.scope = self.describe(finding.id)
        if len(first.also) < ALSO_MAX:
            where = region.describe(self.facets) if region.conditions else "every case"
            detail = finding.evidence[0] if finding.evidence else ""
            first.also.append(f"{where}: {finding.where}; {detail[:240]} ({finding.scenario.describe()})")
        return (k.scope, k.fields, k.blocking) != before

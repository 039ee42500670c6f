"""What checking produces, for every plugin kind, as typed results from the searches to the report.

Inside a search: ``Finding`` (with its live scenario) and ``PropertyResult``. What leaves the worker and reaches the
report: ``Result`` (one plugin: verdict, cases, findings as ``FindingResult``, error/budget distribution,
warnings), ``Timings`` and, for a whole run, ``RunReport``. Each of those has ``to_json()``/``from_json()``; the
JSON is the report's stored form (``reports/latest.json``), so a stored run can be re-read, re-rendered and
compared with another.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

from .spec import Unsupported

SCHEMA_VERSION = 1


def _known(cls, d: dict) -> dict:
    """The entries of ``d`` that are fields of ``cls`` (newer or older JSON reads without error)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def _finite(v) -> float | None:
    """JSON has no infinity: an infinite or NaN ratio is stored as null and read back as infinity."""
    return None if v is None or not math.isfinite(v) else float(v)


@dataclass
class Named:
    """A diagnosis: the finding id, where it shows, its evidence, and the knob flips that reproduce it (if any)."""
    id: str
    where: str
    evidence: list = field(default_factory=list)
    ratio: float = float("inf")
    knobs: dict = field(default_factory=dict)    # knob flips that reproduce it (empty for probes)
    trigger: str | None = None     # the structural discrepancy it was named from (e.g. "crash"); None: value fields
    fields: tuple = ()             # the value fields it was named from (what its scope explains)


@dataclass
class FindingResult:
    """A finding as reported: the catalog id, the property and place it shows in, its evidence, its error as a
    multiple of the budget (None: structural, e.g. a crash), the minimal example, and its reproducer's source."""
    id: str
    property: str = ""
    where: str = ""
    evidence: list[str] = field(default_factory=list)
    error_ratio: float | None = None
    example: str = ""              # the minimal example, in words
    scenario: str = ""             # its repr, which rebuilds it
    repro: str = ""                # a standalone script that shows it (empty for worker-level crashes and timeouts)
    source: str = "search"         # search | probe (an expected id the search missed, confirmed by its probe)
    scope: str = ""                # the region of scenarios it explains: "every case", "only with affine=False", ...
    also: list[str] = field(default_factory=list)   # consequences folded under it: the same cause seen elsewhere

    def line(self) -> str:
        """One line: id, where, error/budget, example."""
        ratio = "structural" if self.error_ratio is None else f"{self.error_ratio:.3g} x budget"
        probe = " (confirmed by probe)" if self.source == "probe" else ""
        scope = f"; {self.scope}" if self.scope else ""
        return f"{self.id}{probe} in {self.property}: {self.where}; {ratio}{scope}; {self.example or '-'}"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "FindingResult":
        return cls(**_known(cls, d))


@dataclass
class Finding:
    """A finding inside a search, with the live scenario it shows on."""
    id: str
    property: str
    where: str
    evidence: list
    error_ratio: float
    scenario: Any                  # the kind's scenario type: has describe() and a repr that rebuilds it
    repro: str = ""
    source: str = "search"         # search | probe (an expected id the search missed, confirmed by its probe)
    scope: str = ""                # the region of scenarios it explains: "every case", "only with affine=False", ...
    also: list[str] = field(default_factory=list)   # consequences folded under it: the same cause seen elsewhere

    def result(self) -> FindingResult:
        return FindingResult(id=self.id, property=self.property, where=self.where, evidence=list(self.evidence),
                             error_ratio=_finite(self.error_ratio), example=self.scenario.describe(),
                             scenario=repr(self.scenario), repro=self.repro, source=self.source, scope=self.scope,
                             also=list(self.also))


@dataclass
class RatioHistogram:
    """How far from the oracle every compared case was: counts of error/budget on a log scale, ``PER_DECADE``
    bins per decade from 10**LO to 10**HI; ``below`` counts smaller ratios (exact agreement included), ``above``
    larger or infinite ones (a case with a NaN where a number was due)."""
    LO = -6
    HI = 6
    PER_DECADE = 4
    counts: list[int] = field(default_factory=lambda: [0] * ((RatioHistogram.HI - RatioHistogram.LO)
                                                             * RatioHistogram.PER_DECADE))
    below: int = 0
    above: int = 0

    def add(self, ratio: float) -> None:
        if ratio is None or math.isnan(ratio) or ratio >= 10.0 ** self.HI:
            self.above += 1
        elif ratio < 10.0 ** self.LO:
            self.below += 1
        else:
            i = int(math.floor((math.log10(ratio) - self.LO) * self.PER_DECADE))
            self.counts[min(max(i, 0), len(self.counts) - 1)] += 1

    def merge(self, other: "RatioHistogram") -> "RatioHistogram":
        return RatioHistogram([a + b for a, b in zip(self.counts, other.counts)], self.below + other.below,
                              self.above + other.above)

    def edges(self) -> list[float]:
        """The bin edges (len(counts) + 1 of them)."""
        return [10.0 ** (self.LO + i / self.PER_DECADE) for i in range(len(self.counts) + 1)]

    @property
    def total(self) -> int:
        return sum(self.counts) + self.below + self.above

    @property
    def over_budget(self) -> int:
        """Cases whose error exceeded the budget (ratio > 1)."""
        first = -self.LO * self.PER_DECADE          # the bin starting at 10**0
        return sum(self.counts[first:]) + self.above

    def to_json(self) -> dict:
        return {"lo": self.LO, "hi": self.HI, "per_decade": self.PER_DECADE, "counts": list(self.counts),
                "below": self.below, "above": self.above}

    @classmethod
    def from_json(cls, d: dict | None) -> "RatioHistogram":
        h = cls()
        if d and (d.get("lo"), d.get("hi"), d.get("per_decade")) == (cls.LO, cls.HI, cls.PER_DECADE):
            h.counts, h.below, h.above = list(d["counts"]), int(d["below"]), int(d["above"])
        return h


@dataclass
class PropertyResult:
    """One property's search, inside a worker."""
    name: str
    cases: int = 0
    declined: int = 0
    excluded: int = 0              # cases inside the scope of a crash named before (nothing else to judge)
    findings: list = field(default_factory=list)
    worst: dict = field(default_factory=dict)        # dtype label -> worst error/budget over passing cases
    seconds: float = 0.0
    assumed: Any = None            # what the search assumed by its end (kind-specific, e.g. the oracle's knobs)
    spent: Any = None              # how it spent its share of the plugin's time budget (``spend.Spent``), if timed
    ratios: RatioHistogram = field(default_factory=RatioHistogram)   # every compared case's error/budget


@dataclass
class PropertySummary:
    """One property, as reported."""
    cases: int = 0
    declined: int = 0
    findings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    excluded: int = 0              # cases inside the scope of a crash named before
    spent: str = ""                # how its share of the time budget went (cases skipped, share spent), if timed

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "PropertySummary":
        return cls(**_known(cls, d))


@dataclass
class WarningKind:
    """One kind of warning raised while checking a plugin: same category, message text and place."""
    category: str
    message: str
    where: str                     # file:line that raised it
    count: int = 0
    property: str = ""             # the property being checked when it was first seen

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "WarningKind":
        return cls(**_known(cls, d))


@dataclass
class Result:
    """Checking one plugin: what was found, how far from the oracle every case was, and the verdict.

    The verdict compares the findings with the plugin's ``expect`` set (``judge``): ``clean`` (none expected, none
    found), ``as expected`` (exactly what it declares, by the search or, for a declared id the search did not
    reach, by that id's directed probe), ``not reproduced`` (a declared id neither showed: a warning, unless
    ``strict``), ``unexpected`` (a finding not declared, or with ``strict`` a declared one not reproduced),
    ``declined`` (the builder declined every case drawn: nothing was checked, not a failure)."""
    name: str
    kind: str = "batchnorm"
    origin: str = ""
    expect: list[str] = field(default_factory=list)
    cases: int = 0
    declined_cases: int = 0
    findings: list[FindingResult] = field(default_factory=list)
    worst_ratio_by_dtype: dict[str, float | None] = field(default_factory=dict)   # over passing cases
    properties: dict[str, PropertySummary] = field(default_factory=dict)
    capabilities: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    warnings: list[WarningKind] = field(default_factory=list)
    world_sizes: list[int] = field(default_factory=list)          # sync plugins
    ratios: RatioHistogram = field(default_factory=RatioHistogram)
    verdict: str = ""
    unexpected: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    confirmed_by_probe: list[str] = field(default_factory=list)

    @property
    def ids(self) -> set[str]:
        return {f.id for f in self.findings}

    def judge(self, strict: bool = False) -> "Result":
        """Set the verdict fields (see the class docstring); returns self."""
        found, expect = self.ids, set(self.expect)
        self.unexpected, self.missing = sorted(found - expect), sorted(expect - found)
        self.confirmed_by_probe = sorted({f.id for f in self.findings if f.source == "probe"})
        if self.unexpected or (self.missing and strict):
            self.verdict = "unexpected"
        elif self.missing:
            self.verdict = "not reproduced"
        elif not found and self.cases and self.declined_cases >= self.cases:
            self.verdict = "declined"
        else:
            self.verdict = "clean" if not found else "as expected"
        return self

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["findings"] = [f.to_json() for f in self.findings]
        d["worst_ratio_by_dtype"] = {k: _finite(v) for k, v in self.worst_ratio_by_dtype.items()}
        d["properties"] = {k: p.to_json() for k, p in self.properties.items()}
        d["warnings"] = [w.to_json() for w in self.warnings]
        d["ratios"] = self.ratios.to_json()
        d["expect"], d["capabilities"] = list(self.expect), dict(self.capabilities)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Result":
        r = cls(**_known(cls, d))
        r.findings = [FindingResult.from_json(f) for f in d.get("findings", [])]
        r.worst_ratio_by_dtype = {k: (math.inf if v is None else v)
                                  for k, v in (d.get("worst_ratio_by_dtype") or {}).items()}
        r.properties = {k: PropertySummary.from_json(p) for k, p in (d.get("properties") or {}).items()}
        r.warnings = [WarningKind.from_json(w) for w in d.get("warnings") or []]
        r.ratios = RatioHistogram.from_json(d.get("ratios"))
        r.expect, r.capabilities = list(d.get("expect", [])), dict(d.get("capabilities") or {})
        return r


@dataclass
class TimingRow:
    """One timed operation: an implementation on one shape, layout and dtype (``error`` instead of a time when
    it could not run). ``ratio`` is torch native's time over this one's (above 1: faster than torch); ``spread``
    is the measurement's relative interquartile range, the noise a comparison of two runs must allow for."""
    implementation: str
    op: str
    shape: str
    layout: str
    dtype: str
    time_ms: float | None = None
    ratio: float | None = None
    gbps: float | None = None
    pct_copy: float | None = None
    error: str | None = None
    spread: float | None = None

    @property
    def key(self) -> tuple:
        return (self.implementation, self.op, self.shape, self.layout, self.dtype)

    @property
    def labelled(self) -> tuple[str, str]:
        """(the implementation's label, the op without its epilogue): a row of ``forward-train+relu`` (a plugin
        timed with its epilogue, ``bench.op_name``) is ``("name (+relu)", "forward-train")``, so it is shown beside
        the plain BatchNorm rows of the same op."""
        op, _, epilogue = self.op.partition("+")
        return (f"{self.implementation} (+{epilogue})" if epilogue else self.implementation), op

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "TimingRow":
        return cls(**_known(cls, d))


@dataclass
class Timings:
    """A timing run: its header (device, timer, copy bandwidth, ...), its rows, and its Markdown table."""
    header: dict = field(default_factory=dict)
    rows: list[TimingRow] = field(default_factory=list)
    markdown: str = ""

    def to_json(self) -> dict:
        return {"markdown": self.markdown, "result": {"header": dict(self.header),
                                                      "rows": [r.to_json() for r in self.rows]}}

    @classmethod
    def from_bench(cls, result: dict, markdown: str = "") -> "Timings":
        """From ``bench.bench``'s plain result."""
        return cls(dict(result.get("header") or {}), [TimingRow.from_json(r) for r in result.get("rows") or []],
                   markdown)

    @classmethod
    def from_json(cls, d: dict | None) -> "Timings | None":
        if not d:
            return None
        return cls.from_bench(d.get("result") or {}, d.get("markdown", ""))


@dataclass
class LoadFailure:
    """A plugin that could not be loaded: where, and why."""
    origin: str
    message: str

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "LoadFailure":
        return cls(**_known(cls, d))


@dataclass
class RunReport:
    """One ``bncheck run``: the environment it ran in, every plugin's result (judged), the plugins that failed to
    load, the timings, and the exit status (1 on an unexpected finding or a load failure)."""
    environment: dict[str, Any] = field(default_factory=dict)
    implementations: list[Result] = field(default_factory=list)
    load_errors: list[LoadFailure] = field(default_factory=list)
    timings: Timings | None = None
    strict: bool = False
    exit_status: int = 0
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def judged(cls, environment: dict, results: list[Result], load_errors=(), timings: Timings | None = None,
               strict: bool = False) -> "RunReport":
        results = [r.judge(strict) for r in results]
        errors = [e if isinstance(e, LoadFailure) else LoadFailure(e.origin, e.message) for e in load_errors]
        ok = all(r.verdict != "unexpected" for r in results) and not errors
        return cls(dict(environment), results, errors, timings, strict, 0 if ok else 1)

    def to_json(self) -> dict:
        return {"schema_version": self.schema_version, "environment": dict(self.environment),
                "implementations": [r.to_json() for r in self.implementations],
                "load_errors": [e.to_json() for e in self.load_errors],
                "timings": self.timings.to_json() if self.timings else None, "strict": self.strict,
                "exit_status": self.exit_status}

    @classmethod
    def from_json(cls, d: dict) -> "RunReport":
        if not isinstance(d, dict) or "implementations" not in d:
            raise ValueError("not a bncheck report (no 'implementations')")
        if d.get("schema_version", SCHEMA_VERSION) > SCHEMA_VERSION:
            raise ValueError(f"report schema {d['schema_version']} is newer than this bncheck reads "
                             f"({SCHEMA_VERSION}); upgrade bncheck")
        return cls(environment=dict(d.get("environment") or {}),
                   implementations=[Result.from_json(r) for r in d["implementations"]],
                   load_errors=[LoadFailure.from_json(e) for e in d.get("load_errors") or []],
                   timings=Timings.from_json(d.get("timings")), strict=bool(d.get("strict", False)),
                   exit_status=int(d.get("exit_status", 0)), schema_version=d.get("schema_version", SCHEMA_VERSION))


def accepts(attempts: dict[str, Callable[[], Any]]) -> dict:
    """Which configurations a plugin accepts: each attempt (label -> build or fold call) gives 'yes',
    'declined: why' (it raised ``Unsupported``) or 'build error: why'."""
    out = {}
    for label, attempt in attempts.items():
        try:
            attempt()
            out[label] = "yes"
        except Unsupported as e:
            out[label] = f"declined: {e}"
        except Exception as e:
            out[label] = f"build error: {type(e).__name__}: {e}"[:120]
    return out


class PropertyFailure(AssertionError):
    """Raised inside a Hypothesis test when a property fails, so Hypothesis shrinks the example."""


def summary(impl, kind: str, results: list, caps: dict, seconds: float, size: Callable[[Finding], Any],
            world_sizes=()) -> Result:
    """One plugin's result: per finding id the example that is smallest by ``size``, worst ratios per dtype."""
    best: dict[str, Finding] = {}
    for r in results:
        for f in r.findings:
            if f.id not in best or size(f) < size(best[f.id]):
                best[f.id] = f
    worst: dict[str, float] = {}
    ratios = RatioHistogram()
    for r in results:
        for k, v in r.worst.items():
            worst[k] = max(worst.get(k, 0.0), v)
        ratios = ratios.merge(r.ratios)
    return Result(
        name=impl.name, kind=kind, origin=impl.origin, expect=sorted(impl.expect),
        cases=sum(r.cases for r in results), declined_cases=sum(r.declined for r in results),
        findings=[best[k].result() for k in sorted(best)],
        worst_ratio_by_dtype=dict(sorted(worst.items())),
        properties={r.name: PropertySummary(r.cases, r.declined, sorted({f.id for f in r.findings}),
                                            round(r.seconds, 2), r.excluded,
                                            r.spent.describe() if r.spent is not None else "")
                    for r in results},
        capabilities=dict(caps), seconds=round(seconds, 2), world_sizes=list(world_sizes), ratios=ratios)


class WarningLog:
    """Counts the warnings raised while checking one plugin, by (category, message, file:line); nothing is
    printed. ``capture()`` routes every warning here (filter "always", so repeats are counted too)."""

    MAX_KINDS = 50                 # further kinds are counted under one "other" entry
    MAX_MESSAGE = 500

    def __init__(self):
        self.kinds: dict[tuple, WarningKind] = {}
        self.property = ""

    def record(self, message, category, filename, lineno, file=None, line=None):
        text = str(message)[:self.MAX_MESSAGE]
        name = getattr(category, "__name__", str(category))
        key = (name, text, f"{filename}:{lineno}")
        if key not in self.kinds and len(self.kinds) >= self.MAX_KINDS:
            key = ("(other)", "further kinds of warnings", "-")
        kind = self.kinds.get(key)
        if kind is None:
            kind = self.kinds[key] = WarningKind(*key, property=self.property)
        kind.count += 1

    @contextlib.contextmanager
    def capture(self):
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = self.record       # restored by catch_warnings on exit
            yield self

    def summary(self) -> list[WarningKind]:
        """The kinds, in the order first seen (copies)."""
        return [WarningKind(**asdict(k)) for k in self.kinds.values()]

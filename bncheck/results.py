"""What checking one plugin produces, for every plugin kind: findings, per-property results, and the plain
(JSON-ready) summary the runner hands to the report."""
from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from .spec import Unsupported


@dataclass
class Named:
    """A diagnosis: the finding id, where it shows, its evidence, and the knob flips that reproduce it (if any)."""
    id: str
    where: str
    evidence: list = field(default_factory=list)
    ratio: float = float("inf")
    knobs: dict = field(default_factory=dict)    # knob flips that reproduce it (empty for probes)


@dataclass
class Finding:
    id: str
    property: str
    where: str
    evidence: list
    error_ratio: float
    scenario: Any                  # the kind's scenario type: has describe() and a repr that rebuilds it
    repro: str = ""
    source: str = "search"         # search | probe (an expected id the search missed, confirmed by its probe)

    def to_dict(self) -> dict:
        return {"id": self.id, "property": self.property, "where": self.where, "evidence": self.evidence,
                "error_ratio": None if math.isinf(self.error_ratio) else self.error_ratio,
                "example": self.scenario.describe(), "scenario": repr(self.scenario), "repro": self.repro,
                "source": self.source}


@dataclass
class PropertyResult:
    name: str
    cases: int = 0
    declined: int = 0
    findings: list = field(default_factory=list)
    worst: dict = field(default_factory=dict)        # dtype label -> worst error/budget over passing cases
    seconds: float = 0.0
    assumed: Any = None            # what the search assumed by its end (kind-specific, e.g. the oracle's knobs)


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
            **extra) -> dict:
    """One plugin's result: per finding id the example that is smallest by ``size``, worst ratios per dtype."""
    best: dict[str, Finding] = {}
    for r in results:
        for f in r.findings:
            if f.id not in best or size(f) < size(best[f.id]):
                best[f.id] = f
    worst: dict[str, float] = {}
    for r in results:
        for k, v in r.worst.items():
            worst[k] = max(worst.get(k, 0.0), v)
    return {
        "name": impl.name, "kind": kind, "origin": impl.origin, "expect": sorted(impl.expect),
        "cases": sum(r.cases for r in results), "declined_cases": sum(r.declined for r in results),
        "findings": [best[k].to_dict() for k in sorted(best)],
        "worst_ratio_by_dtype": {k: (None if math.isinf(v) else v) for k, v in sorted(worst.items())},
        "properties": {r.name: {"cases": r.cases, "declined": r.declined,
                                "findings": sorted({f.id for f in r.findings}),
                                "seconds": round(r.seconds, 2)} for r in results},
        "capabilities": caps, "seconds": round(seconds, 2), **extra,
    }


@dataclass
class WarningKind:
    """One kind of warning raised while checking a plugin: same category, message text and place."""
    category: str
    message: str
    where: str                     # file:line that raised it
    count: int = 0
    property: str = ""             # the property being checked when it was first seen

    def to_dict(self) -> dict:
        return asdict(self)


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

    def summary(self) -> list:
        """The kinds, in the order first seen, as plain dicts."""
        return [k.to_dict() for k in self.kinds.values()]

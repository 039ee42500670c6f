"""What changed between two runs (``bncheck diff BASE.json HEAD.json``, ``bncheck run --baseline``): two stored
``RunReport``s in, a typed ``RunDiff`` out, rendered as Markdown or JSON (no torch here).

What is compared, per implementation present in both runs (by name):

* **findings**: a finding id in HEAD and not in BASE is *new* (unexpected when it is not in HEAD's ``expect`` set for
  that implementation); one in BASE and not in HEAD is *fixed*. An implementation only in HEAD contributes all its
  findings as new ones (so a plugin added with an undeclared bug fails the check); one only in BASE is listed as
  removed, and its findings are not called fixed.
* **verdicts** (``clean``, ``as expected``, ...) that differ.
* **worst error / budget** per dtype (over the cases that passed), where both runs have that dtype: a move counts
  when the larger of the two is more than ``WORST_FACTOR`` (2) times the smaller, after both are raised to the floor
  ``WORST_FLOOR`` = 1/8. The floor: every budget in ``bncheck.budget`` carries ``K * u_out * |result|`` with K = 8,
  so one rounding of the result in its own dtype, the least any implementation that is not bit-identical to the
  float64 oracle shows, is up to 1/8 of the budget. Below that the worst ratio says which drawn case rounded worst,
  not how the implementation computes (torch's own kernels range over 0.01-0.2 from one set of draws to another), so
  0.02 -> 0.1 is not a move while 0.05 -> 0.3 (0.125 -> 0.3 is 2.4x) is. An infinite ratio (a NaN or infinity where
  a number was due) against a finite one is always a move.
* **timing ratios** (torch time / implementation time) of the same implementation, operation, shape, layout and
  dtype. Each run records every timing's relative interquartile range (``TimingRow.spread``). A timing's noise
  ``s`` is the larger of its own spread and the median spread of its run: one measurement's interquartile range
  comes from a few blocks, and a burst of load on a shared machine that lasts a whole measurement shifts every
  block alike, which only the run's typical spread shows. A ratio's noise in one run is ``S = sqrt(s_impl^2 +
  s_torch^2)`` (both timings enter it), and a move counts when
  ``|ln(r_head / r_base)| > max(ln TIMING_MIN_FACTOR, TIMING_K * sqrt(S_base^2 + S_head^2))``: at least 10%, and
  at least ``TIMING_K`` = 3 combined spreads (an interquartile range is 1.35 standard deviations of a normal, so
  this is about 4 standard deviations of the difference). Measured on a shared 2-core machine (three identical
  timing runs of the ``small`` CPU set, 174 ratio pairs, ratios moving by up to 3x between runs, median spread
  0.3): 0 moves reported, against 5 with each timing's own spread alone; on such a machine the threshold is 6x or
  more, which is what its timings can support. A timing without a recorded spread (an older report, a single timed
  block) is held to ``TIMING_UNKNOWN_FACTOR`` (1.5x). Timings from different machines (processor, cores, system
  differ) are compared, and the header warns that their moves compare different hardware. A timing BASE measured
  and HEAD could not (an error) is listed. Timing moves never set the exit status.

The header states what is compared: each side's commit, time, machine, profile, seed and device, with a warning when
the profiles, seeds, devices or machines differ. Exit status (``RunDiff.exit_status``): 1 when HEAD has a new
unexpected finding, otherwise 0 (everything else is information: the run's own exit status covers load failures and
findings that were already unexpected in BASE).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from tabulate import tabulate

from .results import RunReport, TimingRow

WORST_FACTOR = 2.0
WORST_FLOOR = 1.0 / 8.0          # 1 / budget.K: one rounding of the result in its own dtype
TIMING_K = 3.0
TIMING_MIN_FACTOR = 1.10
TIMING_UNKNOWN_FACTOR = 1.5
NATIVE = "torch-native"          # bench.NATIVE, the timings' reference
MAX_CELL = 56                    # keeps every Markdown table row within 160 columns


def _inf(v):
    return math.inf if v is None else float(v)


def _finite(v):
    return None if v is None or not math.isfinite(v) else float(v)


@dataclass
class Side:
    """What one run was: where it came from and how it was run."""
    label: str = ""                # the report's path, as given
    commit: str | None = None
    datetime: str | None = None
    machine: dict = field(default_factory=dict)
    profile: str | None = None
    seed: int | None = None
    device: str | None = None

    @classmethod
    def of(cls, rep: RunReport, label: str = "") -> "Side":
        e = rep.environment
        return cls(label, e.get("commit"), e.get("datetime"), dict(e.get("machine") or {}), e.get("profile"),
                   e.get("seed"), e.get("device"))

    def machine_text(self) -> str:
        m = self.machine
        if not m:
            return "not recorded"
        return (f"{m.get('node', '?')}: {m.get('processor', '?')}, {m.get('cores', '?')} cores, "
                f"{m.get('system', '?')}, {m.get('python_implementation', '?')}")


@dataclass
class FindingChange:
    implementation: str
    id: str
    property: str = ""
    where: str = ""
    error_ratio: float | None = None   # None: structural (a crash, a missing error) or infinite
    expected: bool = False             # in HEAD's expect set (new findings) / BASE's (fixed ones)


@dataclass
class VerdictChange:
    implementation: str
    base: str
    head: str


@dataclass
class WorstMove:
    implementation: str
    dtype: str
    base: float                        # math.inf: a NaN or infinity where a number was due
    head: float

    @property
    def factor(self) -> float:
        """head / base after both are raised to the floor (inf when one side is infinite)."""
        b, h = max(self.base, WORST_FLOOR), max(self.head, WORST_FLOOR)
        if math.isinf(b) or math.isinf(h):
            return 1.0 if b == h else (math.inf if math.isinf(h) else 0.0)
        return h / b


@dataclass
class TimingMove:
    implementation: str
    op: str
    shape: str
    layout: str
    dtype: str
    base: float                        # ratio torch time / implementation time
    head: float
    threshold: float                   # the factor the move had to exceed
    spread_known: bool = True

    @property
    def factor(self) -> float:
        return self.head / self.base


@dataclass
class RunDiff:
    base: Side
    head: Side
    warnings: list[str] = field(default_factory=list)
    new: list[FindingChange] = field(default_factory=list)
    fixed: list[FindingChange] = field(default_factory=list)
    verdicts: list[VerdictChange] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    new_load_errors: list[str] = field(default_factory=list)
    worst: list[WorstMove] = field(default_factory=list)
    timings: list[TimingMove] = field(default_factory=list)
    timing_errors: list[str] = field(default_factory=list)   # timed in BASE, an error in HEAD
    compared: int = 0                  # implementations in both runs
    unchanged: int = 0                 # of those, with the same findings and verdict
    timings_compared: int = 0          # timing rows with a ratio in both runs

    @property
    def new_unexpected(self) -> list[FindingChange]:
        return [f for f in self.new if not f.expected]

    @property
    def exit_status(self) -> int:
        return 1 if self.new_unexpected else 0

    def to_json(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["base"], d["head"] = asdict(self.base), asdict(self.head)
        for k in ("new", "fixed", "verdicts"):
            d[k] = [asdict(x) for x in d[k]]
        d["worst"] = [dict(asdict(w), base=_finite(w.base), head=_finite(w.head), factor=_finite(w.factor))
                      for w in self.worst]
        d["timings"] = [dict(asdict(t), factor=t.factor) for t in self.timings]
        d["exit_status"] = self.exit_status
        d["new_unexpected"] = [f"{f.implementation}:{f.id}" for f in self.new_unexpected]
        return d

    @classmethod
    def from_json(cls, d: dict) -> "RunDiff":
        def known(c, x):
            names = {f.name for f in fields(c)}
            return c(**{k: v for k, v in x.items() if k in names})
        r = cls(known(Side, d["base"]), known(Side, d["head"]))
        r.new = [known(FindingChange, x) for x in d.get("new", [])]
        r.fixed = [known(FindingChange, x) for x in d.get("fixed", [])]
        r.verdicts = [known(VerdictChange, x) for x in d.get("verdicts", [])]
        r.worst = [WorstMove(x["implementation"], x["dtype"], _inf(x["base"]), _inf(x["head"]))
                   for x in d.get("worst", [])]
        r.timings = [known(TimingMove, x) for x in d.get("timings", [])]
        for k in ("warnings", "added", "removed", "new_load_errors", "timing_errors"):
            setattr(r, k, list(d.get(k, [])))
        for k in ("compared", "unchanged", "timings_compared"):
            setattr(r, k, int(d.get(k, 0)))
        return r


# ---------------------------------------------------------------------------------------------------------------
# comparing


def _side_warnings(base: Side, head: Side) -> list[str]:
    out = []
    for name in ("profile", "seed", "device"):
        a, b = getattr(base, name), getattr(head, name)
        if a != b:
            out.append(f"{name}s differ ({a} vs {b}): findings and worst ratios come from different searches")
    from .provenance import MACHINE_IDENTITY
    if base.machine and head.machine:
        if any(base.machine.get(k) != head.machine.get(k) for k in MACHINE_IDENTITY):
            out.append("machines differ: timing moves compare different hardware")
    else:
        out.append("machine not recorded on " + " and ".join(s for s, m in (("BASE", base.machine),
                                                                           ("HEAD", head.machine)) if not m))
    return out


def _finding_change(impl, f, expect) -> FindingChange:
    return FindingChange(impl, f.id, f.property, f.where, _finite(f.error_ratio), f.id in expect)


def worst_moved(base: float, head: float) -> bool:
    """The worst-ratio rule of the module docstring."""
    b, h = max(_inf(base), WORST_FLOOR), max(_inf(head), WORST_FLOOR)
    if math.isinf(b) or math.isinf(h):
        return b != h
    return max(b, h) > WORST_FACTOR * min(b, h)


def run_spread(rows: list[TimingRow]) -> float:
    """The median recorded spread of a run's timings (0 when none is recorded)."""
    s = sorted(r.spread for r in rows if r.spread is not None)
    return 0.0 if not s else (s[len(s) // 2] if len(s) % 2 else (s[len(s) // 2 - 1] + s[len(s) // 2]) / 2)


def _ratio_spread(row: TimingRow, native: TimingRow | None, floor: float) -> float | None:
    if row.spread is None or native is None or native.spread is None:
        return None
    return math.hypot(max(row.spread, floor), max(native.spread, floor))


def timing_threshold(base_spread: float | None, head_spread: float | None) -> tuple[float, bool]:
    """(the factor a ratio must move by to count, whether both spreads were recorded)."""
    if base_spread is None or head_spread is None:
        return TIMING_UNKNOWN_FACTOR, False
    return max(TIMING_MIN_FACTOR, math.exp(TIMING_K * math.hypot(base_spread, head_spread))), True


def _timings(base: RunReport, head: RunReport, d: RunDiff) -> None:
    if not base.timings or not head.timings:
        if base.timings or head.timings:
            d.warnings.append(f"only {'BASE' if base.timings else 'HEAD'} has timings: none compared")
        return
    b_rows = {r.key: r for r in base.timings.rows}
    h_rows = {r.key: r for r in head.timings.rows}
    b_floor, h_floor = run_spread(base.timings.rows), run_spread(head.timings.rows)
    for key, h in h_rows.items():
        b = b_rows.get(key)
        if b is not None and b.time_ms and h.error:
            d.timing_errors.append(f"{' '.join(key)}: {h.error}")
        if h.implementation == NATIVE or b is None or not b.ratio or not h.ratio:
            continue
        d.timings_compared += 1
        native = (NATIVE,) + key[1:]
        threshold, known = timing_threshold(_ratio_spread(b, b_rows.get(native), b_floor),
                                            _ratio_spread(h, h_rows.get(native), h_floor))
        if abs(math.log(h.ratio / b.ratio)) > math.log(threshold):
            d.timings.append(TimingMove(*key, b.ratio, h.ratio, threshold, known))


def compare(base: RunReport, head: RunReport, base_label: str = "BASE", head_label: str = "HEAD") -> RunDiff:
    d = RunDiff(Side.of(base, base_label), Side.of(head, head_label))
    d.warnings = _side_warnings(d.base, d.head)
    b_impls = {r.name: r for r in base.implementations}
    h_impls = {r.name: r for r in head.implementations}
    d.added = [n for n in h_impls if n not in b_impls]
    d.removed = [n for n in b_impls if n not in h_impls]
    for name, h in h_impls.items():
        b = b_impls.get(name)
        b_ids = b.ids if b else set()
        d.new += [_finding_change(name, f, h.expect) for f in h.findings if f.id not in b_ids]
        if b is None:
            continue
        d.compared += 1
        d.fixed += [_finding_change(name, f, b.expect) for f in b.findings if f.id not in h.ids]
        b_verdict, h_verdict = b.verdict or b.judge(base.strict).verdict, h.verdict or h.judge(head.strict).verdict
        if b_verdict != h_verdict:
            d.verdicts.append(VerdictChange(name, b_verdict, h_verdict))
        elif b.ids == h.ids:
            d.unchanged += 1
        for dtype, hw in h.worst_ratio_by_dtype.items():
            if dtype in b.worst_ratio_by_dtype and worst_moved(b.worst_ratio_by_dtype[dtype], hw):
                d.worst.append(WorstMove(name, dtype, _inf(b.worst_ratio_by_dtype[dtype]), _inf(hw)))
    b_errors = {e.origin for e in base.load_errors}
    d.new_load_errors = [f"{e.origin}: {e.message}" for e in head.load_errors if e.origin not in b_errors]
    _timings(base, head, d)
    return d


# ---------------------------------------------------------------------------------------------------------------
# rendering


def _cut(s, n: int = MAX_CELL) -> str:
    s = " ".join(str(s).split()).replace("|", "\\|")
    return s if len(s) <= n else s[:n - 3] + "..."


def _tail(s, n: int) -> str:
    """A path cut from the left, so its file name stays."""
    s = _cut(s, 10 ** 6)
    return s if len(s) <= n else "..." + s[-(n - 3):]


def _r(v) -> str:
    return "inf" if v is None or math.isinf(v) else f"{v:.3g}"


def _x(factor: float) -> str:
    if math.isinf(factor):
        return "to inf"
    if factor == 0:
        return "from inf"
    return f"{factor:.2f}x" if factor >= 1 else f"1/{1 / factor:.2f}x"


def _table(rows, headers) -> str:
    return tabulate(rows, headers=headers, tablefmt="pipe", disable_numparse=True)


def _short_commit(c) -> str:
    if not c:
        return "not recorded"
    sha, dirty = (c[:-6], " (dirty)") if c.endswith("-dirty") else (c, "")
    return sha[:12] + dirty


def render_markdown(d: RunDiff) -> str:
    lines = ["# bncheck diff", ""]
    lines.append(_table([["report", _tail(d.base.label, 60), _tail(d.head.label, 60)]] + [
        [k, _cut(a, 60), _cut(b, 60)] for k, a, b in (
        ("commit", _short_commit(d.base.commit), _short_commit(d.head.commit)),
        ("datetime", d.base.datetime or "not recorded", d.head.datetime or "not recorded"),
        ("machine", d.base.machine_text(), d.head.machine_text()),
        ("profile, seed", f"{d.base.profile}, {d.base.seed}", f"{d.head.profile}, {d.head.seed}"),
        ("device", d.base.device, d.head.device))], ["", "BASE", "HEAD"]))
    lines.append("")
    lines += [f"> warning: {w}" for w in d.warnings]
    if d.warnings:
        lines.append("")
    bad = d.new_unexpected
    if bad:
        lines.append(f"**{len(bad)} new unexpected finding(s)**: "
                     + ", ".join(f"`{f.implementation}:{f.id}`" for f in bad))
    else:
        lines.append("**No new unexpected finding.**")
    lines += ["", f"{d.compared} implementation(s) in both runs, {d.unchanged} with the same findings and verdict;",
              f"{len(d.new)} new finding(s), {len(d.fixed)} fixed, {len(d.verdicts)} verdict change(s), "
              f"{len(d.worst)} worst-ratio move(s), {len(d.timings)} timing move(s) of {d.timings_compared} compared."]

    def section(title, rows, headers):
        if rows:
            lines.extend(["", f"## {title}", "", _table(rows, headers)])

    fhead = ["implementation", "finding", "expected", "property", "error / budget", "where"]

    def frow(f):
        return [_cut(f.implementation, 30), f"`{f.id}`", "yes" if f.expected else "**no**", f.property,
                "-" if f.error_ratio is None else _r(f.error_ratio), _cut(f.where, 40)]
    section("New findings", [frow(f) for f in d.new], fhead)
    section("Fixed findings", [frow(f) for f in d.fixed], fhead)
    section("Verdict changes", [[_cut(v.implementation, 30), v.base, v.head] for v in d.verdicts],
            ["implementation", "BASE", "HEAD"])
    section("Implementations added or removed",
            [[_cut(n, 40), "added"] for n in d.added] + [[_cut(n, 40), "removed"] for n in d.removed]
            + [[_cut(e, 100), "failed to load (new)"] for e in d.new_load_errors], ["implementation", "change"])
    section(f"Worst error / budget moved more than {WORST_FACTOR:g}x (values below {WORST_FLOOR:g} count as "
            f"{WORST_FLOOR:g})",
            [[_cut(w.implementation, 30), w.dtype, _r(w.base), _r(w.head), _x(w.factor)] for w in d.worst],
            ["implementation", "dtype", "BASE", "HEAD", "change"])
    section("Timing ratios (torch time / implementation time) moved beyond noise",
            [[_cut(t.implementation, 30), t.op, t.shape, t.layout, t.dtype, f"{t.base:.3g}", f"{t.head:.3g}",
              _x(t.factor), f"{t.threshold:.2f}x" + ("" if t.spread_known else " (no spread)")]
             for t in d.timings],
            ["implementation", "op", "shape", "layout", "dtype", "BASE", "HEAD", "change", "threshold"])
    section("Timed in BASE, an error in HEAD", [[_cut(e, 150)] for e in d.timing_errors], ["timing"])
    lines.append("")
    return "\n".join(lines)


__all__ = ["RunDiff", "Side", "FindingChange", "VerdictChange", "WorstMove", "TimingMove", "compare",
           "render_markdown", "worst_moved", "timing_threshold", "run_spread", "WORST_FACTOR", "WORST_FLOOR",
           "TIMING_K", "TIMING_MIN_FACTOR", "TIMING_UNKNOWN_FACTOR"]

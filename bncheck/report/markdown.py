"""Reports: Markdown and JSON of a ``RunReport`` (no torch here), written atomically, with pictures beside them.

The Markdown reads at a glance as a GitHub page or job summary: a one-line verdict, the summary table (no row
wider than ``WIDTH`` columns), each finding as one line whose evidence and reproducer unfold in ``<details>``,
the pictures, then per kind what was compared, with the longer tables folded away. Verdicts are decided by
``Result.judge`` (see ``results.Result``); ``build`` judges every result and sets the run's exit status.
"""
from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path

from ..results import SCHEMA_VERSION, Result, RunReport, Timings   # noqa: F401  (SCHEMA_VERSION re-exported)
from .files import atomic_write
from .mdtable import WIDTH, cut, esc, fold, split, table

NAME_MAX = 36          # a longer implementation name is cut in the middle in the summary table (its ends kept)
EXPECTED_OPEN = 12     # more expected findings than this are folded into one <details>


def build(env: dict, impls: list[Result], load_errors: list, timings: Timings | None = None,
          strict: bool = False) -> RunReport:
    """``strict``: an expected finding that is not reproduced fails the run (otherwise it is a warning)."""
    return RunReport.judged(env, impls, load_errors, timings, strict)


def _ratio(v) -> str:
    if v is None or math.isinf(v):
        return "inf"
    return f"{v:.3g}"


SECTIONS = {   # plugin kind -> (section title, one line on what was compared)
    "batchnorm": ("BatchNorm implementations",
                  "Each implementation against the float64 oracle with torch semantics."),
    "fusion": ("Fusion (conv-BN folding)",
               "Each folded convolution against bn(conv(x)) in eval mode, computed in float64."),
    "sync": ("Distributed (synchronised BatchNorm)",
             "Each rank's results against the single-process oracle on the concatenated global batch."),
}

MARK = {"clean": "✓", "as expected": "✓", "not reproduced": "⚠", "unexpected": "✗", "declined": "○"}
_DTYPE = {"float64": "f64", "float32": "f32", "float16": "f16", "bfloat16": "bf16"}


def _verdict(v: str) -> str:
    text = f"{MARK.get(v, '?')} {v}"
    return f"**{text}**" if v == "unexpected" else text


def _short_dtype(label: str) -> str:
    return "+".join(_DTYPE.get(p, p) for p in str(label).split("+"))


def _worst(r: Result) -> str:
    """The worst error/budget over passing cases, with the dtype it was seen in."""
    if not r.worst_ratio_by_dtype:
        return "-"
    dtype, v = max(r.worst_ratio_by_dtype.items(), key=lambda kv: math.inf if kv[1] is None else kv[1])
    return f"{_ratio(v)} {_short_dtype(dtype)}"


def _notes(r: Result, strict: bool) -> list[str]:
    notes = []
    if r.unexpected:
        notes.append("unexpected: " + ", ".join(r.unexpected))
    if r.missing:
        notes.append(("expected but not found: " if strict else "warning: expected but not reproduced: ")
                     + ", ".join(r.missing))
    if r.confirmed_by_probe:
        notes.append("confirmed by probe: " + ", ".join(r.confirmed_by_probe))
    if r.verdict == "declined":
        notes += [f"declined ({k}: {v[len('declined: '):]})" for k, v in r.capabilities.items()
                  if str(v).startswith("declined")]
    else:                      # a property whose every case was declined checked nothing: say so
        unchecked = [name for name, p in r.properties.items() if p.cases and p.declined >= p.cases]
        if unchecked:
            notes.append("not checked (every case declined): " + ", ".join(unchecked))
    warned = sum(k.count for k in r.warnings)
    if warned:
        notes.append(f"{warned} warning(s) ({len(r.warnings)} kind(s))")
    return notes


def _middle(name: str, n: int) -> str:
    """``name`` in at most ``n`` characters: its start and its end (where versions and variants are told apart)."""
    if len(name) <= n:
        return name
    head = (n - 1) // 2
    return name[:head] + "…" + name[len(name) - (n - 1 - head):]


def _summary(impls: list[Result], strict: bool) -> list[str]:
    """The summary table (one row per plugin, at most WIDTH columns) and, below it, notes too long for a cell."""
    headers = ["implementation", "kind", "verdict", "cases", "worst err/budget", "findings", "notes"]
    align = ["left", "left", "left", "right", "right", "right", "left"]
    base = [[_middle(r.name, NAME_MAX), r.kind, _verdict(r.verdict), str(r.cases), _worst(r), str(len(r.findings))]
            for r in impls]
    fixed = max(map(len, table(headers[:-1], base, align[:-1]).splitlines()))
    room = max(WIDTH - fixed - 3, 24)           # what is left for the notes column
    rows, footnotes = [], []
    for r, row in zip(impls, base):
        notes = "; ".join(_notes(r, strict))
        if len(esc(notes)) > room:
            footnotes.append(f"{r.name}: {notes}")
            mark = f" [{len(footnotes)}]"
            notes = cut(notes, room - len(mark)) + mark
        rows.append(row + [notes or "-"])
    out = [table(headers, rows, align, shrink=(6,), minimum=24)]
    if footnotes:
        out += [""] + [f"- [{i}] {esc(n)}" for i, n in enumerate(footnotes, 1)]
    return out


def _headline(rep: RunReport) -> str:
    counts = {}
    for r in rep.implementations:
        counts[r.verdict] = counts.get(r.verdict, 0) + 1
    parts = [_verdict(v).replace(v, f"{counts[v]} {v}") for v in
             ("unexpected", "not reproduced", "as expected", "clean", "declined") if counts.get(v)]
    if rep.load_errors:
        parts.append(f"**✗ {len(rep.load_errors)} plugin(s) failed to load**")
    parts.append(f"exit status {rep.exit_status}")
    return " · ".join(parts)


def _environment(env: dict) -> list[str]:
    """One line of the short settings; longer ones folded below it."""
    short = {k: v for k, v in env.items() if not isinstance(v, (dict, list)) and len(str(v)) <= 40}
    line = " · ".join(f"{k} `{v}`" for k, v in short.items())
    rest = {k: v for k, v in env.items() if k not in short}
    if not rest:
        return [line]
    items = [f"- {k}: `{json.dumps(v, default=str) if isinstance(v, (dict, list)) else v}`" for k, v in rest.items()]
    return [line, "", "<details><summary>More of the environment</summary>", "", *items, "", "</details>"]


def _short(text: str, n: int) -> str:
    """``text`` cut at a word to at most ``n`` characters."""
    text = str(text) or "-"
    if len(text) <= n:
        return text
    head = text[:n - 1]
    return (head.rsplit(" ", 1)[0] if " " in head else head) + " …"


def _finding(r: Result, f) -> list[str]:
    """One line (the <summary>); evidence, example and reproducer unfold below it. An unexpected finding carries
    its reproducer's source too (an expected one, its command: the report stays small)."""
    unexpected = f.id in r.unexpected
    mark = MARK["unexpected"] if unexpected else MARK["as expected"]
    ratio = "structural" if f.error_ratio is None else f"{_ratio(f.error_ratio)} × budget"
    probe = " (probe)" if f.source == "probe" else ""
    e = html.escape
    scope = f" · <i>{e(_short(f.scope, 70))}</i>" if f.scope else ""
    line = (f"{mark} <b>{e(r.name)}</b> <code>{e(f.id)}</code>{probe} in {e(f.property)}: {e(f.where)}"
            f" · <b>{ratio}</b>{scope} · {e(_short(f.example, 60))}")
    body = ["<details>", f"<summary>{line}</summary>", "", "```text", *[str(x) for x in f.evidence]]
    if f.scope:
        body.append(f"scope: {f.scope}")
    body += [f"also (the same cause): {a}" for a in f.also]
    body += [f"minimal example: {f.example or '-'}", "```", ""]
    if not f.repro:
        body += ["No reproducer: the worker itself failed (crash or timeout).", ""]
    else:
        body += [f"Reproduce: `bncheck repro {r.name}:{f.id}`", ""]
        if unexpected:
            body += ["<details>", "<summary>the reproducer (a standalone script)</summary>", "", "```python",
                     f.repro.rstrip(), "```", "", "</details>", ""]
    return body + ["</details>"]


def _findings(impls: list[Result]) -> list[str]:
    unexpected = [(r, f) for r in impls for f in r.findings if f.id in r.unexpected]
    expected = [(r, f) for r in impls for f in r.findings if f.id not in r.unexpected]
    missing = [(r, fid) for r in impls for fid in r.missing]
    if not (unexpected or expected or missing):
        return ["No findings."]
    out = []
    if unexpected:
        out += [f"**✗ {len(unexpected)} unexpected** (not in the plugin's `expect`):", ""]
        for r, f in unexpected:
            out += _finding(r, f)
        out.append("")
    if missing:
        out += [f"⚠ {len(missing)} expected but not reproduced: "
                + ", ".join(f"{r.name}: `{fid}`" for r, fid in missing), ""]
    if expected:
        head = f"✓ {len(expected)} expected (declared in the plugin's <code>expect</code>)"
        lines = [line for r, f in expected for line in _finding(r, f)]
        if len(expected) > EXPECTED_OPEN:
            out += ["<details>", f"<summary>{head}; one line each</summary>", "", *lines, "", "</details>"]
        else:
            out += [f"{head}:", "", *lines]
    return out


def _by_dtype(impls: list[Result]) -> str | None:
    dtypes = sorted({d for r in impls for d in r.worst_ratio_by_dtype}, key=lambda d: (len(d), d))
    if not dtypes:
        return None
    rows = [[r.name] + [_ratio(r.worst_ratio_by_dtype[d]) if d in r.worst_ratio_by_dtype else "-" for d in dtypes]
            for r in impls]
    return split(["implementation"] + dtypes, rows, ["left"] + ["right"] * len(dtypes))


def _where(where: str) -> str:
    """file:line shortened to its last two path components."""
    path, _, line = str(where).rpartition(":")
    if not path:
        return str(where)
    return "/".join(path.replace("\\", "/").split("/")[-2:]) + ":" + line


def _warnings(impls: list[Result]) -> tuple[int, str] | None:
    """Per implementation, the number of warnings and the first of each kind; None when there were none."""
    rows = []
    for r in impls:
        total = sum(k.count for k in r.warnings)
        for i, k in enumerate(r.warnings):
            rows.append([f"{r.name} ({total})" if i == 0 else "", str(k.count), k.category, _where(k.where),
                         k.property or "-", " ".join(str(k.message).split())])
    if not rows:
        return None
    text = table(["implementation (warnings)", "count", "category", "where", "first seen in", "message"], rows,
                 ["left", "right", "left", "left", "left", "left"], shrink=(5, 3, 0), minimum=24)
    return sum(k.count for r in impls for k in r.warnings), text


def _capabilities(impls: list[Result]) -> list[str]:
    """Per plugin, the configurations it declines or fails to build, grouped by reason."""
    out, everything = [], []
    for r in impls:
        if r.capabilities and all(v == "yes" for v in r.capabilities.values()):
            everything.append(r.name)
            continue
        reasons: dict[str, list[str]] = {}
        for k, v in r.capabilities.items():
            if v != "yes":
                reasons.setdefault(str(v) or "not tried", []).append(k)
        if reasons:
            out.append(f"- **{r.name}**")
            out += [f"  - {', '.join(ks)}: {why}" for why, ks in reasons.items()]
    if everything:
        out.append("- accept every configuration tried: " + ", ".join(everything))
    return out


def _kind_section(kind: str, impls: list[Result]) -> list[str]:
    title, what = SECTIONS[kind]
    wall = sum(r.seconds or 0.0 for r in impls)
    line = f"{what} Checking took {wall:.1f} s of worker time."
    if kind == "sync":
        sizes = sorted({w for r in impls for w in r.world_sizes})
        if sizes:
            line += f" World sizes: {', '.join(map(str, sizes))}."
    out = ["", f"## {title}", "", line]
    by_dtype = _by_dtype(impls)
    if by_dtype:
        out += fold("Worst error / budget by dtype (passing cases)", by_dtype)
    warned = _warnings(impls)
    if warned:
        total, text = warned
        out += fold(f"Warnings: {total}, counted by kind (category, message, where) and not printed",
                     ["The first of each kind.", "", text])
    caps = _capabilities(impls)
    if caps:
        out += fold("Capabilities: configurations each builder declines (skipped and listed, not bugs)", caps)
    out += fold("Where each plugin came from", [f"- {r.name}: `{r.origin or '?'}`" for r in impls])
    return out


def render_markdown(rep: RunReport, pictures: dict[str, str] | None = None, pictures_note: str = "") -> str:
    """The report. ``pictures``: picture name (``errors``, ``timings``) -> where the Markdown links it (a file
    name next to the report, or a data URI); ``pictures_note``: why there are none, when drawing them failed."""
    from . import timings
    pictures = pictures or {}
    lines = ["# bncheck report", "", _headline(rep), "", *_environment(rep.environment), ""]
    lines += _summary(rep.implementations, rep.strict)
    if rep.load_errors:
        lines += ["", "**Plugins that failed to load:**", ""]
        lines += [f"- ✗ `{e.origin}`: {esc(e.message)}" for e in rep.load_errors]
    if rep.implementations:
        lines += ["", "## Findings", "", *_findings(rep.implementations)]
    if pictures_note:
        lines += ["", f"*Pictures not drawn: {esc(pictures_note)}*"]
    if "errors" in pictures:
        lines += ["", "## Error / budget of every case", "",
                  "Each panel: how many cases had each error/budget (log scales); the dashed red line at 1 is the "
                  "budget. A correct implementation sits far left of it; a bug shows as cases right of it.", "",
                  f"![error/budget of every case, per implementation]({pictures['errors']})"]
    for kind in SECTIONS:
        impls = [r for r in rep.implementations if r.kind == kind]
        if impls:
            lines += _kind_section(kind, impls)
    if rep.timings:
        lines += ["", "## Timings", ""]
        if "timings" in pictures:
            lines += [f"![time and bandwidth against torch native]({pictures['timings']})", ""]
        lines += timings.render(rep.timings)
    lines.append("")
    return "\n".join(lines)


def write_pictures(rep: RunReport, out_dir: str | os.PathLike, stem: str) -> tuple[dict[str, str], str]:
    """Draw the pictures next to the report: (picture name -> file name, why none were drawn)."""
    try:
        from . import plots
        drawn = plots.render(rep)
        links = {}
        for name, png in drawn.items():
            path = Path(out_dir) / f"{stem}-{name}.png"
            atomic_write(path, png)
            links[name] = path.name
        return links, ""
    except Exception as e:                       # the report is written without them, saying why
        return {}, f"{type(e).__name__}: {e}"


def write_markdown(rep: RunReport, path: str | os.PathLike, pictures: bool = True) -> Path:
    """The Markdown report at ``path``; with ``pictures``, its pictures next to it (``<stem>-errors.png``,
    ``<stem>-timings.png``), linked from it (when drawing fails, it says why)."""
    path = Path(path)
    links, why = write_pictures(rep, path.parent, path.stem) if pictures else ({}, "")
    atomic_write(path, render_markdown(rep, links, why))
    return path


def write(rep: RunReport, out_dir: str | os.PathLike, stem: str = "latest",
          pictures: bool = False) -> tuple[Path, Path]:
    """``stem``.json and ``stem``.md in ``out_dir`` (see ``write_markdown`` for ``pictures``)."""
    out = Path(out_dir)
    js = out / f"{stem}.json"
    atomic_write(js, json.dumps(rep.to_json(), indent=2, sort_keys=False, default=str) + "\n")
    return write_markdown(rep, out / f"{stem}.md", pictures), js

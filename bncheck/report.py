"""Reports: Markdown and JSON of a ``RunReport`` (no torch here), written atomically.

Verdicts are decided by ``Result.judge`` (see ``results.Result``); ``build`` judges every result and sets the
run's exit status.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from tabulate import tabulate

from .results import SCHEMA_VERSION, Result, RunReport, Timings   # noqa: F401  (SCHEMA_VERSION re-exported)


def build(env: dict, impls: list[Result], load_errors: list, timings: Timings | None = None,
          strict: bool = False) -> RunReport:
    """``strict``: an expected finding that is not reproduced fails the run (otherwise it is a warning)."""
    return RunReport.judged(env, impls, load_errors, timings, strict)


def _ratio(v) -> str:
    if v is None or math.isinf(v):
        return "inf"
    return f"{v:.3g}"


def _esc(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", "<br>")


SECTIONS = {   # plugin kind -> (section title, one line on what was compared)
    "batchnorm": ("BatchNorm implementations",
                  "Each implementation against the float64 oracle with torch semantics."),
    "fusion": ("Fusion (conv-BN folding)",
               "Each folded convolution against bn(conv(x)) in eval mode, computed in float64."),
    "sync": ("Distributed (synchronised BatchNorm)",
             "Each rank's results against the single-process oracle on the concatenated global batch."),
}


def _summary(impls: list[Result], strict: bool = False) -> str:
    rows = []
    for r in impls:
        worst_s = ", ".join(f"{k} {_ratio(v)}" for k, v in r.worst_ratio_by_dtype.items()) or "-"
        notes = []
        if r.unexpected:
            notes.append("unexpected: " + ", ".join(r.unexpected))
        if r.missing:
            notes.append(("expected but not found: " if strict else "warning: expected but not reproduced: ")
                         + ", ".join(r.missing))
        if r.confirmed_by_probe:
            notes.append("confirmed by probe: " + ", ".join(r.confirmed_by_probe))
        declined = [f"{k}: {v[len('declined: '):]}" for k, v in r.capabilities.items()
                    if str(v).startswith("declined") and r.verdict == "declined"]
        notes += [f"declined ({_esc(d)})" for d in declined]
        if r.verdict != "declined":   # a property whose every case was declined checked nothing: say so
            unchecked = [name for name, p in r.properties.items() if p.cases and p.declined >= p.cases]
            if unchecked:
                notes.append("not checked (every case declined): " + ", ".join(unchecked))
        warned = sum(k.count for k in r.warnings)
        if warned:
            notes.append(f"{warned} warning(s) ({len(r.warnings)} kind(s))")
        rows.append([r.name, r.verdict, r.cases, worst_s, len(r.findings), "; ".join(notes) or "-", r.origin])
    return tabulate(rows, headers=["implementation", "verdict", "cases", "worst error / budget by dtype",
                                   "findings", "notes", "origin"], tablefmt="pipe")


def _findings(impls: list[Result]) -> str:
    frows = []
    for r in impls:
        for f in r.findings:
            frows.append([r.name, f"`{f.id}`" + (" (probe)" if f.source == "probe" else ""), f.property,
                          _esc(f.where + ": " + " / ".join(f.evidence)), _ratio(f.error_ratio), _esc(f.example),
                          f"`bncheck repro {r.name}:{f.id}`" if f.repro else "-"])
    if not frows:
        return "No findings."
    return tabulate(frows, headers=["implementation", "finding", "property", "evidence", "error / budget",
                                    "minimal example", "reproducer"], tablefmt="pipe")


def _where(where: str) -> str:
    """file:line shortened to its last two path components."""
    path, _, line = str(where).rpartition(":")
    if not path:
        return str(where)
    return "/".join(path.replace("\\", "/").split("/")[-2:]) + ":" + line


def _warnings(impls: list[Result]) -> str | None:
    """Per implementation, the number of warnings and the first of each kind; None when there were none."""
    rows = []
    for r in impls:
        total = sum(k.count for k in r.warnings)
        for i, k in enumerate(r.warnings):
            msg = " ".join(str(k.message).split())
            msg = msg if len(msg) <= 120 else msg[:117] + "..."
            rows.append([f"{r.name} ({total})" if i == 0 else "", k.category, _esc(msg), _esc(_where(k.where)),
                         k.count, k.property or "-"])
    if not rows:
        return None
    return tabulate(rows, headers=["implementation (warnings)", "category", "message", "where", "count",
                                   "first seen in"], tablefmt="pipe")


def render_markdown(rep: RunReport) -> str:
    lines = ["# bncheck report", ""]
    lines += [f"- {k}: `{v}`" for k, v in rep.environment.items()]
    if rep.load_errors:
        lines += ["", "## Plugins that failed to load", ""]
        lines.append(tabulate([[e.origin, _esc(e.message)] for e in rep.load_errors],
                              headers=["origin", "error"], tablefmt="pipe"))
    for kind, (title, what) in SECTIONS.items():
        impls = [r for r in rep.implementations if r.kind == kind]
        if not impls:
            continue
        wall = sum(r.seconds or 0.0 for r in impls)
        lines += ["", f"## {title}", "", f"{what} Checking took {wall:.1f} s of worker time.", ""]
        if kind == "sync":
            sizes = sorted({w for r in impls for w in r.world_sizes})
            if sizes:
                lines[-2] = lines[-2] + f" World sizes: {', '.join(map(str, sizes))}."
        lines.append(_summary(impls, rep.strict))
        lines += ["", "### Findings", "", _findings(impls)]
        warned = _warnings(impls)
        if warned:
            lines += ["", "### Warnings", "", "Warnings raised while checking, counted by kind (category, message, "
                      "where) and not printed; the first of each kind.", "", warned]
        caps = [r for r in impls if r.capabilities and kind == "batchnorm"]
        if caps:
            lines += ["", "### Capabilities", "",
                      "Configurations each builder accepts (declined ones are skipped and listed, not bugs).", ""]
            keys = list(caps[0].capabilities)
            crow = [[r.name] + [_cap(r.capabilities.get(k, "")) for k in keys] for r in caps]
            lines.append(tabulate(crow, headers=["implementation"] + keys, tablefmt="pipe"))
    if rep.timings:
        lines += ["", "## Timings", "", rep.timings.markdown]
    lines.append("")
    return "\n".join(lines)


def _cap(v: str) -> str:
    if v == "yes":
        return "yes"
    if v.startswith("declined"):
        return "declined"
    return "error" if v else "?"


def _atomic_write(path: Path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write(rep: RunReport, out_dir: str | os.PathLike, stem: str = "latest") -> tuple[Path, Path]:
    out = Path(out_dir)
    md, js = out / f"{stem}.md", out / f"{stem}.json"
    _atomic_write(js, json.dumps(rep.to_json(), indent=2, sort_keys=False, default=str) + "\n")
    _atomic_write(md, render_markdown(rep))
    return md, js

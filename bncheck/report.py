"""Reports: Markdown and JSON from plain data (no torch here), written atomically.

A verdict compares an implementation's findings with its ``expect`` set: ``clean`` (none expected, none found),
``as expected`` (found exactly what it declares), ``unexpected`` (a finding not declared, or a declared one not
found: both listed).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from tabulate import tabulate

SCHEMA_VERSION = 1


def verdict(impl: dict) -> dict:
    found = {f["id"] for f in impl["findings"]}
    expect = set(impl.get("expect", []))
    unexpected, missing = sorted(found - expect), sorted(expect - found)
    if unexpected or missing:
        v = "unexpected"
    else:
        v = "clean" if not found else "as expected"
    return {"verdict": v, "unexpected": unexpected, "missing": missing}


def build(env: dict, impls: list[dict], load_errors: list[dict], timings: dict | None = None) -> dict:
    out = []
    for r in impls:
        r = dict(r)
        r.update(verdict(r))
        out.append(r)
    ok = all(r["verdict"] != "unexpected" for r in out) and not load_errors
    return {"schema_version": SCHEMA_VERSION, "environment": env, "implementations": out,
            "load_errors": load_errors, "timings": timings, "exit_status": 0 if ok else 1}


def _ratio(v) -> str:
    if v is None:
        return "inf"
    return f"{v:.3g}"


def _esc(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", "<br>")


def render_markdown(rep: dict) -> str:
    env = rep["environment"]
    lines = ["# bncheck report", ""]
    lines += [f"- {k}: `{v}`" for k, v in env.items()]
    lines += ["", "## Summary", ""]
    rows = []
    for r in rep["implementations"]:
        worst = r.get("worst_ratio_by_dtype") or {}
        worst_s = ", ".join(f"{k} {_ratio(v)}" for k, v in worst.items()) or "-"
        notes = []
        if r["unexpected"]:
            notes.append("unexpected: " + ", ".join(r["unexpected"]))
        if r["missing"]:
            notes.append("expected but not found: " + ", ".join(r["missing"]))
        rows.append([r["name"], r["verdict"], r["cases"], worst_s, len(r["findings"]),
                     "; ".join(notes) or "-", r["origin"]])
    lines.append(tabulate(rows, headers=["implementation", "verdict", "cases", "worst error / budget by dtype",
                                         "findings", "notes", "origin"], tablefmt="pipe"))
    if rep["load_errors"]:
        lines += ["", "## Plugins that failed to load", ""]
        lines.append(tabulate([[e["origin"], _esc(e["message"])] for e in rep["load_errors"]],
                              headers=["origin", "error"], tablefmt="pipe"))
    lines += ["", "## Findings", ""]
    frows = []
    for r in rep["implementations"]:
        for f in r["findings"]:
            frows.append([r["name"], f"`{f['id']}`", f["property"], _esc(f["where"] + ": " + " / ".join(f["evidence"])),
                          _ratio(f["error_ratio"]), _esc(f["example"]),
                          f"`bncheck repro {r['name']}:{f['id']}`" if f.get("repro") else "-"])
    lines.append(tabulate(frows, headers=["implementation", "finding", "property", "evidence", "error / budget",
                                          "minimal example", "reproducer"], tablefmt="pipe")
                 if frows else "No findings.")
    caps = [r for r in rep["implementations"] if r.get("capabilities")]
    if caps:
        lines += ["", "## Capabilities", "",
                  "Configurations each builder accepts (declined ones are skipped and listed, not bugs).", ""]
        keys = list(caps[0]["capabilities"])
        crow = [[r["name"]] + [_cap(r["capabilities"].get(k, "")) for k in keys] for r in caps]
        lines.append(tabulate(crow, headers=["implementation"] + keys, tablefmt="pipe"))
    if rep.get("timings"):
        lines += ["", "## Timings", "", rep["timings"].get("markdown", "")]
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


def write(rep: dict, out_dir: str | os.PathLike, stem: str = "latest") -> tuple[Path, Path]:
    out = Path(out_dir)
    md, js = out / f"{stem}.md", out / f"{stem}.json"
    _atomic_write(js, json.dumps(rep, indent=2, sort_keys=False, default=str) + "\n")
    _atomic_write(md, render_markdown(rep))
    return md, js

"""Reports: Markdown and JSON from plain data (no torch here), written atomically.

A verdict compares an implementation's findings with its ``expect`` set: ``clean`` (none expected, none found),
``as expected`` (found exactly what it declares, by the search or, for a declared id the search did not reach, by
that id's directed probe: ``confirmed by probe``), ``not reproduced`` (a declared id neither the search nor its
probe showed: a warning, not a failure, unless ``strict``), ``unexpected`` (a finding not declared, or with
``strict`` a declared one not reproduced: both listed), ``declined`` (the builder declined every case drawn, e.g.
a CUDA-only module on a CPU run: listed with its reason, not a failure).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from tabulate import tabulate

SCHEMA_VERSION = 1


def verdict(impl: dict, strict: bool = False) -> dict:
    found = {f["id"] for f in impl["findings"]}
    expect = set(impl.get("expect", []))
    unexpected, missing = sorted(found - expect), sorted(expect - found)
    probed = sorted({f["id"] for f in impl["findings"] if f.get("source") == "probe"})
    if unexpected or (missing and strict):
        v = "unexpected"
    elif missing:
        v = "not reproduced"  # expected ids neither the search nor their probes showed: a warning, not a failure
    elif not found and impl.get("cases", 0) and impl.get("declined_cases", 0) >= impl["cases"]:
        v = "declined"        # every case drawn was declined: nothing was checked (not a failure)
    else:
        v = "clean" if not found else "as expected"
    return {"verdict": v, "unexpected": unexpected, "missing": missing, "confirmed_by_probe": probed}


def build(env: dict, impls: list[dict], load_errors: list[dict], timings: dict | None = None,
          strict: bool = False) -> dict:
    """``strict``: an expected finding that is not reproduced fails the run (otherwise it is a warning)."""
    out = []
    for r in impls:
        r = dict(r)
        r.update(verdict(r, strict))
        out.append(r)
    ok = all(r["verdict"] != "unexpected" for r in out) and not load_errors
    return {"schema_version": SCHEMA_VERSION, "environment": env, "implementations": out,
            "load_errors": load_errors, "timings": timings, "strict": strict, "exit_status": 0 if ok else 1}


def _ratio(v) -> str:
    if v is None:
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


def _kind(r: dict) -> str:
    return r.get("kind", "batchnorm")


def _summary(impls: list[dict], strict: bool = False) -> str:
    rows = []
    for r in impls:
        worst = r.get("worst_ratio_by_dtype") or {}
        worst_s = ", ".join(f"{k} {_ratio(v)}" for k, v in worst.items()) or "-"
        notes = []
        if r["unexpected"]:
            notes.append("unexpected: " + ", ".join(r["unexpected"]))
        if r["missing"]:
            notes.append(("expected but not found: " if strict else "warning: expected but not reproduced: ")
                         + ", ".join(r["missing"]))
        if r.get("confirmed_by_probe"):
            notes.append("confirmed by probe: " + ", ".join(r["confirmed_by_probe"]))
        declined = [f"{k}: {v[len('declined: '):]}" for k, v in (r.get("capabilities") or {}).items()
                    if str(v).startswith("declined") and r["verdict"] == "declined"]
        notes += [f"declined ({_esc(d)})" for d in declined]
        if r["verdict"] != "declined":   # a property whose every case was declined checked nothing: say so
            unchecked = [name for name, p in (r.get("properties") or {}).items()
                         if p.get("cases", 0) and p.get("declined", 0) >= p["cases"]]
            if unchecked:
                notes.append("not checked (every case declined): " + ", ".join(unchecked))
        warned = sum(k.get("count", 0) for k in r.get("warnings") or [])
        if warned:
            notes.append(f"{warned} warning(s) ({len(r['warnings'])} kind(s))")
        rows.append([r["name"], r["verdict"], r["cases"], worst_s, len(r["findings"]),
                     "; ".join(notes) or "-", r["origin"]])
    return tabulate(rows, headers=["implementation", "verdict", "cases", "worst error / budget by dtype",
                                   "findings", "notes", "origin"], tablefmt="pipe")


def _findings(impls: list[dict]) -> str:
    frows = []
    for r in impls:
        for f in r["findings"]:
            frows.append([r["name"], f"`{f['id']}`" + (" (probe)" if f.get("source") == "probe" else ""),
                          f["property"],
                          _esc(f["where"] + ": " + " / ".join(f["evidence"])),
                          _ratio(f["error_ratio"]), _esc(f["example"]),
                          f"`bncheck repro {r['name']}:{f['id']}`" if f.get("repro") else "-"])
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


def _warnings(impls: list[dict]) -> str | None:
    """Per implementation, the number of warnings and the first of each kind; None when there were none."""
    rows = []
    for r in impls:
        kinds = r.get("warnings") or []
        total = sum(k.get("count", 0) for k in kinds)
        for i, k in enumerate(kinds):
            msg = " ".join(str(k.get("message", "")).split())
            msg = msg if len(msg) <= 120 else msg[:117] + "..."
            rows.append([f"{r['name']} ({total})" if i == 0 else "", k.get("category", ""), _esc(msg),
                         _esc(_where(k.get("where", ""))), k.get("count", 0), k.get("property") or "-"])
    if not rows:
        return None
    return tabulate(rows, headers=["implementation (warnings)", "category", "message", "where", "count",
                                   "first seen in"], tablefmt="pipe")


def render_markdown(rep: dict) -> str:
    env = rep["environment"]
    lines = ["# bncheck report", ""]
    lines += [f"- {k}: `{v}`" for k, v in env.items()]
    if rep["load_errors"]:
        lines += ["", "## Plugins that failed to load", ""]
        lines.append(tabulate([[e["origin"], _esc(e["message"])] for e in rep["load_errors"]],
                              headers=["origin", "error"], tablefmt="pipe"))
    for kind, (title, what) in SECTIONS.items():
        impls = [r for r in rep["implementations"] if _kind(r) == kind]
        if not impls:
            continue
        wall = sum(r.get("seconds") or 0.0 for r in impls)
        lines += ["", f"## {title}", "", f"{what} Checking took {wall:.1f} s of worker time.", ""]
        if kind == "sync":
            sizes = sorted({w for r in impls for w in r.get("world_sizes", [])})
            if sizes:
                lines[-2] = lines[-2] + f" World sizes: {', '.join(map(str, sizes))}."
        lines.append(_summary(impls, rep.get("strict", False)))
        lines += ["", "### Findings", "", _findings(impls)]
        warned = _warnings(impls)
        if warned:
            lines += ["", "### Warnings", "", "Warnings raised while checking, counted by kind (category, message, "
                      "where) and not printed; the first of each kind.", "", warned]
        caps = [r for r in impls if r.get("capabilities") and kind == "batchnorm"]
        if caps:
            lines += ["", "### Capabilities", "",
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

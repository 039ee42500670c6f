"""Write docs/corpus.md, "What bncheck finds in public BatchNorms", from runs of ``bncheck run --plugins corpus``.

    python scripts/corpus_table.py reports/corpus/latest.json [more runs' JSON ...] --out docs/corpus.md

The first report gives the main table (its seed and profile are named above it); every further report (other
seeds) adds a column to the second table, found ids per seed. Predicted ids are read from each plugin file's
``PREDICTED`` (its full prediction, including ids bncheck's catalog does not define yet, which are left out of the
registered ``expect``), its package from ``PACKAGE``; the package version is the installed one (this script runs
in the corpus environment), else the pin in ``corpus/requirements*.txt``.
"""
from __future__ import annotations

import argparse
import ast
import importlib.metadata
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def plugin_constants(path: Path) -> dict:
    """PACKAGE and PREDICTED from a plugin file, read without importing it."""
    out = {"PACKAGE": "?", "PREDICTED": None}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, value = node.targets[0].id, node.value
            if name == "PACKAGE":
                out[name] = ast.literal_eval(value)
            elif name == "PREDICTED":
                # frozenset({...}) or frozenset()
                args = value.args if isinstance(value, ast.Call) else [value]
                out[name] = set(ast.literal_eval(args[0])) if args else set()
    return out


def pins() -> dict:
    found = {}
    for req in sorted((ROOT / "corpus").glob("requirements*.txt")):
        for line in req.read_text().splitlines():
            m = re.match(r"\s*([A-Za-z0-9_.\-]+)==([^\s;#]+)", line)
            if m:
                found[m.group(1).lower()] = m.group(2)
    return found


def version(package: str, pinned: dict) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return pinned.get(package.lower(), "?") + " (pinned, not installed)"


def ids(s) -> str:
    return ", ".join(f"`{i}`" for i in sorted(s)) or "none"


def verdict(impl: dict, predicted: set, known: set) -> str:
    found = {f["id"] for f in impl["findings"]}
    extra, missed = found - predicted, predicted & known - found
    pending = predicted - known
    parts = [impl["verdict"]]
    if extra:
        parts.append(f"found, not predicted: {ids(extra)}")
    if missed:
        parts.append(f"predicted, not found: {ids(missed)}")
    if pending:
        parts.append(f"not in this bncheck's catalog, so not checked: {ids(pending)}")
    if impl.get("confirmed_by_probe"):
        parts.append(f"confirmed by probe: {ids(impl['confirmed_by_probe'])}")
    return "; ".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+", metavar="REPORT.json")
    ap.add_argument("--out", default=str(ROOT / "docs" / "corpus.md"))
    ap.add_argument("--readme", default=None, metavar="README.md",
                    help="also write the short table between the corpus table markers of this file")
    args = ap.parse_args(argv)
    runs = [json.loads(Path(p).read_text()) for p in args.reports]
    sys.path.insert(0, str(ROOT))
    from bncheck.catalog import CATALOG
    known = set(CATALOG)
    pinned = pins()
    main_run = runs[0]
    env = main_run["environment"]

    rows, consts = [], {}
    for impl in sorted(main_run["implementations"], key=lambda i: (i["kind"], i["name"])):
        c = consts[impl["name"]] = plugin_constants(ROOT / impl["origin"])
        predicted = c["PREDICTED"] if c["PREDICTED"] is not None else set(impl["expect"])
        found = {f["id"] for f in impl["findings"]}
        rows.append([f"`{impl['name']}`", f"{c['PACKAGE']}=={version(c['PACKAGE'], pinned)}", impl["kind"],
                     ids(predicted), ids(found), verdict(impl, predicted, known)])

    lines = [
        "# What bncheck finds in public BatchNorms",
        "",
        "`corpus/` holds plugin adapters for BatchNorm, conv-BN folding and synchronised BatchNorm code shipped in "
        "packages on PyPI (the code is imported from the installed packages, never copied). Each adapter's "
        "predicted ids were written down from the package's source before bncheck ran on it; "
        "`corpus/README.md` gives the source line behind each prediction and the record of every disagreement. "
        "`make corpus` rebuilds this page.",
        "",
        f"Run: bncheck {env.get('bncheck')}, torch {env.get('torch')}, profile `{env.get('profile')}`, seed "
        f"{env.get('seed')}, commit `{str(env.get('commit', ''))[:12]}`, {env.get('datetime', '')}.",
        "",
        "| plugin | package==version | kind | predicted ids | found ids | verdict |",
        "|---|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    if len(runs) > 1:
        seeds = [r["environment"].get("seed") for r in runs]
        lines += ["", f"## Found ids per seed (profile `{env.get('profile')}`)", "",
                  "| plugin | predicted | " + " | ".join(f"seed {s}" for s in seeds) + " |",
                  "|---|---|" + "---|" * len(seeds)]
        for impl in sorted(main_run["implementations"], key=lambda i: (i["kind"], i["name"])):
            c = consts[impl["name"]]
            cells = []
            for r in runs:
                other = next((i for i in r["implementations"] if i["name"] == impl["name"]), None)
                cells.append("-" if other is None else ids({f["id"] for f in other["findings"]}))
            lines.append(f"| `{impl['name']}` | {ids(c['PREDICTED'] or set())} | " + " | ".join(cells) + " |")
    if main_run.get("load_errors"):
        lines += ["", "Plugins that did not load:", ""]
        lines += [f"- `{e.get('origin')}`: {e.get('message')}" for e in main_run["load_errors"]]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    if args.readme:
        short = ["| plugin | package | predicted | found |", "|---|---|---|---|"]
        short += [f"| {r[0]} | {r[1]} | {r[3]} | {r[4]} |" for r in rows]
        write_between(Path(args.readme), short)
        print(f"updated the table in {args.readme}")
    return 0


START, END = "<!-- corpus table: generated by make corpus -->", "<!-- end of corpus table -->"


def write_between(readme: Path, table: list[str]) -> None:
    """Replace what lies between the corpus table's markers in ``readme`` with ``table``."""
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme}: no corpus table markers ({START!r} ... {END!r})")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(head + START + "\n" + "\n".join(table) + "\n" + END + tail)


if __name__ == "__main__":
    sys.exit(main())

"""Command line: ``bncheck run | list | repro | bench | report | diff | catalog``.

Exit status of ``run``: 0 when every implementation's findings equal its ``expect`` set (an expected id that neither
the search nor its directed probe reproduces is a warning), 1 when a finding is unexpected, an expected one is not
reproduced under ``--strict``, or a plugin failed to load; 2 for usage errors. With ``--baseline FILE`` the run is
also compared with that stored report (``bncheck.diff``), and the exit status is the larger of the run's and the
comparison's. A finding new since the baseline and not expected is also unexpected in the run, so that is the run's
own status: the comparison adds which failures are new, and never hides one that was already there. A baseline
that is missing or not a report is a usage error before anything is checked.

Exit status of ``diff``: 1 when HEAD has a finding that BASE has not and that is not in its implementation's
``expect`` set, otherwise 0; 2 for usage errors (a missing file, a file that is not a bncheck report).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

from . import __version__
from .options import CheckOptions, OptionError, add_check_options
from .registry import KINDS, discover

DEFAULT_PLUGIN_DIR = "implementations"


class UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bncheck", description="Verify BatchNorm implementations against torch.")
    sub = p.add_subparsers(dest="command", required=True)

    def plugin_args(sp):
        sp.add_argument("--plugins", action="append", default=[], metavar="DIR",
                        help=f"plugin directory, repeatable (default: ./{DEFAULT_PLUGIN_DIR})")
        sp.add_argument("--plugin", action="append", default=[], metavar="FILE", help="plugin file, repeatable")
        sp.add_argument("--no-entry-points", action="store_true",
                        help="do not load plugins from installed packages (group bncheck.implementations)")

    r = sub.add_parser("run", help="compare implementations with the oracle and write reports")
    plugin_args(r)
    r.add_argument("--impl", action="append", default=[], metavar="NAME", help="only these, repeatable")
    add_check_options(r.add_argument)      # --profile --seed --device --jobs --property --strict --world-size
    r.add_argument("--out", default="reports", metavar="DIR")
    r.add_argument("--bench", default=None, metavar="SHAPES",
                   help="after checking, time the checked BatchNorm implementations on this shape set "
                        "(see `bncheck bench --shapes`) and put the table in the report")
    r.add_argument("--bench-impl", action="append", default=[], metavar="NAME",
                   help="with --bench: time only these, repeatable (default: every checked BatchNorm implementation; "
                        "one that declares an epilogue is timed against torch eager with that epilogue)")
    r.add_argument("--baseline", default=None, metavar="FILE",
                   help="a stored report (latest.json of an earlier run) to compare this run with: prints the diff and "
                        "writes diff.md and diff.json next to the report (exit status: the larger of the run's and the "
                        "diff's). Read before the run, so it may be the report this run overwrites")
    r.add_argument("--kind", action="append", default=[], choices=KINDS,
                   help="only plugins of this kind, repeatable (default: all)")

    ls = sub.add_parser("list", help="list discovered implementations")
    plugin_args(ls)

    rp = sub.add_parser("repro", help="print (and with --run, run) a finding's reproducer from a report")
    rp.add_argument("finding", help="IMPLEMENTATION:FINDING-ID, or FINDING-ID when only one matches")
    rp.add_argument("--report", default="reports/latest.json")
    rp.add_argument("--run", action="store_true", help="run the reproducer after printing it")

    rr = sub.add_parser("report", help="re-render a stored run (a report's JSON) as Markdown or one HTML file")
    rr.add_argument("file", metavar="FILE.json", help="a stored run, e.g. reports/latest.json")
    rr.add_argument("--format", choices=("md", "html"), default="md",
                    help="md: Markdown with its pictures next to it; html: one self-contained file (default: md)")
    rr.add_argument("--out", default=None, metavar="PATH",
                    help="where to write (default: FILE with the format's suffix; '-': standard output)")

    d = sub.add_parser("diff", help="compare two stored reports: new and fixed findings, verdicts, worst ratios, "
                                    "timings (exit 1 on a new unexpected finding)")
    d.add_argument("base", metavar="BASE.json", help="the earlier report (e.g. the main branch's)")
    d.add_argument("head", metavar="HEAD.json", help="the later report")
    d.add_argument("--md", default=None, metavar="FILE", help="also write the Markdown here")
    d.add_argument("--json", default=None, metavar="FILE", help="also write the comparison as JSON here")

    c = sub.add_parser("catalog", help="write the finding catalog as Markdown (the page docs/catalog.md)")
    c.add_argument("--out", default="-", metavar="PATH", help="where to write (default, or '-': standard output)")

    b = sub.add_parser("bench", help="time implementations against torch native")
    plugin_args(b)
    from . import bench
    bench.add_arguments(b)
    b.add_argument("--out", default="reports", metavar="DIR")
    return p


def _registry(args):
    dirs = args.plugins or ([DEFAULT_PLUGIN_DIR] if Path(DEFAULT_PLUGIN_DIR).is_dir() else [])
    for d in args.plugins:
        if not Path(d).is_dir():
            raise UsageError(f"--plugins {d}: not a directory")
    for f in args.plugin:
        if not Path(f).is_file():
            raise UsageError(f"--plugin {f}: no such file")
    return discover(plugin_dirs=dirs, plugin_files=args.plugin, entry_points=not args.no_entry_points)


def _environment(args) -> dict:
    import hypothesis
    import torch
    dev = args.device
    name = torch.cuda.get_device_name(0) if dev == "cuda" else (platform.processor() or platform.machine())
    from . import provenance
    return {"bncheck": __version__, "torch": torch.__version__, "hypothesis": hypothesis.__version__,
            "python": platform.python_version(), "device": f"{dev} ({name})", "profile": args.profile,
            "seed": args.seed, **provenance.collect()}


def cmd_run(args) -> int:
    from . import report, runner
    try:
        opts = CheckOptions.from_namespace(args).validate()
    except OptionError as e:
        raise UsageError(str(e)) from None
    if args.bench:
        _bench_shapes(args.bench)
    baseline = _load_report(args.baseline, "--baseline") if args.baseline else None
    reg = _registry(args)
    unknown = [n for n in args.bench_impl if n not in reg.implementations]
    if unknown:
        raise UsageError(f"--bench-impl {unknown[0]}: unknown implementation")
    kinds = args.kind or list(KINDS)
    impls = [i for k in KINDS if k in kinds for i in reg.of_kind(k)]
    unknown = [n for n in args.impl if n not in reg.implementations]
    if unknown:
        raise UsageError(f"--impl {unknown[0]}: unknown implementation; known: {', '.join(sorted(reg.implementations))}")
    if args.impl:
        impls = [i for i in impls if i.name in args.impl]
    for e in reg.errors:
        print(f"bncheck: plugin failed to load: {e.origin}: {e.message}", file=sys.stderr)
    # longest first, as long as the last run in this output folder took
    expected = runner.expected_seconds(Path(args.out) / "latest.json")
    results = runner.run_all(impls, expected=expected, **opts.run_kwargs())
    timings = _run_bench(args, reg, impls) if args.bench else None
    rep = report.build(_environment(args), results, reg.errors, timings, strict=args.strict)
    md, js = report.write(rep, args.out, pictures=True)
    for r in rep.implementations:
        line = f"{r.name:<28} {r.verdict:<12} {len(r.findings)} finding(s)"
        if r.unexpected:
            line += f"  unexpected: {', '.join(r.unexpected)}"
        if r.missing:
            line += ("  expected but not found: " if args.strict else "  warning: expected but not reproduced: ") \
                + ", ".join(r.missing)
        if r.confirmed_by_probe:
            line += f"  confirmed by probe: {', '.join(r.confirmed_by_probe)}"
        print(line)
    print(f"wrote {md} and {js}")
    if baseline is None:
        return rep.exit_status
    from . import diff
    same = Path(args.baseline).resolve() == js.resolve()
    d = diff.compare(baseline, rep, args.baseline + (" (before this run)" if same else ""), str(js))
    print(_write_diff(d, Path(args.out) / "diff.md", Path(args.out) / "diff.json"), end="")
    return max(rep.exit_status, d.exit_status)


def _load_report(path, what: str):
    """A stored report, or a UsageError naming ``what`` and the path."""
    from .results import RunReport
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{what} {path}: " + ("not a file" if p.exists() else "no such file"))
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"{what} {path}: not JSON, so not a bncheck report ({e})") from None
    try:
        return RunReport.from_json(data)
    except ValueError as e:         # names what is missing or too new
        raise UsageError(f"{what} {path}: {e}") from None
    except (TypeError, KeyError, AttributeError) as e:
        raise UsageError(f"{what} {path}: not a bncheck report ({type(e).__name__}: {e})") from None


def _write_diff(d, md_path, json_path) -> str:
    """Write the comparison's Markdown and JSON (either path may be None); returns the Markdown."""
    from . import diff
    from .report.files import atomic_write
    md = diff.render_markdown(d)
    if md_path:
        atomic_write(Path(md_path), md)
    if json_path:
        atomic_write(Path(json_path), json.dumps(d.to_json(), indent=2) + "\n")
    return md


def cmd_diff(args) -> int:
    from . import diff
    base, head = _load_report(args.base, "BASE"), _load_report(args.head, "HEAD")
    d = diff.compare(base, head, args.base, args.head)
    print(_write_diff(d, args.md, args.json), end="")
    return d.exit_status


def _bench_shapes(spec: str) -> None:
    from .bench import shapes_for
    try:
        shapes_for(spec, "cpu")
    except (ValueError, KeyError) as e:
        raise UsageError(f"--bench {spec}: {e}") from None


RUN_BENCH_REP_MS = 100.0   # per op and shape in `bncheck run --bench` (`bncheck bench`: 200 ms on the CPU)


def _run_bench(args, reg, impls):
    """The timing table of ``bncheck run --bench``: BatchNorm plugins against torch native, and plugins that
    declare an epilogue against torch eager with that epilogue (rows ``forward-train+relu``, ...), in one table."""
    from . import bench
    from .results import Timings
    names = args.bench_impl or [i.name for i in impls if i.kind == "batchnorm"]
    groups: dict[str | None, list[str]] = {}
    for n in names:
        epilogue = getattr(reg.implementations.get(n), "epilogue", "none")
        groups.setdefault(None if epilogue in (None, "none") else epilogue, []).append(n)
    result, parts = None, []
    try:
        for epilogue, group in sorted(groups.items(), key=lambda g: g[0] or ""):    # BatchNorm alone first
            part = bench.run_named(reg, group, args.device, args.bench, rep_ms=RUN_BENCH_REP_MS, epilogue=epilogue)
            parts.append(bench.render_markdown(part).split("\n", 1)[1].lstrip())  # the report has its own heading
            if result is None:
                result = part
                result["header"].pop("epilogue", None)
            else:
                result["rows"] += part["rows"]
            if epilogue:
                result["header"].setdefault("epilogues", []).append(epilogue)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return Timings.from_bench(result or {}, "\n".join(parts))


def cmd_list(args) -> int:
    from tabulate import tabulate
    reg = _registry(args)
    rows = [[i.name, i.kind, i.origin, ", ".join(sorted(i.expect)) or "-"] for i in reg.implementations.values()]
    print(tabulate(rows, headers=["name", "kind", "origin", "expected findings"]))
    for e in reg.errors:
        print(f"load error: {e.origin}: {e.message}")
    return 1 if reg.errors else 0


def cmd_repro(args) -> int:
    path = Path(args.report)
    if not path.is_file():
        raise UsageError(f"--report {path}: no such file (run `bncheck run` first)")
    from .results import RunReport
    try:
        rep = RunReport.from_json(json.loads(path.read_text()))
    except ValueError as e:        # JSON syntax errors are ValueErrors too
        raise UsageError(f"--report {path}: {e}") from None
    impl, _, fid = args.finding.rpartition(":")
    matches = [(r.name, f) for r in rep.implementations for f in r.findings
               if f.id == fid and (not impl or r.name == impl)]
    if not matches:
        raise UsageError(f"finding {args.finding!r}: not in {path}")
    if len(matches) > 1:
        raise UsageError(f"finding {args.finding!r} is ambiguous: " + ", ".join(f"{n}:{f.id}" for n, f in matches))
    name, f = matches[0]
    if not f.repro:
        raise UsageError(f"finding {args.finding!r} has no reproducer (a worker-level {f.id})")
    print(f.repro)
    if args.run:
        import subprocess
        return subprocess.call([sys.executable, "-c", f.repro])
    return 0


def cmd_report(args) -> int:
    from . import report
    from .report.files import atomic_write
    from .results import RunReport
    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"{path}: no such file (a report's JSON, e.g. reports/latest.json)")
    try:
        rep = RunReport.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError, KeyError, AttributeError) as e:   # JSON and Unicode errors are ValueErrors too
        raise UsageError(f"{path}: not a bncheck report ({type(e).__name__}: {e})") from None
    out = args.out or str(path.with_suffix("." + args.format))
    if out != "-" and Path(out).resolve() == path.resolve():
        raise UsageError(f"--out {out}: would overwrite the report it reads")
    if args.format == "html":
        from .report.html import render_html
        text = render_html(rep)
        if out == "-":
            sys.stdout.write(text)
            return 0
        atomic_write(Path(out), text)
    elif out == "-":
        sys.stdout.write(report.render_markdown(rep))
        return 0
    else:
        report.write_markdown(rep, out, pictures=True)
    print(f"wrote {out}")
    return 0


def cmd_bench(args) -> int:
    from . import bench
    from .report.files import atomic_write
    reg = _registry(args)
    try:
        result = bench.run_from_args(args, reg)
    except ValueError as e:
        raise UsageError(str(e)) from None
    md = bench.render_markdown(result)
    out = Path(args.out)
    atomic_write(out / "bench.md", md)
    atomic_write(out / "bench.json", json.dumps(result, indent=1, default=str) + "\n")
    print(md)
    return 0


def cmd_catalog(args) -> int:
    from .catalog_doc import render
    from .report.files import atomic_write
    text = render()
    if args.out == "-":
        sys.stdout.write(text)
        return 0
    if Path(args.out).is_dir():
        raise UsageError(f"--out {args.out}: a directory (give a file, e.g. docs/catalog.md)")
    atomic_write(Path(args.out), text)
    print(f"wrote {args.out}")
    return 0


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)          # argparse exits 2 naming a bad flag or value
    try:
        return {"run": cmd_run, "list": cmd_list, "repro": cmd_repro, "bench": cmd_bench,
                "report": cmd_report, "diff": cmd_diff, "catalog": cmd_catalog}[args.command](args)
    except UsageError as e:
        print(f"bncheck {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

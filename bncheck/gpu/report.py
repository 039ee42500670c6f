"""The GPU check's report: environment, verification summary, timings and the performance targets evaluated from
the timings, written to ``reports/gpu/latest.{md,json}`` by ``scripts/gpu-check.sh``.

Every figure comes from the files one run of the check leaves (plain JSON; rendering needs no torch and no GPU):
the environment (``environment`` sub-command: GPU model, driver, CUDA, torch and triton versions), the steps'
outcomes, ``bncheck run``'s JSON report(s) and ``bncheck bench``'s JSON result.

Targets (an implementation, ``triton-bn`` by default, against torch native in the same run):

* ``forward-train``: geometric mean over every timed row of ``torch time / implementation time`` >= 1.0;
* ``forward-train-small-c``: the same over the small-C / large-N*HW rows (C <= 16 and at least ``smallc_min_rows``
  values per channel, 1,048,576 by default) >= 1.5;
* ``forward-eval``: geometric mean of the fraction of the roofline reached >= 85 %;
* ``backward``: geometric mean ratio >= 0.95.

Roofline: the time to move ``passes * numel * element_size`` bytes at the copy bandwidth measured in the same run
(read + write of a large device copy), with 3 passes of the tensor for forward-train (read x for the statistics,
read x, write y), 2 for forward-eval (read x, write y) and 5 for backward (read x and dy for the reductions, read
them again and write dx). ``% of roofline`` is roofline time / measured time. A target is ``met`` when its figure
reaches the threshold and every row it covers ran; ``missed`` otherwise (with the shortfall, or the rows that did
not run); ``not evaluated`` when no row it covers has a timing (the reason is given).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

SCHEMA_VERSION = 1
NATIVE = "torch-native"
PASSES = {"forward-train": 3, "forward-eval": 2, "backward": 5}
ELEMENT_SIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
SMALLC_MAX_C = 16
SMALLC_MIN_ROWS = 1 << 20


@dataclass(frozen=True)
class Target:
    id: str
    op: str
    description: str
    measure: str          # "ratio" (torch time / implementation time) or "roofline" (% of roofline)
    threshold: float
    small_c: bool = False


TARGETS = (
    Target("forward-train", "forward-train", "forward-train geomean ratio to torch", "ratio", 1.0),
    Target("forward-train-small-c", "forward-train", "forward-train geomean ratio to torch, small-C / large-N*HW",
           "ratio", 1.5, small_c=True),
    Target("forward-eval", "forward-eval", "forward-eval geomean % of roofline (2 passes at copy bandwidth)",
           "roofline", 85.0),
    Target("backward", "backward", "backward geomean ratio to torch", "ratio", 0.95),
)


@dataclass
class TargetResult:
    id: str
    description: str
    threshold: float
    measure: str
    status: str                   # met | missed | not evaluated
    value: float | None
    rows: int                     # rows with a timing
    failed_rows: int              # rows of the implementation that did not run
    by_dtype: dict
    worst: str                    # the row furthest from the threshold
    note: str


def _shape(row: dict) -> tuple:
    return tuple(int(d) for d in row["shape"].split("x"))


def is_small_c(row: dict, min_rows: int = SMALLC_MIN_ROWS, max_c: int = SMALLC_MAX_C) -> bool:
    """Few channels (C <= max_c), many values per channel (N times the spatial size >= min_rows)."""
    shape = _shape(row)
    return shape[1] <= max_c and math.prod(shape) // shape[1] >= min_rows


def roofline_pct(row: dict, copy_gbps: float) -> float | None:
    """Roofline time over measured time, in percent (None without a timing or a bandwidth)."""
    t = row.get("time_ms")
    if not t or not copy_gbps or row["op"] not in PASSES or row["dtype"] not in ELEMENT_SIZE:
        return None
    nbytes = PASSES[row["op"]] * math.prod(_shape(row)) * ELEMENT_SIZE[row["dtype"]]
    return 100.0 * (nbytes / (copy_gbps * 1e9) * 1e3) / t


def geomean(values) -> float | None:
    values = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def _row_name(r: dict) -> str:
    return f"{r['shape']} {r['layout']} {r['dtype']}"


def evaluate_targets(bench: dict | None, impl: str = "triton-bn", smallc_min_rows: int = SMALLC_MIN_ROWS,
                     targets=TARGETS) -> list[TargetResult]:
    """Each target stated from ``bench`` (``bncheck bench``'s result), or ``not evaluated`` with the reason."""
    out = []
    copy_gbps = (bench or {}).get("header", {}).get("copy_gbps")
    for t in targets:
        base = dict(id=t.id, description=t.description, threshold=t.threshold, measure=t.measure, value=None,
                    rows=0, failed_rows=0, by_dtype={}, worst="")
        if not bench:
            out.append(TargetResult(status="not evaluated", note="no timings (the bench step did not finish)",
                                    **base))
            continue
        rows = [r for r in bench["rows"] if r["implementation"] == impl and r["op"] == t.op
                and (not t.small_c or is_small_c(r, smallc_min_rows))]
        if not rows:
            what = (f"no small-C / large-N*HW shapes (C <= {SMALLC_MAX_C}, N*HW >= {smallc_min_rows}) were timed"
                    if t.small_c else f"{impl} was not timed")
            out.append(TargetResult(status="not evaluated", note=what, **base))
            continue

        def measure(r):
            return r.get("ratio") if t.measure == "ratio" else roofline_pct(r, copy_gbps)
        good = [(r, measure(r)) for r in rows if measure(r) is not None]
        failed = [r for r in rows if measure(r) is None]
        base.update(rows=len(good), failed_rows=len(failed))
        if not good:
            reason = failed[0].get("error") or "no torch-native timing to compare with"
            out.append(TargetResult(status="not evaluated", note=f"none of {len(rows)} rows has a timing: {reason}",
                                    **base))
            continue
        value = geomean(v for _, v in good)
        dtypes = sorted({r["dtype"] for r, _ in good})
        by_dtype = {d: geomean(v for r, v in good if r["dtype"] == d) for d in dtypes}
        worst_r, worst_v = min(good, key=lambda rv: rv[1])
        unit = "x" if t.measure == "ratio" else " %"
        base.update(value=value, by_dtype=by_dtype, worst=f"{_row_name(worst_r)}: {worst_v:.3g}{unit}")
        below = sum(v < t.threshold for _, v in good)
        notes = [f"{len(good) - below} of {len(good)} rows reach {t.threshold:g}{unit}"]
        if value >= t.threshold and not failed:
            status = "met"
        else:
            status = "missed"
            if value < t.threshold:
                notes.insert(0, f"{100 * (1 - value / t.threshold):.1f} % below the threshold")
            if failed:
                notes.append(f"{len(failed)} row(s) without a figure: "
                             f"{failed[0].get('error') or 'no torch-native timing to compare with'}")
        out.append(TargetResult(status=status, note="; ".join(notes), **base))
    return out


def roofline_summary(bench: dict | None) -> list[dict]:
    """Per implementation, op and dtype: geometric mean, minimum and maximum % of roofline over the rows."""
    if not bench:
        return []
    copy_gbps = bench["header"].get("copy_gbps")
    groups: dict = {}
    for r in bench["rows"]:
        pct = roofline_pct(r, copy_gbps)
        if pct is not None:
            groups.setdefault((r["implementation"], r["op"], r["dtype"]), []).append(pct)
    order = {op: k for k, op in enumerate(PASSES)}
    keys = sorted(groups, key=lambda k: (k[0] != NATIVE, k[0], order[k[1]], k[2]))
    return [dict(implementation=i, op=op, dtype=d, passes=PASSES[op], geomean_pct=geomean(groups[i, op, d]),
                 min_pct=min(groups[i, op, d]), max_pct=max(groups[i, op, d]), rows=len(groups[i, op, d]))
            for i, op, d in keys]


def launch_plans(bench: dict | None, device: str | None = None) -> dict:
    """triton-bn's launch plan for every timed shape (``bncheck.kernels.triton_kernels.make_plan``: tiles,
    reduction split, grids), to read next to the timings; ``{"error": ...}`` where the kernels cannot be imported.
    Computed where the report is built, so for the GPU's SM count only on the machine that ran the timings."""
    if not bench:
        return {"plans": []}
    try:
        import torch

        from ..kernels import triton_kernels as K
    except Exception as e:   # no triton here: the report goes on without plans
        return {"error": f"{type(e).__name__}: {e}"[:200], "plans": []}
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    plans, seen = [], set()
    for r in bench["rows"]:
        key = (r["shape"], r["layout"])
        if key in seen:
            continue
        seen.add(key)
        shape = _shape(r)
        N, C, S = shape[0], shape[1], math.prod(shape[2:])
        kernel_layout = "cl" if r["layout"] in ("nhwc", "ndhwc") or S == 1 else "cf"
        p = K.make_plan(kernel_layout, N, C, S, dev)
        plans.append(dict(shape=r["shape"], layout=r["layout"], kernel_layout=kernel_layout,
                          reduce_tile=f"{p.red_a}x{p.red_b}", split=p.split, per_split=p.per_split,
                          reduce_grid="x".join(map(str, p.red_grid)), apply_tile=f"{p.app_a}x{p.app_b}",
                          apply_grid="x".join(map(str, p.app_grid))))
    return {"device": str(dev), "interpreted": bool(K.INTERPRET), "sms": K._num_sms(dev), "plans": plans}


def merge_runs(runs: list) -> dict | None:
    """One ``bncheck run`` report from several over disjoint groups of properties (the GPU check runs them side by
    side): per implementation, cases and worker seconds add up, findings and properties are joined, the worst
    error / budget per dtype is the largest (None, unbounded, wins), and the verdict is recomputed."""
    from ..results import RatioHistogram, Result
    runs = [r for r in runs if r]
    if len(runs) <= 1:
        return runs[0] if runs else None
    impls: dict = {}
    for run in runs:
        for r in run.get("implementations", []):
            m = impls.setdefault(r["name"], dict(name=r["name"], expect=r.get("expect", []), cases=0,
                                                 declined_cases=0, findings=[], worst_ratio_by_dtype={},
                                                 properties={}, seconds=0.0))
            m["cases"] += r.get("cases", 0)
            m["declined_cases"] += r.get("declined_cases", 0)
            seen = {(f["id"], f.get("property")) for f in m["findings"]}
            m["findings"] += [f for f in r.get("findings", []) if (f["id"], f.get("property")) not in seen]
            worst = m["worst_ratio_by_dtype"]
            for k, v in (r.get("worst_ratio_by_dtype") or {}).items():
                worst[k] = None if v is None or (k in worst and worst[k] is None) else max(v, worst.get(k, 0.0))
            m["properties"].update(r.get("properties") or {})
            m["seconds"] += r.get("seconds") or 0.0
            m["ratios"] = RatioHistogram.from_json(m.get("ratios")).merge(
                RatioHistogram.from_json(r.get("ratios"))).to_json()
    for m in impls.values():
        judged = Result.from_json(m).judge()
        m.update(verdict=judged.verdict, unexpected=judged.unexpected, missing=judged.missing,
                 confirmed_by_probe=judged.confirmed_by_probe)
    errors = []
    for run in runs:
        errors += [e for e in run.get("load_errors", []) if e not in errors]
    ok = all(m["verdict"] != "unexpected" for m in impls.values()) and not errors
    env = dict(runs[0].get("environment", {}), runs=len(runs))
    return dict(environment=env, exit_status=0 if ok else 1, implementations=list(impls.values()),
                load_errors=errors)


def verification_summary(run: dict | None) -> dict | None:
    """The parts of a ``bncheck run`` JSON report the GPU report shows."""
    if not run:
        return None
    impls = [dict(name=r["name"], verdict=r.get("verdict"), cases=r.get("cases", 0),
                  declined_cases=r.get("declined_cases", 0), findings=[f["id"] for f in r.get("findings", [])],
                  unexpected=r.get("unexpected", []), missing=r.get("missing", []),
                  worst_ratio_by_dtype=r.get("worst_ratio_by_dtype") or {}, properties=list(r.get("properties") or {}),
                  seconds=r.get("seconds"))
             for r in run.get("implementations", [])]
    return dict(environment=run.get("environment", {}), exit_status=run.get("exit_status"), implementations=impls,
                load_errors=[f"{e.get('origin')}: {e.get('message')}" for e in run.get("load_errors", [])])


# ---------------------------------------------------------------------------------------------------------------
# the report


def read_steps(path) -> list[dict]:
    """The script's step log: tab-separated name, status, exit code, seconds, note, log file."""
    steps = []
    if path and Path(path).is_file():
        with open(path, newline="") as f:
            for rec in csv.reader(f, delimiter="\t"):
                if len(rec) >= 4:
                    rec += [""] * (6 - len(rec))
                    steps.append(dict(name=rec[0], status=rec[1], rc=int(rec[2]) if rec[2].lstrip("-").isdigit()
                                      else None, seconds=float(rec[3] or 0), note=rec[4], log=rec[5]))
    return steps


def _load(path):
    if not path:
        return None
    p = Path(path)
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return {"_unreadable": f"{p}: {e}"}


def build(env: dict, steps: list[dict], verify: list, compile_runs: list, bench: dict | None,
          mode: str, impl: str = "triton-bn", smallc_min_rows: int = SMALLC_MIN_ROWS) -> dict:
    """``verify`` and ``compile_runs``: run reports (one, or several over disjoint property groups)."""
    docs = [*verify, *compile_runs, bench]
    problems = [d["_unreadable"] for d in docs if isinstance(d, dict) and "_unreadable" in d]
    verify, compile_runs = ([d for d in runs if d and "_unreadable" not in d] for runs in (verify, compile_runs))
    bench = None if isinstance(bench, dict) and "_unreadable" in bench else bench
    return dict(schema_version=SCHEMA_VERSION, mode=mode,
                created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                environment=env, copy_gbps=(bench or {}).get("header", {}).get("copy_gbps"), steps=steps,
                unreadable=problems, verification=verification_summary(merge_runs(verify)),
                compile_verification=verification_summary(merge_runs(compile_runs)), target_impl=impl,
                smallc=dict(max_c=SMALLC_MAX_C, min_rows=smallc_min_rows),
                targets=[asdict(t) for t in evaluate_targets(bench, impl, smallc_min_rows)],
                roofline=roofline_summary(bench), launch_plans=launch_plans(bench), timings=bench)


def _f(v, spec=".3g") -> str:
    return "-" if v is None else format(v, spec)


def _verification_md(title: str, v: dict | None, missing: str) -> list[str]:
    from tabulate import tabulate
    lines = ["", f"## {title}", ""]
    if not v:
        return lines + [missing]
    e = v["environment"]
    runs = (f" ({e['runs']} runs side by side over disjoint groups of properties, merged)"
            if e.get("runs", 1) > 1 else "")
    lines += [f"`bncheck run` on {e.get('device')}, profile `{e.get('profile')}`, seed {e.get('seed')}{runs}: exit "
              f"status {v['exit_status']} (0: every implementation's findings equal its expect set).", ""]
    rows = [[r["name"], r["verdict"], f"{r['cases']} ({r['declined_cases']} declined)",
             ", ".join(f"{k} {_f(x)}" for k, x in r["worst_ratio_by_dtype"].items()) or "-",
             ", ".join(r["findings"]) or "-",
             "; ".join(filter(None, ["unexpected: " + ", ".join(r["unexpected"]) if r["unexpected"] else "",
                                     "expected, not found: " + ", ".join(r["missing"]) if r["missing"] else ""]))
             or "-", _f(r["seconds"], ".1f")] for r in v["implementations"]]
    lines.append(tabulate(rows, headers=["implementation", "verdict", "cases", "worst error / budget by dtype",
                                         "findings", "notes", "s"], tablefmt="pipe", disable_numparse=True))
    lines += [f"- plugin failed to load: {e}" for e in v["load_errors"]]
    return lines


def render_markdown(rep: dict) -> str:
    from tabulate import tabulate

    from ..bench import render_markdown as bench_md
    env = rep["environment"]
    where = env.get("gpu") or f"CPU ({env.get('cpu')})"
    title = "GPU check" if rep["mode"] == "cuda" else "GPU check, CPU smoke run (tiny shapes: no GPU figures)"
    lines = [f"# {title}: {where}", "", f"Written {rep['created']}.", "", "## Environment", ""]
    keys = ["gpu", "driver", "driver_cuda", "torch", "torch_cuda", "triton", "cudnn", "sms", "gpu_memory_gib",
            "capability", "python", "bncheck", "commit", "cpu", "cpu_count", "triton_interpret", "nvidia_smi"]
    lines += [f"- {k}: `{env[k]}`" for k in keys if env.get(k) is not None]
    lines.append(f"- copy bandwidth (read + write of a large device copy, this run): "
                 f"{_f(rep['copy_gbps'], '.1f')} GB/s")
    lines += ["", "## Steps", ""]
    lines.append(tabulate([[s["name"], s["status"], "-" if s["rc"] is None else s["rc"], f"{s['seconds']:.0f}",
                            s["note"] or "-"] for s in rep["steps"]],
                          headers=["step", "status", "exit", "s", "note"], tablefmt="pipe", disable_numparse=True)
                 if rep["steps"] else "No step log.")
    lines += [f"- unreadable: {u}" for u in rep["unreadable"]]
    lines += _verification_md("Verification against the oracle", rep["verification"],
                              "Not available: the verification step did not write a report (see Steps).")
    lines += _verification_md("Verification of torch.compile'd BatchNorm", rep["compile_verification"],
                              "Not run (see Steps).")
    sc = rep["smallc"]
    lines += ["", "## Targets", "",
              f"`{rep['target_impl']}` against torch native in this run. Roofline: 3 passes of the tensor for "
              f"forward-train, 2 for forward-eval, 5 for backward, at the copy bandwidth above. Small-C / large-N*HW: "
              f"C <= {sc['max_c']} and N*HW >= {sc['min_rows']:,}.", ""]
    trows = []
    for t in rep["targets"]:
        unit = "x" if t["measure"] == "ratio" else " %"
        trows.append([t["description"], f">= {t['threshold']:g}{unit}", f"**{t['status']}**",
                      "-" if t["value"] is None else f"{t['value']:.3g}{unit}",
                      ", ".join(f"{d} {v:.3g}" for d, v in t["by_dtype"].items()) or "-",
                      f"{t['rows']}" + (f" (+{t['failed_rows']} failed)" if t["failed_rows"] else ""),
                      t["worst"] or "-", t["note"]])
    lines.append(tabulate(trows, headers=["target", "threshold", "status", "measured", "by dtype", "rows",
                                          "worst row", "note"], tablefmt="pipe", disable_numparse=True))
    if rep["roofline"]:
        lines += ["", "### Fraction of the roofline", ""]
        lines.append(tabulate([[r["implementation"], r["op"], r["dtype"], r["passes"], _f(r["geomean_pct"]),
                                _f(r["min_pct"]), _f(r["max_pct"]), r["rows"]] for r in rep["roofline"]],
                              headers=["implementation", "op", "dtype", "passes", "geomean %", "min %", "max %",
                                       "rows"], tablefmt="pipe", disable_numparse=True))
    lp = rep.get("launch_plans") or {}
    if lp.get("plans") or lp.get("error"):
        lines += ["", "### Launch plans of triton-bn", ""]
        if lp.get("error"):
            lines.append(f"Not available: {lp['error']}")
        else:
            lines += [f"For {lp['sms']} SMs on {lp['device']}" + (" (interpreter tiling)" if lp["interpreted"] else "")
                      + ": reduction tile (rows x columns of the kernel's view), programs per channel or column "
                        "block (split), tiles or rows each owns, grids.", ""]
            lines.append(tabulate([[p["shape"], p["layout"], p["kernel_layout"], p["reduce_tile"], p["split"],
                                    p["per_split"], p["reduce_grid"], p["apply_tile"], p["apply_grid"]]
                                   for p in lp["plans"]],
                                  headers=["shape", "layout", "kernel view", "reduce tile", "split", "per split",
                                           "reduce grid", "apply tile", "apply grid"], tablefmt="pipe",
                                  disable_numparse=True))
    lines += ["", "## Timings", ""]
    lines.append(bench_md(rep["timings"]).split("\n", 1)[1].lstrip() if rep["timings"]
                 else "Not available: the bench step did not finish (see Steps).")
    return "\n".join(lines) + "\n"


def write(rep: dict, out_dir) -> tuple[Path, Path]:
    from ..report.files import atomic_write
    out = Path(out_dir)
    md, js = out / "latest.md", out / "latest.json"
    atomic_write(js, json.dumps(rep, indent=1, default=str) + "\n")
    atomic_write(md, render_markdown(rep))
    return md, js


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bncheck.gpu.report", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("environment", help="write the machine's environment as JSON")
    e.add_argument("--device", choices=("cpu", "cuda"), required=True)
    e.add_argument("--out", required=True, metavar="FILE")
    b = sub.add_parser("build", help="write latest.{md,json} from one check's files")
    b.add_argument("--mode", choices=("cuda", "cpu-smoke"), required=True)
    b.add_argument("--env", required=True, metavar="FILE")
    b.add_argument("--steps", default=None, metavar="FILE")
    b.add_argument("--verify", action="append", default=[], metavar="FILE",
                   help="bncheck run's JSON report, repeatable (runs over disjoint property groups are merged)")
    b.add_argument("--compile", action="append", default=[], metavar="FILE",
                   help="bncheck run's JSON report of torch.compile'd BatchNorm, repeatable (merged)")
    b.add_argument("--bench", default=None, metavar="FILE", help="bncheck bench's JSON result")
    b.add_argument("--impl", default="triton-bn", help="the implementation the targets are for")
    b.add_argument("--smallc-min-rows", type=int, default=SMALLC_MIN_ROWS, metavar="N",
                   help=f"values per channel from which a C <= {SMALLC_MAX_C} shape counts as small-C / large-N*HW")
    b.add_argument("--out", required=True, metavar="DIR")
    args = p.parse_args(argv)
    if args.command == "environment":
        from .env import collect_environment
        env = collect_environment(args.device)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(env, indent=1) + "\n")
        print(json.dumps(env, indent=1))
        if args.device == "cuda" and not env["cuda_available"]:
            print("bncheck.gpu.report: --device cuda, but torch sees no CUDA device", file=sys.stderr)
            return 1
        return 0
    if args.smallc_min_rows < 1:
        p.error(f"--smallc-min-rows {args.smallc_min_rows}: must be at least 1")
    env = _load(args.env) or {"note": f"no environment file at {args.env}"}
    rep = build(env, read_steps(args.steps), [_load(v) for v in args.verify], [_load(c) for c in args.compile],
                _load(args.bench), args.mode,
                args.impl, args.smallc_min_rows)
    md, js = write(rep, args.out)
    for t in rep["targets"]:
        unit = "x" if t["measure"] == "ratio" else " %"
        value = "-" if t["value"] is None else f"{t['value']:.3g}{unit}"
        print(f"target {t['id']:<24} {t['status']:<14} {value:>10}  (>= {t['threshold']:g}{unit}) {t['note']}")
    print(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

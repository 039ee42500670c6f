"""The report's Timings section from typed ``Timings``: how they were measured in two lines, the geometric mean
of each implementation's ratio to torch native per op, and every row folded below (what could not be timed is
listed once per implementation and error, not once per row)."""
from __future__ import annotations

import math

from ..results import Timings
from .mdtable import fold, table

NATIVE = "torch-native"


def _fmt(v, spec: str) -> str:
    return "" if v is None else format(v, spec)


def _geomean(values: list[float]) -> float:
    return math.exp(sum(map(math.log, values)) / len(values))


def render(t: Timings) -> list[str]:
    if not t.rows:                       # a stored run from before typed rows: its own Markdown
        return [t.markdown.rstrip()] if t.markdown else ["No timings."]
    h = t.header
    out = [f"On {h.get('device', '?')} ({h.get('device_type', '?')}), torch {h.get('torch', '?')}, triton "
           f"{h.get('triton') or 'not installed'}; {h.get('timer', 'timer not recorded')}. "
           f"Copy bandwidth (read + write of a large copy): **{h.get('copy_gbps') or 0:.1f} GB/s**.", "",
           "ratio = torch native's time / the implementation's (above 1: faster than torch native); GB/s from the "
           f"minimal-bytes model (`{h.get('bytes_model', 'not recorded')}`).", ""]
    if h.get("epilogues"):
        out[-1:-1] = ["", "Rows whose op ends in " + ", ".join(f"`+{e}`" for e in h["epilogues"]) + " time plugins "
                      "that declare that epilogue (`relu(bn(x))`, `relu(bn(x) + z)`) against torch eager BatchNorm "
                      "followed by an in-place add of z and ReLU, the `torch-native` of those rows; their bytes "
                      "model adds z in the forward and the output and dz in the backward."]
    ops = list(dict.fromkeys(r.labelled[1] for r in t.rows))     # an epilogue row: forward-train+relu
    ratios: dict[str, dict[str, list[float]]] = {}
    for r in t.rows:
        if r.implementation != NATIVE and r.ratio:
            label, op = r.labelled
            ratios.setdefault(label, {}).setdefault(op, []).append(r.ratio)
    if ratios:
        out += ["Geometric mean of the ratio to torch native, over shapes, layouts and dtypes:", ""]
        out.append(table(["implementation"] + ops,
                         [[name] + [f"{_geomean(by[op]):.3g}" if by.get(op) else "-" for op in ops]
                          for name, by in ratios.items()],
                         ["left"] + ["right"] * len(ops), shrink=(0,)))
    timed = [r for r in t.rows if r.error is None]
    if timed:
        spread = any(r.spread is not None for r in timed)     # recorded by newer runs only
        rows = [[r.implementation, r.op, r.shape, r.layout, r.dtype, _fmt(r.time_ms, ".4g"), _fmt(r.ratio, ".3g"),
                 _fmt(r.gbps, ".3g"), _fmt(r.pct_copy, ".3g")]
                + ([_fmt(None if r.spread is None else 100 * r.spread, ".2g")] if spread else []) for r in timed]
        headers = ["implementation", "op", "shape", "layout", "dtype", "ms", "ratio", "GB/s", "% copy"]
        headers += ["spread %"] if spread else []
        align = ["left"] * 5 + ["right"] * (len(headers) - 5)
        out += fold(f"Every timed row ({len(timed)})", table(headers, rows, align, shrink=(0, 2)))
    failed: dict[tuple[str, str], list[str]] = {}
    for r in t.rows:
        if r.error is not None:
            failed.setdefault((r.implementation, r.error), []).append(f"{r.op} {r.shape} {r.layout} {r.dtype}")
    if failed:
        out += ["", "Could not be timed:", ""]
        for (name, error), where in failed.items():
            shown = ", ".join(where[:3]) + (f" and {len(where) - 3} more" if len(where) > 3 else "")
            message = " ".join(error.split()).replace("`", "'")
            out.append(f"- **{name}** ({len(where)} row(s): {shown}): `{message}`")
    return out

"""Pictures of a ``RunReport`` (matplotlib, Agg, no pyplot state): small PNGs written next to the report.

``errors_figure``: per implementation, grouped per kind, how many cases had each error/budget (``Result.ratios``,
log bins) with the budget at 1: a correct implementation is a mass far left of the line, a bug a cluster right of
it. Cases below the histogram's range (exact agreement included) and above it (or not a number) are the hatched
bars at either end. ``timings_figure``: per op, each implementation's ratio to torch native per shape, and the
bandwidth it achieved against the copy bandwidth (the roofline of a memory-bound kernel).
"""
from __future__ import annotations

import io
import math

from ..results import RatioHistogram, Result, RunReport, Timings

KINDS = {"batchnorm": "BatchNorm", "fusion": "Fusion (conv-BN folding)", "sync": "Distributed (sync BatchNorm)"}
COLUMNS = 5            # panels per row
PANEL = (2.5, 1.7)     # inches per panel
DPI = 80
NAME_CHARS = 28        # a longer name is cut to fit its panel
NATIVE = "torch-native"
GREEN, RED, GREY, ORANGE = "#2da44e", "#cf222e", "#8c959f", "#bf8700"
PALETTE = ["#0969da", "#bc4c00", "#8250df", "#1b7c83", "#9a6700", "#bf3989", "#6e7781", "#0550ae", "#953800",
           "#6639ba"]          # implementations in the timing picture: no green or red (those mean verdicts)
VERDICT_COLOR = {"clean": GREEN, "as expected": GREEN, "not reproduced": ORANGE, "unexpected": RED,
                 "declined": GREY}


def _figure(width: float, height: float, layout: str | None = "constrained"):
    from matplotlib.figure import Figure
    return Figure(figsize=(width, height), dpi=DPI, layout=layout)


def _panel(ax, r: Result) -> None:
    h: RatioHistogram = r.ratios
    edges = h.edges()
    lo, hi = edges[0], edges[-1]
    step = 10.0 ** (1 / h.PER_DECADE)
    floor = 0.7                                               # the log axis's bottom: a count of 0
    first = -h.LO * h.PER_DECADE                              # the bin starting at 1
    counts = [max(c, floor) for c in h.counts]
    ax.stairs(counts[:first], edges[:first + 1], baseline=floor, fill=True, color=GREEN, linewidth=0)
    ax.stairs(counts[first:], edges[first:], baseline=floor, fill=True, color=RED, linewidth=0)
    for x, n, color in ((lo / step ** 2, h.below, GREEN), (hi, h.above, RED)):
        if n:
            ax.stairs([n], [x, x * step ** 2], baseline=floor, fill=True, facecolor="white", edgecolor=color,
                      hatch="////", linewidth=0.6)
    ax.axvline(1.0, color=RED, linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlim(lo / step ** 2, hi * step ** 2)
    ax.set_xticks([1e-6, 1e-3, 1, 1e3, 1e6], ["1e-6", "1e-3", "1", "1e3", "1e6"])
    top = max([*h.counts, h.below, h.above, 1])
    if h.total:
        ax.set_yscale("log")
        ax.set_ylim(floor, top * 3)
        ticks = [t for t in (1, 10, 100, 1000, 10000, 100000) if t <= top * 3]
        ax.set_yticks(ticks, [str(t) for t in ticks])
    else:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no cases compared", transform=ax.transAxes, fontsize=7, ha="center", va="center",
                color=GREY)
    ax.minorticks_off()                  # (after the scales: a log scale brings minor ticks, slow to draw)
    ax.tick_params(labelsize=7, length=2, pad=1)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    name = r.name if len(r.name) <= NAME_CHARS else r.name[:NAME_CHARS - 1] + "…"
    ax.set_title(name, fontsize=9, loc="left", y=1.15, pad=0)    # a fixed y: no costly automatic placement
    status = r.verdict + (f" · {h.over_budget}/{h.total} over budget" if h.total else "")
    ax.text(0, 1.03, status, transform=ax.transAxes, fontsize=7.5, ha="left", va="bottom",
            color=VERDICT_COLOR.get(r.verdict, GREY), fontweight="bold" if r.verdict == "unexpected" else "normal")


def errors_figure(rep: RunReport):
    """One panel per implementation, a block of panels per kind; None when no implementation has a recorded
    case (a run stored before the distribution was kept). Panels are placed at fixed positions (no layout
    engine: fifty panels draw in a few seconds)."""
    if not any(r.ratios.total for r in rep.implementations):
        return None
    groups = [(title, [r for r in rep.implementations if r.kind == kind]) for kind, title in KINDS.items()]
    groups += [(kind, [r for r in rep.implementations if r.kind == kind])
               for kind in dict.fromkeys(r.kind for r in rep.implementations) if kind not in KINDS]
    groups = [(t, rs) for t, rs in groups if rs]
    if not groups:
        return None
    cols = min(COLUMNS, max(len(rs) for _, rs in groups))
    head, (pw, ph) = 0.32, PANEL                              # inches: a block's title, a panel's cell
    margin = dict(left=0.42, right=0.12, bottom=0.28, top=0.42)
    width = cols * pw
    height = sum(head + math.ceil(len(rs) / cols) * ph for _, rs in groups) + 0.05
    fig = _figure(width, height, layout=None)
    y = height                                                # top of the next block, inches from the bottom
    for title, rs in groups:
        fig.text(0.06 / width, (y - head / 2) / height, f"{title}: cases per error / budget (dashed: the budget; "
                 "hatched: below 1e-6, or above 1e6 or not a number)", fontsize=9.5, va="center")
        y -= head
        for i, r in enumerate(rs):
            row, col = divmod(i, cols)
            x0, y0 = col * pw + margin["left"], y - (row + 1) * ph + margin["bottom"]
            ax = fig.add_axes((x0 / width, y0 / height, (pw - margin["left"] - margin["right"]) / width,
                               (ph - margin["bottom"] - margin["top"]) / height))
            _panel(ax, r)
        y -= math.ceil(len(rs) / cols) * ph
    return fig


def _shape_key(r) -> str:
    """A shape's label under its bars: a long shape broken after its batch and channel sizes."""
    dims = str(r.shape).split("x")
    shape = "x".join(dims[:2]) + "x\n" + "x".join(dims[2:]) if len(r.shape) > 9 and len(dims) > 3 else r.shape
    return f"{shape}\n{r.layout} {r.dtype.replace('float', 'f')}"


def timings_figure(t: Timings | None):
    """Per op (columns): ratio to torch native per shape (above), GB/s against the copy bandwidth (below)."""
    if not t or not t.rows:
        return None
    ops = list(dict.fromkeys(r.labelled[1] for r in t.rows))
    impls = list(dict.fromkeys(r.labelled[0] for r in t.rows))
    shapes = list(dict.fromkeys(_shape_key(r) for r in t.rows))
    natives = [n for n in impls if n.startswith(NATIVE)]
    colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(n for n in impls if n not in natives)}
    colors.update((n, GREY) for n in natives)
    by = {(*r.labelled, _shape_key(r)): r for r in t.rows}
    width = max(4.6, 0.6 + 0.65 * len(shapes))     # inches per op
    fig = _figure(width * len(ops), 6.2)
    axes = fig.subplots(2, len(ops), squeeze=False)
    copy = t.header.get("copy_gbps")
    for j, op in enumerate(ops):
        for row, (field, others) in enumerate((("ratio", [n for n in impls if n not in natives]), ("gbps", impls))):
            ax = axes[row, j]
            n = max(len(others), 1)
            bar_w = 0.8 / n
            for k, name in enumerate(others):
                xs, ys, failed = [], [], []
                for s, shape in enumerate(shapes):
                    r = by.get((name, op, shape))
                    x = s - 0.4 + bar_w * (k + 0.5)
                    if r is not None and getattr(r, field):
                        xs.append(x)
                        ys.append(getattr(r, field))
                    elif r is not None:
                        failed.append(x)
                ax.bar(xs, ys, width=bar_w, color=colors[name], label=name if j == 0 and row == 1 else None)
                if failed:
                    ax.plot(failed, [0.02] * len(failed), "x", color=colors[name], markersize=4,
                            transform=ax.get_xaxis_transform())
            if field == "ratio":
                ax.axhline(1.0, color="black", linewidth=1, linestyle="--")
                ax.set_yscale("log")
                values = [r.ratio for r in t.rows if r.labelled[1] == op and r.ratio] or [1.0]
                low, high = min(min(values), 0.5) / 1.5, max(max(values), 2.0) * 1.5
                ax.set_ylim(low, high)
                ax.set_yticks([v for v in (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100) if low <= v <= high])
                ax.yaxis.set_major_formatter("{x:g}")
                ax.yaxis.set_minor_formatter("")
                ax.set_title(f"{op}: ratio to torch native (above 1: faster; x: failed)", fontsize=9.5, loc="left")
            else:
                if copy:
                    ax.axhline(copy, color=RED, linewidth=1, linestyle="--")
                    ax.text(len(shapes) - 0.5, copy, f"copy bandwidth {copy:.0f} GB/s", color=RED, fontsize=8,
                            ha="right", va="bottom")
                ax.set_title(f"{op}: GB/s achieved (dashed: copy bandwidth)", fontsize=9.5, loc="left")
                ax.set_ylim(0, max([copy or 0] + [r.gbps or 0 for r in t.rows if r.labelled[1] == op]) * 1.15 or 1)
            ax.set_xticks(range(len(shapes)), shapes if row == 1 else [""] * len(shapes))
            ax.tick_params(labelsize=7.5)
            ax.set_xlim(-0.5, len(shapes) - 0.5)
            for side in ("top", "right"):
                ax.spines[side].set_visible(False)
    fig.legend(loc="outside lower center", ncols=min(len(impls), 6), fontsize=9, frameon=False)
    return fig


def png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": "bncheck"})
    return buf.getvalue()


def render(rep: RunReport) -> dict[str, bytes]:
    """The pictures of a report as PNG bytes: ``errors`` (when it has implementations), ``timings`` (when it has
    timed rows)."""
    out = {}
    for name, fig in (("errors", errors_figure(rep)), ("timings", timings_figure(rep.timings))):
        if fig is not None:
            out[name] = png(fig)
    return out

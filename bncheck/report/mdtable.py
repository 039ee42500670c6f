"""Markdown pieces that keep a report readable on a screen: pipe tables whose rows fit ``WIDTH`` columns (long
cells cut, or columns split into several tables) and folded ``<details>`` blocks."""
from __future__ import annotations

from tabulate import tabulate

WIDTH = 160            # the most columns a table row may take


def esc(s: str) -> str:
    """Text for a table cell: a '|' cannot end the cell, a newline cannot end the row."""
    return str(s).replace("|", "\\|").replace("\n", "<br>")


def cut(s: str, n: int) -> str:
    """``s`` in at most ``n`` characters, an ellipsis marking what was left out."""
    s = str(s)
    if len(s) <= n:
        return s
    return s[:n - 1].rstrip("\\ ") + "…"


def table(headers: list[str], rows: list[list], align: list[str], shrink: tuple = (), width: int = WIDTH,
          minimum: int = 8) -> str:
    """A pipe table whose rows are at most ``width`` columns: cells of the ``shrink`` columns are cut, in that
    order, down to ``minimum`` characters, until the rows fit. Cells are escaped for a table."""
    cells = [[esc(c) for c in r] for r in rows]

    def render():
        return tabulate(cells, headers=headers, tablefmt="pipe", colalign=align, disable_numparse=True)

    text = render()
    for col in shrink:
        over = max(map(len, text.splitlines())) - width
        if over <= 0:
            break
        longest = max((len(r[col]) for r in cells), default=0)
        limit = max(longest - over, minimum, len(headers[col]))
        cells = [[cut(c, limit) if i == col else c for i, c in enumerate(r)] for r in cells]
        text = render()
    return text


def split(headers: list[str], rows: list[list], align: list[str], width: int = WIDTH) -> str:
    """Tables of the first column with as many of the others as fit in ``width``, then the first column with the
    next ones, and so on, one after the other."""
    def w(i):
        return max(len(esc(c)) for c in [headers[i]] + [r[i] for r in rows]) + 3     # "| " + cell + " "

    groups, cur, used = [], [], 1 + w(0)
    for i in range(1, len(headers)):
        if cur and used + w(i) > width:
            groups.append(cur)
            cur, used = [], 1 + w(0)
        cur.append(i)
        used += w(i)
    groups += [cur] if cur else []
    return "\n\n".join(table([headers[i] for i in [0] + g], [[r[i] for i in [0] + g] for r in rows],
                              [align[i] for i in [0] + g], width=width, shrink=tuple(range(len(g) + 1)))
                        for g in groups)


def fold(summary: str, body: list[str] | str) -> list[str]:
    """Lines of a ``<details>`` block (blank lines around the body, so GitHub renders the Markdown inside)."""
    body = [body] if isinstance(body, str) else body
    return ["", "<details>", f"<summary>{summary}</summary>", "", *body, "", "</details>"]

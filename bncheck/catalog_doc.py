"""The finding catalog as a Markdown page (``docs/catalog.md``), rendered from ``bncheck.catalog``.

``bncheck catalog --out docs/catalog.md`` (``make docs``) writes it; ``tests/test_docs.py`` fails when the committed
page differs from what this module renders now.
"""
from __future__ import annotations

import textwrap

from .catalog import CATALOG, Entry

COMMAND = "bncheck catalog --out docs/catalog.md"

# kind -> (section title, the float64 reference whose knobs express its ids)
_KINDS = {
    "batchnorm": ("BatchNorm", "the oracle, `Knobs` in [`bncheck/oracle.py`](../bncheck/oracle.py)"),
    "fusion": ("Fusion (conv-BN folding)",
               "the fold reference, `FoldKnobs` in [`bncheck/folding/fold.py`](../bncheck/folding/fold.py)"),
    "sync": ("Synchronised BatchNorm (distributed)",
             "the sync reference, `SyncKnobs` in [`bncheck/sync/reference.py`](../bncheck/sync/reference.py)"),
}

# the navigation lines every page under docs/ starts with
_NAV = """\
[README](../README.md) · [Command line](cli.md) · [Plugins](plugins.md) · [Tests](testing.md) · [CI](ci.md) ·
[How it decides](how-it-decides.md) · [Finding catalog](catalog.md) · [Reports](reports.md) ·
[Frameworks](frameworks.md) · [Timings](timings.md)"""

_INTRO = (
    "Every finding bncheck can report has an id from this catalog. Ids are stable: they appear in reports, in the "
    "JSON, and in plugins' `expect` sets. The catalog lives in one place, "
    "[`bncheck/catalog.py`](../bncheck/catalog.py): adding a class of bug is one entry there (plus a knob setting "
    f"when a knob of the float64 reference expresses it), and this page is regenerated with `{COMMAND}` (`make docs`).",

    "*Knob settings* are the counterfactuals diagnosis tries: when the float64 reference run with one of them matches "
    "the implementation where the default (torch's semantics) does not, that names the finding (alternatives are "
    "separated by \"or\"). An id without a knob setting (`-`) is named otherwise: by a direct check or probe (a crash, "
    "a structural difference, an error growing with the offset or the batch size, ...), or, for a `...-mismatch` id, "
    "as what remains when nothing else explains a difference. How diagnosis works and how ids are named: "
    "[How it decides](how-it-decides.md).",
)


def _wrap(text: str) -> str:
    return textwrap.fill(text, 120, break_long_words=False, break_on_hyphens=False)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _value(v) -> str:
    return v if isinstance(v, str) else repr(v)


def knob_settings(entry: Entry) -> str:
    """The knob settings that express ``entry`` as Markdown, alternatives joined by ' or '; '-' when none does."""
    if not entry.knobs:
        return "-"
    return " or ".join("`" + ", ".join(f"{k}={_value(v)}" for k, v in alt.items()) + "`" for alt in entry.knobs)


def render(entries=None) -> str:
    """The catalog page: one section per kind (batchnorm, fusion, sync, then any other), one table row per id."""
    entries = list(CATALOG.values() if entries is None else entries)
    kinds = [k for k in _KINDS if any(e.kind == k for e in entries)]
    kinds += sorted({e.kind for e in entries} - set(_KINDS))
    note = f"<!-- Generated from bncheck/catalog.py by `{COMMAND}` (`make docs`); edit the catalog, not this page. -->"
    lines = ["# Finding catalog", "", note, "", _NAV]
    for paragraph in _INTRO:
        lines += ["", _wrap(paragraph)]
    lines += ["", f"{len(entries)} ids: " + ", ".join(f"{sum(e.kind == k for e in entries)} {k}" for k in kinds) + "."]
    for kind in kinds:
        title, reference = _KINDS.get(kind, (kind, "its float64 reference"))
        lines += ["", f"## {title}", "", _wrap(f"Kind `{kind}`; the knobs are those of {reference}."), "",
                  "| id | meaning | knob settings that express it |", "|---|---|---|"]
        lines += [f"| `{e.id}` | {_cell(e.meaning)} | {_cell(knob_settings(e))} |" for e in entries if e.kind == kind]
    return "\n".join(lines) + "\n"

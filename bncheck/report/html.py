"""The report as one self-contained HTML file: the Markdown report rendered by a CommonMark parser (as GitHub
renders it: raw HTML such as ``<details>`` kept, tables on), styled inline, its pictures embedded as data URIs.
Nothing is fetched when it is opened."""
from __future__ import annotations

import base64
import html

from ..results import RunReport

CSS = """
body { margin: 0; background: #fff; color: #1f2328; font: 14px/1.5 -apple-system, "Segoe UI", "Noto Sans",
       Helvetica, Arial, sans-serif; }
main { max-width: 1280px; margin: 0 auto; padding: 24px 32px; }
h1, h2 { border-bottom: 1px solid #d1d9e0; padding-bottom: .3em; margin: 1.2em 0 .6em; }
h1 { font-size: 1.8em; } h2 { font-size: 1.4em; } h3 { font-size: 1.15em; }
code, pre { font: 12px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", monospace; }
code { background: #eff1f3; padding: .15em .35em; border-radius: 5px; }
pre { background: #f6f8fa; padding: 12px 16px; overflow: auto; border-radius: 6px; }
pre code { background: none; padding: 0; }
table { border-collapse: collapse; margin: .6em 0; display: block; overflow: auto; max-width: 100%; }
th, td { border: 1px solid #d1d9e0; padding: 4px 12px; }
th { background: #f6f8fa; font-weight: 600; }
tr:nth-child(2n) td { background: #f6f8fa; }
details { margin: .25em 0; }
details > summary { cursor: pointer; }
details[open] { padding-bottom: .4em; }
details[open] > summary { margin-bottom: .4em; }
details > :not(summary) { margin-left: 1.3em; }
img { max-width: 100%; }
ul { padding-left: 2em; }
"""


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def markdown_to_html(md: str, title: str = "bncheck report") -> str:
    """A Markdown report as a whole HTML page with the inline style above."""
    from markdown_it import MarkdownIt
    body = MarkdownIt("commonmark", {"html": True}).enable("table").render(md)
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n"
            f"<body>\n<main>\n{body}</main>\n</body>\n</html>\n")


def render_html(rep: RunReport, pictures: bool = True) -> str:
    """The whole report in one file, its pictures embedded (or, when they cannot be drawn, a line saying why)."""
    from .markdown import render_markdown
    uris, why = {}, ""
    if pictures:
        try:
            from . import plots
            uris = {name: _data_uri(png) for name, png in plots.render(rep).items()}
        except Exception as e:                   # the report is still whole without them
            why = f"{type(e).__name__}: {e}"
    return markdown_to_html(render_markdown(rep, uris, why))

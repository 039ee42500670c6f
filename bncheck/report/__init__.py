"""Reports of a run, from a ``RunReport`` (plain data): ``markdown`` (the Markdown and JSON, written atomically,
with the pictures beside them), ``html`` (one self-contained HTML file), ``timings`` (the Timings section),
``plots`` (the pictures, matplotlib) and ``mdtable`` (Markdown tables that fit a screen).

``build``, ``render_markdown``, ``write_markdown``, ``write_pictures`` and ``write`` are ``markdown``'s, imported
on first use, so a submodule (``mdtable``) can be imported on its own.
"""
_LAZY = ("build", "render_markdown", "write", "write_markdown", "write_pictures")

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        from . import markdown
        value = getattr(markdown, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

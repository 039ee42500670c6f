"""The facets of a folding scenario: what a fusion finding's scope is stated in (``bncheck.scope``).

They are the structural features a fold gets right or wrong on their own: a conv without bias, groups, a
transposed conv, a 1-d or 3-d conv, affine=False, float16, a single output channel. Each facet's ``alternative`` is
the same scenario without that feature (a bias added, groups=1, ...; None where the scenario does not have it), so
``folding.check`` both names a cause by removing a feature and states the finding's region in the same terms.
"""
from __future__ import annotations

from ..scope import Facet


def dim2(sc) -> dict:
    """The changes that make ``sc`` a 2-d conv (per-axis values cut or repeated to two axes)."""
    def two(t):
        return tuple(t[:2]) if len(t) >= 2 else (t[0], t[0])
    return {k: two(getattr(sc, k)) for k in ("kernel", "stride", "padding", "dilation", "output_padding",
                                             "spatial")} | {"dim": 2}


def _flag(yes: str, no: str):
    return lambda values: " or ".join(yes if v else no for v in values)


FACETS = {f.name: f for f in [
    Facet("conv bias", lambda s: not s.bias, lambda s: s.with_(bias=True) if not s.bias else None,
          _flag("a conv without bias", "a conv bias")),
    Facet("groups", lambda s: s.groups > 1, lambda s: s.with_(groups=1) if s.groups > 1 else None,
          _flag("groups > 1", "groups=1")),
    Facet("transposed", lambda s: s.transposed, lambda s: s.with_(transposed=False) if s.transposed else None,
          _flag("a transposed conv", "a plain conv")),
    Facet("conv dims", lambda s: s.dim, lambda s: s.with_(**dim2(s)) if s.dim != 2 else None,
          lambda values: "a " + " or ".join(f"{v}-d" for v in values) + " conv"),
    Facet("affine", lambda s: s.affine, lambda s: s.with_(affine=True) if not s.affine else None,
          lambda values: "affine=" + " or ".join(str(v) for v in values)),
    Facet("dtype", lambda s: s.dtype, lambda s: s.with_(dtype="float32") if s.dtype == "float16" else None,
          lambda values: " or ".join(values)),
    Facet("output channels", lambda s: s.c_out == 1, lambda s: s.with_(c_out=2) if s.c_out == 1 else None,
          _flag("a single output channel", "several output channels")),
]}

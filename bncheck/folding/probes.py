"""Directed probes for fusion plugins: for each id a fusion search can name, the few scenarios that show it.

As for the BatchNorm kind (``bncheck.probes``): after the search, each id a plugin declares in ``expect`` that the
search did not name is probed. Its scenarios are evaluated one after another, judged by the property that owns
the id, on top of what the search established (its knobs applied, each scenario moved out of its crashes'
scopes), and diagnosed as
the search diagnoses (``diagnosis.diagnose``) until one is named that id. Then the finding is reported with
``source="probe"``; otherwise the id stays *not reproduced*.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from ..catalog import CATALOG
from ..registry import Implementation
from ..results import PropertyResult
from .cases import DIRECTED, FoldScenario, evaluate
from .diagnosis import FALLBACK, State, diagnose, owned_problems
from .search import BY_NAME, record

PLAIN = FoldScenario(c_in=3, c_out=4, seed=1)
CRASHES = {"crash", "fold-bias-none-crash", "rank-unsupported"}
_1D = dict(dim=1, kernel=(3,), stride=(1,), padding=(0,), dilation=(1,), output_padding=(0,), spatial=(6,))
_3D = dict(dim=3, kernel=(2, 2, 2), stride=(1,) * 3, padding=(0,) * 3, dilation=(1,) * 3, output_padding=(0,) * 3,
           spatial=(3, 3, 3))


@dataclass(frozen=True)
class Probe:
    property: str                  # the judging property ("both": fold-output, then fold-module, for an id that
                                   # shows as a crash, wrong values or a wrong module alike)
    scenarios: tuple               # tried in order until one is diagnosed as the probed id


# every structural feature once, each on its own (the others plain), then the float dtypes: for crashes and what no
# knob expresses
SWEEP = (PLAIN, PLAIN.with_(bias=False), PLAIN.with_(groups=2, c_in=4), PLAIN.with_(transposed=True),
         PLAIN.with_(**_1D), PLAIN.with_(**_3D), PLAIN.with_(affine=False), PLAIN.with_(dtype="float16"),
         PLAIN.with_(dtype="float64"), PLAIN.with_(c_out=1))
PROBES: dict[str, Probe] = {
    # the decoder upsampling layer of DIRECTED (C_in = C_out = 3), then C_in != C_out and a 1-d one
    "fold-transposed-axis": Probe("both", DIRECTED + (PLAIN.with_(transposed=True, c_in=2, c_out=4),
                                                             PLAIN.with_(transposed=True, c_in=3, c_out=3, **_1D))),
    # running variances far below eps, where eps is most of sqrt(var + eps)
    "fold-eps-ignored": Probe("fold-output", (PLAIN.with_(eps=0.1, var_range=(-8, -6)),
                                              PLAIN.with_(eps=1e-3, var_range=(-8, -4)))),
    "fold-bias-none-crash": Probe("both", (PLAIN.with_(bias=False), PLAIN.with_(bias=False, transposed=True))),
    # grouped, depthwise, grouped transposed
    "fold-groups": Probe("both", (PLAIN.with_(groups=2, c_in=4, c_out=4), PLAIN.with_(groups=3, c_in=3, c_out=3),
                                         PLAIN.with_(groups=2, c_in=4, c_out=6, transposed=True))),
    "fold-wrong-module": Probe("fold-module", SWEEP),
    # a running mean far from 0 and variances over decades: the terms of b' and the scale all matter
    "fold-mismatch": Probe("fold-output", (PLAIN.with_(mean_offset=10.0, var_range=(-2, 2)),
                                           PLAIN.with_(mean_offset=10.0, var_range=(-2, 2), affine=False),
                                           PLAIN.with_(mean_offset=10.0, var_range=(-2, 2), bias=False))),
    "crash": Probe("fold-output", SWEEP),
    "rank-unsupported": Probe("both", (PLAIN.with_(**_1D), PLAIN.with_(**_3D))),
    "nan-inf": Probe("fold-output", SWEEP),
    "dtype-promotion": Probe("fold-module", (PLAIN.with_(dtype="float16"), PLAIN, PLAIN.with_(dtype="float64"))),
    "input-mutated": Probe("fold-module", SWEEP),
}


def probe_for(fid: str) -> Probe | None:
    """The probe of an id a fusion search can name (the catalog's fusion ids and the fallbacks), or None."""
    return PROBES.get(fid) if fid in CATALOG else None


def pending(impl: Implementation, state: State) -> list[str]:
    """Expected ids the search did not name and a probe exists for: crashes first (a crash not named yet would hide
    the scenarios of the ids behind it), then in catalog order."""
    return sorted((fid for fid in CATALOG if fid in impl.expect and fid not in state.ledger and probe_for(fid)),
                  key=lambda fid: fid not in CRASHES)


def run_probe(impl: Implementation, fid: str, state: State, res: PropertyResult, device: str = "cpu") -> int:
    """Probe ``fid`` until a scenario is diagnosed as it (recorded under ``res``, with whatever else that diagnosis
    named); returns how many scenarios ran."""
    probe = probe_for(fid)
    props = [BY_NAME[p] for p in (BY_NAME if probe.property == "both" else (probe.property,))]
    for i, (sc, prop) in enumerate(((sc, p) for sc in probe.scenarios for p in props), 1):
        sc = state.ledger.outside(sc.with_(device=device))
        if sc is None:
            continue
        facets = sc.facets()
        out = evaluate(impl, sc, state.knobs, check_output=prop.check_output)
        if out.declined is not None or out.unrepresentable is not None:
            continue
        if not owned_problems(out, prop, state, facets):
            continue
        named = diagnose(impl, sc, out, prop, state)
        if not any(n.id == fid for n in named):
            continue
        note = (f"the search did not reach it; confirmed by the directed probe for {fid} (scenario {i} of "
                f"{len(probe.scenarios) * len(props)}, judged by {prop.name})")
        for n in named:
            if n.id not in state.ledger:
                record(impl, state, res, prop.name, n, source="probe", note=note)
        return i
    return len(probe.scenarios) * len(props)


def confirm_expected(impl: Implementation, state: State, device: str = "cpu") -> PropertyResult:
    """Probe every ``pending`` id; confirmed ones become findings with ``source='probe'``."""
    res = PropertyResult("probes")
    t0 = time.monotonic()
    for fid in pending(impl, state):
        if fid not in state.ledger:        # an earlier probe may have named it with the id it probed
            res.cases += run_probe(impl, fid, state, res, device)
    res.seconds = time.monotonic() - t0
    return res


assert set(FALLBACK.values()) <= set(PROBES), "every id a fusion diagnosis falls back to has a probe"

"""Directed probes: for each BatchNorm catalog id, the few scenarios that show that bug when it is there.

A search draws scenarios at random; a short one (``--profile quick``) may not reach a bug a plugin declares in its
``expect`` set. After the search, each expected id it did not find is probed: its scenarios run through the normal
path (``execute`` → ``compare`` → ``diagnose.name``, judged by the property that owns the id, on top of what the
search established), one after another until one is diagnosed as that id. Then the finding is reported as
*confirmed by probe*; otherwise the id is *not reproduced* (a warning in the report, a failure with ``--strict``).

Ids without a scenario of their own (``output-mismatch``, ``crash`` and any id added later) get the broad sweep
(every rank, affine and tracking off, momentum=None, float64, half input, channels_last). ``timeout`` has none: a
hang cannot be provoked without hanging the check.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from . import diagnose, execute
from .catalog import CATALOG
from .compare import VALUE_FIELDS, compare
from .oracle import TORCH, Knobs
from .search_ledger import SearchLedger
from .properties import BY_NAME
from .registry import Implementation
from .repro import script
from .results import Finding, PropertyResult
from .scenario import Scenario, Step, materialize

T, T0, E, E0 = Step(True, True), Step(True, False), Step(False, True), Step(False, False)
RANK_SHAPES = {2: (6, 3), 3: (4, 3, 5), 4: (4, 3, 2, 5), 5: (3, 3, 2, 2, 5)}   # spatial sizes neither 1 nor C
BY_RANK = (4, 2, 3, 5)         # most plugins take 4-d input; try it first


@dataclass(frozen=True)
class Probe:
    property: str | None       # the property that judges the scenarios (None: every field and id is judged)
    scenarios: tuple           # tried in order until one is diagnosed as the probed id


def _sc(rank: int = 4, **kw) -> Scenario:
    kw.setdefault("shape", RANK_SHAPES[rank])
    kw.setdefault("seed", 1)
    return Scenario(**kw)


def _ranks(**kw) -> tuple:
    return tuple(_sc(r, **kw) for r in BY_RANK)


def _probe(prop, *scenario_lists) -> Probe:
    return Probe(prop, tuple(sc for group in scenario_lists for sc in (group if isinstance(group, tuple)
                                                                         else (group,))))


SWEEP = _probe(None, _ranks(steps=(T, E)), _ranks(steps=(T, E), affine=False),
               _ranks(steps=(T, E), track_running_stats=False), _ranks(steps=(T, T, E), momentum=None),
               _sc(4, dtype="float64", param_dtype="float64", steps=(T, E)),
               _sc(4, dtype="float16", param_dtype="float32", steps=(T, E)),
               _sc(4, layout="channels_last", steps=(T, E)))

PROBES: dict[str, Probe] = {
    # a train step from running statistics unlike the batch's, with a momentum m whose 1 - m is none of the fixed
    # factors momentum-ignored tries (at m = 0.1, "inverted" and "0.9 whatever the argument" are the same numbers)
    "inverted-momentum": _probe("running-stats", _ranks(steps=(T,), momentum=0.3)),
    # a momentum that none of the fixed factors equals
    "momentum-ignored": _probe("running-stats", _ranks(steps=(T, T), momentum=0.3)),
    # three train steps with momentum=None: a cumulative average from the second on (or a crash)
    "momentum-none": _probe("running-stats", _ranks(steps=(T, T, T), momentum=None)),
    "biased-running-var": _probe("running-stats", _ranks(steps=(T,))),
    "unbiased-normalization": _probe("forward", _ranks(steps=(T,), eps=1e-8)),
    "eps-outside-sqrt": _probe("forward", _ranks(steps=(T,), eps=0.1)),
    "eps-ignored": _probe("forward", _ranks(steps=(T,), eps=0.1)),
    "eval-uses-batch-stats": _probe("modes", _ranks(steps=(T, E))),
    "train-uses-running-stats": _probe("forward", _ranks(steps=(T,))),
    # mode bugs show in the output and the running statistics together (either alone is another bug): every field
    # is judged. Train without autograd, eval with it: exactly where grad mode and module.training disagree
    "mode-from-grad-mode": _probe(None, _ranks(steps=(T0, E))),
    "eval-mode-ignored": _probe(None, _ranks(steps=(E, E0))),
    "train-mode-ignored": _probe(None, _ranks(steps=(T, T0))),
    "stats-updated-in-eval": _probe("running-stats", _ranks(steps=(E0, E))),
    "stats-not-updated": _probe("running-stats", _ranks(steps=(T, T))),
    "no-track-eval-uses-running": _probe("untracked", _ranks(steps=(E,), track_running_stats=False)),
    "affine-wrong": _probe("forward", _ranks(steps=(T,))),
    # and with one channel, where (C,)-shaped parameters broadcast against any axis without masking the reduction
    "wrong-reduction-axes": _probe("forward", _ranks(steps=(T,)), _sc(5, shape=(4, 1, 2, 2, 5), steps=(T,)),
                                   _sc(3, shape=(4, 1, 5), steps=(T,))),
    # eval from (C,) statistics: a last axis equal to C (values broadcast wrongly), then one that is neither 1 nor C
    # (a crash)
    "stats-broadcast-axis": _probe("modes", _sc(4, shape=(4, 3, 2, 3), steps=(E,)), _sc(3, shape=(4, 3, 3), steps=(E,)),
                                   _sc(4, steps=(E,)), _sc(3, steps=(E,))),
    "cancellation": _probe("numerics", _sc(2, shape=(64, 3), steps=(T0,), distribution="offset", offset=1e4),
                           _sc(4, shape=(16, 3, 2, 2), steps=(T0,), distribution="offset", offset=1e4)),
    "low-precision-accumulation": _probe("numerics", *(
        _sc(r, shape=s, dtype=d, param_dtype="float32", steps=(T0,), distribution="offset", offset=4.0)
        for d in ("float16", "bfloat16") for r, s in ((4, (512, 2, 4, 4)), (2, (8192, 2))))),
    "batch-stats-detached": _probe("gradients", _ranks(steps=(T,))),
    "no-grad-to-affine": _probe("gradients", _ranks(steps=(T,))),
    "running-stats-hold-graph": _probe("state", _ranks(steps=(T, T))),
    "stats-not-buffers": _probe("state", _ranks(steps=(T,))),
    # a step, then the buffers are read
    "state-shape-drift": _probe("state", _ranks(steps=(T,))),
    "dtype-promotion": _probe("dtypes-layouts", _ranks(steps=(T,), dtype="float16", param_dtype="float32"),
                              _sc(4, steps=(T,), dtype="bfloat16", param_dtype="float32")),
    "input-mutated": _probe("state", _ranks(steps=(T0,)), _ranks(steps=(E0,))),
    "non-contiguous-crash": _probe("dtypes-layouts", _sc(4, layout="channels_last", steps=(T,)),
                                   _sc(5, layout="channels_last", steps=(T,)), _ranks(layout="strided", steps=(T,)),
                                   _sc(4, layout="permuted", steps=(T,)), _ranks(layout="channel-slice", steps=(T,)),
                                   _ranks(layout="batch-transposed", steps=(T,))),
    "rank-unsupported": _probe("forward", _ranks(steps=(T,))),
    "rank-wrong-results": _probe("forward", _ranks(steps=(T,))),
    "layout-not-preserved": _probe("dtypes-layouts", _sc(4, layout="channels_last", steps=(T0,)),
                                   _sc(5, layout="channels_last", steps=(T0,))),
    # an empty batch in training (then read the statistics), a constant channel with gradients, and a float16
    # input with values past 256, whose squares overflow float16 (65504) where torch accumulates in float32
    "nan-inf": _probe("edge-inputs", _sc(4, shape=(0, 3, 2, 5), steps=(T, E)), _sc(2, shape=(0, 3), steps=(T, E)),
                      _ranks(steps=(T,), distribution="constant-channel", offset=3.0),
                      _sc(4, steps=(T0,), dtype="float16", param_dtype="float16", distribution="outliers",
                          seed=2766)),           # an outlier of 306: seeds up to 2765 give none past 256 here
    # one value per channel in training
    "missing-error": _probe("errors", _sc(2, shape=(1, 3), steps=(T,)), _sc(4, shape=(1, 3, 1, 1), steps=(T,)),
                            _sc(3, shape=(1, 3, 1), steps=(T,))),
    "error-type": _probe("errors", _sc(2, shape=(1, 3), steps=(T,)), _sc(4, shape=(1, 3, 1, 1), steps=(T,)),
                         _sc(3, shape=(1, 3, 1), steps=(T,))),
    # two training steps at a momentum whose debiased weights differ from a fixed factor; a counter over train,
    # eval, train; float64 in every mode, and untracked
    "zero-debiased-average": _probe("running-stats", _ranks(steps=(T, T), momentum=0.3)),
    "num-batches-tracked-wrong": _probe("running-stats", _ranks(steps=(T, E, T))),
    "reduced-precision": _probe(None, _ranks(steps=(T, E), dtype="float64", param_dtype="float64"),
                                _ranks(steps=(E,), dtype="float64", param_dtype="float64",
                                       track_running_stats=False)),
    # epilogues (the plugin's own, relu or add_relu, is set on every probe scenario): gradients through the ReLU on
    # ordinary data, and a constant channel without affine, whose pre-activations are exactly 0
    "epilogue-mask-source": _probe("gradients", _ranks(steps=(T,))),
    "epilogue-mask-ignored": _probe("gradients", _ranks(steps=(T,)),
                                    _sc(4, shape=(4, 3, 2, 2), steps=(T,), affine=False,
                                        distribution="constant-channel", offset=3.0)),
    "relu-before-affine": _probe("forward", _ranks(steps=(T,))),
    "residual-misplaced": _probe("forward", _ranks(steps=(T,))),
    "residual-grad-wrong": _probe("gradients", _ranks(steps=(T,))),
    "stats-from-residual": _probe("running-stats", _ranks(steps=(T,))),
}
NO_PROBE = {"timeout"}


def probe_for(fid: str) -> Probe | None:
    """The probe of a BatchNorm catalog id (the sweep for ids without one of their own), or None."""
    entry = CATALOG.get(fid)
    if entry is None or entry.kind != "batchnorm" or fid in NO_PROBE:
        return None
    return PROBES.get(fid, SWEEP)


def run_probe(impl: Implementation, fid: str, base: Knobs = TORCH, device: str = "cpu"):
    """Run ``fid``'s probe on ``impl``: (every Named of the diagnosis, scenario, property name, scenarios run) for
    the first scenario diagnosed as ``fid`` (among others, perhaps), else ([], None, None, scenarios run)."""
    probe = probe_for(fid)
    ran = 0
    if probe is None:
        return [], None, None, ran
    prop = BY_NAME[probe.property] if probe.property else None
    values = prop.values if prop else frozenset(VALUE_FIELDS)
    for sc in probe.scenarios:
        sc = sc.with_(device=device, epilogue=impl.epilogue)
        data = materialize(sc)
        trace = execute.run(impl, sc, data)
        cmp = compare(sc, data, trace, base)
        ran += 1
        if cmp.declined is not None:
            continue
        owned = [d for d in cmp.discrepancies if prop is None or prop.owns(d)]
        if not owned:
            continue
        named = diagnose.name(impl, sc, data, trace, cmp, values, owned, base,
                              numeric_first=bool(prop and prop.targeted))
        if any(n.id == fid for n in named):
            return named, sc, probe.property or "probe", ran
    return [], None, None, ran


def confirm_expected(impl: Implementation, ledger: SearchLedger | None = None, device: str = "cpu",
                     found=None) -> PropertyResult | None:
    """Probe every expected BatchNorm id the search did not find (``ledger``: what the search named, its scopes
    and knobs; ``found``: or just the ids, with torch's knobs); confirmed ones become findings with
    ``source='probe'`` and a scope of their own. Returns None when nothing was left to probe."""
    ledger = ledger if ledger is not None else SearchLedger()
    found = ledger.ids if found is None else frozenset(found) | ledger.ids
    # in catalog order (semantic before numeric ids); a confirmed bug is assumed by the later probes, as the search
    # assumes what it named
    todo = [fid for fid in CATALOG if fid in impl.expect and fid not in found and probe_for(fid) is not None]
    if not todo:
        return None
    res = PropertyResult("probes")
    t0 = time.monotonic()
    for fid in todo:
        if fid in ledger.known:
            continue
        before = ledger.base
        named, sc, prop_name, ran = run_probe(impl, fid, before, device)
        res.cases += ran
        # the probed id, and any other expected id diagnosed with it (e.g. a pair of knobs)
        confirmed = [n for n in named if n.id in todo and n.id not in ledger.known]
        if not confirmed:
            continue

        def make(n, sc=sc, prop_name=prop_name, ran=ran, fid=fid):
            evidence = list(n.evidence) + [f"confirmed by the directed probe for {fid} (scenario {ran} of its "
                                           f"{len(probe_for(fid).scenarios)}); the search did not reach it"]
            return Finding(n.id, prop_name, n.where, evidence, n.ratio, sc,
                           script(impl.name, impl.source, n.id, n.where, sc), source="probe")
        new, _ = ledger.record(impl, sc, confirmed, prop_name, make, before, device)
        res.findings.extend(new)
    res.seconds = time.monotonic() - t0
    res.assumed = ledger.base
    return res

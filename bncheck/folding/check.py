"""Fusion: verify conv-BN folding plugins (``@bncheck.fusion``) the way BatchNorm plugins are verified.

Two properties, each searched by Hypothesis over ``cases.fold_scenarios`` (Conv/ConvTranspose 1-3d,
groups and depthwise, stride/padding/dilation/output_padding, bias on/off, affine on/off, eps, running stats over
orders of magnitude, float32/float64/float16, offset inputs):

- ``fold-output``: in eval mode ``fused(x)`` equals ``bn(conv(x))`` computed unfolded in float64, within
  ``budget.fused_output`` (error of rounding W' and b' to the conv dtype and of the conv itself);
- ``fold-module``: the folded module is the conv's type with its weight shape, dtype, device and
  hyperparameters, has a bias, and folding leaves the conv and BatchNorm unchanged.

A failure is shrunk, then named: counterfactual runs of the one knobbed float64 fold reference (``fold.FoldKnobs``:
catalog ``knobs`` of the fusion entries), then structural probes (the same scenario with a bias, with groups=1,
not transposed, as a 2-d conv, ...: the facets of ``facets.FACETS``): a feature that still fails on its own, and
passes once removed, is the cause, named on the scenario that isolates it. Each finding has a scope, the region it
explains: that feature (a conv without bias), or for a knob or a failure no feature explains, the facets whose
single change makes it pass (``scope.isolate``). The search then goes on outside what is named (``ledger``): a
case inside the scope of a crash, or of a feature with an id of its own (a conv without bias, groups, transposed,
1-d/3-d), is moved out of it by removing that feature, as the search has always removed a named feature from
later draws; a failure key (value, module, dtype, ...) inside the scope of another finding named without knobs is
ignored there; a knob is applied to the reference; the same id named again widens its scope ("also: ..."). So a
fold bug behind a crash (a crash without conv bias, eps ignored everywhere) gets its own name. A property ends
when a round's examples pass; the findings and knobs carry over to the next one.

Expected ids the search did not reach are then probed (``folding.probes``). Rounds are seeded from ``seed``;
``database`` (a directory) replays failing examples first and saves new ones, per plugin, property and round;
``phases`` limits the Hypothesis phases, as for the BatchNorm kind.
"""
from __future__ import annotations

import math
import time

import torch

from ..registry import Implementation
from ..results import Finding, Result, accepts, summary
from .cases import FoldScenario, materialize, module_fold
from .probes import confirm_expected, pending
from .repro import script  # noqa: F401  (the reproducer of a finding, as bncheck repro shows it)
from .search import PROFILES, PROPERTIES, State, search_property

CAPABILITIES = {
    "Conv1d": dict(dim=1, kernel=(3,), stride=(1,), padding=(0,), dilation=(1,), output_padding=(0,), spatial=(5,)),
    "Conv2d": {}, "Conv3d": dict(dim=3, kernel=(3,) * 3, stride=(1,) * 3, padding=(0,) * 3, dilation=(1,) * 3,
                                 output_padding=(0,) * 3, spatial=(4,) * 3),
    "ConvTranspose2d": dict(transposed=True, c_out=4), "groups": dict(groups=2, c_in=4, c_out=4),
    "ConvTranspose2d groups": dict(transposed=True, groups=2, c_in=4, c_out=6),
    "bias=False": dict(bias=False), "affine=False": dict(affine=False),
    "float64": dict(dtype="float64"), "float16": dict(dtype="float16"),
}


def capabilities(impl: Implementation, device: str = "cpu") -> dict:
    """Whether the fold accepts each configuration: 'yes', 'declined: why' or 'build error: why'."""
    def attempt(kw):
        conv, bn, _ = materialize(FoldScenario(device=device).with_(**kw))
        module_fold(impl)(conv, bn)
    return accepts({label: (lambda kw=kw: attempt(kw)) for label, kw in CAPABILITIES.items()})


def check_fusion(impl: Implementation, *, profile: str = "default", seed: int = 0, device: str = "cpu",
                 on_property=None, on_partial=None, database: str | None = None, phases=None) -> Result:
    """Search both fusion properties, then probe expected ids the search did not reach; returns a plain
    (JSON-ready) result, shaped like ``search.summarize``.

    ``on_property(name, None)`` when a property starts (the runner's heartbeat) and ``(name, PropertyResult)`` when
    it ends; ``on_partial(result)`` receives the result so far after each property (what survives a later hang).
    ``database``: a Hypothesis example directory to replay failures from and save them to (None: none);
    ``phases``: names of the Hypothesis phases allowed (None: all the search uses), as for the BatchNorm kind."""
    if profile not in PROFILES:
        raise ValueError(f"check_fusion: profile={profile!r} must be one of {', '.join(PROFILES)}")
    t0 = time.monotonic()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)        # tiny convolutions: a thread pool costs more than it gives
    state = State()                 # what each property establishes, the next assumes
    try:
        results = []
        for i, prop in enumerate(PROPERTIES):
            if on_property:
                on_property(prop.name, None)
            r = search_property(impl, prop, profile=profile, seed=seed, device=device, index=i, state=state,
                                database=database, phases=phases)
            results.append(r)
            if on_property:
                on_property(prop.name, r)
            if on_partial:
                on_partial(summarize(impl, results, {}, time.monotonic() - t0))
        if pending(impl, state):    # expected ids the search did not reach: their directed probes
            if on_property:
                on_property("probes", None)
            probed = confirm_expected(impl, state, device)
            results.append(probed)
            if on_property:
                on_property("probes", probed)
        caps = capabilities(impl, device)
    finally:
        torch.set_num_threads(threads)
    return summarize(impl, results, caps, time.monotonic() - t0)


def _size(f: Finding) -> tuple:
    sc = f.scenario       # output findings first (their evidence has the numbers), then the simplest example
    return (f.property != PROPERTIES[0].name, sc.dim != 2, sc.transposed, sc.groups,
            sc.c_in * sc.c_out * math.prod(sc.kernel))


def summarize(impl: Implementation, results: list, caps: dict, seconds: float) -> Result:
    return summary(impl, "fusion", results, caps, seconds, size=_size)

"""The properties bncheck searches, each with its own Hypothesis search so one bug does not mask another.

A property owns some value fields (compared against the oracle within budget) and some structural finding ids;
everything else seen while searching it is left to the property that owns it. ``crash`` is owned by all.
"""
from __future__ import annotations

from dataclasses import dataclass

from hypothesis import strategies as st

from . import strategies as S
from .scenario import LAYOUTS, Scenario, Step

ALL_LAYOUTS = LAYOUTS     # contiguous, channels_last, and non-contiguous views (scenario.LAYOUTS)


@dataclass(frozen=True)
class Property:
    name: str
    doc: str
    strategy: st.SearchStrategy
    values: frozenset = frozenset()         # value fields this property judges
    structural: frozenset = frozenset()     # structural finding ids this property judges
    targeted: bool = False                  # hypothesis.target the worst error ratio
    explicit: tuple = ()                    # edge inputs tried on every run, before anything is drawn

    def owns(self, d) -> bool:
        if d.structural:
            return d.finding in self.structural or d.finding in ("crash", "nan-inf") or (
                d.finding == "output-shape" and "output" in self.values)
        return d.field in self.values


def _p(name, doc, strategy, values=(), structural=(), targeted=False, explicit=()):
    return Property(name, doc, strategy, frozenset(values), frozenset(structural), targeted, tuple(explicit))


T, T0, E, E0 = Step(True, True), Step(True, False), Step(False, True), Step(False, False)


def _edge(shape=(4, 2, 2, 3), **kw) -> Scenario:
    return Scenario(shape=shape, seed=kw.pop("seed", 11), **kw)


NONDEGENERATE = dict(min_n=2, min_reduction=3)   # n = 1 or 2 makes biased/unbiased and other knobs ambiguous
f32_64 = st.sampled_from([("float32", "float32"), ("float64", "float64")])

PROPERTIES = [
    _p("forward", "one training step: output values, errors", S.scenarios(
        step_seqs=S.steps(1, 1, train=True), momentum=st.just(0.1)), values={"output"},
        structural={"missing-error"}),
    _p("running-stats", "running_mean / running_var / num_batches_tracked over train and eval sequences",
       S.scenarios(step_seqs=S.steps(1, 5), affine=st.just(True), shape_kw=NONDEGENERATE),
       values={"running_mean", "running_var", "num_batches_tracked"},
       # momentum 0 and 1 (the ends of the blend), None (a cumulative average from the second step on), and an
       # eval step between training steps
       explicit=(_edge(steps=(T, E, T), momentum=0.0), _edge(steps=(T, E, T), momentum=1.0),
                 _edge(steps=(T, T, T), momentum=None), _edge((6, 2), steps=(T, T, E), momentum=0.3))),
    _p("modes", "output over sequences mixing train/eval and grad on/off", S.scenarios(
        step_seqs=S.steps(2, 5), momentum=st.just(0.1), shape_kw=NONDEGENERATE), values={"output"},
       explicit=(_edge(steps=(T0, E, E0, T)),)),
    _p("gradients", "input, weight and bias gradients with a random upstream gradient", S.scenarios(
        step_seqs=S.steps(1, 3, grad=True), momentum=st.just(0.1), shape_kw=NONDEGENERATE),
       values={"dx", "dweight", "dbias", "dz"},
        structural={"no-grad-to-affine"}),
    _p("untracked", "track_running_stats=False: batch statistics in every mode", S.scenarios(
        step_seqs=S.steps(1, 3), track=st.just(False)), values={"output"}, structural={"missing-error"},
       explicit=(_edge(steps=(T, E), track_running_stats=False), _edge((1, 2), steps=(E,), track_running_stats=False))),
    _p("dtypes-layouts", "dtypes (incl. mixed precision), channels_last and non-contiguous input (strided, "
       "permuted, channel-slice, batch-transposed views)", S.scenarios(
        dtypes=S.dtype_pairs(), layouts=ALL_LAYOUTS, step_seqs=S.steps(1, 2), momentum=st.just(0.1)),
       values={"output", "dx"}, structural={"dtype-promotion", "layout-not-preserved"}),
    _p("numerics", "adversarial inputs: large offsets, constant channels, tiny variance, outliers; larger batches",
       S.scenarios(dtypes=S.dtype_pairs(), step_seqs=S.steps(1, 2, grad=False), momentum=st.just(0.1),
                   distributions=("normal", "offset", "constant-channel", "tiny-variance", "outliers"),
                   offsets=(10.0, 100.0, 1e3, 1e4), shape_kw=dict(max_n=64, max_spatial=8, min_n=2, min_reduction=4,
                                                                    max_numel=8192)),
       values={"output", "running_mean", "running_var"}, targeted=True,
       explicit=(_edge((64, 2), steps=(T0,), distribution="offset", offset=1e4),)),
    _p("edge-inputs", "zero-size batches and constant channels in train/eval sequences with gradients: finite "
       "where torch is finite", S.scenarios(
           step_seqs=S.steps(1, 3), momentum=st.just(0.1), distributions=("normal", "constant-channel"),
           offsets=(0.0, 3.0), shape_kw=dict(max_n=4, max_spatial=3, min_reduction=0)),
       values={"output", "running_mean", "running_var", "dx", "dweight", "dbias", "dz"},
       # an empty batch in training then in eval (the statistics it leaves are read back), and a constant channel
       explicit=(_edge((0, 2, 2, 3), steps=(T, E)), _edge((0, 2), steps=(T, T, E)),
                 _edge((4, 2, 2, 2), steps=(T, E), distribution="constant-channel", offset=3.0))),
    _p("state", "buffers: registered, shaped (C,), no autograd history, input untouched", S.scenarios(
        step_seqs=S.steps(1, 3)), structural={"stats-not-buffers", "state-shape-drift", "running-stats-hold-graph",
                                              "input-mutated"}),
    _p("errors", "inputs torch rejects: one value per channel in training", S.scenarios(
        step_seqs=S.steps(1, 2), shape_kw=dict(max_n=2, max_spatial=1)), structural={"missing-error"},
       # one value per channel in training, as the first and as a later step
       explicit=(_edge((1, 2), steps=(T,)), _edge((1, 2, 1, 1), steps=(E, T)))),
]

BY_NAME = {p.name: p for p in PROPERTIES}

"""Every comparison path turns any observation into discrepancies, never an exception.

``compare`` is fed traces built directly from ``execute``'s dataclasses: first a well-formed one (the oracle's own
results, rounded to the scenario's dtypes, which compares clean), then the same trace with one field malformed the
way a broken implementation could leave it (another shape or rank, not a tensor, a tuple, None, NaN, an integer or
complex tensor, the meta device, a tensor with autograd history, odd state reads). Each malformed field must give a
discrepancy, and nothing may raise, with or without structural checks and under other oracle knobs.
"""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bncheck import oracle as O
from bncheck import runner
from bncheck import strategies as S
from bncheck.compare import compare, oracle_state
from bncheck.execute import Observation, StateRead, Trace
from bncheck.registry import discover
from bncheck.scenario import Scenario, Step, materialize

KEYS = ("running_mean", "running_var")


def _kept(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype).to(torch.float64)


def well_formed(sc: Scenario, data) -> Trace:
    """What a correct implementation leaves: the oracle's results in the scenario's dtypes and layout."""
    cfg = O.Config(sc.eps, sc.momentum, sc.track_running_stats)
    pdt = sc.torch_param_dtype
    names = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    trace = Trace(weight=data.weight.clone() if sc.affine else None, bias=data.bias.clone() if sc.affine else None,
                  state_dict_keys=names, buffer_names=names[2:], stat_attrs={k: k for k in names[2:]})
    if sc.track_running_stats:
        trace.stats_in_state_dict = {k: True for k in KEYS}
        trace.stats_follow_to = {k: True for k in KEYS}
    st_ = oracle_state(sc, trace, data)
    w, b = (data.weight, data.bias) if sc.affine else (None, None)
    c = sc.channels

    def read(state: O.State) -> StateRead:
        if not sc.track_running_stats:
            return StateRead(present={k: False for k in names[2:]})
        return StateRead(state.running_mean.clone(), state.running_var.clone(), state.num_batches_tracked,
                         shapes={k: (c,) for k in KEYS} | {"num_batches_tracked": ()},
                         present={k: True for k in names[2:]})
    for k, stp in enumerate(sc.steps):
        obs = Observation(before=read(st_))
        trace.steps.append(obs)
        res = O.step(data.xs[k], data.dys[k], w, b, st_, cfg, training=stp.train, grad_enabled=stp.grad)
        if res.error is not None:
            obs.error, obs.error_message, obs.error_where = res.error, "Expected more than 1 value", "forward"
            obs.after = read(st_)
            continue
        y = res.y.to(sc.torch_dtype)
        if sc.layout == "channels_last":
            y = y.contiguous(memory_format=torch.channels_last if sc.rank == 4 else torch.channels_last_3d)
        obs.y = y
        if stp.grad and res.dx is not None:
            obs.dx = res.dx.to(sc.torch_dtype)
            if sc.affine:
                obs.dweight, obs.dbias = _kept(res.dweight, pdt), _kept(res.dbias, pdt)
        if sc.track_running_stats:
            st_ = O.State(_kept(res.state.running_mean, pdt), _kept(res.state.running_var, pdt),
                          res.state.num_batches_tracked, res.state.trained)
        obs.after = read(st_)
    return trace


# -- malformations: (name, applies to this observation, what it does to the trace) ------------------------------

def _nan_first(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t[(0,) * t.dim()] = math.nan
    return t


OUTPUTS = {   # a malformed output (of a step that produced one)
    "flattened": lambda y: y.reshape(-1),
    "extra leading axis": lambda y: y.unsqueeze(0),     # (N, C, L) -> (1, N, C, L), as (1, C, 1, 1) stats do
    "one element more": lambda y: torch.cat([y.reshape(-1), y.reshape(-1)[:1] + 1]),
    "integer": lambda y: y.round().to(torch.int64),
    "complex": lambda y: y.to(torch.complex128) + 1j,
    "meta device": lambda y: y.to("meta"),
    "NaN": _nan_first,
    "tuple": lambda y: (y, y),
    "list": lambda y: [y],
    "None": lambda y: None,
    "str": lambda y: "output",
    "float": lambda y: 1.5,
    "dict": lambda y: {"y": y},
    "off, with autograd history": lambda y: (y.double() + 1e4).requires_grad_(),   # past any budget
}

GRADS = {   # a malformed dx / dweight / dbias
    "None": lambda g: None,
    "wrong shape": lambda g: torch.cat([g.reshape(-1), g.reshape(-1)[:1]]),
    "list": lambda g: g.tolist(),
    "NaN": lambda g: torch.full_like(g, math.nan, dtype=torch.float64),
    "complex": lambda g: g.to(torch.complex128) + 1j,
    "meta device": lambda g: g.to("meta"),
    "off, with autograd history": lambda g: (g.double() + 1e4).requires_grad_(),   # past any budget
}

STATS = {   # a malformed running statistic read after (or before) a step
    "wrong shape": lambda t: torch.cat([t, t[:1]]),
    "matrix": lambda t: t.reshape(1, -1).expand(2, -1).clone(),
    "float": lambda t: 0.5,
    "str": lambda t: "running",
    "NaN": lambda t: torch.full_like(t, math.nan),
    "meta device": lambda t: t.to("meta"),
}

COUNTS = {   # a malformed num_batches_tracked read after a step
    "off by one": lambda n: n + 1,
    "fraction": lambda n: n + 0.5,
    "str": lambda n: "one",
    "two numbers": lambda n: torch.tensor([n, n]),
    "NaN": lambda n: math.nan,
}


def _steps_with_output(trace):
    return [k for k, o in enumerate(trace.steps) if o.error is None and o.y is not None]


def _malformations(sc: Scenario, trace: Trace) -> list:
    """(field, step, how) for every malformation that applies to this trace."""
    out = []
    for k in _steps_with_output(trace):
        obs = trace.steps[k]
        out += [("y", k, m) for m in OUTPUTS if not (m == "NaN" and obs.y.numel() == 0)]
        if obs.dx is not None and obs.dx.numel():
            out += [("dx", k, m) for m in GRADS if m != "None"]
        for key in ("dweight", "dbias"):
            if getattr(obs, key) is not None:
                out += [(key, k, m) for m in GRADS]
        if sc.track_running_stats:
            out += [(f"after.{key}", k, m) for key in KEYS for m in STATS]
            out += [("after.num_batches_tracked", k, m) for m in COUNTS]
            out += [("after.shape", k, "type name"), ("error", k, "raised")]
    if sc.track_running_stats:
        out += [(f"before.{key}", 0, m) for key in KEYS for m in STATS if m != "NaN"]
        out += [("stats.state_dict", 0, "not in state_dict()"), ("stats.to", 0, "not converted by .to()")]
    return out


def malform(trace: Trace, where: str, k: int, how: str) -> Trace:
    obs = trace.steps[k]
    if where == "y":
        obs.y = OUTPUTS[how](obs.y)
    elif where in ("dx", "dweight", "dbias"):
        setattr(obs, where, GRADS[how](getattr(obs, where)))
    elif where.startswith(("after.", "before.")) and where.endswith(KEYS):
        read, key = where.split(".")
        r = getattr(obs, read)
        setattr(r, key, STATS[how](getattr(r, key)))
    elif where == "after.num_batches_tracked":
        obs.after.num_batches_tracked = COUNTS[how](obs.after.num_batches_tracked)
    elif where == "after.shape":
        obs.after.shapes["running_mean"] = "list"
    elif where == "error":
        obs.error, obs.error_message, obs.error_where = "RuntimeError", "kernel failed", "forward"
    elif where == "stats.state_dict":
        trace.stats_in_state_dict["running_var"] = False
    elif where == "stats.to":
        trace.stats_follow_to["running_mean"] = False
    return trace


SCENARIOS = S.scenarios(dtypes=S.dtype_pairs(), layouts=("contiguous", "channels_last", "strided"),
                        step_seqs=S.steps(1, 3), track=st.booleans(),
                        shape_kw=dict(max_n=5, max_c=4, max_spatial=3, min_reduction=1))


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(sc=SCENARIOS, pick=st.data())
def test_a_malformed_trace_gives_discrepancies_and_never_raises(sc, pick):
    data = materialize(sc)
    clean = compare(sc, data, well_formed(sc, data))
    assert clean.discrepancies == [] and clean.declined is None, (sc.describe(), clean.discrepancies)
    options = _malformations(sc, well_formed(sc, data))
    if not options:
        return   # every step raised (one value per channel in training), as torch does: nothing to malform
    where, k, how = pick.draw(st.sampled_from(options), label="malformation")
    trace = malform(well_formed(sc, data), where, k, how)
    cmp = compare(sc, data, trace)
    assert cmp.discrepancies, f"{where} {how} at step {k + 1} gave no discrepancy on {sc.describe()}"
    # diagnosis compares the same trace without structural checks and under other knobs: no exception there
    # either, and a value that cannot be compared is an unbounded miss, never a pass
    for knobs in (O.TORCH, O.with_knobs(stats_broadcast="last-axis"), O.with_knobs(eps_placement="outside")):
        loose = compare(sc, data, trace, knobs, structural=False, budget_knobs=O.TORCH)
        if knobs == O.TORCH and (where in ("y", "dx", "dweight", "dbias") or where.startswith("after.r")) and \
                how != "integer":
            assert loose.worst() == math.inf or loose.discrepancies, (where, how)


def test_each_malformed_output_names_what_it_is():
    sc = Scenario(shape=(3, 3, 4), steps=(Step(True, True),))
    data = materialize(sc)
    seen = {}
    for how in OUTPUTS:
        cmp = compare(sc, data, malform(well_formed(sc, data), "y", 0, how))
        seen[how] = {d.finding for d in cmp.discrepancies}
    for how in ("flattened", "extra leading axis", "one element more",
                "tuple", "list", "None", "str", "float", "dict", "complex", "meta device"):
        assert "output-shape" in seen[how], (how, seen[how])
    assert "dtype-promotion" in seen["integer"] and "nan-inf" in seen["NaN"]
    assert seen["off, with autograd history"] == {None, "dtype-promotion"}   # a value miss, and float64 output


def test_a_wrong_shape_that_a_knob_reproduces_is_compared_under_that_knob():
    """(C,) statistics broadcast against the last axis turn (N, C, 1) into (N, C, C): under the matching knob the
    shape is expected and the values are compared, so diagnosis can name the knob rather than the shape."""
    sc = Scenario(shape=(4, 3, 1), steps=(Step(False, False),))
    data = materialize(sc)
    x = data.xs[0].double()
    rm, rv = data.running_mean, data.running_var
    y = ((x - rm) / torch.sqrt(rv + sc.eps)) * data.weight.view(1, 3, 1) + data.bias.view(1, 3, 1)
    trace = well_formed(sc, data)
    trace.steps[0].y = y.to(torch.float32)
    assert {d.finding for d in compare(sc, data, trace).discrepancies} == {"output-shape"}
    fit = compare(sc, data, trace, O.with_knobs(stats_broadcast="last-axis"), structural=False)
    assert fit.discrepancies == [] and fit.ratios["output"] <= 1.0


# -- the runner: a wrong shape no longer kills the worker -------------------------------------------------------

ODD = Path(__file__).parent / "plugins_odd"


def test_statistics_broadcast_wrongly_on_rank_3_are_findings_and_later_properties_still_run():
    reg = discover(plugin_dirs=[ODD], entry_points=False)
    impl = reg.implementations["odd-rank3-broadcast"]
    (r,) = runner.run_all([impl], jobs=1, timeout_s=120, profile="quick", seed=0,
                          properties=["forward", "dtypes-layouts"])
    assert not [f for f in r.findings if f.where == "worker"], r.findings
    assert set(r.properties) == {"forward", "dtypes-layouts"}
    assert all(p.cases > 0 for p in r.properties.values())
    forward = [f for f in r.findings if f.property == "forward"]
    assert forward and any("shape" in " ".join(f.evidence) for f in forward), forward
    # float32 weights applied to a float16 input: found by the later property
    assert "dtype-promotion" in r.properties["dtypes-layouts"].findings


# -- the other comparison paths: folded convolutions and synchronised BatchNorm --------------------------------

def _folded(change):
    from bncheck.folding.fold import fold_conv_bn

    def fold(conv, bn):
        fused = fold_conv_bn(conv, bn)
        change(fused)
        return fused
    return fold


FOLDS = {   # a folded module that misbehaves: the category its problem must have
    "hyperparameter replaced by a tensor": (lambda m: setattr(m, "stride", torch.tensor([1, 1])), "module"),
    "output on the meta device": (lambda m: setattr(m, "forward", lambda x: torch.nn.Conv2d.forward(m, x)
                                                    .to("meta")), "module"),
    "output a tuple": (lambda m: setattr(m, "forward", lambda x: (torch.nn.Conv2d.forward(m, x),)), "module"),
    "output flattened": (lambda m: setattr(m, "forward", lambda x: torch.nn.Conv2d.forward(m, x).reshape(-1)),
                         "value"),
    "output NaN": (lambda m: setattr(m, "forward", lambda x: torch.nn.Conv2d.forward(m, x) * math.nan), "nan-inf"),
}


def test_a_misbehaving_folded_module_is_a_problem_never_an_exception():
    from bncheck.folding.cases import FoldScenario, evaluate
    sc = FoldScenario(c_in=2, c_out=3, kernel=(3, 3), spatial=(5, 5), seed=1)
    for name, (change, category) in FOLDS.items():
        out = evaluate(_folded(change), sc)
        assert [p.category for p in out.problems] == [category], (name, out.problems)


def test_a_malformed_rank_result_is_a_sync_discrepancy_never_an_exception():
    import numpy as np

    from bncheck.sync import reference as R
    sc = R.SyncScenario(shards=(2, 3), channels=3, spatial=(4,), steps=(True, False))
    data = R.materialize(sc)

    def observed():
        out = [{"steps": []} for _ in sc.shards]
        befores = [(data.running_mean, data.running_var, 0)] * sc.world_size
        for k, train in enumerate(sc.steps):
            exp = R.step(sc, data.xs[k], data.dys[k], data.weight, data.bias, befores, train)
            for r, e in enumerate(exp):
                v = {key: (t.to(sc.torch_dtype).numpy() if isinstance(t, torch.Tensor) else t)
                     for key, t in e.values.items()}
                state = [{"running_mean": befores[r][0].numpy(), "running_var": befores[r][1].numpy(),
                          "num_batches_tracked": befores[r][2]},
                         {"running_mean": v["running_mean"], "running_var": v["running_var"],
                          "num_batches_tracked": v["num_batches_tracked"]}]
                out[r]["steps"].append({"y": v["output"], "dx": v["dx"], "dweight": v.get("dweight"),
                                        "dbias": v.get("dbias"), "before": state[0], "after": state[1]})
            befores = [(e.values["running_mean"].to(sc.torch_dtype).double(),
                        e.values["running_var"].to(sc.torch_dtype).double(), e.values["num_batches_tracked"])
                       for e in exp]
        return out
    assert R.compare(sc, data, observed()).discrepancies == []
    bad = {
        "y": [lambda a: a.reshape(-1), lambda a: (a, a), lambda a: np.array([object()] * 2), lambda a: None,
              lambda a: a.astype(np.complex128) + 1j, lambda a: a[None]],
        "dweight": [lambda a: a[:-1], lambda a: "grad"],
        "before.running_mean": [lambda a: a[:-1], lambda a: "mean"],
        "after.num_batches_tracked": [lambda n: "one", lambda n: np.array([n, n])],
    }
    for where, changes in bad.items():
        for change in changes:
            obs = observed()
            step = obs[1]["steps"][0]
            if "." in where:
                part, key = where.split(".")
                step[part][key] = change(step[part][key])
            else:
                step[where] = change(step[where])
            cmp = R.compare(sc, data, obs)
            if where.startswith("before."):   # not C values: the reference follows its own state, as for None
                assert cmp.discrepancies == [], (where, cmp.discrepancies)
                continue
            assert cmp.discrepancies and all(d.rank == 1 for d in cmp.discrepancies), (where, cmp.discrepancies)

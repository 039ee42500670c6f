"""Directed probes (bncheck/probes.py): each one, run on an implementation with exactly that bug, names that bug;
and the rank diagnosis counts only ranks that actually ran."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bncheck                                    # noqa: E402
from bncheck import diagnose, probes             # noqa: E402
from bncheck.catalog import CATALOG              # noqa: E402
from bncheck.oracle import TORCH                 # noqa: E402
from bncheck.registry import Registry            # noqa: E402
from bncheck.scenario import Scenario, Step      # noqa: E402
from zoo.epilogue_mutants import MUTANTS as EPILOGUE_MUTANTS   # noqa: E402
from zoo.mutants import MUTANTS, findings_of     # noqa: E402
from zoo.reference import ScratchBN              # noqa: E402


class AlwaysEval(ScratchBN):
    """Always evaluates (running statistics, no update), whatever .train() says."""
    def _training_mode(self):
        return False


class ContiguousOut(ScratchBN):
    """Returns a contiguous output for channels_last input."""
    def _finish(self, y, x):
        return y.to(x.dtype).contiguous()


class EvalStatsLastAxis(ScratchBN):
    """Eval broadcasts the (C,) running statistics against the last axis."""
    def _norm_stats(self, x, training, mean, var):
        if self._use_batch_stats(training):
            return mean, var
        return self.running_mean.to(x.dtype), self.running_var.to(x.dtype)


class SquaredTerm(ScratchBN):
    """Adds 0.05 * y**2 to the normalised output: no catalog knob expresses it."""
    def _normalize(self, xc, mean, var):
        y = super()._normalize(xc, mean, var)
        return y + 0.05 * y * y


class ExtraBatchAxis(ScratchBN):
    """Returns the output with an extra leading axis of size 1, on every rank."""
    def _finish(self, y, x):
        return y.to(x.dtype).unsqueeze(0)


# ids without a zoo mutant: a one-defect ScratchBN subclass here
EXTRA = {"train-mode-ignored": AlwaysEval, "layout-not-preserved": ContiguousOut,
         "stats-broadcast-axis": EvalStatsLastAxis, "output-mismatch": SquaredTerm,
         "output-shape": ExtraBatchAxis}


def _impl(name: str, cls) -> bncheck.registry.Implementation:
    epilogue = getattr(cls, "epilogue", "none")

    def build(spec: bncheck.Spec):
        kw = {"epilogue": epilogue} if epilogue != "none" else {}
        return cls(spec.num_features, eps=spec.eps, momentum=spec.momentum, affine=spec.affine,
                   track_running_stats=spec.track_running_stats, device=spec.device, dtype=spec.dtype, **kw)
    return Registry().declare("batchnorm", name, build,
                              options={"epilogue": epilogue} if epilogue != "none" else None)


CASES = sorted([(fid, f"zoo-{name}" + ("" if isinstance(cls.finding, str) else f"-{fid}"), cls)
                for name, cls in MUTANTS.items() for fid in findings_of(cls)] +
               [(cls.finding, f"zoo-epilogue-{name}", cls) for name, cls in EPILOGUE_MUTANTS.items()] +
               [(fid, f"extra-{fid}", cls) for fid, cls in EXTRA.items()], key=lambda t: t[1])


def test_every_batchnorm_id_has_a_probe_and_a_test_implementation():
    ids = {e.id for e in CATALOG.values() if e.kind == "batchnorm"}
    assert {fid for fid in ids if probes.probe_for(fid) is None} == probes.NO_PROBE == {"timeout"}
    assert set(probes.PROBES) <= ids
    untested = ids - {fid for fid, _, _ in CASES} - probes.NO_PROBE
    assert not untested, f"probes without a test implementation: {sorted(untested)}"


@pytest.mark.parametrize("fid, name, cls", CASES, ids=[c[1] for c in CASES])
def test_probe_names_its_id(fid, name, cls):
    named, sc, prop, ran = probes.run_probe(_impl(name, cls), fid, TORCH)
    assert any(n.id == fid for n in named), f"{name}: the {fid} probe gave {[n.id for n in named]} after {ran}"
    hit = next(n for n in named if n.id == fid)
    assert hit.evidence and sc is not None


def test_probe_on_a_correct_implementation_names_nothing():
    impl = _impl("correct", ScratchBN)
    for fid in ("inverted-momentum", "nan-inf", "state-shape-drift", "eval-mode-ignored", "rank-wrong-results"):
        named, sc, _, ran = probes.run_probe(impl, fid, TORCH)
        assert named == [] and sc is None and ran == len(probes.probe_for(fid).scenarios), fid


def test_confirm_expected_marks_findings_as_probe():
    impl = Registry().declare("batchnorm", "nan-after-empty", _impl("x", MUTANTS["nan-after-empty-batch"]).build,
                              expect={"nan-inf", "inverted-momentum"})
    res = probes.confirm_expected(impl, found=frozenset())
    assert [(f.id, f.source) for f in res.findings] == [("nan-inf", "probe")]
    assert "confirmed by the directed probe for nan-inf" in res.findings[0].evidence[-1]
    assert res.findings[0].result().source == "probe"
    assert probes.confirm_expected(impl, found=frozenset({"nan-inf", "inverted-momentum"})) is None


class Rank3Crash(ScratchBN):
    """Raises on 3D input."""
    def _check_input(self, x):
        if x.dim() == 3:
            raise ValueError("no 3D input")


def test_declined_ranks_are_not_counted_as_running():
    def build(spec):
        if spec.ndim in (2, 5):
            raise bncheck.Unsupported("4-d and 3-d only")
        return Rank3Crash(spec.num_features, eps=spec.eps, momentum=spec.momentum, affine=spec.affine,
                          track_running_stats=spec.track_running_stats, dtype=spec.dtype)
    impl = Registry().declare("batchnorm", "rank3-crash", build)
    fid, why = diagnose.classify_crash(impl, Scenario(shape=(4, 3, 5), steps=(Step(True, True),)), TORCH)
    assert fid == "rank-unsupported" and "rank 4 runs" in why, why     # not "rank 2, 4, 5 runs"


def test_rank_wrong_results_is_not_rank_unsupported():
    impl = _impl("rank3", MUTANTS["rank3-reshape-scrambled"])
    sc = Scenario(shape=(4, 3, 5), steps=(Step(True, False),))
    fid, why = diagnose.probe_rank(impl, sc, TORCH)
    assert fid == "rank-wrong-results" and "rank 2, 4, 5 is correct" in why, why


def test_stats_not_updated_covers_a_counting_counter():
    # factor 0 with num_batches_tracked counting is "statistics never change", not "momentum ignored"
    assert {"momentum_override": 0.0} not in CATALOG["momentum-ignored"].knobs
    assert {"update_stats": False, "count_frozen": True} in CATALOG["stats-not-updated"].knobs
    from bncheck.oracle import Config, State, forward, with_knobs
    x = torch.randn(4, 3, dtype=torch.float64)
    st = State(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64), 5)
    res = forward(x, None, None, st, Config(1e-5, 0.1, True), training=True, grad_enabled=False,
                  knobs=with_knobs(update_stats=False, count_frozen=True))
    assert res.state.num_batches_tracked == 6 and torch.equal(res.state.running_mean, st.running_mean)

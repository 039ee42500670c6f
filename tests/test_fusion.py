"""The conv-BN fusion check: references clean, the seed fold and every zoo mutant named (a fold bug behind a crash
too, each finding with its scope), every id confirmed by its directed probe, failures replayed from the example
database, budgets cross-checked against torch, both plugin forms adapted, bad plugins reported as findings."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_conv_bn_weights

import bncheck
from bncheck.catalog import CATALOG
from bncheck.folding.fold import fold_conv_bn, fold_weights
from bncheck.folding.check import check_fusion
from bncheck.results import Result
from bncheck.folding.cases import (FoldScenario, evaluate, fold_scenarios, materialize, module_fold, oracle_output,
                                  weights_fold)
from bncheck.registry import Registry, discover

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from zoo.fusion_mutants import CORRECT, MUTANTS     # noqa: E402
ZOO = ROOT / "tests" / "zoo" / "fusion_plugins.py"
KEYS = {"name", "kind", "origin", "expect", "cases", "declined_cases", "findings", "worst_ratio_by_dtype",
        "properties", "capabilities", "seconds"}
FINDING_KEYS = {"id", "property", "where", "evidence", "error_ratio", "example", "scenario", "repro", "source",
                "scope", "also"}


@pytest.fixture(scope="module")
def plugins():
    reg = discover(plugin_dirs=[ROOT / "implementations"], plugin_files=[ZOO], entry_points=False)
    assert not reg.errors, reg.errors
    return reg.implementations


@pytest.fixture(scope="module")
def seed_result(plugins):
    return check_fusion(plugins["seed-000-fold"], profile="default", seed=0)


def _ids(result) -> set:
    return {f.id for f in result.findings}


def _torch_fold(conv, bn):
    return fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, torch.nn.modules.conv._ConvTransposeNd))


# -- the bundled plugins ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["torch-fuse-conv-bn", "bncheck-fold"])
def test_reference_folds_are_clean(plugins, name):
    r = check_fusion(plugins[name], profile="default", seed=0)
    assert KEYS <= set(r.to_json()) and r.kind == "fusion"
    assert r.findings == [], [(f.id, f.evidence) for f in r.findings]
    assert r.cases - r.declined_cases >= 200
    assert set(r.worst_ratio_by_dtype) == {"float16", "float32", "float64"}
    assert all(0 < v < 0.5 for v in r.worst_ratio_by_dtype.values()), r.worst_ratio_by_dtype
    assert Result.from_json(json.loads(json.dumps(r.to_json()))) == r


def test_torch_declines_only_grouped_transposed(plugins):
    caps = check_fusion(plugins["torch-fuse-conv-bn"], profile="quick", seed=0).capabilities
    assert caps.pop("ConvTranspose2d groups").startswith("declined: grouped ConvTranspose")
    assert set(caps.values()) == {"yes"}


def test_seed_000_fold_has_exactly_its_expected_findings(plugins, seed_result):
    r = seed_result
    assert _ids(r) == set(plugins["seed-000-fold"].expect) == {
        "fold-transposed-axis", "fold-bias-none-crash", "rank-unsupported", "crash", "fold-wrong-module"}
    by_id = {f.id: f for f in r.findings}
    for f in r.findings:
        assert set(f.to_json()) == FINDING_KEYS and f.evidence and f.repro and f.example
        assert eval(f.scenario, {"FoldScenario": FoldScenario}).describe() == f.example
    assert "affine=False" in by_id["crash"].example and "'NoneType'" in by_id["crash"].evidence[0]
    assert "bias=False" in by_id["fold-bias-none-crash"].example
    assert by_id["fold-transposed-axis"].example.startswith("ConvTranspose")
    assert by_id["fold-wrong-module"].example.startswith("Conv2d(1->1")      # b_.squeeze() of one channel
    assert "shape ()" in by_id["fold-wrong-module"].evidence[0]
    assert by_id["rank-unsupported"].example.startswith(("Conv1d", "Conv3d"))
    # where the formula holds: plain Conv2d with bias, groups, float16 all pass, and its worst error is small
    assert r.capabilities["Conv2d"] == r.capabilities["groups"] == r.capabilities["float16"] == "yes"
    assert all(v < 1 for v in r.worst_ratio_by_dtype.values())


def test_a_knob_explanation_reads_like_the_style_guide(seed_result):
    f = {f.id: f for f in seed_result.findings}["fold-transposed-axis"]
    assert f.property == "fold-output" and f.where == "fused(x)" and f.error_ratio > 1
    diff, why = f.evidence[:2]
    assert diff.startswith("max |diff| ") and " x budget (" in diff and "elements over budget" in diff
    assert why.startswith("matches the fold reference with the scale applied along weight axis 0")


def test_repro_script_runs_standalone_and_reproduces(seed_result, tmp_path):
    f = {f.id: f for f in seed_result.findings}["fold-bias-none-crash"]
    path = tmp_path / "repro.py"
    path.write_text(f.repro)
    proc = subprocess.run([sys.executable, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "NoneType" in proc.stdout


# -- the mutant zoo ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [f"zoo-fold-correct-{n}" for n in CORRECT])
def test_correct_zoo_folds_are_clean(plugins, name):
    r = check_fusion(plugins[name], profile="quick", seed=0)
    assert r.findings == [], [(f.id, f.evidence) for f in r.findings]


@pytest.mark.parametrize("name,expect", sorted((f"zoo-fold-{n}", c.expect) for n, c in MUTANTS.items()))
def test_each_mutant_is_caught_and_named(plugins, name, expect):
    r = check_fusion(plugins[name], profile="default", seed=0)
    assert _ids(r) == expect, [(f.id, f.evidence, f.example) for f in r.findings]
    assert all(f.scope == "every case" or f.scope.startswith("only with ") for f in r.findings)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_the_fusion_zoo_is_named_exactly_on_other_seeds(plugins, seed):
    for name, cls in {**{f"zoo-fold-{n}": c for n, c in MUTANTS.items()},
                      **{f"zoo-fold-correct-{n}": c for n, c in CORRECT.items()}}.items():
        r = check_fusion(plugins[name], profile="default", seed=seed)
        assert _ids(r) == cls.expect, (name, [(f.id, f.example) for f in r.findings])


def test_a_fold_bug_behind_a_crash_is_named_with_the_crash(plugins):
    """The shrunk failing case is the crash (no conv bias); searching on outside its scope finds the ignored eps."""
    r = check_fusion(plugins["zoo-fold-bias-none-crash-eps-ignored"], profile="default", seed=0)
    by_id = {f.id: f for f in r.findings}
    assert set(by_id) == {"fold-bias-none-crash", "fold-eps-ignored"}
    assert by_id["fold-bias-none-crash"].scope == "only with a conv without bias"
    assert "bias=True" in by_id["fold-eps-ignored"].example
    assert "eps ignored" in by_id["fold-eps-ignored"].evidence[1]


def test_the_scopes_of_the_seed_fold_name_the_features_it_fails_on(seed_result):
    scopes = {f.id: f.scope for f in seed_result.findings}
    assert scopes == {"fold-transposed-axis": "only with a transposed conv", "crash": "only with affine=False",
                      "fold-bias-none-crash": "only with a conv without bias",
                      "rank-unsupported": "only with a 1-d or 3-d conv",
                      "fold-wrong-module": "only with a single output channel"}


@pytest.mark.parametrize("name,expect", sorted((f"zoo-fold-{n}", c.expect) for n, c in MUTANTS.items()))
def test_every_expected_fusion_id_is_confirmed_by_its_probe_without_a_search(plugins, name, expect):
    """With no Hypothesis phase the search runs nothing; the directed probes name every expected id."""
    r = check_fusion(plugins[name], phases=[])
    assert _ids(r) == expect, [(f.id, f.evidence) for f in r.findings]
    assert {f.source for f in r.findings} == {"probe"} and list(r.properties)[-1] == "probes"


def test_the_seed_fold_is_confirmed_by_probes_alone(plugins):
    r = check_fusion(plugins["seed-000-fold"], phases=[])
    assert _ids(r) == set(plugins["seed-000-fold"].expect), [(f.id, f.evidence) for f in r.findings]


def test_every_id_a_fusion_check_names_has_a_probe():
    from bncheck.folding.diagnosis import FALLBACK, PROBES as FEATURES
    from bncheck.folding.probes import probe_for
    ids = {e.id for e in CATALOG.values() if e.kind == "fusion"} | set(FALLBACK.values()) | \
        {fid for _, fid in FEATURES if fid}
    assert {fid for fid in ids if probe_for(fid) is None} == set()


def test_a_failure_found_once_replays_from_the_example_database(plugins, tmp_path):
    impl = plugins["zoo-fold-eps-ignored"]
    db = str(tmp_path / "examples")
    replay = ["reuse", "shrink"]              # nothing generated: a finding can only come from the database
    nothing = check_fusion(impl, database=db, phases=replay)
    assert [f.source for f in nothing.findings] == ["probe"]        # nothing stored yet: only its probe shows it
    found = check_fusion(impl, profile="quick", seed=3, database=db)
    assert [(f.id, f.source) for f in found.findings] == [("fold-eps-ignored", "search")]
    assert any((tmp_path / "examples").rglob("*")), "the failing example was not saved"
    # replayed through bncheck.check: the runner passes database and phases on to the fusion check's worker
    again = bncheck.check(impl, seed=4, database=db, phases=replay)
    assert [(f.id, f.source) for f in again.findings] == [("fold-eps-ignored", "search")]


def test_transposed_reshape_back_is_wrong_exactly_where_both_channel_counts_exceed_one():
    """The mutant's defect against torch's own fold: right for C_in = 1 or C_out = 1, wrong otherwise."""
    fold = MUTANTS["transposed-reshape-back"]()
    for c_in, c_out in ((1, 3), (3, 1), (2, 2), (2, 3), (3, 2)):
        conv, bn, x = materialize(FoldScenario(transposed=True, c_in=c_in, c_out=c_out, dtype="float64", seed=5))
        got, want = fold(conv, bn).weight, _torch_fold(conv, bn).weight
        assert torch.allclose(got, want) == (c_in == 1 or c_out == 1), (c_in, c_out)


@pytest.mark.parametrize("profile,seeds", [("quick", (0, 1, 2)), ("default", (1, 2))])
def test_a_transposed_fold_wrong_only_with_several_channels_is_found_at_every_profile(plugins, profile, seeds):
    """Transposed convs with C_in, C_out >= 2 and groups=1 are common draws (and a directed first example), so a
    fold right only for depthwise or single-channel transposed convs is named at the quick and default profiles."""
    for s in seeds:
        r = check_fusion(plugins["zoo-fold-transposed-reshape-back"], profile=profile, seed=s)
        assert _ids(r) == {"fold-transposed-axis"}, (profile, s, [(f.id, f.example) for f in r.findings])
        assert r.capabilities["ConvTranspose2d groups"].startswith("declined")


# -- budget cross-check -----------------------------------------------------------------------------------------

def test_torch_fold_stays_well_within_budget():
    worst = {}

    @seed(20240607)
    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(fold_scenarios())
    def sweep(sc):
        if sc.transposed and sc.groups > 1:          # pytorch/pytorch#180995: torch cannot fold these
            return
        for fold in (_torch_fold, fold_conv_bn):
            out = evaluate(fold, sc)
            if out.unrepresentable:
                return
            assert out.problems == [] and out.ratio < 0.5, (fold, sc.describe(), out.problems, out.ratio)
            worst[sc.dtype] = max(worst.get(sc.dtype, 0.0), out.ratio)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sweep()
    finally:
        torch.set_num_threads(threads)
    assert set(worst) == {"float16", "float32", "float64"} and min(worst.values()) > 1e-3, worst


def test_budget_is_tight_enough_to_see_a_small_error():
    """A fold whose W' is off by a relative 1e-5 (about 170 float32 ulps) is over budget; exact is not."""
    sc = FoldScenario(c_in=3, c_out=3, kernel=(3, 3), spatial=(5, 5), seed=3)

    def off(conv, bn):
        fused = fold_conv_bn(conv, bn)
        with torch.no_grad():
            fused.weight.mul_(1 + 1e-5)
        return fused
    assert evaluate(fold_conv_bn, sc).ratio < 0.5
    bad = evaluate(off, sc)
    assert bad.ratio > 1 and bad.problems[0].category == "value"


# -- adapters and forms -----------------------------------------------------------------------------------------

PAIRS = [FoldScenario(), FoldScenario(transposed=True, c_in=2, c_out=4, bias=False),
         FoldScenario(transposed=True, c_in=4, c_out=6, groups=2, affine=False),
         FoldScenario(dim=1, kernel=(3,), stride=(2,), padding=(1,), dilation=(1,), output_padding=(0,),
                      spatial=(7,), groups=2, c_in=2, c_out=4, dtype="float64")]


@pytest.mark.parametrize("sc", PAIRS, ids=lambda s: s.describe()[:40])
def test_module_form_used_as_weights_form_matches_torch(plugins, sc):
    conv, bn, _ = materialize(sc)
    transposed = isinstance(conv, torch.nn.modules.conv._ConvTransposeNd)
    args = (conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.weight, bn.bias, bn.eps, transposed)
    w, b = weights_fold(plugins["bncheck-fold"])(*args)
    assert w.shape == conv.weight.shape and b.shape == (sc.c_out,) and w.dtype == conv.weight.dtype
    assert torch.equal(w, fold_weights(*args)[0]) and torch.equal(b, fold_weights(*args)[1])
    if not (transposed and sc.groups > 1):
        tw, tb = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight,
                                      bn.bias, transpose=transposed)
        torch.testing.assert_close(w, tw.detach())
        torch.testing.assert_close(b, tb.detach())


@pytest.mark.parametrize("sc", PAIRS, ids=lambda s: s.describe()[:40])
def test_weights_form_used_as_module_form_computes_bn_of_conv(plugins, sc):
    conv, bn, x = materialize(sc)
    fused = module_fold(plugins["zoo-fold-correct-weights"])(conv, bn)
    assert type(fused) is type(conv) and fused.weight.shape == conv.weight.shape
    with torch.no_grad():
        torch.testing.assert_close(fused(x).double(), oracle_output(conv, bn, x),
                                   rtol=1e-4 if sc.dtype == "float32" else 1e-9, atol=1e-4)


def test_form_is_read_from_the_signature():
    reg = Registry()
    with reg._loading("test", "module:test"):
        @bncheck.fusion("t-weights")
        def w(W, b, running_mean, running_var, weight, bias, eps, transposed):
            return fold_weights(W, b, running_mean, running_var, weight, bias, eps, transposed)

        @bncheck.fusion("t-module", expect={"crash"})
        def m(conv, bn):
            return fold_conv_bn(conv, bn)
    assert reg.implementations["t-weights"].options["form"] == "weights"
    assert reg.implementations["t-module"].options["form"] == "module"
    assert reg.implementations["t-module"].kind == "fusion" and reg.implementations["t-module"].expect == {"crash"}


# -- bad plugins ------------------------------------------------------------------------------------------------

def _impl(fn, name="bad", form=None):
    reg = Registry()
    with reg._loading("tests/test_fusion.py", "module:tests.test_fusion"):
        bncheck.fusion(name, form=form)(fn)
    return reg.implementations[name]


def test_a_fold_that_raises_is_a_crash_finding():
    def boom(conv, bn):
        raise RuntimeError("fold exploded")
    r = check_fusion(_impl(boom), profile="quick", seed=0)
    assert _ids(r) == {"crash"}
    assert "fold exploded" in r.findings[0].evidence[0]
    assert set(r.capabilities.values()) == {"build error: RuntimeError: fold exploded"}


@pytest.mark.parametrize("returns", ["a string", None, "three"])
def test_a_fold_returning_the_wrong_type_is_a_finding(returns):
    if returns == "three":
        def fold(W, b, running_mean, running_var, weight, bias, eps, transposed):
            return W, b, eps
    else:
        def fold(conv, bn):
            return returns
    r = check_fusion(_impl(fold), profile="quick", seed=0)
    assert _ids(r) == {"fold-wrong-module"}
    ev = r.findings[0].evidence[0]
    assert ("not a (W', b') pair" in ev) if returns == "three" else ("not a module" in ev)


def test_unsupported_is_declined_not_a_finding():
    def picky(conv, bn):
        if conv.groups > 1:
            raise bncheck.Unsupported("no groups here")
        return fold_conv_bn(conv, bn)
    r = check_fusion(_impl(picky), profile="quick", seed=0)
    assert r.findings == [] and r.declined_cases > 0
    assert r.capabilities["groups"] == "declined: no groups here"


def test_property_heartbeats_and_json_shape(plugins):
    seen, partial = [], []
    r = check_fusion(plugins["bncheck-fold"], profile="quick", seed=1, on_property=lambda p, res: seen.append(
        (p, res is None)), on_partial=partial.append)
    assert seen == [("fold-output", True), ("fold-output", False), ("fold-module", True), ("fold-module", False)]
    assert [list(p.properties) for p in partial] == [["fold-output"], ["fold-output", "fold-module"]]
    assert KEYS <= set(partial[0].to_json()) and partial[0].kind == "fusion"
    assert set(r.properties) == {"fold-output", "fold-module"}
    assert all(set(v.to_json()) == {"cases", "declined", "findings", "seconds", "excluded", "spent"}
               for v in r.properties.values())
    assert isinstance(r.seconds, float) and not math.isnan(r.seconds)

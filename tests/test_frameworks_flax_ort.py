"""The Flax and ONNX Runtime plugins (implementations/frameworks/): through the real runner they come out "as
expected" (their documented differences from torch, nothing else), they decline cleanly when the framework is not
installed, and the reasons they give for declining hold on the installed framework."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from bncheck.results import RunReport

ROOT = Path(__file__).resolve().parent.parent
FRAMEWORKS = ROOT / "implementations" / "frameworks"
EXPECT = {"flax-linen-bn": {"biased-running-var", "missing-error", "nan-inf"},
          "ort-batchnorm": {"biased-running-var", "missing-error", "nan-inf"},
          "ort-conv-bn-fusion": set()}


def _run(tmp_path, *args, profile="quick"):
    r = subprocess.run([sys.executable, "-m", "bncheck", "run", "--profile", profile, "--seed", "0", "--out",
                        str(tmp_path), *args], cwd=ROOT, capture_output=True, text=True, timeout=900)
    rep = RunReport.from_json(json.loads((tmp_path / "latest.json").read_text()))
    return r, {i.name: i for i in rep.implementations}


def _assert_as_expected(r, impls, names):
    assert r.returncode == 0, r.stdout + r.stderr
    for name in names:
        impl = impls[name]
        assert impl.origin.endswith(f"frameworks/{'flax_bn.py' if 'flax' in name else 'onnxruntime_bn.py'}")
        assert {f.id for f in impl.findings} == EXPECT[name], impl.findings
        assert impl.verdict == ("as expected" if EXPECT[name] else "clean")
        assert impl.cases - impl.declined_cases > 30, impl     # checked on real cases, not only declined


def test_ort_fusion_quick_clean(tmp_path):
    pytest.importorskip("onnxruntime", reason="the frameworks extra is not installed")
    r, impls = _run(tmp_path, "--impl", "ort-conv-bn-fusion")
    _assert_as_expected(r, impls, ["ort-conv-bn-fusion"])
    caps = impls["ort-conv-bn-fusion"].capabilities
    assert caps["ConvTranspose2d"] == caps["ConvTranspose2d groups"] == "yes"
    assert caps["float64"].startswith("declined: ONNX's epsilon attribute is float32")


@pytest.mark.slow       # make run checks it at the default profile
def test_ort_batchnorm_default_as_expected(tmp_path):
    """At the default profile: an empty training batch (nan-inf) is one of the rare scenarios without gradients
    that the quick profile's edge-inputs search does not draw."""
    pytest.importorskip("onnxruntime", reason="the frameworks extra is not installed")
    r, impls = _run(tmp_path, "--impl", "ort-batchnorm", profile="default")
    _assert_as_expected(r, impls, ["ort-batchnorm"])
    props = impls["ort-batchnorm"].properties
    # training steps run ORT's training_mode=1 kernel: the forward and running-stats searches see real cases
    assert props["forward"].findings == ["missing-error"]
    assert props["running-stats"].findings == ["biased-running-var"]


@pytest.mark.slow
def test_flax_quick_as_expected(tmp_path):
    pytest.importorskip("flax", reason="the frameworks extra is not installed")
    r, impls = _run(tmp_path, "--impl", "flax-linen-bn")
    _assert_as_expected(r, impls, ["flax-linen-bn"])


@pytest.mark.slow       # flax is checked in full by make run
def test_flax_running_stats_edge_inputs_and_errors(tmp_path):
    """The cheap part of the Flax check, the three properties where its documented differences show."""
    pytest.importorskip("flax", reason="the frameworks extra is not installed")
    r, impls = _run(tmp_path, "--impl", "flax-linen-bn", "--property", "running-stats", "--property", "edge-inputs",
                    "--property", "errors")
    _assert_as_expected(r, impls, ["flax-linen-bn"])
    props = impls["flax-linen-bn"].properties
    assert props["running-stats"].findings == ["biased-running-var"]
    assert props["edge-inputs"].findings == ["nan-inf"]


DECLINE = textwrap.dedent("""
    import sys
    for mod in {blocked!r}:
        sys.modules[mod] = None          # import of mod raises ImportError, as if it were not installed
    from bncheck import execute, search
    from bncheck.folding import check as folding_check
    from bncheck.registry import discover
    from bncheck.scenario import Scenario
    reg = discover(plugin_dirs=[{frameworks!r}], entry_points=False)
    assert not reg.errors, reg.errors    # the plugin files load without the framework
    for name in {names!r}:
        impl = reg.implementations[name]
        if impl.kind == "fusion":
            caps = folding_check.capabilities(impl)
        else:
            caps = search.capabilities(impl)
            assert execute.run(impl, Scenario(), None).unsupported == caps["rank 2"][len("declined: "):]
        print(name, sorted(set(caps.values())))
""")


@pytest.mark.parametrize("blocked,names,package", [
    (("flax",), ("flax-linen-bn",), "flax"),
    (("jax", "flax"), ("flax-linen-bn",), "flax"),
    (("onnxruntime",), ("ort-batchnorm", "ort-conv-bn-fusion"), "onnxruntime"),
])
def test_missing_framework_declines_cleanly(blocked, names, package):
    code = DECLINE.format(blocked=blocked, frameworks=str(FRAMEWORKS), names=names)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(" ", 1) for line in r.stdout.strip().splitlines())
    for name in names:
        reason = f"declined: {package} is not installed: pip install bncheck[frameworks]"
        assert lines[name] == f"[{reason!r}]", r.stdout


def _plugin():
    sys.path.insert(0, str(FRAMEWORKS))
    try:
        import onnxruntime_bn
    finally:
        sys.path.remove(str(FRAMEWORKS))
    return onnxruntime_bn


@pytest.mark.parametrize("groups", [1, 2])
def test_ort_folds_conv_transpose_on_the_output_channel_axis(groups):
    """ORT 1.32 fuses ConvTranspose+BatchNormalization (so the plugin does not decline it); its fold scales the
    output-channel axis 1 of a (C_in, C_out/groups, k) weight, with C_in >= 2 and groups (float32, checked against
    the fold written out in float64)."""
    pytest.importorskip("onnxruntime")
    plugin = _plugin()
    g = torch.Generator().manual_seed(0)
    c_in, c_out = 4, 6
    W = torch.randn(c_in, c_out // groups, 3, 3, generator=g)
    b, mean, bias = (torch.randn(c_out, generator=g) for _ in range(3))
    var, weight = torch.rand(c_out, generator=g) + 0.1, torch.rand(c_out, generator=g) + 0.5
    W2, b2 = plugin.fold(W, b, mean, var, weight, bias, 1e-5, True)
    s = weight.double() / torch.sqrt(var.double() + 1e-5)
    per_out = s.view(groups, 1, c_out // groups, 1, 1)       # output channel j = group * (C_out/groups) + k
    want = (W.double().view(groups, c_in // groups, c_out // groups, 3, 3) * per_out).view_as(W)
    torch.testing.assert_close(W2.double(), want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(b2.double(), (b.double() - mean.double()) * s + bias.double(), rtol=1e-6, atol=1e-6)


def test_ort_float64_rounds_eps_to_float32():
    """The reason ort-batchnorm declines float64: ONNX's epsilon attribute is a 32-bit float, so a float64 eval
    BatchNorm computes with float32(eps); the difference from torch is far beyond float64 rounding."""
    pytest.importorskip("onnxruntime")
    plugin = _plugin()
    eps = 1e-5
    sess = plugin._session(2, torch.float64, torch.float64, eps, 0.5, False)
    x = np.linspace(-3.0, 3.0, 8).reshape(4, 2)
    var = np.array([1e-6, 4e-6])
    zeros, ones = np.zeros(2), np.ones(2)
    (y,) = sess.run(None, {"X": x, "scale": ones, "B": zeros, "input_mean": zeros, "input_var": var})
    exact = x / np.sqrt(var + eps)
    rounded = x / np.sqrt(var + float(np.float32(eps)))
    assert np.max(np.abs(y - rounded) / np.abs(rounded)) < 1e-14
    assert np.max(np.abs(y - exact) / np.abs(exact)) > 1e-10

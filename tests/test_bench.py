"""bncheck.bench on the tiny shape set, on the CPU: the result's structure, not its timings."""
import argparse
import json
import math
import os

os.environ.setdefault("TRITON_INTERPRET", "1")   # harmless here; keeps a later triton import in interpreter mode

import pytest  # noqa: E402
import torch  # noqa: E402

import bncheck  # noqa: E402
from bncheck import bench as B  # noqa: E402

ROW_KEYS = {"implementation", "op", "shape", "layout", "dtype", "time_ms", "ratio", "gbps", "pct_copy", "error",
            "spread"}


class Scale(torch.nn.Module):
    """A trivial per-channel module with one parameter: enough to time forward and backward."""

    def __init__(self, spec):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(spec.num_features, device=spec.device, dtype=spec.dtype))

    def forward(self, x):
        return x * self.weight.reshape([1, -1] + [1] * (x.dim() - 2)).to(x.dtype)


def unsupported(spec):
    raise bncheck.Unsupported("not this one")


def test_bench_rows_and_render():
    dtypes = [torch.float32, torch.bfloat16]
    result = B.bench({"scale": Scale, "gap": unsupported}, "cpu", "tiny", dtypes, rep_ms=10)
    result = json.loads(json.dumps(result))       # plain JSON types throughout
    h = result["header"]
    assert h["torch"] == torch.__version__ and h["device_type"] == "cpu" and h["timer"]
    assert math.isfinite(h["copy_gbps"]) and h["copy_gbps"] > 0
    rows = result["rows"]
    assert all(set(r) == ROW_KEYS for r in rows)
    n_cfg = len(B.SHAPE_SETS["tiny"]) * len(dtypes)
    assert len(rows) == n_cfg * 3 * len(B.OPS)
    by_impl = {}
    for r in rows:
        by_impl.setdefault(r["implementation"], []).append(r)
    assert set(by_impl) == {B.NATIVE, "scale", "gap"}
    for name in (B.NATIVE, "scale"):
        assert len(by_impl[name]) == n_cfg * len(B.OPS)
        assert {r["op"] for r in by_impl[name]} == set(B.OPS)
        for r in by_impl[name]:
            assert r["error"] is None, r
            for k in ("time_ms", "ratio", "gbps", "pct_copy"):
                assert isinstance(r[k], float) and math.isfinite(r[k]) and r[k] > 0, (k, r)
            # the relative interquartile range of the timed blocks: a noise level (None: a single block was timed,
            # which a loaded machine can give at rep_ms=10)
            assert r["spread"] is None or (isinstance(r["spread"], float) and math.isfinite(r["spread"])
                                           and r["spread"] >= 0), r
    assert any(isinstance(r["spread"], float) for r in rows)
    assert all(r["ratio"] == 1.0 for r in by_impl[B.NATIVE])
    assert all(r["time_ms"] is None and r["error"].startswith("unsupported") for r in by_impl["gap"])
    assert {r["layout"] for r in rows} == {"nc", "nchw", "nhwc"}
    md = B.render_markdown(result)
    assert "| implementation" in md and "torch-native" in md and "geomean" in md and "unsupported" in md


def test_bytes_model_and_shape_sets():
    assert B.bytes_moved("forward-eval", 1000, 10, 2, 4) == 2 * 1000 * 2 + 4 * 10 * 4
    assert B.bytes_moved("backward", 1000, 10, 4, 4) == 3 * 1000 * 4 + 3 * 10 * 4
    assert len(B.SHAPE_SETS["resnet50"]) == 2 * len(B.RESNET50_CHW) == 24
    assert B.shapes_for("default", "cpu") == B.SHAPE_SETS["small"]
    assert B.shapes_for("default", "cuda") == B.SHAPE_SETS["resnet50"] + B.SHAPE_SETS["bn1d"] + B.SHAPE_SETS["3d"]
    assert B.shapes_for("32x64x56x56:nhwc,1024x64", "cpu") == [((32, 64, 56, 56), True), ((1024, 64), False)]
    # small-C / large-N*HW: C in {3, 4, 8, 16}, 1M to 4M values per channel, both layouts for 4-d shapes
    smallc = B.SHAPE_SETS["smallc"]
    assert {s[1] for s, _ in smallc} == {3, 4, 8, 16}
    assert all(2**20 <= math.prod(s) // s[1] <= 2**22 for s, _ in smallc)
    assert {len(s) for s, _ in smallc} == {2, 4, 5} and any(cl for _, cl in smallc)
    assert B.shapes_for("gpu", "cpu") == B.SHAPE_SETS["default-cuda"] + smallc
    # the smoke set mirrors the gpu set's kinds of shapes in miniature
    smoke = B.SHAPE_SETS["smoke"]
    assert {len(s) for s, _ in smoke} == {2, 4, 5} and {cl for _, cl in smoke} == {False, True}
    assert any(s[1] <= 4 for s, _ in smoke) and max(math.prod(s) for s, _ in smoke) <= 16384


def test_add_arguments():
    p = argparse.ArgumentParser()
    B.add_arguments(p)
    a = p.parse_args(["--device", "cpu", "--shapes", "tiny", "--dtype", "float32", "--dtype", "bfloat16",
                      "--impl", "a", "--impl", "b"])
    assert (a.device, a.shapes, a.dtype, a.impl) == ("cpu", "tiny", ["float32", "bfloat16"], ["a", "b"])


def test_run_named_names_bad_arguments_before_any_work():
    reg = bncheck.Registry()
    reg.declare("batchnorm", "scale", Scale)
    for kwargs, msg in ((dict(rep_ms=0.0), "--rep-ms 0.0"), (dict(rep_ms=float("nan")), "--rep-ms nan"),
                        (dict(precompile_jobs=-1), "--precompile-jobs -1"),
                        (dict(shapes="nonsense"), "unknown shape set 'nonsense'"),
                        (dict(names=["missing"]), "--impl missing: unknown implementation")):
        kwargs = dict(dict(names=["scale"], device="cpu"), **kwargs)
        try:
            B.run_named(reg, **kwargs)
        except ValueError as e:
            assert msg in str(e), (kwargs, e)
        else:
            raise AssertionError(f"no error for {kwargs}")


def test_epilogue_times_fused_kernels_against_torch_eager():
    """``--epilogue``: bncheck's Triton fused kernels (interpreter here) against torch eager relu(bn(x) + z); the
    bytes model counts z, the mask's source and dz."""
    reg = bncheck.Registry()
    reg.declare("batchnorm", "scale", Scale)
    p = argparse.ArgumentParser()
    B.add_arguments(p)
    args = p.parse_args(["--device", "cpu", "--shapes", "2x4x6x6:nhwc", "--epilogue", "add_relu", "--rep-ms", "5"])
    args.json = None
    result = json.loads(json.dumps(B.run_from_args(args, reg)))
    assert result["header"]["epilogue"] == "add_relu"
    rows = result["rows"]
    assert {r["implementation"] for r in rows} == {B.NATIVE, B.FUSED} and len(rows) == 2 * len(B.OPS)
    for r in rows:
        assert set(r) == ROW_KEYS and r["error"] is None and r["time_ms"] > 0, r
    assert "epilogue: add_relu" in B.render_markdown(result)
    numel, C = 2 * 4 * 6 * 6, 4
    assert B.bytes_moved("forward-train", numel, C, 2, 4, "add_relu") == 3 * numel * 2 + 6 * C * 4
    assert B.bytes_moved("backward", numel, C, 2, 4, "relu") == 4 * numel * 2 + 3 * C * 4
    assert B.bytes_moved("backward", numel, C, 2, 4, "add_relu") == 5 * numel * 2 + 3 * C * 4
    for kwargs, msg in ((dict(names=["scale"]), "--impl scale: declares epilogue 'none', not 'relu'"),
                        (dict(precompile_jobs=2), "--precompile-jobs"), (dict(epilogue="gelu"), "--epilogue gelu")):
        try:
            B.run_named(reg, **dict(dict(device="cpu", epilogue="relu"), **kwargs))
        except ValueError as e:
            assert msg in str(e), (kwargs, e)
        else:
            raise AssertionError(f"no error for {kwargs}")


def test_run_bench_puts_epilogue_plugins_in_the_same_table_against_their_own_reference():
    """``bncheck run --bench``: a plugin that declares an epilogue is timed against torch eager with that epilogue
    (op ``forward-train+relu``), beside the BatchNorm plugins timed against torch native, in one table; the report
    and its picture draw both."""
    from pathlib import Path

    from bncheck.cli import _run_bench
    from bncheck.report import plots, timings

    reg = bncheck.Registry()
    reg.declare("batchnorm", "scale", Scale)
    reg.load_file(Path(__file__).parent.parent / "implementations" / "epilogue_torch.py")
    args = argparse.Namespace(bench="2x4x6x6", bench_impl=["torch-bn-add-relu", "scale", "torch-bn-relu"],
                              device="cpu")
    t = _run_bench(args, reg, [])
    got = {(r.implementation, r.op) for r in t.rows}
    want = {(n, f"{op}{ep}") for ep, names in (("", ("scale", B.NATIVE)), ("+relu", ("torch-bn-relu", B.NATIVE)),
                                                ("+add_relu", ("torch-bn-add-relu", B.NATIVE))) for n in names
            for op in B.OPS}
    assert got == want, got ^ want
    assert all(r.error is None and r.time_ms > 0 and (r.ratio or r.implementation == B.NATIVE) for r in t.rows)
    assert t.header["epilogues"] == ["add_relu", "relu"] and "epilogue" not in t.header
    assert "+numel*E" not in t.header["bytes_model"]          # the header is the plain BatchNorm table's
    text = "\n".join(timings.render(t))
    assert "| torch-bn-relu (+relu) " in text and "| scale " in text and "`+relu`" in text
    fig = plots.timings_figure(t)
    assert len(fig.axes) == 2 * len(B.OPS)                    # epilogue rows share the three ops' panels


@pytest.mark.slow
def test_a_torch_compile_backward_is_timed():
    """AOTAutograd donates buffers to a compiled backward by default, and such a backward refuses to run twice on
    one graph; the bench repeats ``autograd.grad(..., retain_graph=True)``, so it compiles without donation."""
    result = B.bench({"compiled": lambda spec: torch.compile(torch.nn.BatchNorm2d(spec.num_features), dynamic=True)},
                     "cpu", "2x4x6x6", [torch.float32], rep_ms=5)
    rows = [r for r in result["rows"] if r["implementation"] == "compiled"]
    assert len(rows) == len(B.OPS) and all(r["error"] is None and r["time_ms"] > 0 for r in rows), rows

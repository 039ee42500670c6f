"""The GPU check: target evaluation on constructed timings (each target met just above its threshold, missed just
below), the report built from a real bench result, and scripts/gpu-check.sh run in its CPU smoke mode."""
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from bncheck import bench as B  # noqa: E402
from bncheck.gpu import env as E  # noqa: E402
from bncheck.gpu import report as G  # noqa: E402
from test_bench import Scale  # noqa: E402  (the trivial per-channel module the bench tests time)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-check.sh"
COPY_GBPS = 1000.0


def row(impl, op, shape, dtype="float32", time_ms=1.0, ratio=None, layout="nchw", error=None):
    return dict(implementation=impl, op=op, shape="x".join(map(str, shape)), layout=layout, dtype=dtype,
                time_ms=None if error else time_ms, ratio=None if error else ratio, gbps=None, pct_copy=None,
                error=error)


def bench_result(rows):
    return {"header": {"copy_gbps": COPY_GBPS, "device": "constructed"}, "rows": rows}


def roofline_time(op, shape, dtype, pct):
    """The time at which a row reaches ``pct`` % of its roofline."""
    nbytes = G.PASSES[op] * math.prod(shape) * G.ELEMENT_SIZE[dtype]
    return nbytes / (COPY_GBPS * 1e9) * 1e3 / (pct / 100.0)


def by_id(results):
    return {t.id: t for t in results}


BIG = (32, 64, 56, 56)        # not small-C
SMALL = (256, 3, 112, 112)    # small-C: C = 3, N*H*W = 3.2M


def test_geomean_just_below_each_threshold_is_missed_and_just_above_is_met():
    def rows_for(scale):
        # forward-train: ratios 1.0 and 0.98 * scale; small-C forward-train 1.5 * scale; backward 0.95 * scale;
        # forward-eval at 85 % * scale of its roofline
        return [row("triton-bn", "forward-train", BIG, ratio=1.0),
                row("triton-bn", "forward-train", BIG, dtype="float16", ratio=0.98 * scale),
                row("triton-bn", "forward-train", SMALL, ratio=1.5 * scale),
                row("triton-bn", "backward", BIG, ratio=0.95 * scale),
                row("triton-bn", "forward-eval", BIG, time_ms=roofline_time("forward-eval", BIG, "float32",
                                                                            85.0 * scale))]
    below = by_id(G.evaluate_targets(bench_result(rows_for(0.999))))
    # the overall forward-train geomean covers the small-C row too: (1.0 * 0.979 * 1.4985) ** (1/3) > 1
    assert below["forward-train"].status == "met"
    assert below["forward-train"].value == pytest.approx((1.0 * 0.98 * 0.999 * 1.5 * 0.999) ** (1 / 3))
    for tid in ("forward-train-small-c", "backward", "forward-eval"):
        t = below[tid]
        assert t.status == "missed", t
        assert t.value == pytest.approx(t.threshold * 0.999), t
        assert "0.1 % below the threshold" in t.note
    above = by_id(G.evaluate_targets(bench_result(rows_for(1.001))))
    assert all(t.status == "met" for t in above.values()), above
    assert above["forward-eval"].value == pytest.approx(85.085)
    assert above["forward-train-small-c"].rows == 1 and above["forward-train"].rows == 3


def test_overall_forward_train_geomean_below_one_is_missed_with_its_shortfall():
    rows = [row("triton-bn", "forward-train", BIG, ratio=r) for r in (1.2, 0.8, 0.99)]
    t = by_id(G.evaluate_targets(bench_result(rows)))["forward-train"]
    assert t.value == pytest.approx((1.2 * 0.8 * 0.99) ** (1 / 3)) and t.value < 1.0
    assert t.status == "missed"
    assert t.note.startswith(f"{100 * (1 - t.value):.1f} % below") and "1 of 3 rows reach 1x" in t.note
    assert t.worst.startswith("32x64x56x56 nchw float32: 0.8x")


def test_rows_that_did_not_run_make_a_target_missed_and_no_rows_leave_it_not_evaluated():
    rows = [row("triton-bn", "backward", BIG, ratio=2.0),
            row("triton-bn", "backward", BIG, dtype="bfloat16", error="RuntimeError: boom")]
    t = by_id(G.evaluate_targets(bench_result(rows)))
    assert t["backward"].status == "missed" and t["backward"].value == 2.0 and t["backward"].failed_rows == 1
    assert "1 row(s) without a figure: RuntimeError: boom" in t["backward"].note
    assert t["forward-train"].status == "not evaluated" and "triton-bn was not timed" in t["forward-train"].note
    assert "small-C" in t["forward-train-small-c"].note
    only_failed = by_id(G.evaluate_targets(bench_result(rows[1:])))["backward"]
    assert only_failed.status == "not evaluated" and "RuntimeError: boom" in only_failed.note
    assert all(t.status == "not evaluated" for t in G.evaluate_targets(None))


def test_small_c_classification_and_roofline():
    assert G.is_small_c(row("x", "backward", (256, 3, 112, 112)))
    assert G.is_small_c(row("x", "backward", (4194304, 4)))
    assert not G.is_small_c(row("x", "backward", (32, 64, 112, 112)))      # C = 64
    assert not G.is_small_c(row("x", "backward", (1000, 4)))               # 1000 values per channel
    assert G.is_small_c(row("x", "backward", (1000, 4)), min_rows=1000)
    # 3 passes of 1e6 float32 at 1000 GB/s take 12 us: 0.024 ms is 50 % of the roofline
    assert G.roofline_pct(row("x", "forward-train", (1000, 1000), time_ms=0.024), 1000.0) == pytest.approx(50.0)
    assert G.roofline_pct(row("x", "backward", (1000, 1000), dtype="bfloat16", time_ms=0.01), 1000.0) == \
        pytest.approx(100.0)
    assert G.roofline_pct(row("x", "backward", (10, 10), error="x"), 1000.0) is None


def test_runs_over_disjoint_property_groups_merge_into_one_verdict():
    def impl(name, cases, findings, worst, props, expect=()):
        return dict(name=name, expect=list(expect), cases=cases, declined_cases=1, seconds=2.0,
                    findings=[{"id": f, "property": props[0]} for f in findings], worst_ratio_by_dtype=worst,
                    properties={p: {} for p in props})
    env = {"device": "cuda (H200)", "profile": "default", "seed": 0}
    a = {"environment": env, "exit_status": 0, "load_errors": [], "implementations": [
        impl("triton-bn", 10, [], {"float32": 0.5, "float16": 0.2}, ["forward"]),
        impl("seedy", 5, [], {"float32": 0.1}, ["forward"], expect=["inverted-momentum"])]}
    b = {"environment": env, "exit_status": 1, "load_errors": [], "implementations": [
        impl("triton-bn", 7, ["nan-inf"], {"float32": 0.9, "float16": None}, ["gradients"]),
        impl("seedy", 6, ["inverted-momentum"], {"float32": 0.3}, ["running-stats"], expect=["inverted-momentum"])]}
    m = G.merge_runs([a, None, b])
    assert m["environment"]["runs"] == 2 and m["exit_status"] == 1
    t, s = m["implementations"]
    assert (t["name"], t["cases"], t["declined_cases"], t["seconds"]) == ("triton-bn", 17, 2, 4.0)
    assert t["worst_ratio_by_dtype"] == {"float32": 0.9, "float16": None}     # unbounded wins
    assert set(t["properties"]) == {"forward", "gradients"}
    assert t["verdict"] == "unexpected" and t["unexpected"] == ["nan-inf"]
    # an expected finding named in one group and absent from the other is found, not missing
    assert s["verdict"] == "as expected" and s["missing"] == []
    assert G.merge_runs([a])["exit_status"] == 0 and G.merge_runs([None]) is None


def test_nvidia_smi_output_is_read(tmp_path, monkeypatch):
    """The GPU model, driver and CUDA version from nvidia-smi's output (a stand-in executable printing what the
    tool prints on an H200 machine; the parsing is what is tested)."""
    exe = tmp_path / "nvidia-smi"
    exe.write_text('#!/bin/sh\ncase "$1" in --query-gpu=*) echo "NVIDIA H200, 580.159.04, 143771 MiB, 1980 MHz, '
                   '3201 MHz" ;; *) echo "| NVIDIA-SMI 580.159.04   Driver Version: 580.159.04   CUDA Version: 13.0 |"'
                   ' ;; esac\n')
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert E._nvidia_smi() == dict(gpu="NVIDIA H200", driver="580.159.04", gpu_memory="143771 MiB",
                                         max_sm_clock="1980 MHz", max_mem_clock="3201 MHz", driver_cuda="13.0")
    exe.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the driver' >&2\n"
                   "exit 9\n")
    out = E._nvidia_smi()
    assert "could not communicate" in out["nvidia_smi"] and "gpu" not in out




def test_report_from_a_real_bench_and_a_run_report(tmp_path):
    result = json.loads(json.dumps(B.bench({"scale": Scale}, "cpu", "tiny", [torch.float32], rep_ms=5)))
    (tmp_path / "bench.json").write_text(json.dumps(result))
    run = {"environment": {"device": "cpu (x)", "profile": "quick", "seed": 0}, "exit_status": 1,
           "load_errors": [], "implementations": [
               {"name": "scale", "verdict": "unexpected", "cases": 12, "declined_cases": 2, "unexpected": ["nan-inf"],
                "missing": [], "worst_ratio_by_dtype": {"float32": 3.5}, "properties": {"forward": {}},
                "seconds": 1.5, "findings": [{"id": "nan-inf"}]}]}
    (tmp_path / "verify.json").write_text(json.dumps(run))
    (tmp_path / "steps.tsv").write_text("setup\tok\t0\t12\t\tlogs/setup.log\nverify\tfailed\t1\t30\tsee below\t"
                                        "logs/verify.log\ncompile\tskipped\t-\t0\tno plugin\tlogs/compile.log\n")
    env = E.collect_environment("cpu")
    assert env["torch"] == torch.__version__ and env["python"] and env["cpu"] and "nvidia_smi" in env
    (tmp_path / "env.json").write_text(json.dumps(env))
    out = tmp_path / "gpu"
    assert G.main(["build", "--mode", "cpu-smoke", "--env", str(tmp_path / "env.json"), "--steps",
                   str(tmp_path / "steps.tsv"), "--verify", str(tmp_path / "verify.json"), "--compile",
                   str(tmp_path / "missing.json"), "--bench", str(tmp_path / "bench.json"), "--impl", "scale",
                   "--smallc-min-rows", "70", "--out", str(out)]) == 0
    rep = json.loads((out / "latest.json").read_text())
    assert rep["copy_gbps"] == result["header"]["copy_gbps"] > 0
    assert [s["status"] for s in rep["steps"]] == ["ok", "failed", "skipped"] and rep["steps"][2]["rc"] is None
    assert rep["verification"]["implementations"][0]["unexpected"] == ["nan-inf"]
    assert rep["compile_verification"] is None
    targets = {t["id"]: t for t in rep["targets"]}
    assert set(targets) == {t.id for t in G.TARGETS}
    for tid in ("forward-train", "forward-eval", "backward"):   # the tiny set, timed for real
        assert targets[tid]["status"] in ("met", "missed") and targets[tid]["value"] > 0, targets[tid]
    # with 70 values per channel as the bar, tiny's (2, 4, 6, 6) in both layouts (72 per channel) is small-C and
    # its (64, 8) is not
    assert targets["forward-train-small-c"]["rows"] == 2
    md = (out / "latest.md").read_text()
    for part in ("# GPU check, CPU smoke run", "## Environment", f"- torch: `{torch.__version__}`", "copy bandwidth",
                 "## Steps", "## Verification against the oracle", "unexpected: nan-inf", "Not run (see Steps)",
                 "## Targets", "### Fraction of the roofline", "### Launch plans of triton-bn", "## Timings",
                 "geomean"):
        assert part in md, part


def run_script(*args, timeout=600, tmpdir=None):
    t0 = time.monotonic()
    env = dict(os.environ, TMPDIR=str(tmpdir)) if tmpdir else None
    p = subprocess.run(["bash", str(SCRIPT), "--cpu-smoke", "--python", sys.executable, *args],
                       capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)
    return p, time.monotonic() - t0


def test_script_usage_errors():
    for args, msg in ((["--skip", "nonsense"], "--skip 'nonsense'"), (["--budget", "soon"], "--budget 'soon'"),
                      (["--frobnicate"], "unknown argument '--frobnicate'")):
        p, _ = run_script(*args, timeout=60)
        assert p.returncode == 2 and msg in p.stderr, (args, p.stderr)


def test_script_smoke_without_the_long_steps_still_writes_the_report(tmp_path):
    (tmp_path / "tmp").mkdir()
    long_steps = ("setup", "verify", "bench", "fused-relu", "fused-add_relu", "compile")   # run in the slow test
    p, _ = run_script(*[a for n in long_steps for a in ("--skip", n)],
                      "--out", str(tmp_path), timeout=300, tmpdir=tmp_path / "tmp")
    assert p.returncode == 0, p.stdout + p.stderr
    rep = json.loads((tmp_path / "latest.json").read_text())
    assert rep["mode"] == "cpu-smoke"
    assert rep["environment"]["torch"] == torch.__version__ and rep["environment"]["triton_interpret"] == "1"
    steps = {s["name"]: s for s in rep["steps"]}
    assert {n: steps[n]["status"] for n in long_steps} == dict.fromkeys(long_steps, "skipped")
    assert steps["env"]["status"] == "ok" and steps["setup-fallback"]["status"] == "ok"
    assert all(t["status"] == "not evaluated" for t in rep["targets"])
    md = (tmp_path / "latest.md").read_text()
    assert "## Targets" in md and "**not evaluated**" in md and "--skip verify" in md
    assert (tmp_path / "logs.tar.gz").is_file()
    assert not any((tmp_path / "tmp").glob("gpu-check-smoke.*"))     # the repository's copy is removed


@pytest.mark.slow
def test_script_full_cpu_smoke_run(tmp_path):
    """Every step on the CPU: setup of a fresh .venv in a copy of the repository, verification (quick profile),
    bench on the smoke shapes, report. 4 to 6 minutes on 2 shared cores."""
    p, seconds = run_script("--out", str(tmp_path), timeout=900)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    rep = json.loads((tmp_path / "latest.json").read_text())
    steps = {s["name"]: s for s in rep["steps"]}
    assert all(steps[n]["status"] == "ok" for n in ("setup", "env", "verify", "bench")), steps
    assert "setup-fallback" not in steps
    assert steps["compile"]["status"] in ("ok", "skipped")
    env = rep["environment"]
    for key in ("torch", "triton", "python", "cpu", "nvidia_smi"):
        assert env.get(key), key
    v = rep["verification"]
    assert v["exit_status"] == 0 and v["environment"]["profile"] == "quick" and v["environment"]["runs"] == 2
    assert {(i["name"], i["verdict"]) for i in v["implementations"]} == {
        ("triton-bn", "clean"), ("torch-bn2d", "clean"), ("torch-functional", "clean")}
    assert rep["timings"]["header"]["shape_set"] == "smoke" and rep["copy_gbps"] > 0
    assert rep["timings"]["header"]["precompile"]["errors"] == []
    assert set(rep["timings"]["header"]["dtypes"]) == {"float32", "float16", "bfloat16"}
    for t in rep["targets"]:
        assert t["status"] in ("met", "missed") and t["value"] is not None and t["rows"] > 0, t
        assert set(t["by_dtype"]) == {"float32", "float16", "bfloat16"}, t
    md = (tmp_path / "latest.md").read_text()
    assert "## Targets" in md and "## Timings" in md and "triton-bn" in md
    print(f"full smoke run: {seconds:.0f} s")

"""Reports from plain data: verdicts, exit status, and the rendered Markdown against a golden file.

Set ``BNCHECK_UPDATE_GOLDEN=1`` to rewrite the golden file after an intended change, then review its diff.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from bncheck import report
from bncheck.results import LoadFailure, Result, RunReport, TimingRow, Timings

GOLDEN = Path(__file__).parent / "golden" / "report.md"


def _finding(fid, prop="forward", ratio=12.5, repro="print('repro')"):
    return {"id": fid, "property": prop, "where": "output after step 1 (train)",
            "evidence": ["max |diff| 0.5 at (0, 1) = 12.5 x budget (0.04)", f"matches the oracle with {fid} | flipped"],
            "error_ratio": ratio, "example": "shape=(4, 3) float32 contiguous", "scenario": "Scenario(...)",
            "repro": repro}


def _warning(category, message, count, prop="forward"):
    return {"category": category, "message": message, "where": "/home/u/implementations/known_bugs.py:31",
            "count": count, "property": prop}


def _impl(name, findings=(), expect=(), kind="batchnorm", **extra):
    r = {"name": name, "kind": kind, "origin": f"implementations/{name}.py", "expect": sorted(expect),
         "cases": 120, "declined_cases": 3, "findings": list(findings),
         "worst_ratio_by_dtype": {"float32": 0.25, "float16": None}, "properties": {},
         "capabilities": {"rank 2": "yes", "float64": "declined: no float64"}, "seconds": 4.0}
    r.update(extra)
    return Result.from_json(r)


def _report():
    impls = [
        _impl("clean-one"),
        _impl("known-bugs", [_finding("inverted-momentum", "running-stats")], expect={"inverted-momentum"},
              warnings=[_warning("UserWarning", "var(): degrees of freedom is <= 0 | " + "long " * 40, 412),
                        _warning("DeprecationWarning", "old API", 3, "modes")]),
        _impl("surprise", [_finding("eps-ignored", ratio=None)], expect={"biased-running-var"}),
        _impl("eval-only", properties={"forward": {"cases": 30, "declined": 2},
                                       "gradients": {"cases": 40, "declined": 40}}),
        _impl("fold-ref", kind="fusion", capabilities={}),
        _impl("sync-ref", kind="sync", capabilities={}, world_sizes=[2, 3]),
        _impl("sync-cuda-only", kind="sync", cases=40, declined_cases=40, world_sizes=[2, 3],
              capabilities={"cpu": "declined: needs CUDA tensors"}),
    ]
    env = {"bncheck": "0.1.0", "torch": "2.13.0+cpu", "profile": "default", "seed": 0}
    errors = [LoadFailure("implementations/broken.py", "ImportError: no module named foo at broken.py:3")]
    rows = [TimingRow("torch-native", "forward-train", "8x32x16x16", "nchw", "float32", 0.11, 1.0, 4.6, 19.2),
            TimingRow("known-bugs", "forward-train", "8x32x16x16", "nchw", "float32", 0.22, 0.5, 2.3, 9.6,
                      spread=0.04),
            TimingRow("surprise", "forward-train", "8x32x16x16", "nchw", "float32",
                      error="IndexError: Dimension out of range (expected to be in range of [-2, 1], but got 2)")]
    header = {"device": "AMD EPYC", "device_type": "cpu", "torch": "2.13.0+cpu", "triton": None, "copy_gbps": 24.1,
              "timer": "torch.utils.benchmark.Timer blocked_autorange median (2 threads)",
              "bytes_model": "forward: 2*numel*E + per-channel vectors"}
    return report.build(env, impls, errors, Timings(header, rows, "(the typed rows are rendered instead)"))


def test_verdicts():
    rep = _report()
    v = {r.name: (r.verdict, r.unexpected, r.missing) for r in rep.implementations}
    assert v["clean-one"] == ("clean", [], [])
    assert v["known-bugs"] == ("as expected", [], [])
    assert v["surprise"] == ("unexpected", ["eps-ignored"], ["biased-running-var"])
    assert v["sync-cuda-only"] == ("declined", [], [])
    assert rep.exit_status == 1


def test_exit_status_zero_only_when_all_as_declared():
    env = {"profile": "quick"}
    ok = report.build(env, [_impl("a"), _impl("b", [_finding("crash")], expect={"crash"})], [])
    assert ok.exit_status == 0
    assert report.build(env, [_impl("a")], [LoadFailure("x.py", "boom")]).exit_status == 1
    # an expected finding not reproduced: a warning, a failure only when strict
    lax = report.build(env, [_impl("a", expect={"crash"})], [])
    assert lax.exit_status == 0 and lax.implementations[0].verdict == "not reproduced"
    assert report.build(env, [_impl("a", expect={"crash"})], [], strict=True).exit_status == 1
    probed = report.build(env, [_impl("b", [dict(_finding("crash"), source="probe")], expect={"crash"})], [])
    assert probed.implementations[0].confirmed_by_probe == ["crash"] and probed.exit_status == 0
    assert "confirmed by probe: crash" in report.render_markdown(probed)


def test_markdown_matches_golden():
    md = report.render_markdown(_report())
    if os.environ.get("BNCHECK_UPDATE_GOLDEN"):
        GOLDEN.write_text(md)
    assert md == GOLDEN.read_text(), "rendered report differs from tests/golden/report.md"


def test_markdown_sections_and_escaping():
    md = report.render_markdown(_report())
    for heading in ("## Findings", "## BatchNorm implementations", "## Fusion (conv-BN folding)",
                    "## Distributed (synchronised BatchNorm)", "## Timings"):
        assert heading in md
    assert "**Plugins that failed to load:**" in md and "`implementations/broken.py`: ImportError" in md
    assert md.index("| clean-one") < md.index("**Plugins that failed to load:**") < md.index("## Findings")
    assert "World sizes: 2, 3." in md
    assert "declined (cpu: needs CUDA tensors)" in md
    assert "degrees of freedom is <= 0 \\| long" in md     # a '|' inside a cell cannot break the table
    assert "matches the oracle with eps-ignored | flipped" in md     # evidence is a text block: as it was
    assert "`bncheck repro known-bugs:inverted-momentum`" in md
    assert md.index("## BatchNorm implementations") < md.index("## Fusion") < md.index("## Distributed")


def test_write_is_json_roundtrip(tmp_path):
    rep = _report()
    md, js = report.write(rep, tmp_path)
    stored = json.loads(js.read_text())
    assert stored == json.loads(json.dumps(rep.to_json()))
    again = RunReport.from_json(stored)
    assert again == rep and again.to_json() == stored        # the typed report survives its JSON unchanged
    assert md.read_text() == report.render_markdown(rep) == report.render_markdown(again)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]    # no temporary files left behind


def test_report_files_have_the_mode_of_a_plain_open(tmp_path):
    """Written through a private temporary file, the report still gets a new file's usual mode (umask applied),
    so a CI artifact or a shared folder can read it."""
    rep = _report()
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    md, js = report.write(rep, tmp_path)
    want = plain.stat().st_mode & 0o777
    assert want & 0o044, "this test needs a umask that lets others read"
    assert {p.stat().st_mode & 0o777 for p in (md, js)} == {want}


def test_warnings_counted_by_kind_in_markdown_and_json(tmp_path):
    rep = _report()
    md = report.render_markdown(rep)
    assert "Warnings: 415, counted by kind" in md and "415 warning(s) (2 kind(s))" in md
    row = next(line for line in md.splitlines() if line.startswith("| known-bugs (415)"))
    assert "UserWarning" in row and "degrees of freedom is <= 0 \\| long" in row and "…" in row
    cells = [c.strip() for c in row.strip("|").split(" | ")]
    assert cells[:5] == ["known-bugs (415)", "412", "UserWarning", "implementations/known_bugs.py:31", "forward"]
    assert md.count("Warnings: ") == 1     # only the section whose implementations warned
    _, js = report.write(rep, tmp_path)
    kinds = next(r for r in json.loads(js.read_text())["implementations"] if r["name"] == "known-bugs")["warnings"]
    assert [(k["category"], k["count"], k["property"]) for k in kinds] == [("UserWarning", 412, "forward"),
                                                                         ("DeprecationWarning", 3, "modes")]


def test_a_property_whose_every_case_was_declined_is_named_not_checked():
    md = report.render_markdown(_report())
    row = next(line for line in md.splitlines() if line.startswith("| eval-only"))
    assert "not checked (every case declined): gradients" in row
    assert "forward" not in row.split("not checked")[1]
    assert "not checked" not in next(line for line in md.splitlines() if line.startswith("| clean-one"))

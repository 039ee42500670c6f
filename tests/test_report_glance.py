"""Reports that read at a glance: no table row wider than 160 columns (long names, many findings), one line per
finding with its evidence folded, pictures that are real PNGs with a panel per implementation, a self-contained
HTML file, and ``bncheck report`` re-rendering a stored run."""
from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from bncheck import cli, report
from bncheck.report import plots
from bncheck.report.html import render_html
from bncheck.report.mdtable import WIDTH
from bncheck.results import (FindingResult, LoadFailure, PropertySummary, RatioHistogram, Result, RunReport,
                             TimingRow, Timings, WarningKind)

ROOT = Path(__file__).parent.parent
CAPS = ["rank 2", "rank 3", "rank 4", "rank 5", "float64", "float16", "bfloat16", "momentum=None", "affine=False",
        "track_running_stats=False"]


def _hist(clean: int, over: int = 0, nan: int = 0) -> RatioHistogram:
    h = RatioHistogram()
    for i in range(clean):
        h.add(10.0 ** (-4 + 3.5 * i / max(clean, 1)))        # spread from 1e-4 to below 1
    h.add(0.0)                                                # exact agreement: below the range
    for i in range(over):
        h.add(10.0 ** (1 + 4 * i / max(over, 1)))
    for _ in range(nan):
        h.add(float("nan"))
    return h


def _finding(fid: str, i: int, ratio: float | None = 3.2e3) -> FindingResult:
    return FindingResult(
        id=fid, property="running-stats", where=f"running_var after step {i} (train, no_grad)",
        evidence=[f"max |diff| 0.00406 at (0,) = {ratio} x budget (3.89e-06); 1/1 elements over budget",
                  "matches the oracle with running_var_unbiased=False to 0.027 x budget"],
        error_ratio=ratio, example="shape=(3, 1) float32 contiguous momentum=0.1 eps=1e-05 affine=True "
                                   "track_running_stats=True steps=[train/no_grad] normal",
        scenario="Scenario(shape=(3, 1))", repro="import sys\nprint('reproduces')\nsys.exit(1)\n")


def big_report(n: int = 50) -> RunReport:
    """``n`` plugins of every kind, some with very long names, many findings, unexpected ones, long notes,
    warnings, every capability, and timings with failed rows."""
    impls = []
    for i in range(n):
        kind = ("batchnorm", "fusion", "sync")[i % 3]
        name = f"impl-{i:02d}" if i % 7 else f"a-very-long-implementation-name-from-some-vendor-package-{i:02d}-v2"
        ids = [f"finding-{j}" for j in range(i % 4)]
        expect = ids[:-1] if i % 5 == 0 else ids + (["never-reproduced-id"] if i % 6 == 0 else [])
        caps = {c: ("yes" if (i + k) % 3 else f"declined: {name} takes no {c} input (a long reason here)")
                for k, c in enumerate(CAPS)} if kind == "batchnorm" else {}
        impls.append(Result(
            name=name, kind=kind, origin=f"implementations/vendor/deeply/nested/{name}.py", expect=expect,
            cases=1000 + i, declined_cases=i, findings=[_finding(f, j, None if j == 2 else 3.2e3)
                                                        for j, f in enumerate(ids)],
            worst_ratio_by_dtype={"float32": 0.2, "bfloat16+float32": 0.05 * i, "float16": 0.1},
            properties={"forward": PropertySummary(100, 0), "gradients": PropertySummary(40, 40 if i % 4 else 0)},
            capabilities=caps, seconds=1.5,
            warnings=[WarningKind("UserWarning", "a long warning message | with a bar " * 6,
                                  f"/home/user/site-packages/vendor/{name}.py:{100 + i}", 10 + i, "forward")]
            if i % 2 else [], world_sizes=[2, 3] if kind == "sync" else [],
            ratios=_hist(40 + i, over=8 * len(ids), nan=i % 3)))
    rows = []
    for impl in ["torch-native", "impl-01", "impl-02", impls[0].name]:
        for op in ("forward-train", "forward-eval", "backward"):
            for shape, layout in (("4096x64", "nc"), ("8x32x16x16", "nchw"), ("2x16x4x8x8", "ndhwc")):
                failed = impl == "impl-02" and op == "backward"
                rows.append(TimingRow(impl, op, shape, layout, "float32", None if failed else 0.1,
                                      None if failed else 0.8, None if failed else 20.0,
                                      None if failed else 66.0, "IndexError: " + "dimension out of range " * 8
                                      if failed else None))
    timings = Timings({"device": "AMD EPYC", "device_type": "cpu", "torch": "2.13.0+cpu", "copy_gbps": 30.0,
                       "timer": "blocked_autorange median", "bytes_model": "forward: 2*numel*E"}, rows, "")
    env = {"bncheck": "0.1.0", "torch": "2.13.0+cpu", "profile": "default", "seed": 0,
           "machine": {"node": "runner-1", "cpu": "AMD EPYC 7763 64-Core Processor", "cores": 2}}
    return report.build(env, impls, [LoadFailure("implementations/broken.py", "ImportError: no module named x")],
                        timings)


def _table_rows(md: str) -> list[str]:
    return [line for line in md.splitlines() if line.startswith("|")]


def _small_report() -> RunReport:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_report import _report
    return _report()


@pytest.mark.parametrize("make", [_small_report, big_report], ids=["golden-report", "50-long-names"])
def test_every_table_row_fits_160_columns(make):
    md = report.render_markdown(make())
    rows = _table_rows(md)
    assert rows and max(map(len, rows)) <= WIDTH, max(rows, key=len)
    summary = md[:md.index("## Findings")]
    assert "| implementation " in summary and len(_table_rows(summary)) == len(make().implementations) + 2
    for r in make().implementations:          # a long name is cut in the middle: its variant still tells apart
        assert f"| {r.name} " in summary or any("…" in row and f"{r.name[-17:]} |" in row
                                                for row in _table_rows(summary)), r.name


def test_the_summary_comes_first_and_long_notes_move_below_it():
    rep = big_report()
    md = report.render_markdown(rep)
    first_table = md.index("| implementation ")
    assert first_table < md.index("## Findings") < md.index("## BatchNorm implementations")
    assert md.index("exit status 1") < first_table                 # the verdict line above the table
    long = next(r for r in rep.implementations if r.name.startswith("a-very-long") and r.missing)
    footnotes = [line for line in md.splitlines() if re.match(r"- \[\d+\] ", line)]
    rows = _table_rows(md[:md.index("## Findings")])
    for line in footnotes:                        # each long note: marked in its row, whole below the table
        mark = line.split(" ", 2)[1]
        assert sum(row.rstrip(" |").endswith(mark) for row in rows) == 1, mark
    assert any(long.name in line and "expected but not reproduced: never-reproduced-id" in line
               for line in footnotes)


def test_findings_are_one_line_each_with_evidence_and_reproducer_folded():
    rep = big_report()
    md = report.render_markdown(rep)
    summaries = [line for line in md.splitlines() if line.startswith("<summary>") and "<code>finding-" in line]
    assert len(summaries) == sum(len(r.findings) for r in rep.implementations)
    first = summaries[0]                                          # unexpected findings come first
    assert first.startswith("<summary>✗ ") and "× budget" in first or "structural" in first
    unexpected = [s for s in summaries if s.startswith("<summary>✗")]
    assert summaries[:len(unexpected)] == unexpected and len(unexpected) < len(summaries)
    assert all(len(s) < 400 for s in summaries)
    block = md[md.index(summaries[0]):]
    block = block[:block.index("</details>\n</details>") if "</details>\n</details>" in block else None]
    assert "matches the oracle with running_var_unbiased=False" in block
    assert "Reproduce: `bncheck repro " in block and "print('reproduces')" in block   # an unexpected one's source
    expected = md[md.index(next(s for s in summaries if s.startswith("<summary>✓"))):]
    expected = expected[:expected.index("</details>")]
    assert "Reproduce: `bncheck repro " in expected and "print('reproduces')" not in expected


def test_pictures_are_pngs_with_a_panel_per_implementation(tmp_path):
    rep = big_report()
    md, _ = report.write(rep, tmp_path, pictures=True)
    text = md.read_text()
    for name in ("errors", "timings"):
        path = tmp_path / f"latest-{name}.png"
        assert f"]({path.name})" in text
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.format == "PNG" and 600 <= im.width <= 1600 and 300 <= im.height <= 4000, im.size
        assert path.stat().st_size < 400_000
    panels = [ax for ax in plots.errors_figure(rep).axes if ax.get_visible()]
    assert len(panels) == len(rep.implementations)
    n = plots.NAME_CHARS
    assert sorted(ax.get_title(loc="left") for ax in panels) == sorted(
        r.name if len(r.name) <= n else r.name[:n - 1] + "…" for r in rep.implementations)
    assert len(plots.timings_figure(rep.timings).axes) == 2 * 3      # ratio and GB/s per op


def test_a_report_without_timings_draws_its_errors_and_one_without_ratios_draws_none():
    declined = Result("declined-all", cases=3, declined_cases=3)
    rep = report.build({}, [Result("one", cases=3, ratios=_hist(3)), declined], [])
    pics = plots.render(rep)
    assert set(pics) == {"errors"} and pics["errors"][:8] == b"\x89PNG\r\n\x1a\n"
    assert len(plots.errors_figure(rep).axes) == 2            # the declined one: a panel saying so
    assert plots.render(report.build({}, [declined], [])) == {}   # nothing recorded (an older stored run)


def test_when_pictures_cannot_be_written_the_report_says_why(tmp_path):
    (tmp_path / "latest-errors.png").mkdir()                       # a directory where the picture goes
    rep = _small_report()
    rep.implementations[0].ratios = _hist(10)
    md, js = report.write(rep, tmp_path, pictures=True)
    text = md.read_text()
    assert "*Pictures not drawn: " in text and "Error" in text and "latest-errors.png)" not in text
    assert js.is_file() and "| clean-one" in text


def test_html_is_one_self_contained_file():
    page = render_html(big_report())
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<link" not in page and "<script" not in page and "@import" not in page and "url(" not in page
    imgs = re.findall(r'<img src="([^"]+)"', page)
    assert len(imgs) == 2 and all(s.startswith("data:image/png;base64,") for s in imgs)
    for s in imgs:
        with Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))) as im:
            assert im.format == "PNG"
    assert "<table>" in page and "<details>" in page and "<summary>✗ " in page


def test_report_command_rerenders_a_stored_run(tmp_path, capsys):
    rep = big_report(8)
    _, js = report.write(rep, tmp_path / "run")
    assert cli.main(["report", str(js), "--format", "html", "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "data:image/png;base64," in page and "impl-01" in page
    assert cli.main(["report", str(js)]) == 0                      # default: Markdown next to the JSON
    md = (tmp_path / "run" / "latest.md").read_text()
    assert md == report.render_markdown(RunReport.from_json(json.loads(js.read_text())),
                                        {"errors": "latest-errors.png", "timings": "latest-timings.png"})
    assert (tmp_path / "run" / "latest-errors.png").is_file()
    capsys.readouterr()
    assert cli.main(["report", str(js), "--out", "-"]) == 0
    assert capsys.readouterr().out.startswith("# bncheck report")


def test_report_command_usage_errors(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    cases = {str(tmp_path / "missing.json"): "no such file"}
    bad.write_text("{not json")
    cases[str(bad)] = "not a bncheck report"
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"header": {}, "rows": []}))
    cases[str(other)] = "not a bncheck report"
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"implementations": [1]}))
    cases[str(wrong)] = "not a bncheck report"
    for path, message in cases.items():
        assert cli.main(["report", path]) == 2
        err = capsys.readouterr().err
        assert err.startswith("bncheck report: error: ") and path in err and message in err, err
    _, js = report.write(big_report(3), tmp_path)
    assert cli.main(["report", str(js), "--out", str(js)]) == 2
    assert "would overwrite" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["report", str(js), "--format", "pdf"])
    assert e.value.code == 2


def test_report_command_as_a_program(tmp_path):
    _, js = report.write(big_report(4), tmp_path)
    r = subprocess.run([sys.executable, "-m", "bncheck", "report", str(js), "--format", "html"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "latest.html").is_file() and f"wrote {tmp_path / 'latest.html'}" in r.stdout

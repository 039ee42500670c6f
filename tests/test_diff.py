"""``bncheck diff`` on pairs of stored reports made here, and ``bncheck run --baseline`` on a tiny real run."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bncheck import budget, diff
from bncheck.results import FindingResult, Result, RunReport, TimingRow, Timings

ROOT = Path(__file__).parent.parent


def bncheck(*args, cwd=ROOT, timeout=300):
    return subprocess.run([sys.executable, "-m", "bncheck", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


MACHINE = {"node": "ci-1", "processor": "Some CPU", "machine": "x86_64", "cores": 4, "system": "Linux",
           "release": "6.1", "python_implementation": "CPython"}


def env(**kw):
    e = {"bncheck": "0.1.0", "device": "cpu (x86_64)", "profile": "quick", "seed": 0, "commit": "a" * 40,
         "datetime": "2026-01-01T00:00:00+00:00", "machine": dict(MACHINE)}
    e.update(kw)
    return e


def finding(fid, ratio=50.0, prop="forward"):
    return FindingResult(fid, prop, "output after step 1 (train)", [f"max |diff| = {ratio} x budget"], ratio,
                         "shape=(4, 3) float32 contiguous momentum=0.1")


def impl(name, findings=(), expect=(), worst=None):
    return Result(name=name, expect=sorted(expect), cases=40, findings=[finding(f) for f in findings],
                  worst_ratio_by_dtype=dict(worst or {"float32": 0.05}))


def timing_rows(ratios: dict, spread: float) -> list[TimingRow]:
    """torch native and each named implementation on two shapes; ``ratios``: name -> ratio to torch."""
    rows = []
    for shape in ("64x8", "2x4x6x6"):
        rows.append(TimingRow("torch-native", "forward-train", shape, "nc", "float32", 1.0, 1.0, spread=spread))
        for name, r in ratios.items():
            rows.append(TimingRow(name, "forward-train", shape, "nc", "float32", 1.0 / r, r, spread=spread))
    return rows


def report(impls, timings=None, **e):
    return RunReport.judged(env(**e), impls, [], Timings(rows=timings) if timings else None)


def stored(tmp_path, name, rep):
    """Write the report as a run would and read it back typed, as the diff does."""
    path = tmp_path / name
    path.write_text(json.dumps(rep.to_json()))
    return path, RunReport.from_json(json.loads(path.read_text()))


def table_rows(md):
    return [line for line in md.splitlines() if line.startswith("|")]


def test_unchanged_reports_exit_0_and_say_so(tmp_path):
    rep = report([impl("a", ["inverted-momentum"], expect={"inverted-momentum"}), impl("b")])
    b, _ = stored(tmp_path, "base.json", rep)
    h, _ = stored(tmp_path, "head.json", rep)
    r = bncheck("diff", str(b), str(h), "--md", str(tmp_path / "d.md"), "--json", str(tmp_path / "d.json"))
    assert r.returncode == 0, r.stderr
    assert "No new unexpected finding" in r.stdout and "2 implementation(s) in both runs, 2 with the same" in r.stdout
    assert "## " not in r.stdout                    # no section: nothing moved
    assert (tmp_path / "d.md").read_text() == r.stdout
    d = json.loads((tmp_path / "d.json").read_text())
    assert d["exit_status"] == 0 and d["new"] == d["fixed"] == d["verdicts"] == d["worst"] == []
    assert d["base"]["commit"] == "a" * 40 and d["head"]["machine"] == MACHINE


def test_new_unexpected_finding_exits_1_and_is_named(tmp_path):
    b, base = stored(tmp_path, "base.json", report([impl("a"), impl("b")]))
    h, head = stored(tmp_path, "head.json", report([impl("a", ["eps-ignored"]), impl("b")]))
    r = bncheck("diff", str(b), str(h))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "1 new unexpected finding(s)**: `a:eps-ignored`" in r.stdout
    d = diff.compare(base, head)
    assert [(f.implementation, f.id, f.expected) for f in d.new] == [("a", "eps-ignored", False)]
    assert [(v.implementation, v.base, v.head) for v in d.verdicts] == [("a", "clean", "unexpected")]
    assert d.fixed == [] and d.exit_status == 1 and d.unchanged == 1


def test_new_expected_finding_and_fixed_finding_exit_0(tmp_path):
    # BASE: 'a' declared a bug its search missed; HEAD finds it. 'b' had a declared bug that HEAD no longer shows.
    _, base = stored(tmp_path, "base.json", report([impl("a", [], expect={"nan-inf"}),
                                                    impl("b", ["cancellation"], expect={"cancellation"})]))
    _, head = stored(tmp_path, "head.json", report([impl("a", ["nan-inf"], expect={"nan-inf"}),
                                                    impl("b", [], expect={"cancellation"})]))
    d = diff.compare(base, head)
    assert [(f.implementation, f.id, f.expected) for f in d.new] == [("a", "nan-inf", True)]
    assert [(f.implementation, f.id, f.expected) for f in d.fixed] == [("b", "cancellation", True)]
    assert {(v.implementation, v.base, v.head) for v in d.verdicts} == {
        ("a", "not reproduced", "as expected"), ("b", "as expected", "not reproduced")}
    assert d.exit_status == 0
    md = diff.render_markdown(d)
    assert "## New findings" in md and "## Fixed findings" in md and "## Verdict changes" in md
    assert "No new unexpected finding" in md


def test_added_implementation_with_an_undeclared_bug_fails_removed_one_is_listed(tmp_path):
    _, base = stored(tmp_path, "base.json", report([impl("a"), impl("gone", ["crash"], expect={"crash"})]))
    _, head = stored(tmp_path, "head.json", report([impl("a"), impl("fresh", ["momentum-ignored"])]))
    d = diff.compare(base, head)
    assert d.added == ["fresh"] and d.removed == ["gone"]
    assert [(f.implementation, f.id) for f in d.new_unexpected] == [("fresh", "momentum-ignored")]
    assert d.fixed == []                            # a removed implementation's findings are not 'fixed'
    assert d.exit_status == 1 and d.compared == 1


def test_worst_ratio_moves_beyond_2x_above_the_floor(tmp_path):
    assert diff.WORST_FLOOR == 1.0 / budget.K       # one rounding of the result in its own dtype
    pairs = {"float32": (0.1, 0.4),      # 0.125 -> 0.4: 3.2x, reported
             "float64": (0.3, 0.5),      # 1.67x: not reported
             "float16": (0.01, 0.1),     # both below the floor: rounding luck, not reported
             "bfloat16": (1e3, 400.0),   # 2.5x down: reported
             "float16+float32": (0.2, math.inf)}   # a NaN where a number was due: reported
    _, base = stored(tmp_path, "base.json", report([impl("a", worst={k: v[0] for k, v in pairs.items()})]))
    _, head = stored(tmp_path, "head.json", report([impl("a", worst={k: v[1] for k, v in pairs.items()})]))
    d = diff.compare(base, head)
    moved = {w.dtype: (w.base, w.head) for w in d.worst}
    assert moved == {k: pairs[k] for k in ("float32", "bfloat16", "float16+float32")}
    assert d.exit_status == 0                       # information, not a failure
    md = diff.render_markdown(d)
    assert "3.20x" in md and "1/2.50x" in md and "to inf" in md
    again = diff.RunDiff.from_json(json.loads(json.dumps(diff.compare(base, head).to_json())))
    assert again == d                               # the JSON stores infinities as null and reads them back


def test_timing_move_within_the_spread_is_not_reported_a_real_one_is(tmp_path):
    # noisy runs (spread 0.1 on every timing): a 1.5x move of 'a' is within 3 combined spreads (1.82x)
    _, base = stored(tmp_path, "base.json", report([impl("a")], timing_rows({"a": 1.0, "b": 1.0}, 0.1)))
    _, head = stored(tmp_path, "head.json", report([impl("a")], timing_rows({"a": 1.5, "b": 1.0}, 0.1)))
    d = diff.compare(base, head)
    assert d.timings == [] and d.timings_compared == 4
    # quiet runs (spread 0.01): the same move is real, and a 5% one stays under the 10% minimum
    _, base = stored(tmp_path, "base.json", report([impl("a")], timing_rows({"a": 1.0, "b": 1.0}, 0.01)))
    _, head = stored(tmp_path, "head.json", report([impl("a")], timing_rows({"a": 1.5, "b": 1.05}, 0.01)))
    d = diff.compare(base, head)
    assert {(t.implementation, t.shape) for t in d.timings} == {("a", "64x8"), ("a", "2x4x6x6")}
    assert all(t.threshold == pytest.approx(diff.TIMING_MIN_FACTOR) and t.spread_known for t in d.timings)
    assert d.exit_status == 0
    md = diff.render_markdown(d)
    assert "## Timing ratios" in md and "1.50x" in md
    # a timing that now fails is named
    rows = timing_rows({"a": 1.0, "b": 1.0}, 0.01)
    rows[-1].time_ms, rows[-1].ratio, rows[-1].error = None, None, "RuntimeError: boom"
    _, head = stored(tmp_path, "head.json", report([impl("a")], rows))
    d = diff.compare(base, head)
    assert d.timing_errors == ["b forward-train 2x4x6x6 nc float32: RuntimeError: boom"] and d.timings == []


def test_a_quiet_row_in_a_noisy_run_is_held_to_the_runs_noise(tmp_path):
    rows_b, rows_h = timing_rows({"a": 1.0}, 0.2), timing_rows({"a": 1.6}, 0.2)
    for r in rows_b + rows_h:                       # one shape measured with a tiny spread of its own
        if r.shape == "64x8":
            r.spread = 0.001
    _, base = stored(tmp_path, "base.json", report([impl("a")], rows_b))
    _, head = stored(tmp_path, "head.json", report([impl("a")], rows_h))
    assert diff.compare(base, head).timings == []
    # without recorded spreads a timing is held to a fixed 1.5x
    for r in rows_b + rows_h:
        r.spread = None
    _, base = stored(tmp_path, "base.json", report([impl("a")], rows_b))
    _, head = stored(tmp_path, "head.json", report([impl("a")], rows_h))
    moves = diff.compare(base, head).timings
    assert len(moves) == 2 and all(not t.spread_known and t.threshold == diff.TIMING_UNKNOWN_FACTOR for t in moves)


def test_header_says_what_is_compared_and_warns_on_differences(tmp_path):
    other = dict(MACHINE, processor="Other CPU", node="ci-2")
    _, base = stored(tmp_path, "base.json", report([impl("a")]))
    _, head = stored(tmp_path, "head.json", report([impl("a")], profile="default", seed=3, machine=other,
                                                   commit="b" * 40 + "-dirty"))
    md = diff.render_markdown(diff.compare(base, head, "main.json", "pr.json"))
    assert "profiles differ (quick vs default)" in md and "seeds differ (0 vs 3)" in md
    assert "machines differ" in md and "ci-2: Other CPU, 4 cores" in md
    assert "aaaaaaaaaaaa" in md and "bbbbbbbbbbbb (dirty)" in md and "main.json" in md and "pr.json" in md
    # the node name alone differs between CI runners of one kind: no warning
    _, head = stored(tmp_path, "head.json", report([impl("a")], machine=dict(MACHINE, node="ci-9")))
    assert diff.compare(base, head).warnings == []


def test_markdown_tables_stay_within_160_columns(tmp_path):
    long = "an-implementation-with-a-very-long-name-" * 3
    worst = {"float32": 0.05, "bfloat16+float32": 0.05}
    _, base = stored(tmp_path, "base.json", report([impl(long, ["momentum-none-ignored-by-a-long-name"], worst=worst),
                                                    impl("x", ["nan-inf"])],
                                                   timing_rows({long: 1.0}, 0.01)))
    head_impl = impl(long, ["running-stats-hold-graph", "non-contiguous-crash"], worst={"float32": 9e5,
                                                                                       "bfloat16+float32": 3.0})
    head_impl.findings[0].where = "running_var after step 12 (train, no_grad) with a much longer description " * 3
    _, head = stored(tmp_path, "head.json", report([head_impl, impl("x"), impl("y")], timing_rows({long: 3.0}, 0.01),
                                                   machine=dict(MACHINE, processor="Intel(R) Xeon(R) Platinum "
                                                                "8480+ with a long model name")))
    md = diff.render_markdown(diff.compare(base, head, "/a/long/path/" * 8 + "base.json", "head.json"))
    for section in ("New findings", "Fixed findings", "Verdict changes", "added or removed", "Worst", "Timing"):
        assert section in md
    assert max(len(line) for line in table_rows(md)) <= 160, max(table_rows(md), key=len)


def test_usage_errors_exit_2_naming_the_file(tmp_path):
    good, _ = stored(tmp_path, "good.json", report([impl("a")]))
    (tmp_path / "text.json").write_text("not json at all")
    (tmp_path / "list.json").write_text("[1, 2]")
    for args, msg in (((tmp_path / "missing.json", good), "BASE " + str(tmp_path / "missing.json") + ": no such"),
                      ((good, tmp_path), f"HEAD {tmp_path}: not a file"),
                      ((tmp_path / "text.json", good), "not JSON, so not a bncheck report"),
                      ((good, tmp_path / "list.json"), "list.json: not a bncheck report")):
        r = bncheck("diff", *map(str, args))
        assert r.returncode == 2 and msg in r.stderr, (args, r.stderr)
    r = bncheck("diff", str(good))
    assert r.returncode == 2 and "HEAD.json" in r.stderr
    r = bncheck("run", "--baseline", str(tmp_path / "missing.json"), "--out", str(tmp_path))
    assert r.returncode == 2 and "--baseline" in r.stderr and "no such file" in r.stderr
    assert not (tmp_path / "latest.json").exists()  # refused before any checking


def test_run_with_baseline_writes_the_diff_next_to_the_report(tmp_path):
    tiny = ("run", "--impl", "torch-functional", "--property", "forward", "--profile", "quick", "--jobs", "1")
    r = bncheck(*tiny, "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "latest.json").read_text())
    e = rep["environment"]
    assert e["commit"] is None or len(e["commit"].removesuffix("-dirty")) == 40
    assert e["datetime"].endswith("+00:00") and e["machine"]["cores"] >= 1 and e["machine"]["processor"]
    # the baseline is the report this run overwrites: it is read first
    r = bncheck(*tiny, "--out", str(tmp_path), "--baseline", str(tmp_path / "latest.json"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "(before this run)" in r.stdout and "1 implementation(s) in both runs, 1 with the same" in r.stdout
    d = json.loads((tmp_path / "diff.json").read_text())
    assert d["exit_status"] == 0 and d["compared"] == 1 and d["unchanged"] == 1
    assert (tmp_path / "diff.md").read_text().startswith("# bncheck diff")
    # a baseline without torch-functional: the run adds it, clean, and passes
    empty, _ = stored(tmp_path, "empty.json", report([]))
    r = bncheck(*tiny, "--out", str(tmp_path / "o"), "--baseline", str(empty))
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((tmp_path / "o" / "diff.json").read_text())["added"] == ["torch-functional"]


def test_the_workflows_bncheck_commands_parse():
    """Every `bncheck run` line of the CI workflow, with the job's PROFILE and BENCH, is a valid command line."""
    import re
    import shlex

    from bncheck.cli import _parser
    text = (ROOT / ".github" / "workflows" / "bncheck.yml").read_text()
    env = dict(re.findall(r"^\s+(PROFILE|BENCH): ([^#\n]*)", text, re.M))
    assert set(env) == {"PROFILE", "BENCH"}
    lines = [line.split(".venv/bin/bncheck", 1)[1] for line in text.splitlines() if ".venv/bin/bncheck run" in line]
    assert len(lines) == 2 and any("--baseline baseline/latest.json" in line for line in lines)
    for line in lines:
        line = line.replace('"$PROFILE"', env["PROFILE"].strip()).replace("$BENCH", env["BENCH"].strip())
        args = _parser().parse_args(shlex.split(line))
        assert args.command == "run" and args.profile == "default" and args.out == "reports" and args.bench

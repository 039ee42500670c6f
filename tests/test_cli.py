"""CLI exit codes: 0 when findings equal expect, 1 when not, 2 for usage errors naming the argument."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def bncheck(*args, cwd=ROOT, timeout=300):
    return subprocess.run([sys.executable, "-m", "bncheck", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_clean_reference_exits_0_and_writes_reports(tmp_path):
    r = bncheck("run", "--impl", "torch-bn2d", "--profile", "quick", "--property", "forward", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "latest.json").read_text())
    assert rep["schema_version"] == 1 and rep["exit_status"] == 0
    (impl,) = rep["implementations"]
    assert impl["name"] == "torch-bn2d" and impl["verdict"] == "clean" and impl["cases"] > 0
    md = (tmp_path / "latest.md").read_text()
    assert "| torch-bn2d" in md and "](latest-errors.png)" in md and (tmp_path / "latest-errors.png").is_file()


def test_unexpected_finding_exits_1(tmp_path):
    plugin = tmp_path / "mine.py"
    plugin.write_text(
        "import torch, bncheck\n"
        "class NoEps(torch.nn.BatchNorm1d):\n"
        "    def forward(self, x):\n"
        "        self.eps = 0.5\n"
        "        return super().forward(x)\n"
        "@bncheck.implementation('mine', expect=set())\n"
        "def build(spec):\n"
        "    if spec.ndim > 3: raise bncheck.Unsupported('1d only')\n"
        "    return NoEps(**spec.torch_kwargs())\n")
    r = bncheck("run", "--plugins", str(tmp_path), "--impl", "mine", "--profile", "quick", "--property",
                "forward", "--out", str(tmp_path / "out"))
    assert r.returncode == 1, r.stdout + r.stderr
    rep = json.loads((tmp_path / "out" / "latest.json").read_text())
    assert rep["implementations"][0]["unexpected"] == ["eps-ignored"]


def test_usage_errors_exit_2_naming_the_argument(tmp_path):
    r = bncheck("run", "--profile", "bogus")
    assert r.returncode == 2 and "--profile" in r.stderr
    r = bncheck("run", "--impl", "no-such-impl", "--out", str(tmp_path))
    assert r.returncode == 2 and "--impl no-such-impl" in r.stderr
    r = bncheck("run", "--plugins", str(tmp_path / "missing"))
    assert r.returncode == 2 and "--plugins" in r.stderr
    r = bncheck("repro", "x:y", "--report", str(tmp_path / "none.json"))
    assert r.returncode == 2 and "--report" in r.stderr
    r = bncheck("run", "--world-size", "0", "--out", str(tmp_path))
    assert r.returncode == 2 and "--world-size 0" in r.stderr
    r = bncheck("run", "--kind", "conv")
    assert r.returncode == 2 and "--kind" in r.stderr
    r = bncheck("run", "--bench", "9x", "--out", str(tmp_path))
    assert r.returncode == 2 and "--bench 9x" in r.stderr
    r = bncheck("bench", "--impl", "bncheck-fold", "--out", str(tmp_path))
    assert r.returncode == 2 and "only BatchNorm implementations are timed" in r.stderr
    assert not (tmp_path / "latest.json").exists()


def test_kind_selects_plugins_and_the_report_has_that_section(tmp_path):
    r = bncheck("run", "--kind", "fusion", "--impl", "torch-fuse-conv-bn", "--profile", "quick", "--out",
                str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads((tmp_path / "latest.json").read_text())
    assert [(i["name"], i["kind"], i["verdict"]) for i in rep["implementations"]] == [
        ("torch-fuse-conv-bn", "fusion", "clean")]
    md = (tmp_path / "latest.md").read_text()
    assert "## Fusion (conv-BN folding)" in md and "## BatchNorm implementations" not in md


def test_list_shows_names_origins_and_expectations():
    r = bncheck("list")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "seed-002" in r.stdout and "implementations/seed_002.py" in r.stdout
    kinds = {line.split()[0]: line.split()[1] for line in r.stdout.splitlines()[2:] if line.strip()}
    assert kinds["seed-000-fold"] == "fusion" and kinds["bncheck-syncbn"] == "sync" and kinds["seed-000"] == "batchnorm"


def _plugin_expecting(tmp_path, fid):
    plugin = tmp_path / "mine.py"
    plugin.write_text(
        "import torch, bncheck\n"
        f"@bncheck.implementation('mine', expect={{'{fid}'}})\n"
        "def build(spec):\n"
        "    if spec.ndim > 3: raise bncheck.Unsupported('1d only')\n"
        "    return torch.nn.BatchNorm1d(**spec.torch_kwargs())\n")
    return plugin


def test_expected_but_not_reproduced_is_a_warning_unless_strict(tmp_path):
    _plugin_expecting(tmp_path, "inverted-momentum")
    args = ("run", "--plugins", str(tmp_path), "--impl", "mine", "--profile", "quick", "--property", "forward")
    r = bncheck(*args, "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "warning: expected but not reproduced: inverted-momentum" in r.stdout
    rep = json.loads((tmp_path / "out" / "latest.json").read_text())
    (impl,) = rep["implementations"]
    assert (impl["verdict"], impl["missing"], impl["findings"]) == ("not reproduced", ["inverted-momentum"], [])
    assert impl["properties"]["probes"]["cases"] > 0          # its probe ran, and showed nothing
    assert "warning: expected but not reproduced: inverted-momentum" in (tmp_path / "out" / "latest.md").read_text()
    r = bncheck(*args, "--strict", "--out", str(tmp_path / "strict"))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "expected but not found: inverted-momentum" in r.stdout
    rep = json.loads((tmp_path / "strict" / "latest.json").read_text())
    assert rep["strict"] is True and rep["implementations"][0]["verdict"] == "unexpected"


def test_probes_confirm_expected_findings_a_short_search_missed(tmp_path):
    # the forward property alone cannot see an empty batch or the buffers' shape: their probes do
    r = bncheck("run", "--impl", "seed-001", "--impl", "seed-002", "--profile", "quick", "--property", "forward",
                "--out", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads((tmp_path / "latest.json").read_text())
    by_name = {i["name"]: i for i in rep["implementations"]}
    assert "nan-inf" in by_name["seed-001"]["confirmed_by_probe"]
    assert "state-shape-drift" in by_name["seed-002"]["confirmed_by_probe"]
    for impl in by_name.values():
        assert impl["verdict"] == "as expected", (impl["name"], impl["missing"], impl["unexpected"])
        probed = [f for f in impl["findings"] if f["source"] == "probe"]
        assert probed and all("confirmed by the directed probe" in f["evidence"][-1] and f["repro"] for f in probed)
    assert "confirmed by probe: " in r.stdout
    assert "<code>nan-inf</code> (probe)" in (tmp_path / "latest.md").read_text()


@pytest.mark.slow
def test_quick_profile_on_the_bundled_batchnorms_exits_0(tmp_path):
    impls = ["seed-000", "seed-001", "seed-002", "seed-003", "torch-bn1d", "torch-bn2d", "torch-bn3d",
             "torch-functional", "bncheck-oracle"]
    r = bncheck("run", *[a for n in impls for a in ("--impl", n)], "--profile", "quick", "--out", str(tmp_path),
                timeout=1200)
    assert r.returncode == 0, r.stdout + r.stderr
    rep = json.loads((tmp_path / "latest.json").read_text())
    for impl in rep["implementations"]:
        assert impl["verdict"] in ("clean", "as expected") and not impl["missing"], (impl["name"], impl["missing"])

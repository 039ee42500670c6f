"""CLI exit codes: 0 when findings equal expect, 1 when not, 2 for usage errors naming the argument."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def bncheck(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "bncheck", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_clean_reference_exits_0_and_writes_reports(tmp_path):
    r = bncheck("run", "--impl", "torch-bn2d", "--profile", "quick", "--property", "forward", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "latest.json").read_text())
    assert rep["schema_version"] == 1 and rep["exit_status"] == 0
    (impl,) = rep["implementations"]
    assert impl["name"] == "torch-bn2d" and impl["verdict"] == "clean" and impl["cases"] > 0
    assert "| torch-bn2d" in (tmp_path / "latest.md").read_text()


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

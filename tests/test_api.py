"""The Python API: bncheck.check / assert_conforms run the pipeline of `bncheck run` (worker processes included) on a
builder function, a registered name, a plugin file or an Implementation."""
import subprocess
import sys
from pathlib import Path

import pytest

import bncheck
from bncheck.api import infer_kind
from bncheck.registry import RegistrationError

ROOT = Path(__file__).resolve().parent.parent


def good(spec):                                   # module-level: a worker re-imports this file to find it
    return spec.torch_class(**spec.torch_kwargs())


def broken(spec):
    m = spec.torch_class(**spec.torch_kwargs())
    m.eps = 0.5                                   # the one broken line: eps replaced
    return m


def test_a_correct_builder_is_clean():
    r = bncheck.check(good, properties=["forward"])
    assert isinstance(r, bncheck.Result)
    assert (r.name, r.kind, r.verdict, r.findings) == ("good", "batchnorm", "clean", [])
    assert r.cases > 0 and list(r.properties) == ["forward"]
    assert r.origin == str(Path(__file__).resolve())


def test_assert_conforms_names_the_finding_with_example_evidence_and_a_runnable_reproducer():
    with pytest.raises(AssertionError) as info:
        bncheck.assert_conforms(broken, properties=["forward"])
    msg = str(info.value)
    lines = msg.splitlines()
    assert lines[0].startswith("broken does not behave like torch: verdict 'unexpected'")
    assert any(line.strip().startswith("eps-ignored in forward: output") and "x budget" in line for line in lines)
    assert "Minimal example: shape=" in msg and "matches the oracle with eps_override=0.5" in msg
    (cmd,) = [line.strip() for line in lines if line.strip().startswith("Reproduce: python ")]
    script = Path(cmd.split("python ", 1)[1])
    assert script.is_file()
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd="/")
    assert run.returncode == 1, run.stdout + run.stderr            # exits 1 while the finding reproduces
    assert "x budget" in run.stdout


def test_by_registered_name(monkeypatch):
    monkeypatch.chdir(ROOT)                       # ./implementations
    r = bncheck.check("torch-bn2d", properties=["forward"])
    assert (r.name, r.verdict, r.origin) == ("torch-bn2d", "clean", "implementations/torch_reference.py")


def test_by_plugin_file_whose_declared_expected_finding_does_not_fail_assert_conforms(tmp_path):
    plugin = tmp_path / "mine.py"
    plugin.write_text(
        "import bncheck\n"
        "@bncheck.implementation('mine', expect={'eps-ignored'})\n"
        "def build(spec):\n"
        "    m = spec.torch_class(**spec.torch_kwargs())\n"
        "    m.eps = 0.5\n"
        "    return m\n")
    r = bncheck.assert_conforms(plugin, properties=["forward"])
    assert (r.name, r.verdict, r.expect, sorted(r.ids)) == ("mine", "as expected", ["eps-ignored"], ["eps-ignored"])


def test_in_process_check_takes_a_lambda():
    r = bncheck.check(lambda spec: spec.torch_class(**spec.torch_kwargs()), properties=["forward"], isolate=False,
                      name="inline")
    assert (r.name, r.verdict) == ("inline", "clean") and r.cases > 0


def test_bad_targets_and_arguments_are_clear_errors():
    with pytest.raises(RegistrationError, match="module-level function"):
        bncheck.check(lambda spec: None)

    def nested(spec):
        return None
    with pytest.raises(RegistrationError, match="module-level function"):
        bncheck.check(nested)
    with pytest.raises(ValueError, match=r"check\(expect=...\): unknown finding id\(s\) \['eps-typo'\]"):
        bncheck.check(good, expect={"eps-typo"})
    with pytest.raises(ValueError, match="unknown property 'forwards'"):
        bncheck.check(good, properties=["forwards"])
    with pytest.raises(ValueError, match="no implementation named 'no-such'.*known: .*torch-bn2d"):
        bncheck.check("no-such")
    with pytest.raises(FileNotFoundError, match="missing.py"):
        bncheck.check("missing.py")
    with pytest.raises(TypeError, match="pass kind='sync' or kind='fusion'"):
        infer_kind(lambda a, b: None)


def test_kind_is_read_from_the_signature():
    def fold(conv, bn): ...
    def fold_weights(w, b, rm, rv, weight, bias, eps, transposed): ...
    def sync(spec, group): ...
    assert infer_kind(good) == ("batchnorm", {})
    assert infer_kind(fold) == ("fusion", {"form": "module"})
    assert infer_kind(fold_weights) == ("fusion", {"form": "weights"})
    assert infer_kind(sync) == ("sync", {})


def test_no_module_of_the_package_shadows_a_public_name():
    # importing a submodule binds it as an attribute of its package: a subpackage named like a public name
    # (``bncheck.fusion`` is the decorator) would replace that name once anything imports it
    probe = ("import importlib, inspect, pkgutil, bncheck\n"
             "before = {n: getattr(bncheck, n) for n in bncheck.__all__}\n"
             "for m in pkgutil.walk_packages(bncheck.__path__, 'bncheck.'):\n"
             "    if not m.name.endswith('__main__'):\n"
             "        importlib.import_module(m.name)\n"
             "print(sorted(n for n, v in before.items() if getattr(bncheck, n) is not v or inspect.ismodule(v)))\n")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_worst_error_is_over_passing_cases_only():
    """The report's 'worst error/budget' is how close passing cases came to their budget: cases of a bug already
    named (and assumed by later rounds) are not passing cases, so a buggy implementation's worst stays within 1."""
    r = bncheck.check(str(ROOT / "implementations" / "seed_002.py"), profile="quick", seed=0,
                      properties=["forward", "running-stats", "modes", "gradients"])
    assert r.findings and r.worst_ratio_by_dtype, r
    assert all(v <= 1.0 for v in r.worst_ratio_by_dtype.values()), r.worst_ratio_by_dtype

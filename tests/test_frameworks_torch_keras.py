"""The torch.compile and Keras 3 framework plugins through the real runner, and their declines when what they
bridge to is missing.

A verdict is "as expected" when the findings are exactly the plugin's ``expect`` set: no finding that the
framework's own source does not explain, and every documented difference found.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bncheck import runner
from bncheck.registry import Registry

ROOT = Path(__file__).resolve().parent.parent
FRAMEWORKS = ROOT / "implementations" / "frameworks"


def _impl(file: str, name: str):
    reg = Registry()
    reg.load_file(FRAMEWORKS / file)
    assert not reg.errors, reg.errors
    return reg.implementations[name]


def _run(impl, profile="quick", seed=0, properties=None) -> dict:
    (result,) = runner.run_all([impl], jobs=1, profile=profile, seed=seed, properties=properties,
                               progress=runner.Progress(1, stream=open(os.devnull, "w")))
    return result


def _assert_as_expected(result: dict, expect: frozenset):
    found = {f.id for f in result.findings}
    detail = "; ".join(f"{f.id} ({f.property}: {f.evidence[0][:200]} | {f.scenario[:160]})"
                       for f in result.findings if f.id not in expect)
    assert found == set(expect), (f"{result.name}: expected exactly {sorted(expect)}, got {sorted(found)}; "
                                  f"missing {sorted(set(expect) - found)}; unexpected: {detail}")
    assert result.cases > 0


def _build_in_subprocess(file: str, name: str, prelude: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Load the plugin and call its builder in a fresh interpreter after ``prelude`` ran."""
    code = prelude + textwrap.dedent(f"""
        import bncheck
        from bncheck.registry import Registry
        reg = Registry()
        reg.load_file({str(FRAMEWORKS / file)!r})
        assert not reg.errors, reg.errors
        try:
            reg.implementations[{name!r}].build(bncheck.Spec(num_features=3, ndim=4))
        except bncheck.Unsupported as e:
            print("UNSUPPORTED:", e)
        else:
            print("BUILT")
        """)
    full_env = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=300)


# -- Keras 3 ---------------------------------------------------------------------------------------------------

@pytest.mark.slow       # make run checks it at the default profile
def test_keras_quick_as_expected():
    impl = _impl("keras_bn.py", "keras-bn")
    _assert_as_expected(_run(impl), impl.expect)


def test_keras_declines_when_not_installed():
    r = _build_in_subprocess("keras_bn.py", "keras-bn", "import sys\nsys.modules['keras'] = None\n")
    assert r.returncode == 0, r.stderr
    assert "UNSUPPORTED: keras is not installed: pip install bncheck[frameworks]" in r.stdout, r.stdout + r.stderr


def test_keras_declines_when_imported_with_another_backend():
    r = _build_in_subprocess("keras_bn.py", "keras-bn", "import keras\n", env={"KERAS_BACKEND": "jax"})
    assert r.returncode == 0, r.stderr
    assert "UNSUPPORTED: keras is already imported with the 'jax' backend" in r.stdout, r.stdout + r.stderr


# -- torch.compile ---------------------------------------------------------------------------------------------

@pytest.mark.slow       # compiling costs 20-60 s a configuration on a fresh machine; make run checks it
def test_torch_compile_forward_quick_as_expected():
    """Values as torch's; torch's ValueError for one value per channel comes out wrapped by Dynamo."""
    impl = _impl("torch_compile.py", "torch-compile-bn")
    assert impl.expect == frozenset({"error-type"})
    result = _run(impl, properties=["forward"])
    _assert_as_expected(result, impl.expect)
    evidence = " ".join(result.findings[0].evidence)
    assert "raises TorchRuntimeError" in evidence and "torch raises ValueError" in evidence, evidence


@pytest.mark.slow
def test_torch_compile_quick_as_expected():
    impl = _impl("torch_compile.py", "torch-compile-bn")
    _assert_as_expected(_run(impl), impl.expect)


def test_torch_compile_declines_without_a_cpp_compiler():
    r = _build_in_subprocess("torch_compile.py", "torch-compile-bn", "", env={"CXX": "/nonexistent/c++"})
    assert r.returncode == 0, r.stderr
    assert "UNSUPPORTED: no C++ compiler for Inductor's CPU backend" in r.stdout, r.stdout + r.stderr


def test_torch_compile_declines_momentum_none_instead_of_running_eagerly():
    impl = _impl("torch_compile.py", "torch-compile-bn")
    import bncheck
    with pytest.raises(bncheck.Unsupported, match="momentum=None"):
        impl.build(bncheck.Spec(num_features=3, ndim=4, momentum=None))

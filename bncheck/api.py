"""The Python API: ``check`` and ``assert_conforms`` run the pipeline of ``bncheck run`` on one implementation.

``target`` is any of: a builder function (``build(spec) -> nn.Module``; a fold ``fold(conv, bn)`` or
``fold(W, b, running_mean, running_var, weight, bias, eps, transposed)``; a sync builder ``build(spec, group)``),
a decorated builder, an ``Implementation``, a registered name (``./implementations``, installed entry points) or a
plugin file. The check runs in a worker process (as ``bncheck run`` does: a crash or hang is a finding), which
re-imports the builder's module, so the builder must be a module-level function; ``isolate=False`` checks it in
this process instead (no time limit; a lambda or closure works there).
"""
from __future__ import annotations

import inspect
import io
import os
import re
import tempfile
from dataclasses import replace
from pathlib import Path

from .catalog import check_ids
from .options import DEVICES, PROFILES, WORLD_SIZES
from .registry import KINDS, Implementation, Registry, discover, object_source
from .results import FindingResult, Result, WarningLog

DEFAULT_PLUGIN_DIR = "implementations"
EVIDENCE_LINES = 4          # evidence lines per finding in an assert_conforms message
_UNSET = object()


def check(target, *, profile: str = "quick", seed: int = 0, properties=None, kind: str | None = None, expect=_UNSET,
          device: str = "cpu", timeout_s: float | None = None, strict: bool = False, name: str | None = None,
          state: dict | None = None, world_sizes=WORLD_SIZES, isolate: bool = True, database: str | None = None,
          phases=None) -> Result:
    """Check one implementation against torch; returns its judged ``Result`` (``verdict``, ``findings``, ...).

    ``properties``: only these BatchNorm properties (default: all); ``expect``: finding ids the implementation is
    known to have (default: its declared ones, or none); ``strict``: an expected id not reproduced makes the
    verdict 'unexpected'; ``timeout_s``: a worker with no progress for this long is a 'timeout' finding;
    ``name``, ``state``: for a plain builder, the name to report and where its state lives (as in
    ``@bncheck.implementation``); ``database``, ``phases``: a Hypothesis example directory to replay from and save
    to, and the Hypothesis phases allowed (every kind's search)."""
    from . import runner
    if profile not in PROFILES:
        raise ValueError(f"check(profile={profile!r}): one of {', '.join(PROFILES)}")
    if device not in DEVICES:
        raise ValueError(f"check(device={device!r}): one of {', '.join(DEVICES)}")
    if properties is not None:
        from .properties import BY_NAME
        properties = [properties] if isinstance(properties, str) else list(properties)
        bad = [p for p in properties if p not in BY_NAME]
        if bad:
            raise ValueError(f"check(properties=...): unknown property {bad[0]!r}; known: {', '.join(BY_NAME)}")
    impl = resolve(target, kind=kind, expect=expect, name=name, state=state, isolate=isolate)
    options = dict(profile=profile, seed=seed, device=device, properties=properties,
                   world_sizes=tuple(sorted(set(world_sizes))), database=database, phases=phases)
    if isolate:
        quiet = runner.Progress(1, stream=io.StringIO())
        (result,) = runner.run_all([impl], jobs=1, progress=quiet,
                                   timeout_s=runner.PROPERTY_TIMEOUT_S if timeout_s is None else timeout_s, **options)
    else:
        result = _in_process(impl, options)
    result.expect = sorted(impl.expect)
    return result.judge(strict)


def assert_conforms(target, **kwargs) -> Result:
    """``check(target, **kwargs)``, raising ``AssertionError`` when the verdict is 'unexpected': the message has
    one line per unexpected finding with its minimal example, evidence and the command that runs its reproducer.
    Expected findings (``expect``) do not fail it; an expected one not reproduced fails only with ``strict``."""
    result = check(target, **kwargs)
    if result.verdict == "unexpected":
        raise AssertionError(failure_message(result))
    return result


def failure_message(result: Result, findings=None, title: str = "", repro_dir: str | None = None) -> str:
    """What went wrong, torch.testing style: a header, one line per finding shown (default: the unexpected ones),
    each one's minimal example, first evidence lines and reproducer, then the expected ids not reproduced.
    Reproducers are written to files (``repro_dir``, default a new temporary directory) and named by the command
    that runs them; ``title`` names the part checked (e.g. a property)."""
    shown = [f for f in result.findings if f.id in result.unexpected] if findings is None else list(findings)
    declined = f" ({result.declined_cases} declined)" if result.declined_cases else ""
    part = f" in {title}" if title else ""
    lines = [f"{result.name} does not behave like torch{part}: verdict {result.verdict!r}, {result.cases} cases"
             f"{declined}, {len(shown)} of {len(result.findings)} finding(s) shown, {result.seconds:.1f} s"]
    if result.origin:
        lines.append(f"implementation from {result.origin}")
    if shown:
        lines += ["", "Findings:"] + [f"  {f.line()}" for f in shown]
    for f in shown:
        lines += ["", _finding_block(f, result.name, repro_dir)]
    if result.missing and result.verdict == "unexpected" and findings is None:
        lines += ["", f"Expected but not reproduced (neither by the search nor by its directed probe): "
                      f"{', '.join(result.missing)}"]
    return "\n".join(lines)


def _finding_block(f: FindingResult, name: str, repro_dir: str | None) -> str:
    out = [f"{f.id} ({f.property}, {f.where}):"]
    if f.example:
        out.append(f"  Minimal example: {f.example}")
    out += [f"  {e}" for e in f.evidence[:EVIDENCE_LINES]]
    if len(f.evidence) > EVIDENCE_LINES:
        out.append(f"  ... {len(f.evidence) - EVIDENCE_LINES} more evidence line(s)")
    if f.repro:
        out.append(f"  Reproduce: python {write_reproducer(f, name, repro_dir)}")
    else:
        out.append("  (no reproducer: the worker process itself failed)")
    return "\n".join(out)


def write_reproducer(f: FindingResult, name: str, directory: str | None = None) -> Path:
    """Write the finding's reproducer script to a file; returns its path."""
    d = Path(directory or tempfile.mkdtemp(prefix="bncheck-repro-"))
    d.mkdir(parents=True, exist_ok=True)
    path = d / (re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{name}_{f.id}") + ".py")
    path.write_text(_with_import_path(f.repro))
    return path


def _with_import_path(repro: str) -> str:
    """The reproducer, made to import what the checking process could: its own import-path entries that are
    project folders (a pytest rootdir, ``pythonpath = ["."]``, a script's folder; not the interpreter's or
    site-packages), put first, so ``python FILE`` runs from anywhere."""
    import sys
    import sysconfig
    system = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    system |= {Path(p).resolve() for p in sysconfig.get_paths().values() if p}
    extra = []
    for entry in sys.path:
        p = Path(entry or os.getcwd()).resolve()
        if p.is_dir() and not any(p == s or p.is_relative_to(s) for s in system) and "site-packages" not in p.parts \
                and str(p) not in extra:
            extra.append(str(p))
    if not extra or "\nimport sys\n" not in repro:
        return repro
    head, _, tail = repro.partition("\nimport sys\n")
    return f"{head}\nimport sys\nsys.path[:0] = {extra!r}   # the checking process's project folders\n{tail}"


# -- what the target is -------------------------------------------------------------------------------------------

def resolve(target, *, kind: str | None = None, expect=_UNSET, name: str | None = None, state: dict | None = None,
            isolate: bool = True) -> Implementation:
    """The ``Implementation`` a target names (see the module docstring)."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"check(kind={kind!r}): one of {', '.join(KINDS)}")
    override = None if expect is _UNSET else check_ids(expect, "check(expect=...)")
    if isinstance(target, Implementation):
        impl = target
    elif isinstance(target, (str, os.PathLike)):
        impl = _by_name_or_file(target, name)
    elif callable(target) and getattr(target, "__bncheck_impl__", None) is not None:
        impl = _by_file_too(target.__bncheck_impl__, target)
    elif callable(target):
        impl = _plain(target, kind, name, state, override or frozenset(), isolate)
    else:
        raise TypeError(f"check: target {target!r} is not a builder function, an Implementation, a registered name "
                        f"or a plugin file")
    if kind is not None and impl.kind != kind:
        raise ValueError(f"check(kind={kind!r}): {impl.name!r} is a {impl.kind} implementation")
    if override is not None:
        impl = replace(impl, expect=override)
    return impl


def _by_file_too(impl: Implementation, build) -> Implementation:
    """A decorated builder whose module was imported by name (a test module pytest imported): re-loaded by name
    or, where that name does not import (a reproducer run elsewhere), from its file."""
    if not impl.source.startswith("module:") or not getattr(inspect.getmodule(build), "__file__", None):
        return impl
    try:
        return replace(impl, source=object_source(build, impl.name, impl.kind, impl.expect, impl.state,
                                                  impl.options))
    except Exception:
        return impl


def infer_kind(fn) -> tuple[str, dict]:
    """What a plain function builds, from its required positional parameters: one (``build(spec)``) a BatchNorm;
    seven or more a weights-form fold (as ``@bncheck.fusion`` reads it); two a sync builder ``(spec, group)`` or a
    module-form fold ``(conv, bn)``, told apart by the parameter names."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return "batchnorm", {}
    required = [p.name for p in sig.parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    if len(required) >= 7:
        return "fusion", {"form": "weights"}
    if len(required) == 2:
        first, second = required
        if first == "spec" or "group" in second or "pg" == second:
            return "sync", {}
        if "conv" in first or "bn" in second or "norm" in second:
            return "fusion", {"form": "module"}
        raise TypeError(f"check: cannot tell whether {getattr(fn, '__qualname__', fn)}{sig} is a sync builder "
                        f"build(spec, group) or a fold fold(conv, bn); pass kind='sync' or kind='fusion'")
    return "batchnorm", {}


def _plain(fn, kind, name, state, expect, isolate) -> Implementation:
    inferred, options = infer_kind(fn) if kind is None else (kind, {})
    if inferred == "fusion" and not options:
        options = {"form": "weights" if len(inspect.signature(fn).parameters) >= 7 else "module"}
    name = name or getattr(fn, "__qualname__", None) or repr(fn)
    name = re.sub(r"\s+", "_", name)
    module = getattr(fn, "__module__", "") or ""
    file = getattr(inspect.getmodule(fn), "__file__", None)
    origin = str(Path(file).resolve()) if file else module or "<interactive>"
    source = ""
    if isolate:
        source = object_source(fn, name, inferred, expect, state, options)   # raises for lambdas and closures
        reg = Registry()
        reg.load_source(source)         # what the worker will do: fail here, clearly, if it cannot
        if name not in reg.implementations:
            raise ValueError(f"check: {name!r} cannot be re-loaded in a worker process: "
                             + "; ".join(f"{e.origin}: {e.message}" for e in reg.errors))
    reg = Registry()
    with reg._loading(origin, source):
        return reg.declare(inferred, name, fn, state=state, expect=expect, options=options)


def _by_name_or_file(target, name: str | None) -> Implementation:
    text = os.fspath(target)
    if text.endswith(".py") or Path(text).is_file():
        if not Path(text).is_file():
            raise FileNotFoundError(f"check: plugin file {text} not found")
        reg = Registry()
        reg.load_file(text)
        if reg.errors:
            raise ValueError(f"check: plugin file {text} failed to load: "
                             + "; ".join(e.message for e in reg.errors))
        impls = reg.implementations
        if name is not None:
            if name not in impls:
                raise ValueError(f"check: {text} declares no {name!r}; it declares {', '.join(sorted(impls))}")
            return impls[name]
        if len(impls) != 1:
            raise ValueError(f"check: {text} declares {len(impls)} implementations "
                             f"({', '.join(sorted(impls)) or 'none'}); pass name= to pick one")
        return next(iter(impls.values()))
    reg = discover(plugin_dirs=[DEFAULT_PLUGIN_DIR] if Path(DEFAULT_PLUGIN_DIR).is_dir() else [])
    if text not in reg.implementations:
        errors = "".join(f"; failed to load {e.origin}: {e.message}" for e in reg.errors)
        raise ValueError(f"check: no implementation named {text!r} in ./{DEFAULT_PLUGIN_DIR} or installed entry "
                         f"points; known: {', '.join(sorted(reg.implementations)) or 'none'}{errors}")
    return reg.implementations[text]


def _in_process(impl: Implementation, options: dict) -> Result:
    """The worker's check, run here (``isolate=False``)."""
    from .runner import CHECKS, _accepted
    import importlib
    module, func = CHECKS[impl.kind]
    fn = getattr(importlib.import_module(module), func)
    log = WarningLog()
    with log.capture():
        result = fn(impl, **_accepted(fn, options))
    return replace(result, kind=impl.kind, warnings=log.summary())

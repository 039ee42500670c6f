"""Plugin registry: implementations declared with decorators, discovered from files and entry points.

Every implementation records its origin (the file it was defined in, or the distribution that shipped it), so
reports and errors can say where it came from. Loading problems never raise out of discovery: they are kept as
``LoadError`` records, shown in ``bncheck list`` and in the report, and the rest of the run goes on.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import inspect
import json
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .catalog import check_ids

ENTRY_POINT_GROUP = "bncheck.implementations"
DISABLE_ENTRY_POINTS_ENV = "BNCHECK_DISABLE_ENTRY_POINTS"
STATE_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
KINDS = ("batchnorm", "fusion", "sync")
EPILOGUES = ("none", "relu", "add_relu")


class RegistrationError(Exception):
    """A plugin declaration that cannot be accepted (name clash, bad arguments)."""


@dataclass(frozen=True)
class Implementation:
    name: str
    build: Callable
    kind: str = "batchnorm"
    state: dict = field(default_factory=dict)      # canonical key -> attribute path on the module
    expect: frozenset = frozenset()
    origin: str = "<unknown>"                       # file path, or "dist:<distribution>"
    source: str = ""       # how a worker re-loads it: "file:<path>" | "ep:<name>" | "module:<mod>" | "object:<json>"
    options: dict = field(default_factory=dict)     # kind-specific extras (e.g. fusion form)

    def attr(self, key: str) -> str:
        return self.state.get(key, key)

    @property
    def epilogue(self) -> str:
        """What a BatchNorm module computes after the normalisation (``registry.EPILOGUES``)."""
        return self.options.get("epilogue", "none")


@dataclass(frozen=True)
class LoadError:
    origin: str
    message: str


class Registry:
    def __init__(self):
        self.implementations: dict[str, Implementation] = {}
        self.errors: list[LoadError] = []
        self._origin = "<interactive>"
        self._source = ""

    # -- registration -------------------------------------------------------------------------------------
    def add(self, impl: Implementation) -> Implementation:
        old = self.implementations.get(impl.name)
        if old is not None and old.origin != impl.origin:
            raise RegistrationError(
                f"implementation name {impl.name!r} from {impl.origin} is already registered by {old.origin}; "
                f"rename one of them")
        self.implementations[impl.name] = impl
        return impl

    def declare(self, kind: str, name: str, build: Callable, state=None, expect=(), options=None) -> Implementation:
        origin = self._origin
        if kind not in KINDS:
            raise RegistrationError(f"{origin}: kind={kind!r} must be one of {KINDS}")
        if not isinstance(name, str) or not name or any(c.isspace() for c in name):
            raise RegistrationError(f"{origin}: implementation name {name!r} must be a non-empty string without spaces")
        if not callable(build):
            raise RegistrationError(f"{origin}: implementation {name!r}: the decorated object is not callable")
        state = dict(state or {})
        bad = sorted(set(state) - set(STATE_KEYS))
        if bad:
            raise RegistrationError(f"{origin}: implementation {name!r}: unknown state key(s) {bad}; "
                                    f"allowed: {', '.join(STATE_KEYS)}")
        try:
            expect = check_ids(expect, f"{origin}: implementation {name!r} expect")
        except ValueError as e:
            raise RegistrationError(str(e)) from None
        source = self._source or f"module:{getattr(build, '__module__', '')}"
        return self.add(Implementation(name=name, build=build, kind=kind, state=state, expect=expect,
                                       origin=origin, source=source, options=dict(options or {})))

    @contextlib.contextmanager
    def _loading(self, origin: str, source: str):
        global _ACTIVE
        prev = (_ACTIVE, self._origin, self._source)
        _ACTIVE, self._origin, self._source = self, origin, source
        try:
            yield
        finally:
            _ACTIVE, self._origin, self._source = prev

    # -- discovery ----------------------------------------------------------------------------------------
    def load_file(self, path: str | os.PathLike) -> None:
        path = Path(path).resolve()
        if not path.is_file():
            self.errors.append(LoadError(str(path), "plugin file not found"))
            return
        modname = "bncheck_plugin_" + path.stem + "_" + hashlib.sha1(str(path).encode()).hexdigest()[:8]
        origin = str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)
        with self._loading(origin, f"file:{path}"):
            try:
                spec = importlib.util.spec_from_file_location(modname, path)
                module = importlib.util.module_from_spec(spec)
                sys.modules[modname] = module
                spec.loader.exec_module(module)
            except Exception as e:  # a broken plugin is reported, never fatal
                sys.modules.pop(modname, None)
                self.errors.append(LoadError(origin, _describe_exception(e, path)))

    def load_dir(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        if not directory.is_dir():
            self.errors.append(LoadError(str(directory), "plugin directory not found"))
            return
        # plugins directly in the directory and in its subfolders (e.g. implementations/frameworks/); files and
        # folders whose name starts with "_" or "." are skipped
        for path in sorted(directory.rglob("*.py")):
            rel = path.relative_to(directory).parts
            if not any(part.startswith(("_", ".")) for part in rel):
                self.load_file(path)

    def load_entry_points(self, only: str | None = None) -> None:
        if os.environ.get(DISABLE_ENTRY_POINTS_ENV) and only is None:
            return
        for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if only is not None and ep.name != only:
                continue
            dist = getattr(ep, "dist", None)
            origin = f"dist:{dist.name if dist else ep.value}"
            with self._loading(origin, f"ep:{ep.name}"):
                try:
                    obj = ep.load()
                    if callable(obj) and not isinstance(obj, Implementation) and not _is_registered(self, obj):
                        obj()   # an entry point may name a registration function
                except Exception as e:
                    self.errors.append(LoadError(origin, _describe_exception(e, None)))

    def load_source(self, source: str) -> None:
        """Re-load one implementation's defining source (used by worker processes)."""
        kind, _, where = source.partition(":")
        if kind == "file":
            self.load_file(where)
        elif kind == "ep":
            self.load_entry_points(only=where)
        elif kind == "module":
            with self._loading(f"module:{where}", source):
                try:
                    mod = sys.modules.get(where) or importlib.import_module(where)
                    for obj in vars(mod).values():   # re-declare decorated builders of an already imported module
                        impl = getattr(obj, "__bncheck_impl__", None)
                        if impl is not None:
                            self.add(impl)
                except Exception as e:
                    self.errors.append(LoadError(where, _describe_exception(e, None)))
        elif kind == "object":
            self._load_object(where, source)
        else:
            self.errors.append(LoadError(source, "unknown plugin source"))

    def _load_object(self, where: str, source: str) -> None:
        """A plain (undecorated) module-level builder: its module imported by name, or its file by path, and the
        attribute taken by qualified name; declared with the kind, expect, state and options recorded in
        ``object_source``."""
        try:
            d = json.loads(where)
            origin = d.get("file") or d["module"]
        except (ValueError, KeyError, TypeError) as e:
            self.errors.append(LoadError(source, f"malformed object source: {e}"))
            return
        with self._loading(origin, source):
            try:
                obj = _import_object(d.get("module", ""), d.get("file", ""))
                for part in d["qualname"].split("."):
                    obj = getattr(obj, part)
                self.declare(d.get("kind", "batchnorm"), d["name"], obj, state=d.get("state"),
                             expect=d.get("expect", ()), options=d.get("options"))
            except Exception as e:
                self.errors.append(LoadError(origin, _describe_exception(e, None)))

    def of_kind(self, kind: str) -> list[Implementation]:
        return [i for i in self.implementations.values() if i.kind == kind]


def object_source(build: Callable, name: str, kind: str = "batchnorm", expect=(), state=None,
                  options=None) -> str:
    """The source string that re-loads a plain module-level builder in another process (``Registry.load_source``).

    Raises ``RegistrationError`` for a builder no other process can import: a lambda, a nested function or a
    closure, or one defined interactively."""
    qualname = getattr(build, "__qualname__", "")
    module = getattr(build, "__module__", "") or ""
    if not qualname or "<" in qualname:       # <lambda>, <locals>
        raise RegistrationError(
            f"{name!r}: {qualname or build!r} cannot be re-loaded in a worker process (a lambda, nested function or "
            f"closure); define the builder as a module-level function, or pass isolate=False to check it in this "
            f"process")
    mod = sys.modules.get(module)
    file = getattr(mod, "__file__", None)
    if not file and module in ("", "__main__"):
        raise RegistrationError(f"{name!r}: {qualname} is defined interactively (no file); define it in a module "
                                f"or a script, or pass isolate=False to check it in this process")
    d = {"name": name, "kind": kind, "module": module, "file": str(Path(file).resolve()) if file else "",
         "qualname": qualname, "expect": sorted(expect), "state": dict(state or {}), "options": dict(options or {})}
    return "object:" + json.dumps(d, sort_keys=True)


def _import_object(module: str, file: str):
    """The module defining an object: already imported (a script run as the main module is ``__mp_main__`` in a
    spawned worker), importable by name, or imported from its file."""
    names = ["__mp_main__", "__main__"] if module == "__main__" else [module]
    for n in names:
        mod = sys.modules.get(n)
        if mod is not None and (not file or Path(getattr(mod, "__file__", "") or "").resolve() == Path(file)):
            return mod
    if module and module != "__main__" and not module.startswith("bncheck_plugin_"):
        try:
            return importlib.import_module(module)
        except ImportError:
            if not file:
                raise
    if not file:
        raise ImportError(f"module {module!r} is not importable and its file is unknown")
    path = Path(file)
    modname = "bncheck_object_" + path.stem + "_" + hashlib.sha1(str(path).encode()).hexdigest()[:8]
    if modname in sys.modules:
        return sys.modules[modname]
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None:
        raise ImportError(f"{file}: not a Python file")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[modname] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        sys.modules.pop(modname, None)
        raise
    return mod


def _is_registered(reg: Registry, obj) -> bool:
    return any(i.build is obj for i in reg.implementations.values())


def _describe_exception(e: BaseException, path: Path | None) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    where = ""
    frames = [f for f in tb if path is None or Path(f.filename).resolve() == path] or tb[-1:]
    if frames:
        f = frames[-1]
        where = f" at {f.filename}:{f.lineno}"
    return f"{type(e).__name__}: {e}{where}"


_ACTIVE = Registry()   # the registry decorators write to; loaders switch it while they import a plugin


def default_registry() -> Registry:
    return _ACTIVE


def _decorator(kind: str, name: str, state=None, expect=(), options=None):
    def wrap(build):
        impl = _ACTIVE.declare(kind, name, build, state=state, expect=expect, options=options)
        try:
            build.__bncheck_impl__ = impl
        except AttributeError:
            pass
        return build
    return wrap


def implementation(name: str, *, state: dict | None = None, expect=(), epilogue: str = "none"):
    """Declare a BatchNorm implementation: ``build(spec) -> nn.Module``.

    ``state`` maps torch's names (weight, bias, running_mean, running_var, num_batches_tracked) to the module's
    attribute paths where they differ; ``expect`` lists catalog ids of findings the implementation is known to have.
    ``epilogue``: what the module computes after the BatchNorm, ``"none"``, ``"relu"`` (``relu(bn(x))``, called as
    ``module(x)``) or ``"add_relu"`` (``relu(bn(x) + z)``, called as ``module(x, z)`` with ``z`` of the output's
    shape, as cuDNN's BN_ADD_ACTIVATION and apex's ``bn_add_relu`` take it).
    """
    if epilogue not in EPILOGUES:
        raise RegistrationError(f"implementation {name!r}: epilogue={epilogue!r} must be one of {EPILOGUES}")
    return _decorator("batchnorm", name, state=state, expect=expect,
                      options={"epilogue": epilogue} if epilogue != "none" else None)


def fusion(name: str, *, expect=(), form: str | None = None):
    """Declare a conv-BN folding implementation.

    Module form: ``fold(conv, bn) -> conv``; weights form: ``fold(W, b, running_mean, running_var, weight, bias,
    eps, transposed) -> (W', b')``. The form is read from the signature unless ``form`` says "module"/"weights".
    """
    def wrap(fn):
        f = form or ("weights" if len(inspect.signature(fn).parameters) >= 7 else "module")
        if f not in ("module", "weights"):
            raise RegistrationError(f"fusion {name!r}: form={f!r} must be 'module' or 'weights'")
        return _decorator("fusion", name, expect=expect, options={"form": f})(fn)
    return wrap


def sync_implementation(name: str, *, state: dict | None = None, expect=()):
    """Declare a synchronised BatchNorm: ``build(spec, group) -> nn.Module``."""
    return _decorator("sync", name, state=state, expect=expect)


def discover(plugin_dirs=(), plugin_files=(), entry_points: bool = True) -> Registry:
    """A fresh registry holding every implementation found in the given places."""
    reg = Registry()
    for d in plugin_dirs:
        reg.load_dir(d)
    for f in plugin_files:
        reg.load_file(f)
    if entry_points:
        reg.load_entry_points()
    return reg

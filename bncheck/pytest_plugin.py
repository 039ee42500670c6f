"""pytest plugin: ``pytest --bncheck[=PROFILE]`` checks every declared implementation as test items.

With ``--bncheck``, each ``@bncheck.implementation`` / ``fusion`` / ``sync_implementation`` defined in a collected
test file or in ``<rootdir>/implementations/`` becomes one item per property, ``bncheck::IMPL::PROPERTY``
(selectable with ``-k``), plus ``bncheck::IMPL::expected`` when it declares ``expect`` ids. Every implementation is
checked once, in a worker process as ``bncheck run`` does, and each item reports its property's slice: a finding
not expected fails it (the message is ``assert_conforms``'s), expected ones make it xfail; the ``expected`` item
is an xfail while every declared id is reproduced and an XPASS when one is not (a failure under
``--bncheck-strict``). Without ``--bncheck`` nothing is collected and nothing is imported beyond the options.

The Hypothesis profile in force is honoured: its example database is where searches replay from and save to, so a
failure found once is replayed first (a directory is used as it is; any other database, e.g. Redis, through a local
copy: ``bncheck.exampledb``); its phases limit the search's; with ``derandomize`` (or ``--bncheck-seed N``) the
search is seeded, otherwise a seed is drawn per session and shown in the header.

Under pytest-xdist (``-n N``) every worker collects the same items and checks an implementation when it runs the
first item of it, once per worker, with the seed and database of the controlling process. Each item is marked
``xdist_group(name=IMPL)``: with ``--dist loadgroup`` an implementation's items all go to one worker, so each
implementation is checked once.

The fixture ``bncheck`` gives ``check`` and ``assert_conforms`` with these options as defaults.
"""
from __future__ import annotations

import io
import random
from dataclasses import replace
from pathlib import Path

import pytest

from .options import PROFILES, WORLD_SIZES, CheckOptions, OptionError, add_check_options
from .registry import Registry, object_source

PREFIX = "bncheck-"
EXPECTED_ITEM = "expected"
WORKERINPUT = "bncheck"          # what a pytest-xdist controller hands its workers (seed, database)
_STATE = pytest.StashKey()


def pytest_addoption(parser):
    group = parser.getgroup("bncheck", "BatchNorm conformance checks (bncheck)")
    group.addoption("--bncheck", nargs="?", const="quick", default=None, choices=PROFILES, metavar="PROFILE",
                    dest="bncheck", help="check every declared implementation (test files, ./implementations/) as "
                                         "test items bncheck::IMPL::PROPERTY; PROFILE: quick (default), default, "
                                         "thorough")
    add_check_options(group.addoption, prefix=PREFIX, skip=("profile",), seed=None)


def _enabled(config) -> bool:
    return config.getoption("bncheck", None) is not None


class _State:
    """One session's options, Hypothesis settings and seed, implementations, and the results checked so far."""

    def __init__(self, config):
        self.config = config
        try:
            self.options = CheckOptions.from_namespace(config.option, prefix=PREFIX,
                                                       profile=config.getoption("bncheck", None) or "quick")
            if _enabled(config):
                self.options.validate()
        except OptionError as e:
            raise pytest.UsageError(str(e)) from None
        self.mirror = None                        # a local copy of a database that is not a directory
        db, self.phases, derandomize = hypothesis_settings()
        given = _worker_input(config)
        if given is not None:                     # an xdist worker: the controller's seed and database
            self.seed, self.seed_source, self.database = given["seed"], given["seed_source"], given["database"]
            self.database_shown = given["database_shown"]
        else:
            seed = self.options.seed
            self.seed_source = "--bncheck-seed" if seed is not None else "derandomize" if derandomize else "drawn"
            if seed is None:
                seed = 0 if derandomize else random.SystemRandom().randrange(2 ** 16)
            self.seed = seed
            if db is None or isinstance(db, str):
                self.database = self.database_shown = db
            else:
                from .exampledb import Mirror
                try:
                    self.mirror = Mirror(db)
                    self.mirror.pull()
                except Exception as e:
                    raise pytest.UsageError(f"Hypothesis example database {db!r}: {type(e).__name__}: {e}") from None
                self.database, self.database_shown = self.mirror.path, repr(self.mirror)
        self.impls: dict[str, object] = {}        # name -> Implementation, in the order found
        self.load_errors: list = []
        self.results: dict[str, object] = {}

    def check_kwargs(self) -> dict:
        o = self.options
        return dict(profile=o.profile, seed=self.seed, device=o.device, properties=list(o.properties) or None,
                    world_sizes=tuple(sorted(set(o.world_sizes))) or None, database=self.database,
                    phases=self.phases)

    def result(self, name: str, pending: list):
        """The result of ``name``, checking it together with every other implementation still pending."""
        if name not in self.results:
            from . import runner
            todo = [self.impls[n] for n in dict.fromkeys([name, *pending]) if n not in self.results]
            kw = self.check_kwargs()
            kw["world_sizes"] = kw["world_sizes"] or WORLD_SIZES
            got = runner.run_all(todo, jobs=self.options.jobs, progress=runner.Progress(len(todo), io.StringIO()),
                                 **kw)
            for impl, r in zip(todo, got):
                r.expect, r.origin = sorted(impl.expect), impl.origin
                self.results[impl.name] = r.judge(self.options.strict)
        return self.results[name]


def hypothesis_settings() -> tuple[object, list[str], bool]:
    """From the Hypothesis profile in force: the example database (its directory when it is a directory database,
    None when there is none, the database itself otherwise), the phases' names, and ``derandomize``."""
    from hypothesis import settings
    from hypothesis.database import DirectoryBasedExampleDatabase
    s = settings.default
    db = s.database
    if isinstance(db, DirectoryBasedExampleDatabase):
        db = str(Path(db.path).resolve())
    return db, [p.name for p in s.phases], bool(s.derandomize)


def _worker_input(config) -> dict | None:
    """In a pytest-xdist worker, what the controller handed it (None elsewhere)."""
    return getattr(config, "workerinput", {}).get(WORKERINPUT)


@pytest.hookimpl(optionalhook=True)      # a pytest-xdist hook, called in the controller for each worker it starts
def pytest_configure_node(node):
    st = node.config.stash.get(_STATE, None)
    if st is not None:
        node.workerinput[WORKERINPUT] = dict(seed=st.seed, seed_source=st.seed_source, database=st.database,
                                             database_shown=st.database_shown)


@pytest.hookimpl(trylast=True)           # after Hypothesis' plugin has loaded its profile
def pytest_configure(config):
    config.addinivalue_line("markers", "bncheck: a bncheck conformance item (bncheck::IMPL::PROPERTY)")
    config.addinivalue_line("markers", "xdist_group(name): pytest-xdist's --dist loadgroup runs a group on one worker")
    if _enabled(config):
        config.stash[_STATE] = _State(config)


def _state(config) -> _State:
    if _STATE not in config.stash:
        config.stash[_STATE] = _State(config)
    return config.stash[_STATE]


def pytest_unconfigure(config):
    st = config.stash.get(_STATE, None)
    if st is not None and st.mirror is not None:      # what the searches saved goes back to the shared database
        st.mirror.push()
        st.mirror.close()


def pytest_report_header(config):
    if not _enabled(config):
        return None
    st = config.stash[_STATE]
    how = {"--bncheck-seed": "", "derandomize": " (Hypothesis derandomize)",
           "drawn": f" (drawn; repeat with --bncheck-seed {st.seed})"}[st.seed_source]
    return [f"bncheck: profile {st.options.profile}, seed {st.seed}{how}, Hypothesis database "
            f"{st.database_shown or 'none'}"]


def pytest_pycollect_makeitem(collector, name, obj):
    """Note the implementations a collected test module defines (pytest goes on collecting as usual)."""
    if not _enabled(collector.config) or not isinstance(collector, pytest.Module):
        return None
    impl = getattr(obj, "__bncheck_impl__", None)
    if impl is None or getattr(obj, "__module__", None) != collector.obj.__name__:
        return None
    st = collector.config.stash[_STATE]
    if impl.name not in st.impls:
        origin = _relative(collector.path, collector.config.rootpath)
        st.impls[impl.name] = replace(impl, origin=origin, source=object_source(
            obj, impl.name, impl.kind, impl.expect, impl.state, impl.options))
    return None


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


def _plugin_dir(config):
    d = Path(config.rootpath) / "implementations"
    if not d.is_dir():
        return
    st = config.stash[_STATE]
    reg = Registry()
    reg.load_dir(d)                     # origins relative to the working directory, as bncheck run shows them
    for impl in reg.implementations.values():
        st.impls.setdefault(impl.name, impl)
    st.load_errors += reg.errors


def property_names(kind: str, selected=()) -> list[str]:
    if kind == "fusion":
        from .folding.check import PROPERTIES
    elif kind == "sync":
        from .sync.check import PROPERTIES
    else:
        from .properties import PROPERTIES
        return [p.name for p in PROPERTIES if not selected or p.name in selected]
    return [p.name for p in PROPERTIES]


@pytest.hookimpl(tryfirst=True)       # before -k and -m deselect
def pytest_collection_modifyitems(session, config, items):
    if not _enabled(config):
        return
    st = config.stash[_STATE]
    _plugin_dir(config)
    new = []
    for e in st.load_errors:
        nodeid = f"bncheck::{e.origin}::load"
        new.append(LoadErrorItem.from_parent(session, name=nodeid, nodeid=nodeid, error=e))
    for impl in st.impls.values():
        names = property_names(impl.kind, st.options.properties)
        if impl.expect:
            names.append(EXPECTED_ITEM)
        for prop in names:
            nodeid = f"bncheck::{impl.name}::{prop}"
            item = BncheckItem.from_parent(session, name=nodeid, nodeid=nodeid, impl=impl, prop=prop, props=names)
            item.add_marker(pytest.mark.xdist_group(name=impl.name))    # --dist loadgroup: one worker per impl
            new.append(item)
    items.extend(new)
    # reported as collected, so the counts ("collected N items / M deselected") include them
    config.hook.pytest_collectreport(report=pytest.CollectReport("bncheck", "passed", None, new))


class BncheckFailure(AssertionError):
    """Unexpected findings of one item (its message is the report)."""


class _Item(pytest.Item):
    """A bncheck item: its failure shows bncheck's message (no Python traceback), located by its name."""

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, BncheckFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style)

    def reportinfo(self):
        return self.path, None, self.name


class LoadErrorItem(_Item):
    def __init__(self, *, error, **kw):
        super().__init__(**kw)
        self.error = error

    def runtest(self):
        raise BncheckFailure(f"plugin failed to load: {self.error.origin}: {self.error.message}")


class BncheckItem(_Item):
    def __init__(self, *, impl, prop, props, **kw):
        super().__init__(**kw)
        self.impl, self.prop, self.props = impl, prop, props
        self.add_marker("bncheck")

    def _findings(self, result):
        """This item's slice: findings of its property; probe-confirmed ones go to the expected item; a finding
        of no listed property (the worker failed before or between them) to every property item."""
        own = []
        for f in result.findings:
            where = EXPECTED_ITEM if f.property == "probes" else f.property
            if where == self.prop or (where not in self.props and self.prop != EXPECTED_ITEM):
                own.append(f)
        return own

    def runtest(self):
        st = self.config.stash[_STATE]
        if _worker_input(self.config) is None:
            pending = [i.impl.name for i in self.session.items if isinstance(i, BncheckItem)]
        else:    # an xdist worker runs only the items sent to it, not all it collected: this implementation alone
            pending = []
        result = st.result(self.impl.name, pending)
        from .api import failure_message
        strict = st.options.strict
        findings = self._findings(result)
        unexpected = [f for f in findings if f.id not in result.expect]
        if unexpected:
            raise BncheckFailure(failure_message(result, findings=unexpected, title=self.prop))
        expected = sorted({f.id for f in findings})
        if self.prop == EXPECTED_ITEM:
            reproduced = sorted(set(result.expect) & result.ids)
            reason = f"{self.impl.name} declares {', '.join(result.expect)}"
            if result.missing:       # an XPASS: not all declared bugs showed (a failure under --bncheck-strict)
                reason += f"; not reproduced: {', '.join(result.missing)}"
            self.add_marker(pytest.mark.xfail(reason=reason, strict=strict))
            if result.missing:
                return
            raise BncheckFailure(f"expected findings reproduced: {', '.join(reproduced)}")
        if expected:
            self.add_marker(pytest.mark.xfail(reason=f"expected finding(s): {', '.join(expected)}", strict=strict))
            raise BncheckFailure("\n".join(f.line() for f in findings))
        summary = result.properties.get(self.prop)
        if summary is not None and not findings and (summary.cases == 0 or summary.declined >= summary.cases):
            why = "every case drawn was declined by the builder" if summary.cases else "no case ran"
            pytest.skip(f"{self.impl.name}: {self.prop} not checked ({why})")


class Checker:
    """The ``bncheck`` fixture: ``check`` and ``assert_conforms`` with the session's options as defaults."""

    def __init__(self, config):
        self.config = config

    def defaults(self) -> dict:
        st = _state(self.config)
        kw = dict(st.check_kwargs(), strict=st.options.strict)
        if not _enabled(self.config):
            del kw["profile"]                  # check's own default (quick)
        return {k: v for k, v in kw.items() if v is not None}

    def check(self, target, **kwargs):
        from .api import check
        return check(target, **{**self.defaults(), **kwargs})

    def assert_conforms(self, target, **kwargs):
        from .api import assert_conforms
        return assert_conforms(target, **{**self.defaults(), **kwargs})


@pytest.fixture
def bncheck(request):
    """``bncheck.check(target, ...)`` and ``bncheck.assert_conforms(target, ...)`` (see ``bncheck.api``), with
    ``--bncheck``'s profile, ``--bncheck-seed`` and the Hypothesis database as defaults."""
    return Checker(request.config)

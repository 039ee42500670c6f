"""Runner: each implementation is checked in a worker process, under a time limit.

A worker that raises, hangs or dies becomes a ``crash``/``timeout`` finding for that implementation; the other
workers and the report carry on. Workers re-load their plugin from its recorded source, so any plugin works,
whether or not its builder can be pickled. A worker is reused for the next BatchNorm or fusion plugin once it has
finished one (starting one costs seconds of imports); one that died or hung is replaced, and a distributed check
gets a worker of its own.
"""
from __future__ import annotations

import importlib
import inspect
import multiprocessing as mp
import queue
import sys
import time
import traceback

from dataclasses import replace

from .registry import Implementation, Registry
from .results import FindingResult, Result, WarningLog

PROPERTY_TIMEOUT_S = 240.0      # no progress (no run of a scenario finished) for this long: the implementation is hung

# What checks each plugin kind: module and function, called as check(impl, on_property=..., **options); options a
# check does not take are left out (e.g. ``world_sizes`` only reaches the distributed check).
CHECKS = {
    "batchnorm": ("bncheck.search", "check_implementation"),
    "fusion": ("bncheck.folding.check", "check_fusion"),
    "sync": ("bncheck.sync.check", "check_sync"),
}


def _check_function(kind: str):
    module, func = CHECKS[kind]
    return getattr(importlib.import_module(module), func)


def _accepted(fn, options: dict) -> dict:
    params = inspect.signature(fn).parameters
    return {k: v for k, v in options.items() if k in params}


def _worker(source: str, name: str, options: dict, q):
    log = WarningLog()            # every warning raised while checking this plugin is counted, none printed

    def on_property(prop, result):
        log.property = prop
        q.put(("progress", prop))
    beat = [time.monotonic()]

    def on_run():                 # every finished run is progress (sent at most once a second)
        now = time.monotonic()
        if now - beat[0] >= 1.0:
            beat[0] = now
            q.put(("alive", None))
    try:
        with log.capture():
            import torch
            torch.set_num_threads(1)
            from . import execute
            execute.on_run = on_run
            reg = Registry()
            reg.load_source(source)
            if name not in reg.implementations:
                q.put(("error", f"could not re-load {name!r} from {source}: {reg.errors}"))
                return
            impl = reg.implementations[name]
            check = _check_function(impl.kind)
            options = dict(options, on_partial=lambda partial: q.put(("partial", replace(partial,
                                                                                         warnings=log.summary()))))
            result = check(impl, on_property=on_property, **_accepted(check, options))
        q.put(("result", replace(result, kind=impl.kind, warnings=log.summary())))
    except BaseException as e:   # reported as a crash finding by the parent
        q.put(("warnings", log.summary()))
        q.put(("error", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"))


def _serve(tasks, q):
    """A reusable worker: checks one plugin after another (``(source, name, options)`` from ``tasks``; None ends
    it), posting each one's messages on ``q``. Starting a worker (torch, Hypothesis, bncheck) costs seconds; a
    plugin that kills its worker, or hangs, costs only that worker, which the runner replaces."""
    while True:
        task = tasks.get()
        if task is None:
            return
        _worker(*task, q)


class _Worker:
    """A worker process and its queues: reusable (``_serve``) for BatchNorm and fusion plugins, one plugin only for
    a distributed check (it starts rank processes, which a daemonic process may not)."""

    def __init__(self, ctx, impl: Implementation, options: dict):
        self.q = ctx.Queue()
        self.reusable = impl.kind != "sync"
        if self.reusable:
            self.tasks = ctx.Queue()
            self.process = ctx.Process(target=_serve, args=(self.tasks, self.q), daemon=True)
        else:
            self.tasks = None
            self.process = ctx.Process(target=_worker, args=(impl.source, impl.name, options, self.q))
        self.process.start()
        self.assign(impl, options)

    def assign(self, impl: Implementation, options: dict):
        if self.tasks is not None:
            self.tasks.put((impl.source, impl.name, options))

    def stop(self):
        if self.tasks is not None and self.process.is_alive():
            self.tasks.put(None)
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()


def _failed(impl: Implementation, fid: str, evidence: str, prop: str, partial: Result | None = None,
            warned: list | None = None) -> Result:
    """A crash/timeout finding; the properties finished before it (``partial``) and the warnings counted until
    then (``warned``, when the worker could still send them) are kept."""
    finding = FindingResult(id=fid, property=prop, where="worker", evidence=[evidence])
    if partial is not None:
        out = replace(partial, kind=impl.kind, findings=[f for f in partial.findings if f.id != fid] + [finding])
        if warned is not None:
            out.warnings = warned
        return out
    return Result(name=impl.name, kind=impl.kind, origin=impl.origin, expect=sorted(impl.expect),
                  findings=[finding], warnings=list(warned or []))


class Progress:
    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.done, self.stream = total, 0, stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()

    def show(self, name: str, what: str):
        if not self.tty:
            return
        width = 24
        fill = int(width * self.done / max(self.total, 1))
        self.stream.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {self.done}/{self.total} {name}: {what}"[:100]
                          .ljust(100))
        self.stream.flush()

    def finish(self, name: str, verdict: str):
        self.done += 1
        if self.tty:
            self.show(name, verdict)
            if self.done == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(f"[{self.done}/{self.total}] {name}: {verdict}\n")
            self.stream.flush()


# A plugin's expected seconds when no earlier run says (``expected``): a distributed check starts rank processes
# for three world sizes; the rest are checked within their time budget.
GUESS_S = {"sync": 60.0, "fusion": 20.0, "batchnorm": 10.0}


def schedule(impls: list[Implementation], expected: dict[str, float] | None = None) -> list[Implementation]:
    """Longest expected first, so that the slowest plugin starts first and does not end the run alone
    (``expected``: plugin name -> seconds, e.g. an earlier report's; otherwise a guess by kind)."""
    expected = expected or {}
    return sorted(impls, key=lambda i: -expected.get(i.name, GUESS_S.get(i.kind, 10.0)))


def expected_seconds(report_json) -> dict[str, float]:
    """Each plugin's seconds in a stored report (empty when there is none or it cannot be read)."""
    import json
    try:
        with open(report_json) as fh:
            data = json.load(fh)
        return {r["name"]: float(r.get("seconds") or 0.0) for r in data.get("implementations", [])}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


def run_all(impls: list[Implementation], *, jobs: int = 2, timeout_s: float = PROPERTY_TIMEOUT_S,
            progress: Progress | None = None, expected: dict[str, float] | None = None,
            **options) -> list[Result]:
    """Check every plugin, ``jobs`` at a time, longest expected first (``schedule``); results in ``impls``'
    order."""
    ctx = mp.get_context("spawn")
    pending = schedule(impls, expected)
    running: dict[str, tuple] = {}
    results: dict[str, Result] = {}
    partials: dict[str, Result | None] = {}
    warned: dict[str, list | None] = {}
    idle: list[_Worker] = []             # reusable workers between plugins
    progress = progress or Progress(len(impls))
    try:
        while pending or running:
            while pending and len(running) < max(1, jobs):
                impl = pending.pop(0)
                if impl.kind != "sync" and idle:
                    w = idle.pop()
                    w.assign(impl, options)
                else:
                    w = _Worker(ctx, impl, options)
                running[impl.name] = (impl, w, time.monotonic(), "starting")
                partials[impl.name] = warned[impl.name] = None
            for name, (impl, w, last, current) in list(running.items()):
                done = None
                try:
                    while True:
                        kind, payload = w.q.get(timeout=0.05)
                        if kind == "progress":
                            last, current = time.monotonic(), payload
                            running[name] = (impl, w, last, current)
                            progress.show(name, payload)
                        elif kind == "alive":
                            last = time.monotonic()
                            running[name] = (impl, w, last, current)
                        elif kind == "partial":
                            partials[name] = payload
                        elif kind == "warnings":
                            warned[name] = payload
                        elif kind == "result":
                            done = payload
                            break
                        else:
                            done = _failed(impl, "crash", payload, current, partials[name], warned[name])
                            break
                except queue.Empty:
                    pass
                healthy = True
                if done is None and not w.process.is_alive():
                    done, healthy = _failed(impl, "crash", f"worker process died (exit code {w.process.exitcode}) "
                                                           f"while checking {current!r}", current,
                                            partials[name]), False
                if done is None and time.monotonic() - last > timeout_s:
                    w.process.kill()
                    done, healthy = _failed(impl, "timeout", f"no progress for {timeout_s:.0f} s while checking "
                                                             f"{current!r}; worker killed", current,
                                            partials[name]), False
                if done is not None:
                    if healthy and w.reusable:
                        idle.append(w)
                    else:
                        w.stop()
                    results[name] = done
                    del running[name]
                    progress.finish(name, f"{len(done.findings)} finding(s)")
    finally:
        for w in idle + [w for _, w, _, _ in running.values()]:
            if w.process.is_alive() and w not in idle:
                w.process.kill()
            w.stop()
    return [results[i.name] for i in impls]

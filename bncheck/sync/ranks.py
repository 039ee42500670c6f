"""Rank processes: a pool of real torch.distributed ranks that run a sync plugin on their shards.

Starting a process that imports torch takes seconds, so a ``RankPool`` starts its worker processes once (spawn
context) and keeps them across scenarios and across world sizes: ``join(world_size)`` makes workers 0..R-1 form a
fresh process group (gloo on 127.0.0.1 at a newly chosen free port; NCCL when the device is CUDA and there is a GPU
per rank), ``leave()`` destroys it. Each scenario sends every rank its shard through its own pipe; ranks build the
module with ``build(spec, group)``, set the shared initial parameters and statistics, run the steps and send back
plain numpy values.

Nothing may hang and nothing may linger:

* a rank that raises, dies or does not answer in time ends the scenario with ``RankFailure`` naming the rank;
  a rank that fails aborts its process group, which closes its connections, so that peers waiting on it in a
  collective fail at once rather than hang; the next scenario forms a new group. Ranks that still do not answer
  within a grace, or that died (``broken``), are replaced by fresh workers (``respawn``: starting a process that
  imports torch, about 2 s each; the others are kept);
* gloo collectives have a finite timeout; ``close()`` always destroys the group, joins, and kills stragglers;
* every rank runs a watchdog thread that exits the process as soon as its parent is gone (the runner kills a
  hung checking process; its ranks follow within a second).
"""
from __future__ import annotations

import datetime
import os
import socket
import threading
import time
import traceback

START_TIMEOUT_S = 120.0     # importing torch and the plugin in every worker
JOIN_TIMEOUT_S = 60.0       # forming a process group
CRASH_GRACE_S = 5.0         # after one rank fails: how long the others get to finish (or fail) too; a rank waiting
                            # on it in a collective fails at once (the failed rank abandons the group), so only a
                            # rank that hangs or is slow waits this long; then it is taken as stuck and replaced


class RankFailure(Exception):
    """A scenario ended without results from every rank: ``kind`` is the finding id (crash or timeout);
    ``broken``: a rank died or hung and had to be replaced (each repeat of the scenario would cost that again)."""

    def __init__(self, kind: str, message: str, ranks=(), broken: bool = True):
        super().__init__(message)
        self.kind, self.message, self.ranks, self.broken = kind, message, tuple(ranks), broken


class ShardError(Exception):
    """A plugin error on one rank, with where it happened (build, forward or backward of step k)."""


class Declined(Exception):
    """The builder raised ``bncheck.Unsupported`` (on every rank)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the worker process -----------------------------------------------------------------------------------------

def _watchdog(parent_pid: int):
    while True:
        if os.getppid() != parent_pid:
            os._exit(70)          # the checking process is gone: never outlive it
        time.sleep(0.3)


def _describe(e: BaseException) -> str:
    tb = traceback.extract_tb(e.__traceback__)
    where = f" ({tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno})" if tb else ""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg[:300]}{where}"


def _worker_main(index: int, source: str, name: str, parent_pid: int, conn):
    threading.Thread(target=_watchdog, args=(parent_pid,), daemon=True).start()
    try:
        import torch
        import torch.distributed as dist
        torch.set_num_threads(1)
        from ..registry import Registry
        from ..spec import Unsupported
        reg = Registry()
        reg.load_source(source)
        impl = reg.implementations.get(name)
        if impl is None:
            conn.send(("load-error", f"could not load {name!r} from {source}: {reg.errors}"))
            return
    except BaseException as e:
        conn.send(("load-error", _describe(e)))
        return
    conn.send(("hello", os.getpid()))
    group, device = None, "cpu"
    while True:
        try:
            if not conn.poll(0.5):
                continue
            msg = conn.recv()
        except (EOFError, OSError):          # the parent closed its end, or died
            break
        op = msg[0]
        if op == "stop":
            break
        if op == "load":                     # switch to another plugin (a pool shared by several checks)
            _, source, name = msg
            try:
                reg = Registry()
                reg.load_source(source)
                impl = reg.implementations[name]
                conn.send(("loaded", None))
            except BaseException as e:
                conn.send(("load-error", f"could not load {name!r} from {source}: {_describe(e)}"))
        elif op == "join":
            _, world, port, rank, device, backend, timeout_s = msg
            try:
                if dist.is_initialized():        # a group a failed scenario left behind (its peers replaced)
                    dist.destroy_process_group()
                if device.startswith("cuda"):
                    torch.cuda.set_device(torch.device(device))
                dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                        timeout=datetime.timedelta(seconds=timeout_s))
                group = dist.group.WORLD
                conn.send(("joined", None))
            except BaseException as e:
                conn.send(("join-error", _describe(e)))
        elif op == "leave":
            if dist.is_initialized():
                dist.destroy_process_group()
            conn.send(("left", None))
        elif op == "run":
            _, task, payload = msg
            try:
                reply = ("result", (task, run_shard(impl, payload, group, device)))
            except BaseException as e:
                kind = "unsupported" if isinstance(e, Unsupported) else (
                    "collective" if _in_collective(e) else "exception")
                text = str(e) if isinstance(e, (Unsupported, ShardError)) else _describe(e)
                reply = ("failed", (task, kind, text))
                if kind != "unsupported":      # a declining builder never reached a collective: the group is fine
                    _abandon_group()
                    group = None
            conn.send(reply)
    if dist.is_initialized():
        dist.destroy_process_group()


def _abandon_group():
    """After a failed scenario: abort this rank's process group, which closes its connections at once, so that
    peers waiting on this rank in a collective fail now (and stay usable) instead of hanging until the timeout;
    the parent forms a new group for the next scenario."""
    import torch.distributed as dist
    if not dist.is_initialized():
        return
    try:
        dist.distributed_c10d._abort_process_group(dist.group.WORLD)
    except Exception:                     # a torch without it: destroying the group is what remains
        pass
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:
            pass


def _in_collective(e: BaseException) -> bool:
    """Raised inside torch.distributed (typically: a peer died or left): a consequence, not the cause."""
    cause = e.__cause__ or e
    tb = traceback.extract_tb(cause.__traceback__)
    return bool(tb) and "torch/distributed/" in tb[-1].filename.replace("\\", "/")


def run_shard(impl, payload: dict, group, device: str) -> dict:
    """On one rank: build the module, set the scenario's initial values, run the steps on this rank's shard."""
    import torch
    from ..execute import read_state, resolve
    from ..spec import Spec
    dtype = getattr(torch, payload["dtype"])
    spec = Spec(device=device, dtype=dtype, **payload["spec"])
    where = "build"
    try:
        module = impl.build(spec, group)
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"builder returned {type(module).__name__}, not a torch.nn.Module")
        with torch.no_grad():
            for key, value in payload["init"].items():
                t = resolve(module, impl.attr(key))
                if isinstance(t, torch.Tensor) and t.numel() == value.size:
                    t.copy_(torch.from_numpy(value).to(t.dtype).reshape(t.shape))
        c = spec.num_features
        params = list(module.parameters())
        steps = []
        for k, step in enumerate(payload["steps"]):
            for p in params:
                p.grad = None
            before = read_state(module, impl, c)
            x = torch.from_numpy(step["x"]).to(device=device, dtype=dtype).requires_grad_(True)
            dy = torch.from_numpy(step["dy"]).to(device=device, dtype=dtype)
            module.train(step["train"])
            where = f"forward of step {k + 1}"
            y = module(x)
            if not isinstance(y, torch.Tensor):
                raise TypeError(f"forward returned {type(y).__name__}, not a tensor")
            out = {"y": _np(y)}
            where = f"backward of step {k + 1}"
            if y.requires_grad:
                y.backward(dy if y.shape == dy.shape else torch.ones_like(y))
            out["dx"] = None if x.grad is None else _np(x.grad)
            for key in ("weight", "bias"):
                p = resolve(module, impl.attr(key))
                g = getattr(p, "grad", None) if isinstance(p, torch.Tensor) else None
                out["d" + key] = None if g is None else _np(g.reshape(-1))
            after = read_state(module, impl, c)
            out["before"], out["after"] = _state(before), _state(after)
            steps.append(out)
        return {"steps": steps}
    except Exception as e:
        from ..spec import Unsupported
        if isinstance(e, Unsupported):
            raise
        raise ShardError(f"{_describe(e)} in {where}") from e


def _np(t):
    return t.detach().to("cpu").contiguous().numpy().copy()


def _state(s) -> dict:
    return {"running_mean": None if s.running_mean is None else s.running_mean.numpy().copy(),
            "running_var": None if s.running_var is None else s.running_var.numpy().copy(),
            "num_batches_tracked": s.num_batches_tracked}


# -- the parent side --------------------------------------------------------------------------------------------

class RankPool:
    """Worker processes for one sync plugin; ``join(R)`` forms an R-rank process group, ``run`` a scenario.

    Each worker talks to the parent over its own pipe (no queues: nothing to leak when a process is killed). Use as
    a context manager, or call ``close()``: it always tears everything down.
    """

    def __init__(self, impl, size: int, *, device: str = "cpu", collective_timeout_s: float = 30.0):
        self.impl, self.size, self.device = impl, size, device
        self.collective_timeout_s = collective_timeout_s
        self.procs, self.conns, self.eof = [], [], set()
        self.world = 0
        self._task = 0
        self.respawned, self.respawn_s = 0, 0.0     # workers replaced after broken scenarios, and the time it took

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def _spawn(self, i: int):
        import torch.multiprocessing as tmp
        mine, theirs = tmp.get_context("spawn").Pipe(duplex=True)
        p = tmp.get_context("spawn").Process(target=_worker_main, name=f"bncheck-rank-{i}",
                                             args=(i, self.impl.source, self.impl.name, os.getpid(), theirs),
                                             daemon=True)
        if i < len(self.procs):
            self.procs[i], self.conns[i] = p, mine
        else:
            self.procs.append(p)
            self.conns.append(mine)
        p.start()
        theirs.close()

    def start(self):
        self.eof = set()
        try:
            for i in range(self.size):
                self._spawn(i)
        except BaseException:
            self.close(force=True)
            raise
        self._collect("hello", range(self.size), START_TIMEOUT_S, "starting")

    def respawn(self, indices):
        """Replace the workers at ``indices`` (stuck in a collective, hung or dead) by fresh ones; the others are
        kept. The process group is gone: the next ``join`` forms a new one. If that fails, the pool is closed
        (and the next ``join`` starts it again)."""
        t0 = time.monotonic()
        indices = sorted(set(indices))
        try:
            for i in indices:
                p = self.procs[i]
                if p.is_alive():
                    p.kill()
                p.join(timeout=5)
                self.conns[i].close()
                self.eof.discard(i)
                self._spawn(i)
            self._collect("hello", indices, START_TIMEOUT_S, "restarting stuck ranks")
        except Exception:            # a replacement that does not start: start the whole pool again on next join
            self.close(force=True)
        self.world = 0
        self.respawned += len(indices)
        self.respawn_s += time.monotonic() - t0

    def use(self, impl):
        """Run another plugin from now on (workers re-load it; the process group, if any, stays)."""
        if (impl.source, impl.name) == (self.impl.source, self.impl.name):
            return
        self.impl = impl
        if self.procs:
            for i in range(len(self.procs)):
                self._send(i, ("load", impl.source, impl.name))
            self._collect("loaded", range(len(self.procs)), START_TIMEOUT_S, f"loading {impl.name}")

    def join(self, world: int):
        """Form a process group of workers 0..world-1 (a fresh one: new port, new store)."""
        if world > self.size:
            raise ValueError(f"world size {world} is larger than this pool ({self.size} workers)")
        if not self.procs:
            self.start()
        if self.world:
            self.leave()
        import torch
        backend, devices = "gloo", ["cpu"] * world
        if self.device.startswith("cuda"):
            count = torch.cuda.device_count()
            devices = [f"cuda:{r % max(count, 1)}" for r in range(world)]
            backend = "nccl" if count >= world else "gloo"
        last = None
        for _ in range(3):        # a port taken between choosing and binding it: choose again
            port = free_port()
            for r in range(world):
                self._send(r, ("join", world, port, r, devices[r], backend, self.collective_timeout_s))
            try:
                self._collect("joined", range(world), JOIN_TIMEOUT_S, f"forming a {world}-rank process group")
                self.world = world
                return
            except RankFailure as e:
                last = e
                self.close(force=True)
                self.start()
        raise last

    def leave(self):
        if self.world:
            for r in range(self.world):
                self._send(r, ("leave",))
            self._collect("left", range(self.world), JOIN_TIMEOUT_S, "destroying the process group")
            self.world = 0

    def _send(self, i: int, msg):
        try:
            self.conns[i].send(msg)
        except (OSError, ValueError):
            self.eof.add(i)            # the worker is gone; noticed by the next wait

    def _wait(self, indices, timeout_s: float) -> list[tuple[int, tuple]]:
        """Messages from the given workers that arrive within the timeout; ("eof", None) for one that is gone."""
        from multiprocessing.connection import wait
        live = {self.conns[i]: i for i in indices if i not in self.eof}
        out = [(i, ("eof", None)) for i in indices if i in self.eof]
        if out:
            return out
        for c in wait(list(live), timeout_s):
            i = live[c]
            try:
                out.append((i, c.recv()))
            except (EOFError, OSError):
                self.eof.add(i)
                out.append((i, ("eof", None)))
        return out

    def _exit_code(self, i: int):
        self.procs[i].join(timeout=1.0)
        return self.procs[i].exitcode

    def run(self, payloads: list[dict], timeout_s: float) -> list[dict]:
        """Run one scenario: ``payloads[r]`` goes to rank r. Returns each rank's result, or raises ``Declined`` /
        ``RankFailure`` (after which, when ``broken``, the dead and stuck workers have been replaced)."""
        assert len(payloads) == self.world, "join(world) first"
        self._task += 1
        task = self._task
        for r, p in enumerate(payloads):
            self._send(r, ("run", task, p))
        results, failures = {}, {}
        deadline, grace = time.monotonic() + timeout_s, None
        while len(results) + len(failures) < self.world:
            now = time.monotonic()
            if grace is not None and now > grace or now > deadline:
                break
            waiting = [r for r in range(self.world) if r not in results and r not in failures]
            for r, (kind, body) in self._wait(waiting, min(0.5, max(0.0, min(deadline, grace or deadline) - now))):
                if kind == "eof":
                    failures[r] = ("died", f"rank {r} died (exit code {self._exit_code(r)})")
                elif kind == "result" and body[0] == task:
                    results[r] = body[1]
                elif kind == "failed" and body[0] == task:
                    failures[r] = (body[1], body[2])
                else:
                    continue
                if r in failures and grace is None:
                    grace = time.monotonic() + CRASH_GRACE_S
        silent = [r for r in range(self.world) if r not in results and r not in failures]
        if not failures and not silent:
            return [results[r] for r in range(self.world)]
        if not silent and len(failures) == self.world and all(k == "unsupported" for k, _ in failures.values()):
            raise Declined(failures[0][1] or "declined")     # every builder declined: the group is untouched
        self.world = 0          # the ranks that failed abandoned the group: the next run forms a new one
        broken = bool(silent) or any(k == "died" for k, _ in failures.values())
        if broken:
            self.respawn(silent + [r for r, (k, _) in failures.items() if k == "died"])
        if failures:
            order = {"died": 0, "exception": 1, "unsupported": 2, "collective": 3}
            r = min(failures, key=lambda i: (order[failures[i][0]], i))   # the cause first, then the consequences
            kind, msg = failures[r]
            text = msg if kind == "died" else (f"rank {r} declined ({msg}) where other ranks did not"
                                               if kind == "unsupported" else f"rank {r}: {msg}")
            others = sorted(set(failures) - {r})
            if others:
                text += "; then " + "; ".join(f"rank {o}: {failures[o][1][:160]}" for o in others)
            if silent:
                text += f"; rank(s) {', '.join(map(str, silent))} left waiting (in a collective) and were killed"
            raise RankFailure("crash", text, [r] + others, broken)
        raise RankFailure("timeout", f"rank(s) {', '.join(map(str, silent))} did not finish within {timeout_s:.0f} s "
                          f"(hung, or waiting in a collective); the ranks were killed", silent, True)

    def _collect(self, want: str, indices, timeout_s: float, doing: str):
        pending, deadline = set(indices), time.monotonic() + timeout_s
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                self.close(force=True)
                raise RankFailure("timeout", f"rank(s) {sorted(pending)} did not answer within {timeout_s:.0f} s "
                                  f"while {doing}", sorted(pending))
            for i, (kind, body) in self._wait(sorted(pending), min(left, 0.5)):
                if kind == want:
                    pending.discard(i)
                elif kind == "eof":
                    code = self._exit_code(i)
                    self.close(force=True)
                    raise RankFailure("crash", f"rank {i} died (exit code {code}) while {doing}", [i])
                elif kind in ("load-error", "join-error"):
                    self.close(force=True)
                    raise RankFailure("crash", f"rank {i} failed while {doing}: {body}", [i])

    def close(self, force: bool = False):
        """Tear down: ask workers to destroy their group and stop, join them briefly, kill whatever is left.
        ``force``: some rank is stuck (in a collective, or hung): kill at once."""
        started = [p for p in self.procs if p.pid is not None]     # never started: nothing to stop
        if not force:
            for i, p in enumerate(self.procs):
                if p.pid is not None and p.is_alive():
                    self._send(i, ("stop",))
        deadline = time.monotonic() + (0.0 if force else 3.0)
        for p in started:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
        for p in started:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
        for c in self.conns:
            c.close()
        self.procs, self.conns, self.eof, self.world = [], [], set(), 0

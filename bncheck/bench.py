"""Timing of BatchNorm implementations against torch's native BatchNorm, side by side in one run.

Every implementation is timed on the same tensors for three operations:

* ``forward-train``: a training-mode forward (batch statistics, running-statistic update), under ``no_grad``;
* ``forward-eval``: an eval-mode forward (running statistics), under ``no_grad``;
* ``backward``: ``torch.autograd.grad`` of a training-mode forward's output (graph retained, so only the backward
  is timed) with respect to the input and the parameters.

Timers: on CUDA ``triton.testing.do_bench`` (median of runs after a warm-up, the L2 cache flushed before each run;
CUDA events with an explicit flush when triton is missing); on the CPU ``torch.utils.benchmark.Timer``'s
``blocked_autorange`` median. Each row also records ``spread``, the measurement's relative interquartile range
((q75 - q25) / median of the individual runs: do_bench's quantiles, the CUDA events' sorted times, the CPU
Measurement's ``iqr`` over its blocks): the noise a comparison of two runs (``bncheck diff``) must allow for.

Bytes model (for the effective bandwidth): the minimal traffic each operation must have with memory, with ``E`` the
input's element size, ``P`` the parameters' and ``numel`` the input's size:

* forward-train: read x, write y, read weight/bias/running_mean/running_var, write the two running statistics:
  ``2 * numel * E + 6 * C * P``;
* forward-eval: read x, write y, read the four per-channel vectors: ``2 * numel * E + 4 * C * P``;
* backward: read x and dy, write dx, read weight, write dweight and dbias: ``3 * numel * E + 3 * C * P``.

A two-pass training forward reads x twice, so on tensors larger than the cache it cannot pass ~2/3 of copy
bandwidth under this model; eval and backward can approach it. Copy bandwidth is measured in the same run as
``2 * bytes / time`` of a large ``dst.copy_(src)`` and reported in the header; ``pct_copy`` is each row's effective
bandwidth as a percentage of it. ``ratio`` is ``torch_time / impl_time``: above 1 means faster than torch.

With an epilogue (``bench(..., epilogue="relu" | "add_relu")``, ``bncheck bench --epilogue``) the modules compute
``relu(bn(x))`` / ``relu(bn(x) + z)`` and are called as ``module(x)`` / ``module(x, z)``; the reference is then torch
eager BatchNorm followed by an in-place add and ReLU (torchvision's ResNet form), still named ``torch-native``, and
the implementation timed is bncheck's own Triton fused kernels (``triton-fused``) or the named plugins declaring
that epilogue; each row's op carries it (``forward-train+relu``). The bytes model adds what the epilogue must move:
add_relu reads z in the forward; the backward reads the ReLU mask's source (the output y) and, for add_relu,
writes dz.

``render_markdown`` only reads the result dict (plain JSON types), so a saved result renders without torch.
"""
from __future__ import annotations

import math
import platform
from dataclasses import replace

OPS = ("forward-train", "forward-eval", "backward")
NATIVE = "torch-native"
EPILOGUES = ("relu", "add_relu")
FUSED = "triton-fused"       # bncheck.kernels.triton_fused_bn, timed with --epilogue
_LAYOUT_NAMES = {(2, False): "nc", (3, False): "ncl", (4, False): "nchw", (4, True): "nhwc", (5, False): "ncdhw",
                 (5, True): "ndhwc"}

# The distinct BatchNorm2d layers of torchvision's ResNet-50 (v1.5: stride on the 3x3 conv) at 224x224:
# (C, H, W) of the stem, and per stage of the first block's conv1 output, the strided conv2 output and the
# expansion (conv3 / downsample) output.
RESNET50_CHW = [(64, 112, 112), (64, 56, 56), (256, 56, 56), (128, 56, 56), (128, 28, 28), (512, 28, 28),
                (256, 28, 28), (256, 14, 14), (1024, 14, 14), (512, 14, 14), (512, 7, 7), (2048, 7, 7)]


def op_name(op: str, epilogue: str | None) -> str:
    """A row's operation: ``forward-train``, or with an epilogue ``forward-train+relu`` (so rows of BatchNorm alone
    and of BatchNorm with an epilogue can share a table, each with its own torch-native reference)."""
    return op if epilogue in (None, "none") else f"{op}+{epilogue}"


def _both(shape):
    return [(shape, False), (shape, True)]


SHAPE_SETS = {
    "resnet50": [s for c, h, w in RESNET50_CHW for s in _both((32, c, h, w))],
    "bn1d": [((65536, 256), False)],
    "3d": _both((8, 64, 16, 28, 28)),
    "small": [((4096, 64), False), ((16, 32, 64), False), *_both((8, 32, 16, 16)), *_both((2, 16, 4, 8, 8))],
    "tiny": [((64, 8), False), *_both((2, 4, 6, 6))],
    # few channels, millions of values per channel (image-input and early-layer normalisation, tabular data):
    # C in {3, 4, 8, 16}, N*H*W (N for 2-d inputs) from 1M to 4M, so each channel's reduction is long
    "smallc": [*_both((256, 3, 112, 112)), ((64, 4, 224, 224), False), *_both((32, 8, 256, 256)),
               *_both((64, 16, 128, 128)), ((4194304, 4), False), ((1048576, 16), False),
               ((16, 8, 32, 64, 64), False)],
    # the gpu set in miniature (a ResNet-like layer in both layouts, a BatchNorm1d, a 3-d case, few channels
    # with many values per channel): the GPU check's own logic exercised on the CPU
    "smoke": [*_both((4, 16, 8, 8)), ((512, 16), False), ((2, 8, 4, 6, 6), False), *_both((64, 3, 8, 8))],
}
SHAPE_SETS["default-cuda"] = SHAPE_SETS["resnet50"] + SHAPE_SETS["bn1d"] + SHAPE_SETS["3d"]
SHAPE_SETS["gpu"] = SHAPE_SETS["default-cuda"] + SHAPE_SETS["smallc"]
SHAPE_SETS["default-cpu"] = SHAPE_SETS["small"]


def shapes_for(name: str, device: str) -> list:
    """``(shape, channels_last)`` pairs for a named set (``default`` depends on the device), or a comma-separated
    list of shapes such as ``32x64x56x56:nhwc,1024x64``."""
    if name == "default":
        name = "default-cuda" if device.startswith("cuda") else "default-cpu"
    if name in SHAPE_SETS:
        return list(SHAPE_SETS[name])
    out = []
    try:
        for item in name.split(","):
            dims, _, layout = item.partition(":")
            shape = tuple(int(d) for d in dims.lower().split("x"))
            if not 2 <= len(shape) <= 5 or layout not in ("", "nhwc", "ndhwc", "channels_last"):
                raise ValueError
            out.append((shape, bool(layout) and len(shape) in (4, 5)))
    except ValueError:
        raise ValueError(f"unknown shape set {name!r}: use one of {', '.join(sorted(SHAPE_SETS))}, default, "
                         f"or shapes like 32x64x56x56:nhwc") from None
    return out


def bytes_moved(op: str, numel: int, C: int, elem: int, pelem: int, epilogue: str | None = None) -> int:
    """The bytes model above."""
    extra = {None: {}, "relu": {"backward": 1}, "add_relu": {"forward-train": 1, "forward-eval": 1, "backward": 2}}
    return {"forward-train": 2 * numel * elem + 6 * C * pelem, "forward-eval": 2 * numel * elem + 4 * C * pelem,
            "backward": 3 * numel * elem + 3 * C * pelem}[op] + extra[epilogue].get(op, 0) * numel * elem


# ---------------------------------------------------------------------------------------------------------------
# timing


def _relative_iqr(q25: float, q50: float, q75: float) -> float | None:
    return (q75 - q25) / q50 if q50 > 0 else None


def _make_timer(device, rep_ms: float | None = None):
    """``(timer(fn) -> (median milliseconds, relative interquartile range), description)``; ``rep_ms`` is the time
    spent measuring each function (CUDA: do_bench's ``rep``, with a quarter of it as warm-up, default 100 ms; CPU:
    blocked_autorange's ``min_run_time``, default 200 ms)."""
    import torch
    if device.type == "cuda":
        rep = float(rep_ms or 100.0)
        try:
            from triton.testing import do_bench

            def triton_timer(fn):
                q25, q50, q75 = (float(q) for q in do_bench(fn, warmup=max(1, int(rep / 4)), rep=max(1, int(rep)),
                                                            quantiles=[0.25, 0.5, 0.75]))
                return q50, _relative_iqr(q25, q50, q75)
            return (triton_timer,
                    f"triton.testing.do_bench median ({rep:.0f} ms of runs after {rep / 4:.0f} ms of warm-up, "
                    f"L2 flushed before each run)")
        except Exception:
            flush = torch.empty(256 << 20, dtype=torch.int8, device=device)

            def cuda_events(fn, reps=50):
                for _ in range(5):
                    fn()
                times = []
                for _ in range(reps):
                    flush.zero_()
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record()
                    fn()
                    b.record()
                    b.synchronize()
                    times.append(a.elapsed_time(b))
                times.sort()
                q = [times[min(len(times) - 1, int(f * len(times)))] for f in (0.25, 0.5, 0.75)]
                return q[1], _relative_iqr(*q)
            return cuda_events, "CUDA events median of 50 (5 warm-up runs, L2 flushed before each run)"
    from torch.utils.benchmark import Timer
    min_run_time = (rep_ms or 200.0) / 1e3

    def cpu(fn):
        fn()   # warm-up (and first-call work)
        m = Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time)
        return m.median * 1e3, (m.iqr / m.median if m.median > 0 and len(m.times) > 1 else None)   # over blocks
    return cpu, f"torch.utils.benchmark.Timer blocked_autorange median ({torch.get_num_threads()} threads)"


def copy_bandwidth(device, timer, nbytes: int | None = None) -> float:
    """GB/s of a large device copy, counting the read and the write."""
    import torch
    nbytes = nbytes or ((1 << 30) if device.type == "cuda" else (64 << 20))
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    ms, _ = timer(lambda: dst.copy_(src))
    return 2 * nbytes / (ms * 1e-3) / 1e9


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _device_name(device) -> str:
    import torch
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name()


def _native(spec):
    return spec.torch_class(**spec.torch_kwargs())


def _eager_epilogue(epilogue: str):
    """Builder of the reference with an epilogue: torch's BatchNorm, then (add_relu) ``+= z`` and an in-place ReLU,
    as torchvision's ResNet blocks write it: separate kernels."""
    import torch

    class EagerEpilogue(torch.nn.Module):
        def __init__(self, spec):
            super().__init__()
            self.bn = _native(spec)

        def forward(self, x, z=None):
            y = self.bn(x)
            if z is not None:
                y += z
            return torch.relu_(y)
    return EagerEpilogue


def _build_fused(spec, epilogue: str):
    """bncheck's Triton BatchNorm with the epilogue fused (``Unsupported`` where it cannot run)."""
    from . import kernels
    return kernels.build(spec, FUSED, epilogue)


def _keep_saved_buffers():
    """A context in which torch.compile (AOTAutograd) compiles a backward that may run more than once: the backward
    is timed by repeating ``autograd.grad(..., retain_graph=True)`` on one forward, which a backward compiled with
    donated buffers refuses (the default since torch 2.6)."""
    import contextlib
    try:
        import torch._functorch.config as functorch_config
        return functorch_config.patch(donated_buffer=False)
    except (ImportError, AttributeError, RuntimeError):
        return contextlib.nullcontext()


def _time_ops(module, x, dy, timer, z=None) -> dict:
    """{op: (milliseconds, relative spread) or an error string}; ``z``: the add_relu epilogue's second input."""
    import torch
    out = {}
    for op in OPS:
        try:
            if op == "backward":
                module.train()
                xg = x.detach().requires_grad_()
                zg = None if z is None else z.detach().requires_grad_()
                with _keep_saved_buffers():       # the forward and the backward compile under it (lazily)
                    y = module(xg) if zg is None else module(xg, zg)
                    inputs = [xg] + ([] if zg is None else [zg]) + [p for p in module.parameters()
                                                                    if p.requires_grad]
                    out[op] = timer(lambda: torch.autograd.grad(y, inputs, dy, retain_graph=True,
                                                                allow_unused=True))
                del y
            else:
                module.train(op == "forward-train")
                args = (x,) if z is None else (x, z)
                with torch.no_grad():
                    out[op] = timer(lambda: module(*args))
        except Exception as e:   # recorded in the row; the run goes on
            out[op] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
    return out


def bench(builders: dict, device: str = "cpu", shape_set: str = "default", dtypes=None,
          rep_ms: float | None = None, epilogue: str | None = None) -> dict:
    """Time every builder (and torch's native BatchNorm, always) on every shape, layout and dtype.

    ``builders`` maps names to ``build(spec) -> nn.Module``; a builder may raise ``bncheck.Unsupported`` or any other
    exception, recorded in its rows. Parameters are float32 (half inputs are then mixed precision, as under
    autocast). ``rep_ms`` is the time spent measuring each operation (default: 100 ms on CUDA, 200 ms on the CPU).
    ``epilogue`` ("relu", "add_relu"): the modules compute ``relu(bn(x) [+ z])``, the reference is torch eager's.
    Returns ``{"header": {...}, "rows": [...]}`` made of plain JSON types.
    """
    import torch

    from .spec import Spec, Unsupported
    if epilogue not in (None, *EPILOGUES):
        raise ValueError(f"epilogue {epilogue!r}: one of {', '.join(EPILOGUES)}")
    dev = torch.device(device)
    dtypes = list(dtypes or [torch.float32])
    timer, method = _make_timer(dev, rep_ms)
    try:   # the version without importing triton (importing it here would fix its interpreter mode too early)
        from importlib.metadata import version
        triton_version = version("triton")
    except Exception:
        triton_version = None
    copy_gbps = copy_bandwidth(dev, timer)
    header = dict(device=_device_name(dev), device_type=dev.type, torch=torch.__version__, triton=triton_version,
                  copy_gbps=copy_gbps, timer=method, shape_set=shape_set,
                  dtypes=[str(d).replace("torch.", "") for d in dtypes], param_dtype="float32",
                  bytes_model="forward: 2*numel*E + per-channel vectors; backward: 3*numel*E + per-channel vectors"
                  + {None: "", "relu": "; backward +numel*E (the mask's source y)",
                     "add_relu": "; forward +numel*E (z), backward +2*numel*E (y, dz)"}[epilogue],
                  epilogue=epilogue)
    if dev.type == "cuda":
        header["sms"] = torch.cuda.get_device_properties(dev).multi_processor_count
    native = _native if epilogue is None else _eager_epilogue(epilogue)
    impls = {NATIVE: native, **{k: v for k, v in builders.items() if k != NATIVE}}
    rows = []
    for shape, channels_last in shapes_for(shape_set, device):
        layout = _LAYOUT_NAMES[(len(shape), channels_last)]
        C, numel = shape[1], math.prod(shape)
        for dtype in dtypes:
            gen = torch.Generator(device=dev).manual_seed(0)
            fmt = ((torch.channels_last if len(shape) == 4 else torch.channels_last_3d) if channels_last
                   else torch.contiguous_format)
            x = torch.randn(shape, device=dev, dtype=dtype, generator=gen).contiguous(memory_format=fmt)
            dy = torch.randn(shape, device=dev, dtype=dtype, generator=gen).contiguous(memory_format=fmt)
            z = (torch.randn(shape, device=dev, dtype=dtype, generator=gen).contiguous(memory_format=fmt)
                 if epilogue == "add_relu" else None)
            spec = Spec(C, ndim=len(shape), device=device, dtype=torch.float32)
            base = {}
            for name, build in impls.items():
                try:
                    module = build(spec)
                    times = _time_ops(module, x, dy, timer, z)
                    del module
                except Unsupported as e:
                    times = {op: f"unsupported: {e}" for op in OPS}
                except Exception as e:
                    times = {op: f"{type(e).__name__}: {e}".splitlines()[0][:200] for op in OPS}
                if name == NATIVE:
                    base = times
                for op in OPS:
                    t = times[op]
                    row = dict(implementation=name, op=op_name(op, epilogue), shape="x".join(map(str, shape)),
                               layout=layout,
                               dtype=str(dtype).replace("torch.", ""), time_ms=None, ratio=None, gbps=None,
                               pct_copy=None, error=None, spread=None)
                    if isinstance(t, tuple) and t[0] > 0:
                        t, row["spread"] = t
                        nbytes = bytes_moved(op, numel, C, x.element_size(), 4, epilogue)
                        row.update(time_ms=t, gbps=nbytes / (t * 1e-3) / 1e9)
                        row["pct_copy"] = 100.0 * row["gbps"] / copy_gbps
                        if isinstance(base.get(op), tuple):
                            row["ratio"] = base[op][0] / t
                    else:
                        row["error"] = t if isinstance(t, str) else f"non-positive time {t[0]!r} ms"
                    rows.append(row)
            del x, dy, z
    return {"header": header, "rows": rows}


# ---------------------------------------------------------------------------------------------------------------
# compiling ahead of the timing


def _precompile_one(task) -> str | None:
    """Worker: one implementation on one shape and dtype, once through the three operations; an error string or
    None."""
    source, name, shape, channels_last, dtype_name, device = task
    try:
        import torch

        from .registry import Registry
        from .spec import Spec, Unsupported
        torch.set_num_threads(1)
        reg = Registry()
        reg.load_source(source)
        dtype = getattr(torch, dtype_name)
        fmt = ((torch.channels_last if len(shape) == 4 else torch.channels_last_3d) if channels_last
               else torch.contiguous_format)
        x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=fmt)
        try:
            module = reg.implementations[name].build(Spec(shape[1], ndim=len(shape), device=device,
                                                          dtype=torch.float32))
        except Unsupported:
            return None
        module.train()
        with torch.no_grad():
            module(x)
        module.eval()
        with torch.no_grad():
            module(x)
        module.train()
        xg = x.detach().requires_grad_()
        y = module(xg)
        torch.autograd.grad(y, [xg] + [p for p in module.parameters() if p.requires_grad], torch.randn_like(y),
                            allow_unused=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return None
    except Exception as e:   # the timing run records the same error in its rows
        return f"{name} {'x'.join(map(str, shape))} {dtype_name}: {type(e).__name__}: {e}".splitlines()[0][:200]


def precompile(registry, names, device: str, shapes: str, dtypes, jobs: int) -> dict:
    """Run every named implementation once on every shape and dtype, spread over ``jobs`` worker processes, before
    anything is timed: JIT compilers that cache what they build on disk (Triton) then compile in parallel, and the
    timing run finds the kernels built. Returns ``{"tasks", "seconds", "errors"}``."""
    import multiprocessing as mp
    import time
    t0 = time.monotonic()
    tasks = [(registry.implementations[n].source, n, shape, cl, d, device)
             for shape, cl in shapes_for(shapes, device) for d in dtypes for n in names]
    with mp.get_context("spawn").Pool(max(1, min(jobs, len(tasks)))) as pool:
        errors = [e for e in pool.imap_unordered(_precompile_one, tasks) if e]
    return {"tasks": len(tasks), "seconds": time.monotonic() - t0, "errors": errors}


# ---------------------------------------------------------------------------------------------------------------
# command line and rendering (no torch needed to render)


def add_arguments(parser) -> None:
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="where to time (default: cuda when available, else cpu)")
    parser.add_argument("--shapes", default="default",
                        help=f"shape set: {', '.join(sorted(SHAPE_SETS))}, default (CUDA: resnet50 + bn1d + 3d; "
                             f"CPU: small), or shapes like 32x64x56x56:nhwc,65536x256")
    parser.add_argument("--dtype", action="append", choices=("float32", "float16", "bfloat16"), default=None,
                        help="input dtype, repeatable (default: float32 and float16 on CUDA, float32 on CPU)")
    parser.add_argument("--impl", action="append", default=None,
                        help="implementation name from the registry, repeatable (default: every BatchNorm "
                             "implementation; torch native is always timed)")
    parser.add_argument("--json", default=None, help="also write the result as JSON to this path")
    parser.add_argument("--rep-ms", type=float, default=None, metavar="MS",
                        help="time spent measuring each operation (default: 100 on CUDA, 200 on the CPU)")
    parser.add_argument("--precompile-jobs", type=int, default=0, metavar="N",
                        help="first run every implementation once per shape and dtype in N processes, so that JIT "
                             "kernels (Triton caches them on disk) are compiled in parallel before the timing")
    parser.add_argument("--epilogue", choices=EPILOGUES, default=None,
                        help=f"time BatchNorm with a fused epilogue, relu(bn(x)) or relu(bn(x) + z): bncheck's "
                             f"Triton kernels ({FUSED}) against torch eager (BatchNorm, add, ReLU as separate ops)")


def run_named(registry, names=None, device: str | None = None, shapes: str = "default", dtypes=None,
              rep_ms: float | None = None, precompile_jobs: int = 0, epilogue: str | None = None) -> dict:
    """Time the named BatchNorm implementations of ``registry`` (default: all of them); ``ValueError`` names a
    bad name. ``device`` defaults to cuda when available; ``dtypes`` (names) to float32 (and float16 on CUDA).
    ``precompile_jobs``: see :func:`precompile` (its summary goes into the header). ``epilogue``: time the named
    plugins declaring that epilogue (default: bncheck's Triton fused kernels, ``triton-fused``) against torch eager
    ``relu(bn(x) [+ z])`` instead."""
    if epilogue is not None:
        if epilogue not in EPILOGUES:
            raise ValueError(f"--epilogue {epilogue}: one of {', '.join(EPILOGUES)}")
        other = [n for n in names or () if n in registry.implementations and
                 registry.implementations[n].epilogue != epilogue]
        if other:
            raise ValueError(f"--impl {other[0]}: declares epilogue {registry.implementations[other[0]].epilogue!r}, "
                             f"not {epilogue!r}")
        if precompile_jobs:
            raise ValueError("--precompile-jobs: not with --epilogue (it runs registry plugins)")
    if precompile_jobs < 0:
        raise ValueError(f"--precompile-jobs {precompile_jobs}: must be 0 (off) or more")
    if rep_ms is not None and not (math.isfinite(rep_ms) and rep_ms > 0):
        raise ValueError(f"--rep-ms {rep_ms}: must be a positive number of milliseconds")
    import torch
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype_names = list(dtypes or (["float32", "float16"] if device == "cuda" else ["float32"]))
    if epilogue is not None:
        shapes_for(shapes, device)
        unknown = [n for n in names or () if n not in registry.implementations]
        if unknown:
            raise ValueError(f"--impl {unknown[0]}: unknown implementation")
        builders = {n: (lambda spec, b=registry.implementations[n].build: b(replace(spec, epilogue=epilogue)))
                    for n in names or ()}
        if not names:       # bncheck's own fused kernels
            builders[FUSED] = lambda spec: _build_fused(spec, epilogue)
        return bench(builders, device, shapes, [getattr(torch, d) for d in dtype_names], rep_ms, epilogue)
    names = names or [i.name for i in registry.of_kind("batchnorm")]
    unknown = [n for n in names if n not in registry.implementations]
    if unknown:
        raise ValueError(f"--impl {unknown[0]}: unknown implementation; "
                         f"known: {', '.join(sorted(registry.implementations))}")
    other = [n for n in names if registry.implementations[n].kind != "batchnorm"]
    if other:
        raise ValueError(f"--impl {other[0]}: a {registry.implementations[other[0]].kind} plugin; "
                         f"only BatchNorm implementations are timed")
    shapes_for(shapes, device)   # a bad shape set is named before any work
    pre = precompile(registry, names, device, shapes, dtype_names, precompile_jobs) if precompile_jobs else None
    result = bench({n: registry.implementations[n].build for n in names}, device, shapes,
                   [getattr(torch, d) for d in dtype_names], rep_ms)
    if pre:
        result["header"]["precompile"] = pre
    return result


def run_from_args(args, registry) -> dict:
    """``bncheck bench``: :func:`run_named` with the parsed arguments, and ``--json``."""
    result = run_named(registry, args.impl, args.device, args.shapes, args.dtype, getattr(args, "rep_ms", None),
                       getattr(args, "precompile_jobs", 0), getattr(args, "epilogue", None))
    if args.json:
        import json
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


def _fmt(v, spec):
    return "" if v is None else format(v, spec)


def render_markdown(result: dict) -> str:
    from tabulate import tabulate
    h = result["header"]
    lines = [f"# BatchNorm timings on {h.get('device')}", "",
             f"- torch {h.get('torch')}, triton {h.get('triton') or 'not installed'}",
             f"- timer: {h.get('timer')}",
             *([f"- epilogue: {h['epilogue']} (torch-native: torch eager BatchNorm, "
                f"{'in-place add of z, ' if h['epilogue'] == 'add_relu' else ''}in-place ReLU)"]
               if h.get("epilogue") else []),
             *([f"- compiled ahead: {h['precompile']['tasks']} runs in {h['precompile']['seconds']:.1f} s, "
                f"{len(h['precompile']['errors'])} error(s)"] if h.get("precompile") else []),
             f"- copy bandwidth (read + write of a large copy): {h.get('copy_gbps', 0):.1f} GB/s",
             f"- ratio = torch time / implementation time (> 1: faster than torch native); "
             f"GB/s from the minimal-bytes model ({h.get('bytes_model')})", ""]
    table = [[r["implementation"], r["op"], r["shape"], r["layout"], r["dtype"], _fmt(r["time_ms"], ".4g"),
              _fmt(r["ratio"], ".3g"), _fmt(r["gbps"], ".3g"), _fmt(r["pct_copy"], ".3g"), r.get("error") or ""]
             for r in result["rows"]]
    lines.append(tabulate(table, headers=["implementation", "op", "shape", "layout", "dtype", "ms", "ratio",
                                          "GB/s", "% copy", "error"], tablefmt="pipe", disable_numparse=True))
    summary = {}
    for r in result["rows"]:
        if r["implementation"] != NATIVE and r["ratio"]:
            summary.setdefault((r["implementation"], r["op"]), []).append(r["ratio"])
    if summary:
        lines += ["", "Geometric mean of ratios:", ""]
        lines.append(tabulate([[impl, op, f"{math.exp(sum(map(math.log, v)) / len(v)):.3g}", len(v)]
                               for (impl, op), v in summary.items()],
                              headers=["implementation", "op", "geomean ratio", "rows"], tablefmt="pipe",
                              disable_numparse=True))
    return "\n".join(lines) + "\n"


__all__ = ["OPS", "NATIVE", "EPILOGUES", "FUSED", "SHAPE_SETS", "RESNET50_CHW", "add_arguments", "bench",
           "bytes_moved", "copy_bandwidth", "precompile", "render_markdown", "run_from_args", "run_named", "shapes_for"]

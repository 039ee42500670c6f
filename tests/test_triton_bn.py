"""TritonBatchNorm against torch.nn.BatchNorm{1,2,3}d, run on the CPU through the Triton interpreter.

Tolerance model. Both sides compute in float32 (unit roundoff u32 = 2^-24) from the same input and round the result
to the output dtype (unit roundoff u_out). So an element may differ by
  * one rounding of the output on each side: 2 * u_out * |ref|, plus
  * the float32 error of the statistics, carried to the element. A stable reduction over n terms (Welford / tree
    sums, as both sides use) has a relative error of about g(n) * u32 * kappa, with kappa = sqrt(1 + mean^2 / var)
    the condition number of the channel's variance, and g(n) = 2 * (ceil(log2 n) + 1): two implementations, each
    with a tree-shaped accumulation whose error grows like log2 n. A mean error moves y by |w| * that much; a
    relative variance error moves y by |w| * |xhat| * that much; hence g * u32 * kappa * |w| * (1 + |xhat|).
The gradients and running statistics follow the same pattern with their own magnitudes (see the helpers). The
bounds are computed from the float64 input, so a large-offset channel (kappa ~ 1e3) earns a proportionally looser
bound, while semantic deviations (biased vs unbiased variance: relative 1/(2n); eps placement; momentum direction)
stay orders of magnitude above it.
"""
import math
import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from bncheck.kernels import triton_kernels as K  # noqa: E402
from bncheck.kernels.triton_bn import TritonBatchNorm  # noqa: E402

U32 = 2.0 ** -24
TORCH_BN = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}
CL = {4: torch.channels_last, 5: torch.channels_last_3d}


def u(dtype):
    return torch.finfo(dtype).eps / 2


def g(n):
    return 2 * (math.ceil(math.log2(max(n, 2))) + 1)


def pair(shape, pdtype=torch.float32, seed=0, oracle64=False, **kw):
    """(torch reference, TritonBatchNorm) with the same non-trivial state. With ``oracle64`` the reference runs in
    float64 (parameters and buffers upcast exactly), for the half-precision cases: torch's own CPU half kernels round
    intermediates to half (up to ~10 ulps on dx, more on outputs near zero with half parameters), while a float32
    computation is within an ulp of the exact result, so the float64 run is the meaningful reference there."""
    torch.manual_seed(seed)
    ref = TORCH_BN[len(shape)](shape[1], dtype=pdtype, **kw)
    mine = TritonBatchNorm(shape[1], dtype=pdtype, **kw)
    if ref.affine:
        with torch.no_grad():   # non-trivial affine parameters, exactly representable in pdtype
            ref.weight.copy_(torch.empty(shape[1]).uniform_(0.5, 2.0) * torch.tensor([-1.0, 1.0])[
                torch.arange(shape[1]) % 2])
            ref.bias.copy_(torch.empty(shape[1]).uniform_(-1, 1))
    mine.load_state_dict(ref.state_dict())
    if oracle64:
        ref = ref.double()
    return ref, mine


def make_x(shape, dtype=torch.float32, fmt=None, offset=3.0, scale=2.0, seed=1):
    torch.manual_seed(seed)
    C = shape[1]
    bshape = [1, C] + [1] * (len(shape) - 2)
    x = (torch.randn(shape) * scale + offset * torch.linspace(-1, 1, C).reshape(bshape)).to(dtype)
    return x.contiguous(memory_format=fmt) if fmt is not None else x


class Stats:
    """float64 per-channel statistics of an input and its upstream gradient, shaped to broadcast."""

    def __init__(self, x, dy, eps):
        dims = [0] + list(range(2, x.dim()))
        xd, self.dy = x.double(), dy.double()
        self.n = x.numel() // x.shape[1]
        self.mean = xd.mean(dims, keepdim=True)
        self.var = xd.var(dims, unbiased=False, keepdim=True)
        self.std = (self.var + eps).sqrt()
        self.kappa = (1 + self.mean ** 2 / (self.var + eps)).sqrt()
        self.xhat = (xd - self.mean) / self.std
        self.dims = dims

    def csum(self, t):
        return t.sum(self.dims)


def assert_within(got, ref, tol, what, dtype=None):
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    assert got.dtype == (dtype or ref.dtype), (what, got.dtype, dtype or ref.dtype)
    err = (got.double() - ref.double()).abs()
    tol = tol.expand_as(err)
    bad = err > tol
    assert not bad.any(), f"{what}: {int(bad.sum())} elements off; worst err {err.max():.3g}, " \
                          f"err/tol {(err / tol).max():.3g}"


def run_train(shape, xdtype=torch.float32, pdtype=torch.float32, fmt=None, steps=1, offset=3.0, modules=None,
              **kw):
    """Forward + backward with batch statistics (training, or any mode without running statistics)."""
    ref, mine = modules or pair(shape, pdtype, oracle64=(xdtype, pdtype) != (torch.float32,) * 2, **kw)
    rdt = torch.float64 if next(iter(ref.state_dict().values()), torch.empty(0)).dtype == torch.float64 else xdtype
    for step in range(steps):
        x = make_x(shape, xdtype, fmt, offset=offset, seed=10 + step)
        dy = torch.randn(shape, generator=torch.Generator().manual_seed(99 + step)).to(xdtype)
        x1, x2 = x.to(rdt, copy=True).requires_grad_(), x.clone().requires_grad_()
        old_rm = None if ref.running_mean is None else ref.running_mean.double().clone()
        old_rv = None if ref.running_var is None else ref.running_var.double().clone()
        for m in (ref, mine):
            m.zero_grad()
        y1, y2 = ref(x1), mine(x2)
        y1.backward(dy.to(rdt))
        y2.backward(dy)
        st = Stats(x, dy, ref.eps)
        uo, up = u(xdtype), u(pdtype)
        w = ref.weight.double().abs().reshape(st.mean.shape) if ref.affine else torch.ones_like(st.mean)
        # forward
        assert y2.is_contiguous(memory_format=fmt or torch.contiguous_format)
        assert_within(y2, y1, 2 * uo * y1.double().abs() + g(st.n) * U32 * st.kappa * w * (1 + st.xhat.abs()), "y",
                      xdtype)
        # dx = k * (dy - mean(dy) - xhat * mean(dy * xhat)), k = w / std
        ady = st.dy.abs()
        mdy = ady.mean(st.dims, keepdim=True)
        mdyx = (ady * (1 + st.xhat.abs())).mean(st.dims, keepdim=True)
        tol_dx = 2 * uo * x1.grad.double().abs() + g(st.n) * U32 * st.kappa * w / st.std * (
            ady + mdy + (1 + st.xhat.abs()) * mdyx)
        assert x2.grad.is_contiguous(memory_format=fmt or torch.contiguous_format)
        assert_within(x2.grad, x1.grad, tol_dx, "dx", xdtype)
        if ref.affine:
            sdyx = st.csum(ady * (1 + st.xhat.abs()))
            assert_within(mine.weight.grad, ref.weight.grad,
                          2 * up * ref.weight.grad.double().abs() + g(st.n) * U32 * st.kappa.flatten() * sdyx, "dw",
                          pdtype)
            assert_within(mine.bias.grad, ref.bias.grad,
                          2 * up * ref.bias.grad.double().abs() + g(st.n) * U32 * st.csum(ady), "db", pdtype)
        if ref.track_running_stats:
            assert mine.num_batches_tracked.item() == ref.num_batches_tracked.item() == step + 1
            f = ref.momentum if ref.momentum is not None else 1.0 / (step + 1)
            mean, var_u = st.mean.flatten(), st.var.flatten() * st.n / (st.n - 1)
            kap = st.kappa.flatten()
            # the update's few float32 operations: 4 * u32 * (|old| + f * |batch|); the batch statistic's own error
            tol_rm = 2 * up * ref.running_mean.double().abs() + 4 * U32 * (old_rm.abs() + f * mean.abs()) \
                + f * g(st.n) * U32 * kap * st.std.flatten()
            tol_rv = 2 * up * ref.running_var.double().abs() + 4 * U32 * (old_rv.abs() + f * var_u) \
                + f * var_u * 2 * g(st.n) * U32 * kap
            assert_within(mine.running_mean, ref.running_mean, tol_rm, "running_mean", pdtype)
            assert_within(mine.running_var, ref.running_var, tol_rv, "running_var", pdtype)
        else:
            assert mine.running_mean is None and mine.running_var is None and mine.num_batches_tracked is None
    return ref, mine


def run_eval(ref, mine, shape, xdtype=torch.float32, fmt=None):
    ref.eval()
    mine.eval()
    if not ref.track_running_stats:   # batch statistics in every mode
        return run_train(shape, xdtype, mine.weight.dtype if mine.affine else torch.float32, fmt,
                         modules=(ref, mine))
    ref.load_state_dict(mine.state_dict())   # the same (possibly half-rounded) running statistics on both sides
    x = make_x(shape, xdtype, fmt, seed=5)
    dy = torch.randn(shape).to(xdtype)
    before = {k: v.clone() for k, v in mine.state_dict().items()}
    rdt = torch.float64 if ref.running_mean.dtype == torch.float64 else xdtype
    pdtype = mine.running_mean.dtype
    x1, x2 = x.to(rdt, copy=True).requires_grad_(), x.clone().requires_grad_()
    for m in (ref, mine):
        m.zero_grad()
    y1, y2 = ref(x1), mine(x2)
    y1.backward(dy.to(rdt))
    y2.backward(dy)
    bshape = [1, shape[1]] + [1] * (len(shape) - 2)
    rm, rv = ref.running_mean.double().reshape(bshape), ref.running_var.double().reshape(bshape)
    invstd = 1 / (rv + ref.eps).sqrt()
    w = ref.weight.double().reshape(bshape).abs() if ref.affine else 1.0
    b = ref.bias.double().reshape(bshape).abs() if ref.affine else 0.0
    xd, ady = x.double(), dy.double().abs()
    # no reduction in the output: a handful of float32 roundings on each side, c = 8 in all, of the terms'
    # magnitudes (x * scale and mean * scale may cancel when the output is formed as x * scale + shift).
    uo = u(xdtype)
    assert_within(y2, y1, 2 * uo * y1.double().abs() + 8 * U32 * ((xd.abs() + rm.abs()) * invstd * w + b), "eval y",
                  xdtype)
    assert_within(x2.grad, x1.grad, 2 * uo * x1.grad.double().abs() + 8 * U32 * ady * invstd * w, "eval dx",
                  xdtype)
    if ref.affine:
        dims = [0] + list(range(2, len(shape)))
        n = x.numel() // shape[1]
        up = u(pdtype)
        assert_within(mine.weight.grad, ref.weight.grad, 2 * up * ref.weight.grad.double().abs() + g(n) * U32 * (
            ady * (xd.abs() + rm.abs()) * invstd).sum(dims), "eval dw", pdtype)
        assert_within(mine.bias.grad, ref.bias.grad,
                      2 * up * ref.bias.grad.double().abs() + g(n) * U32 * ady.sum(dims), "eval db", pdtype)
    assert mine.num_batches_tracked.item() == ref.num_batches_tracked.item()
    for k, v in mine.state_dict().items():   # eval never touches the running statistics
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


SHAPES = [((16, 5), None), ((4, 3, 10), None), ((4, 3, 5, 6), None), ((4, 3, 5, 6), torch.channels_last),
          ((3, 4, 7, 7), torch.channels_last), ((2, 3, 2, 3, 4), None), ((2, 3, 2, 3, 4), torch.channels_last_3d),
          ((5, 4, 1, 1), None)]


@pytest.mark.parametrize("shape,fmt", SHAPES, ids=lambda v: str(v).replace("torch.", "").replace(" ", ""))
def test_float32_train_and_eval(shape, fmt):
    ref, mine = run_train(shape, fmt=fmt, steps=2)
    run_eval(ref, mine, shape, fmt=fmt)


@pytest.mark.parametrize("xdtype,pdtype", [(torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16),
                                           (torch.float16, torch.float32), (torch.bfloat16, torch.float32)],
                         ids=["fp16", "bf16", "fp16-mixed", "bf16-mixed"])
@pytest.mark.parametrize("fmt", [None, torch.channels_last], ids=["nchw", "nhwc"])
def test_half_dtypes(xdtype, pdtype, fmt):
    shape = (4, 3, 5, 6)
    ref, mine = run_train(shape, xdtype, pdtype, fmt)
    # dtypes and memory format as torch's own half / mixed-precision module gives them
    tm = torch.nn.BatchNorm2d(3, dtype=pdtype)
    x = make_x(shape, xdtype, fmt).requires_grad_()
    yt = tm(x)
    yt.sum().backward()
    assert mine.running_mean.dtype == tm.running_mean.dtype and mine.weight.grad.dtype == tm.weight.grad.dtype
    y = TritonBatchNorm(3, dtype=pdtype)(x.detach())
    assert y.dtype == yt.dtype and y.stride() == yt.stride()
    run_eval(ref, mine, shape, xdtype, fmt)


def test_half_rank2():
    run_train((32, 6), torch.bfloat16, torch.float32)


def test_momentum_none_is_cumulative_average():
    run_train((6, 3, 4, 4), momentum=None, steps=3)


@pytest.mark.parametrize("fmt", [None, torch.channels_last], ids=["nchw", "nhwc"])
def test_affine_false(fmt):
    ref, mine = run_train((4, 3, 5, 6), fmt=fmt, affine=False)
    assert mine.weight is None and mine.bias is None
    run_eval(ref, mine, (4, 3, 5, 6), fmt=fmt)


def test_track_running_stats_false_uses_batch_stats_in_eval():
    ref, mine = run_train((4, 3, 5, 6), track_running_stats=False)
    run_eval(ref, mine, (4, 3, 5, 6))
    assert set(mine.state_dict()) == {"weight", "bias"}


def test_state_dict_and_buffers_match_torch():
    ref, mine = pair((2, 3, 4, 4))
    assert list(mine.state_dict()) == list(ref.state_dict())
    assert [n for n, _ in mine.named_parameters()] == ["weight", "bias"]
    assert mine.num_batches_tracked.dtype == torch.long
    x = make_x((4, 3, 4, 4))
    mine(x)
    assert mine.running_mean.grad_fn is None and mine.running_var.grad_fn is None


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 3, 0, 4), (0, 3)])
def test_zero_size_batch(shape):
    ref, mine = pair(shape)
    for fmt in (None, torch.channels_last) if len(shape) == 4 else (None,):
        x1 = make_x(shape, fmt=fmt).requires_grad_()
        x2 = x1.detach().clone().requires_grad_()
        y1, y2 = ref(x1), mine(x2)
        assert y2.shape == y1.shape and y2.dtype == y1.dtype
        y1.sum().backward()
        y2.sum().backward()
        assert x2.grad.shape == x1.grad.shape
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(mine, name), getattr(ref, name), rtol=0, atol=0)
        torch.testing.assert_close(mine.weight.grad, ref.weight.grad, rtol=0, atol=0)
        torch.testing.assert_close(mine.bias.grad, ref.bias.grad, rtol=0, atol=0)
    assert mine.num_batches_tracked.item() >= 1   # incremented although the statistics were untouched


@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1), (1, 3, 1, 1), (1, 3, 1, 1, 1)])
def test_one_value_per_channel(shape):
    ref, mine = pair(shape)
    x = make_x(shape)
    with pytest.raises(ValueError) as e_ref:
        ref(x)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training") as e_mine:
        mine(x)
    assert str(e_mine.value) == str(e_ref.value)
    assert mine.num_batches_tracked.item() == ref.num_batches_tracked.item()   # torch counts it before raising
    ref.eval()
    mine.eval()
    torch.testing.assert_close(mine(x), ref(x))   # eval accepts it
    nt = TritonBatchNorm(3, track_running_stats=False).eval()
    with pytest.raises(ValueError, match="Expected more than 1 value"):
        nt(x)


def test_rank_errors():
    with pytest.raises(ValueError):
        TritonBatchNorm(3)(torch.randn(3))
    with pytest.raises(ValueError):
        TritonBatchNorm(3)(torch.randn(2, 3, 1, 1, 1, 2))


def test_noncontiguous_input_and_gradient_in_another_format():
    ref, mine = pair((4, 3, 5, 6))
    base = make_x((4, 5, 6, 3)).permute(0, 3, 2, 1)          # strides that are no memory format
    x1, x2 = base.detach().clone().requires_grad_(), base.detach().clone().requires_grad_()
    x1 = x1 * 1
    x2 = x2 * 1
    x1.retain_grad()
    x2.retain_grad()
    dy = torch.randn(x1.shape).to(memory_format=torch.channels_last)
    ref(x1).backward(dy)
    mine(x2).backward(dy)
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-5, atol=1e-5)
    xc = make_x((4, 3, 5, 6), fmt=torch.channels_last).requires_grad_()
    mine(xc).backward(torch.randn(4, 3, 5, 6))              # contiguous dy for a channels_last x
    assert xc.grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("shape,fmt,per_sm,min_split", [((8, 2, 12, 12), None, 64, 33),
                                                          ((8, 2, 12, 12), torch.channels_last, 64, 33),
                                                          ((64, 3), None, 8, 8)], ids=["cf", "cl", "rank2"])
def test_split_reduction(monkeypatch, shape, fmt, per_sm, min_split):
    """Small C and a larger N*HW: several programs per channel, merged with Chan's formula (more partials than
    the finalize step loads at once). A large offset (kappa ~ 1e3) also checks the reduction is
    stable, where E[x^2] - E[x]^2 in float32 would lose every digit."""
    monkeypatch.setitem(K.TUNING, "red_tile", 16)
    monkeypatch.setitem(K.TUNING, "programs_per_sm", per_sm)
    monkeypatch.setitem(K.TUNING, "fin_p", 16)     # several merge steps in the finalize kernels
    layout = "cf" if fmt is None and len(shape) > 2 else "cl"
    N, C, S = shape[0], shape[1], math.prod(shape[2:])
    plan = K.make_plan(layout, N, C, S, torch.device("cpu"))
    assert plan.split >= min_split, plan
    run_train(shape, fmt=fmt, steps=2, offset=1000.0)


_COMPILE_SCRIPT = r"""
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from bncheck.kernels import triton_kernels as K
assert not K.INTERPRET
PTR = {"x_ptr": "*fp16", "dy_ptr": "*fp16", "out_ptr": "*fp16", "w_ptr": "*bf16", "b_ptr": "*bf16",
       "rm_ptr": "*bf16", "rv_ptr": "*bf16", "dw_ptr": "*bf16", "db_ptr": "*bf16", "nbt_ptr": "*i64"}
FLOATS = {"eps", "momentum", "n"}
def compile(fn, **consts):
    sig = {a: "constexpr" if a in consts else PTR.get(a, "*fp32") if a.endswith("_ptr") else
           "fp32" if a in FLOATS else "i64" if a == "stride_n" else "i32" for a in fn.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names) if a.endswith("_ptr")}
    triton.compile(ASTSource(fn, sig, constexprs=consts, attrs=attrs), target=GPUTarget("cuda", 90, 32))
compile(K._stats_cf_kernel, BLOCK_N=32, BLOCK_S=64)
compile(K._stats_cl_kernel, BLOCK_M=32, BLOCK_C=64)
compile(K._bwd_reduce_cf_kernel, BLOCK_N=1, BLOCK_S=2048)
compile(K._bwd_reduce_cl_kernel, BLOCK_M=32, BLOCK_C=64)
compile(K._finalize_fwd_kernel, HAS_W=True, HAS_B=True, UPDATE=True, USE_CMA=True, BLOCK_P=32, BLOCK_C=64)
compile(K._finalize_bwd_kernel, TRAIN=True, HAS_W=True, WRITE_DW=True, WRITE_DB=True, BLOCK_P=1, BLOCK_C=64)
for kern, blocks in ((K._apply_cf_kernel, dict(BLOCK_R=2, BLOCK_S=2048)), (K._apply_cl_kernel, dict(BLOCK_M=32, BLOCK_C=128))):
    compile(kern, HAS_X=True, HAS_DY=False, INLINE=True, HAS_W=True, HAS_B=True, **blocks)
    compile(kern, HAS_X=True, HAS_DY=True, INLINE=False, HAS_W=True, HAS_B=False, **blocks)
print("compiled")
"""


@pytest.mark.slow
def test_kernels_compile_for_sm90():
    """The interpreter does not type-check like the compiler: compile each kernel for an H100 (sm_90, through
    triton's bundled ptxas) in a process with the interpreter off. No GPU is needed."""
    import subprocess
    import sys
    pytest.importorskip("triton.backends.nvidia")
    env = dict(os.environ, TRITON_INTERPRET="0")
    r = subprocess.run([sys.executable, "-c", _COMPILE_SCRIPT], env=env, capture_output=True, text=True, timeout=600,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if r.returncode != 0 and ("ptxas" in r.stderr and "not found" in r.stderr.lower()):
        pytest.skip("no ptxas: " + r.stderr[-300:])
    assert r.returncode == 0 and "compiled" in r.stdout, r.stderr[-3000:]


def test_full_bncheck_verification_is_clean():
    """The whole pipeline (every property, default profile, fixed seed) on the Triton plugin: no findings.

    On CPU the kernels run under TRITON_INTERPRET=1 (set by conftest), in a worker process like `bncheck run`."""
    from bncheck import runner
    from bncheck.properties import PROPERTIES
    from bncheck.registry import discover
    plugin = os.path.join(os.path.dirname(__file__), "..", "implementations", "triton_bn.py")
    reg = discover(plugin_files=[plugin], entry_points=False)
    (r,) = runner.run_all([reg.implementations["triton-bn"]], jobs=1, profile="default", seed=0)
    assert r.findings == [], [(f.id, f.evidence) for f in r.findings]
    assert r.cases > 300 and set(r.properties) == {p.name for p in PROPERTIES}
    assert all(v is not None and v < 1.0 for v in r.worst_ratio_by_dtype.values())

"""TritonFusedBatchNorm (``relu(bn(x))``, ``relu(bn(x) + z)``) against torch eager in float64, through the Triton
interpreter on the CPU.

Reference. ``pre = bn(x) [+ z]`` and ``y = F.relu(pre)`` by torch eager on float64 copies of the input, the
parameters and the running statistics (a float64 ``torch.nn.BatchNorm{1,2,3}d`` loaded from the fused module's
state before every step). Gradients are torch's for that expression: ``threshold_backward`` masks the upstream
gradient by the output, ``dz`` is the masked gradient and the BatchNorm backward runs on it. ReLU's gradient is
discontinuous at 0, so the mask is taken from the output under test (the semantics asked of it: "gradient 0 where
y == 0"), after checking that it agrees with the reference's sign wherever ``|pre|`` exceeds the output's error
budget; only elements within rounding distance of 0 may go either way, and they then count consistently.

Tolerances come from bncheck's budget model (``bncheck/budget.py``, the per-element bounds ``bncheck run`` judges
plugins by: K = 8 times the error growth g(n) = 1 + log2(1 + n) of an n-term reduction times the unit roundoffs
times each quantity's conditioning), instantiated for what these kernels do: all arithmetic in float32, so
``u_in = u_out = u_p = 2^-24`` in the model, followed by one rounding of the result to its storage dtype, of
unit roundoff u_s (the input's dtype for y, dx; the parameters' for dweight, dbias and the running statistics):

    tol = budget32 * (1 + 2 u_s) + 2 u_s * |ref| + underflow(u_s)

(|got - ref| <= |v32 - ref| + 2 u_s |v32| with |v32| <= |ref| + budget32; underflow: half the subnormal spacing.)
The rounding is counted as 2 u_s, one ulp, not u_s: the interpreter converts float32 to bfloat16 by truncation
(directed rounding), where a GPU rounds to nearest.
The epilogue adds no reduction: ReLU is 1-Lipschitz, so the pre-activation's bound carries over to y, and adding z
in float32 is one more rounding of at most 2^-24 (|bn(x)| + |z|), covered by passing |bn(x)| + |z| as the output
magnitude the model rounds. ``dz`` is a copy of the upstream gradient or 0: it must match exactly.
"""
import math
import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bncheck import budget as B  # noqa: E402
from bncheck.kernels import triton_kernels as K  # noqa: E402
from bncheck.kernels.triton_bn import TritonBatchNorm  # noqa: E402
from bncheck.kernels.triton_fused_bn import TritonFusedBatchNorm, fused_batch_norm  # noqa: E402

U32 = 2.0 ** -24
TORCH_BN = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d, 5: torch.nn.BatchNorm3d}
CL = {4: torch.channels_last, 5: torch.channels_last_3d}
EPIS = ["relu", "add_relu"]


def fmt_of(x):
    """The memory format the kernels read ``x`` in (strides of no memory format: made contiguous)."""
    if x.dim() in CL and not x.is_contiguous() and x.is_contiguous(memory_format=CL[x.dim()]):
        return CL[x.dim()]
    return torch.contiguous_format


def tol32(budget32, ref, dtype):
    """A float32 budget, then one rounding to ``dtype`` (one ulp: directed rounding allowed)."""
    us = B.u(dtype)
    return budget32 * (1 + 2 * us) + 2 * us * ref.abs() + B.underflow(us)


def assert_within(got, ref, tol, what, dtype):
    assert got.shape == ref.shape, (what, got.shape, ref.shape)
    assert got.dtype == dtype, (what, got.dtype, dtype)
    err = (got.double() - ref).abs()
    bad = err > tol.expand_as(err)
    assert not bad.any(), f"{what}: {int(bad.sum())} elements off; worst err {err.max():.3g}, " \
                          f"err/tol {(err / tol).max():.3g}"


def make(shape, epilogue, pdtype=torch.float32, seed=0, **kw):
    """A fused module with non-trivial parameters (alternating signs) and running statistics, exactly
    representable in ``pdtype``, and the float64 torch module that serves as the reference."""
    torch.manual_seed(seed)
    C = shape[1]
    mine = TritonFusedBatchNorm(C, dtype=pdtype, epilogue=epilogue, **kw)
    with torch.no_grad():
        if mine.affine:
            sign = torch.tensor([-1.0, 1.0])[torch.arange(C) % 2]
            mine.weight.copy_(torch.empty(C).uniform_(0.5, 2.0) * sign)
            mine.bias.copy_(torch.empty(C).uniform_(-1, 1))
        if mine.track_running_stats:
            mine.running_mean.copy_(torch.empty(C).uniform_(-1, 1))
            mine.running_var.copy_(torch.empty(C).uniform_(0.5, 2.0))
    ref = TORCH_BN[len(shape)](C, dtype=torch.float64, **kw)
    return ref, mine


def make_x(shape, dtype=torch.float32, fmt=None, offset=3.0, scale=2.0, seed=1):
    g = torch.Generator().manual_seed(seed)
    C = shape[1]
    bshape = [1, C] + [1] * (len(shape) - 2)
    x = (torch.randn(shape, generator=g) * scale + offset * torch.linspace(-1, 1, C).reshape(bshape)).to(dtype)
    return x.contiguous(memory_format=fmt) if fmt is not None else x


def make_z(x, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(x.shape, generator=g).to(x.dtype).contiguous(memory_format=fmt_of(x))


def step(ref, mine, x, z=None, dy=None, need=("x", "z", "w")):
    """One forward and backward of ``mine`` against the float64 reference, every field checked; returns
    ``(y, pre64, grads)`` for further checks. ``need``: which of x, z, the parameters (w) require grad."""
    C, xdtype, fmt = x.shape[1], x.dtype, fmt_of(x)
    pdtype = (mine.weight.dtype if mine.affine else mine.running_mean.dtype if mine.track_running_stats
              else torch.float32)
    ref.train(mine.training)
    ref.load_state_dict(mine.state_dict())            # the same state, upcast exactly
    before = {k: v.clone() for k, v in mine.state_dict().items()}
    x_keep, z_keep = x.clone(), None if z is None else z.clone()
    raw = {}     # the gradients as the backward returns them, before autograd lays them out like the leaves

    def leaf(t, name):
        t = t.detach().requires_grad_(name in need)
        if t.requires_grad:
            t.register_hook(lambda g: raw.setdefault(name, g))
        return t
    x = leaf(x, "x")
    if z is not None:
        z = leaf(z, "z")
    for p in mine.parameters():
        p.requires_grad_("w" in need)
        p.grad = None
    if dy is None:
        dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(99)).to(xdtype).contiguous(
            memory_format=fmt)
    y = mine(x) if z is None else mine(x, z)
    y.backward(dy)
    # neither input is written to
    assert torch.equal(x.detach(), x_keep) and x.stride() == x_keep.stride()
    if z is not None:
        assert torch.equal(z.detach(), z_keep)

    x64 = x.detach().double().requires_grad_()
    z64 = None if z is None else z.detach().double().requires_grad_()
    bn64 = ref(x64)
    pre = bn64 if z64 is None else bn64 + z64
    y64 = F.relu(pre)
    bn_training = mine.training or not mine.track_running_stats
    dims = [0] + list(range(2, x.dim()))
    n = x.numel() // C
    xd = x.detach().double()
    if bn_training:
        center, var = xd.mean(dims), xd.var(dims, unbiased=False)
    else:
        center, var = before["running_mean"].double(), before["running_var"].double()
    w = ref.weight.detach() if mine.affine else None
    b = ref.bias.detach() if mine.affine else None
    eps = mine.eps

    mag = bn64.detach().abs() + (0 if z64 is None else z64.detach().abs())
    tol_y = tol32(B.output(xd, mag, center, var, eps, w, b, n if bn_training else 1, U32, U32), y64.detach(),
                  xdtype)
    assert_within(y, y64.detach(), tol_y, "y", xdtype)
    assert y.is_contiguous(memory_format=fmt)

    # the mask: the output's; wherever the sign of pre is beyond rounding, torch's
    mask = y.detach().double() > 0
    sure = pre.detach().abs() > tol_y
    assert torch.equal(mask[sure], (pre.detach() > 0)[sure]), "ReLU mask differs from torch's"
    g64 = dy.double() * mask
    inputs = [x64] + ([] if z64 is None else [z64]) + ([ref.weight, ref.bias] if mine.affine else [])
    grads = dict(zip(["x"] + ([] if z64 is None else ["z"]) + (["w", "b"] if mine.affine else []),
                     torch.autograd.grad(pre, inputs, g64)))

    if "x" in need:
        tol = tol32(B.input_grad(xd, g64, grads["x"], center, var, eps, w, n, U32, U32, bn_training),
                    grads["x"], xdtype)
        assert_within(x.grad, grads["x"], tol, "dx", xdtype)
        assert raw["x"].is_contiguous(memory_format=fmt)
    else:
        assert x.grad is None
    if z is not None and "z" in need:
        assert z.grad.dtype == xdtype and raw["z"].is_contiguous(memory_format=fmt)
        assert torch.equal(z.grad.double(), grads["z"]), "dz is not the masked upstream gradient"
    if mine.affine and "w" in need:
        tol = tol32(B.weight_grad(xd, g64, grads["w"], center, var, eps, n, U32, U32), grads["w"], pdtype)
        assert_within(mine.weight.grad, grads["w"], tol, "dweight", pdtype)
        tol = tol32(B.bias_grad(g64, grads["b"], n, U32, U32), grads["b"], pdtype)
        assert_within(mine.bias.grad, grads["b"], tol, "dbias", pdtype)

    if mine.training and mine.track_running_stats:
        assert mine.num_batches_tracked.item() == ref.num_batches_tracked.item()
        f = mine.momentum if mine.momentum is not None else 1.0 / mine.num_batches_tracked.item()
        bm, bv = xd.mean(dims), xd.var(dims, unbiased=False)
        old_m, old_v = before["running_mean"].double(), before["running_var"].double()
        tol = tol32(B.running_mean(old_m, ref.running_mean, bm, bv, f, n, U32, U32), ref.running_mean, pdtype)
        assert_within(mine.running_mean, ref.running_mean, tol, "running_mean", pdtype)
        tol = tol32(B.running_var(old_v, ref.running_var, bm, bv, f, n, U32, U32), ref.running_var, pdtype)
        assert_within(mine.running_var, ref.running_var, tol, "running_var", pdtype)
    else:   # eval, or no running statistics: the state is left alone
        for k, v in mine.state_dict().items():
            assert torch.equal(v, before[k]), k
    return y, pre.detach(), grads


def run(shape, epilogue, xdtype=torch.float32, pdtype=torch.float32, fmt=None, steps=1, evals=True, offset=3.0,
        **kw):
    """``steps`` training steps, then (with ``evals``) one eval step, on fresh inputs each."""
    ref, mine = make(shape, epilogue, pdtype, **kw)
    for i in range(steps + bool(evals)):
        mine.train(i < steps)
        x = make_x(shape, xdtype, fmt, offset=offset, seed=10 + i)
        step(ref, mine, x, make_z(x, seed=20 + i) if epilogue == "add_relu" else None)
    return ref, mine


SHAPES = [((16, 5), None), ((4, 3, 10), None), ((4, 3, 5, 6), None), ((4, 3, 5, 6), torch.channels_last),
          ((3, 4, 7, 7), torch.channels_last), ((2, 3, 2, 3, 4), None), ((2, 3, 2, 3, 4), torch.channels_last_3d),
          ((5, 4, 1, 1), None)]
IDS = lambda v: str(v).replace("torch.", "").replace(" ", "")  # noqa: E731


@pytest.mark.parametrize("epilogue", EPIS)
@pytest.mark.parametrize("shape,fmt", SHAPES, ids=IDS)
def test_float32_train_and_eval(shape, fmt, epilogue):
    run(shape, epilogue, fmt=fmt, steps=2)


@pytest.mark.parametrize("epilogue", EPIS)
@pytest.mark.parametrize("fmt", [None, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("xdtype,pdtype", [(torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16),
                                           (torch.float16, torch.float32), (torch.bfloat16, torch.float32)],
                         ids=["fp16", "bf16", "fp16-mixed", "bf16-mixed"])
def test_half_dtypes(xdtype, pdtype, fmt, epilogue):
    run((4, 3, 5, 6), epilogue, xdtype, pdtype, fmt)


@pytest.mark.parametrize("epilogue", EPIS)
def test_half_rank2_and_rank5(epilogue):
    run((32, 6), epilogue, torch.bfloat16, torch.float32)
    run((2, 3, 2, 3, 4), epilogue, torch.float16, torch.float16, torch.channels_last_3d)


@pytest.mark.parametrize("epilogue", EPIS)
def test_momentum_none_is_cumulative_average(epilogue):
    run((6, 3, 4, 4), epilogue, momentum=None, steps=3)


@pytest.mark.parametrize("epilogue", EPIS)
@pytest.mark.parametrize("fmt", [None, torch.channels_last], ids=["nchw", "nhwc"])
def test_affine_false(fmt, epilogue):
    ref, mine = run((4, 3, 5, 6), epilogue, fmt=fmt, affine=False)
    assert mine.weight is None and mine.bias is None


@pytest.mark.parametrize("epilogue", EPIS)
def test_track_running_stats_false_uses_batch_stats_in_eval(epilogue):
    ref, mine = run((4, 3, 5, 6), epilogue, track_running_stats=False)
    assert set(mine.state_dict()) == {"weight", "bias"}
    run((4, 3, 5, 6), epilogue, torch.bfloat16, track_running_stats=False, affine=False)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("need", [("x",), ("z",), ("w",), ("x", "w"), ("z", "w")], ids="+".join)
def test_each_subset_of_gradients(need, train):
    """Every backward branch: only dz, only the parameters' gradients, dx without them, ..."""
    for epilogue in EPIS if "z" not in need else ["add_relu"]:
        ref, mine = make((4, 3, 5, 6), epilogue)
        mine.train(train)
        for fmt in (None, torch.channels_last):
            x = make_x((4, 3, 5, 6), fmt=fmt)
            step(ref, mine, x, make_z(x) if epilogue == "add_relu" else None, need=need)


@pytest.mark.parametrize("shape,fmt,per_sm,min_split", [((8, 2, 12, 12), None, 64, 33),
                                                          ((8, 2, 12, 12), torch.channels_last, 64, 33),
                                                          ((64, 3), None, 8, 8)], ids=["cf", "cl", "rank2"])
def test_split_reduction(monkeypatch, shape, fmt, per_sm, min_split):
    """Many reduction programs per channel (forward statistics and the masked backward reduction), merged in
    several finalize steps; a large offset (kappa ~ 1e3) on top."""
    monkeypatch.setitem(K.TUNING, "red_tile", 16)
    monkeypatch.setitem(K.TUNING, "programs_per_sm", per_sm)
    monkeypatch.setitem(K.TUNING, "fin_p", 16)
    layout = "cf" if fmt is None and len(shape) > 2 else "cl"
    plan = K.make_plan(layout, shape[0], shape[1], math.prod(shape[2:]), torch.device("cpu"))
    assert plan.split >= min_split, plan
    for epilogue in EPIS:
        run(shape, epilogue, fmt=fmt, offset=1000.0)


# ---------------------------------------------------------------------------------------------------------------
# the ReLU at exactly 0


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("epilogue", EPIS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_exact_zero_preactivation_gets_no_gradient(dtype, epilogue, train):
    """Pre-activations exactly 0 on both sides, whatever the rounding: channel 0 has weight 0 and (add_relu) z =
    -bias, or (relu) bias 0; in eval, channel 1 also has elements equal to its running mean, with bias 0 (relu) or
    z = -bias there (add_relu). Torch's own eager gradient (threshold_backward: y <= 0 gives 0) is the reference
    here, without taking the mask from the output under test: dz, dbias and dweight of channel 0 are exactly 0."""
    shape = (4, 3, 5, 6)
    ref, mine = make(shape, epilogue, dtype)
    mine.train(train)
    with torch.no_grad():
        mine.weight[0] = 0.0
        if epilogue == "relu":
            mine.bias[:2] = 0.0
    x = make_x(shape, dtype, torch.channels_last)
    sel = torch.zeros(shape, dtype=torch.bool)
    sel[:, 0] = True
    pick = torch.zeros(shape, dtype=torch.bool)
    if not train:
        pick = torch.rand(shape, generator=torch.Generator().manual_seed(3)) < 0.3
        pick[:, [0, 2]] = False
        x[pick] = mine.running_mean[1].detach().to(dtype)
    z = None
    if epilogue == "add_relu":
        z = make_z(x)
        z[sel | pick] = (-mine.bias.detach().to(dtype)).reshape(1, -1, 1, 1).expand(shape)[sel | pick]
    dy = torch.randn(shape).to(dtype)
    y, pre, _ = step(ref, mine, x, z, dy, need=("x", "z", "w") if z is not None else ("x", "w"))
    assert (pre[sel] == 0).all() and (y[sel | pick] == 0).all()
    # torch forms the eval output as x * alpha + (b - mean * alpha): only within rounding of 0 at x == mean
    assert (pre[pick].abs() < 1e-12).all()
    # torch eager, unmodified: its own ReLU backward
    ref.load_state_dict(mine.state_dict())   # (train: statistics of this batch either way)
    x64 = x.double().requires_grad_()
    z64 = None if z is None else z.double().requires_grad_()
    out = F.relu(ref(x64) + (0 if z64 is None else z64))
    out.backward(dy.double())
    if z is not None:
        assert (z64.grad[sel] == 0).all()
    assert ref.bias.grad[0] == 0 and ref.weight.grad[0] == 0
    assert mine.bias.grad[0] == 0 and mine.weight.grad[0] == 0


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("fmt", [None, torch.channels_last], ids=["nchw", "nhwc"])
def test_zero_from_cancellation_masks_by_the_output(fmt, train):
    """z = -bn(x) at some elements, bn(x) computed by TritonBatchNorm with the same coefficients: the fused
    float32 pre-activation there is exactly 0 (in float64 it is only within rounding of 0), so y == 0 and these
    elements must get no gradient: dz == 0 there, and dx, dweight, dbias match torch's backward of the output's
    mask (checked in ``step``)."""
    shape = (4, 3, 5, 6)
    ref, mine = make(shape, "add_relu")
    plain = TritonBatchNorm(3)
    plain.load_state_dict(mine.state_dict())
    mine.train(train)
    plain.train(train)
    x = make_x(shape, fmt=fmt)
    with torch.no_grad():
        bn = plain(x)
    sel = torch.rand(shape, generator=torch.Generator().manual_seed(4)) < 0.4
    z = make_z(x)
    z[sel] = -bn[sel]
    dy = torch.randn(shape).contiguous(memory_format=fmt or torch.contiguous_format)
    y, pre, grads = step(ref, mine, x, z, dy)
    assert (y[sel] == 0).all()
    assert sel.sum() > 10 and (pre[sel] != 0).any()   # float64 disagrees in sign somewhere: it is a real test


@pytest.mark.parametrize("epilogue", EPIS)
def test_nan_follows_torch(epilogue):
    """In eval a NaN stays in its element: relu(NaN) is NaN, and threshold_backward lets the gradient through
    where the output is NaN (NaN <= 0 is false), so dx and dz there are finite, as torch's."""
    ref, mine = make((4, 3, 5, 6), epilogue)
    ref.load_state_dict(mine.state_dict())
    ref.eval()
    mine.eval()
    x = make_x((4, 3, 5, 6), fmt=torch.channels_last)
    x[1, 2, 3, 4] = float("nan")
    z = make_z(x) if epilogue == "add_relu" else None
    dy = torch.randn(x.shape)
    got, want = [], []
    for dtype, out in ((torch.float32, got), (torch.float64, want)):
        xi = x.to(dtype, copy=True).requires_grad_()
        zi = None if z is None else z.to(dtype, copy=True).requires_grad_()
        if dtype == torch.float32:
            y = mine(xi) if zi is None else mine(xi, zi)
        else:
            y = F.relu(ref(xi) + (0 if zi is None else zi))
        y.backward(dy.to(dtype))
        out += [y, xi.grad] + ([] if zi is None else [zi.grad])
    assert got[0][1, 2, 3, 4].isnan() and got[1][1, 2, 3, 4].isfinite()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b.float(), equal_nan=True)


# ---------------------------------------------------------------------------------------------------------------
# interface


@pytest.mark.parametrize("epilogue", EPIS)
def test_state_dict_and_repr_match_torch(epilogue):
    ref = torch.nn.BatchNorm2d(3)
    mine = TritonFusedBatchNorm(3, epilogue=epilogue)
    assert list(mine.state_dict()) == list(ref.state_dict())
    assert [n for n, _ in mine.named_parameters()] == ["weight", "bias"]
    assert mine.num_batches_tracked.dtype == torch.long
    assert f"epilogue='{epilogue}'" in repr(mine)
    x = make_x((4, 3, 4, 4))
    mine(x) if epilogue == "relu" else mine(x, make_z(x))
    assert mine.running_mean.grad_fn is None and mine.running_var.grad_fn is None


def test_wrong_calls():
    x = make_x((4, 3, 4, 4))
    with pytest.raises(TypeError):
        TritonFusedBatchNorm(3)(x, x)
    with pytest.raises(TypeError):
        TritonFusedBatchNorm(3, epilogue="add_relu")(x)
    with pytest.raises(ValueError):
        TritonFusedBatchNorm(3, epilogue="gelu")
    with pytest.raises(ValueError):
        TritonFusedBatchNorm(3, epilogue="add_relu")(x, x[:2])
    with pytest.raises(ValueError):
        TritonFusedBatchNorm(3, epilogue="add_relu")(x, x.half())
    with pytest.raises(ValueError):
        TritonFusedBatchNorm(3)(torch.randn(3))


@pytest.mark.parametrize("epilogue", EPIS)
@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1, 1), (1, 3, 1, 1, 1)])
def test_one_value_per_channel(shape, epilogue):
    ref = TORCH_BN[len(shape)](3)
    mine = TritonFusedBatchNorm(3, epilogue=epilogue)
    x = make_x(shape)
    args = (x,) if epilogue == "relu" else (x, make_z(x))
    with pytest.raises(ValueError) as e_ref:
        ref(x)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training") as e_mine:
        mine(*args)
    assert str(e_mine.value) == str(e_ref.value)
    assert mine.num_batches_tracked.item() == ref.num_batches_tracked.item()   # torch counts it before raising
    mine.eval()
    ref.eval()
    torch.testing.assert_close(mine(*args), F.relu(ref(x) + (0 if epilogue == "relu" else args[1])))


@pytest.mark.parametrize("epilogue", EPIS)
@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 3, 0, 4), (0, 3)])
def test_zero_size_batch(shape, epilogue):
    ref = TORCH_BN[len(shape)](3)
    mine = TritonFusedBatchNorm(3, epilogue=epilogue)
    x1 = make_x(shape).requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    z1 = torch.zeros(shape, requires_grad=True)
    z2 = torch.zeros(shape, requires_grad=True)
    y1 = F.relu(ref(x1) + (0 if epilogue == "relu" else z1))
    y2 = mine(x2) if epilogue == "relu" else mine(x2, z2)
    assert y2.shape == y1.shape and y2.dtype == y1.dtype
    y1.sum().backward()
    y2.sum().backward()
    assert x2.grad.shape == x1.grad.shape
    if epilogue == "add_relu":
        assert z2.grad.shape == z1.grad.shape
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(mine, name), getattr(ref, name)), name
    assert torch.equal(mine.weight.grad, ref.weight.grad) and torch.equal(mine.bias.grad, ref.bias.grad)


def test_formats_mixed_and_strided():
    """z and dy in another memory format than x, an x with strides of no memory format: results in x's format
    (strided x: contiguous), values as with matching formats."""
    ref, mine = make((4, 3, 5, 6), "add_relu")
    x = make_x((4, 3, 5, 6), fmt=torch.channels_last)
    z = make_z(x).contiguous()
    dy = torch.randn(x.shape)
    step(ref, mine, x, z, dy)
    xs = make_x((4, 5, 6, 3)).permute(0, 3, 2, 1)
    zs = torch.randn(4, 3, 5, 6).permute(0, 1, 3, 2)
    step(ref, mine, xs, zs, torch.randn(xs.shape))


@pytest.mark.parametrize("epilogue", EPIS)
def test_functional(epilogue):
    """``fused_batch_norm`` without a module: batch statistics without running ones, and eval."""
    x = make_x((6, 4, 3, 3))
    z = make_z(x) if epilogue == "add_relu" else None
    w, b = torch.randn(4), torch.randn(4)
    got = fused_batch_norm(x, None, None, w, b, True, epilogue=epilogue, z=z)
    want = F.relu(F.batch_norm(x.double(), None, None, w.double(), b.double(), True)
                  + (0 if z is None else z.double()))
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    rm, rv = torch.randn(4), torch.rand(4) + 0.5
    got = fused_batch_norm(x, rm, rv, w, b, False, epilogue=epilogue, z=z)
    want = F.relu(F.batch_norm(x.double(), rm.double(), rv.double(), w.double(), b.double(), False)
                  + (0 if z is None else z.double()))
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        fused_batch_norm(x, None, None, training=False, epilogue=epilogue, z=z)


_COMPILE_SCRIPT = r"""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from bncheck.kernels import triton_fused as F, triton_kernels as K
assert not K.INTERPRET
PTR = {"x_ptr": "*fp16", "z_ptr": "*fp16", "dy_ptr": "*fp16", "y_ptr": "*fp16", "dx_ptr": "*fp16", "g_ptr": "*fp16",
       "w_ptr": "*bf16", "b_ptr": "*bf16", "rm_ptr": "*bf16", "rv_ptr": "*bf16"}
FLOATS = {"eps"}
def compile(fn, **consts):
    sig = {a: "constexpr" if a in consts else PTR.get(a, "*fp32") if a.endswith("_ptr") else
           "fp32" if a in FLOATS else "i64" if a == "stride_n" else "i32" for a in fn.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names) if a.endswith("_ptr")}
    triton.compile(ASTSource(fn, sig, constexprs=consts, attrs=attrs), target=GPUTarget("cuda", 90, 32))
for cf, blocks in ((True, dict(BLOCK_A=2, BLOCK_B=2048)), (False, dict(BLOCK_A=32, BLOCK_B=128))):
    compile(F._fwd_apply_kernel, CF=cf, HAS_Z=True, INLINE=True, HAS_W=True, HAS_B=True, **blocks)
    compile(F._fwd_apply_kernel, CF=cf, HAS_Z=False, INLINE=False, HAS_W=False, HAS_B=False, **blocks)
    compile(F._bwd_apply_kernel, CF=cf, HAS_X=True, WRITE_DX=True, WRITE_G=False, INLINE=False, HAS_W=True,
            **blocks)
    compile(F._bwd_apply_kernel, CF=cf, HAS_X=False, WRITE_DX=True, WRITE_G=True, INLINE=True, HAS_W=True, **blocks)
for dx in (True, False):
    compile(F._bwd_reduce_cf_kernel, WRITE_G=True, WRITE_DX=dx, HAS_W=True, BLOCK_N=1, BLOCK_S=2048)
    compile(F._bwd_reduce_cl_kernel, WRITE_G=True, WRITE_DX=dx, HAS_W=True, BLOCK_M=32, BLOCK_C=64)
print("compiled")
"""


@pytest.mark.slow
def test_kernels_compile_for_sm90():
    """The interpreter does not type-check like the compiler: compile each new kernel for an H100 (sm_90, through
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

"""Flax linen ``nn.BatchNorm`` (JAX on the CPU, ``jax_enable_x64`` on) behind a ``torch.autograd.Function``.

A thin bridge, ported as a careful user would port a torch model: ``axis=1`` (the channel axis), flax momentum
``1 - m`` for torch momentum ``m`` (flax keeps ``momentum * old + (1 - momentum) * batch``), ``epsilon = eps``,
``use_scale``/``use_bias`` from ``affine``, ``param_dtype`` from the parameters and ``dtype`` from the input (so a
float16 input with float32 parameters gives a float16 output, as in torch; flax still reduces in at least float32,
``force_float32_reductions``), and ``use_fast_variance=False``: flax's default (True) computes the variance as
``max(0, E[x^2] - E[x]^2)`` ("faster, but less numerically stable"), which a user porting a torch model and checking
it against torch turns off; with the default, bncheck names ``cancellation`` (and, once that is named, stops
judging the output's numerics), so the two-pass variance is what lets the rest be checked.

Forward runs ``module.apply({'params': ..., 'batch_stats': ...}, x, use_running_average=not training,
mutable=['batch_stats'])``; backward is ``jax.vjp`` of the same function with respect to the input, scale and bias.
Both are jitted, and shared by every module with the same attributes, so jit's cache (per shape, dtype and mode)
serves all of them. Running statistics live in registered torch buffers and are copied
in and out on every call; weight and bias are torch Parameters. ``track_running_stats=False`` uses the batch
statistics in both modes and discards flax's running averages. flax has no cumulative average: ``momentum=None``
is declined. flax keeps no batch counter, so the module has no ``num_batches_tracked``.
"""
from __future__ import annotations

import os

import numpy as np
import torch

import bncheck

MISSING = "flax is not installed: pip install bncheck[frameworks]"
_LIB: dict = {}
_FNS: dict = {}      # (momentum, eps, dtype, param dtype, affine) -> jitted forward and vjp


def _lib():
    """Import jax and flax on first use (x64 on, CPU), or decline."""
    if not _LIB:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        try:
            import jax
            import jax.numpy as jnp
            import flax.linen as nn
        except ImportError:
            raise bncheck.Unsupported(MISSING) from None
        jax.config.update("jax_enable_x64", True)
        _LIB.update(jax=jax, jnp=jnp, nn=nn)
    return _LIB["jax"], _LIB["jnp"], _LIB["nn"]


_TO_JAX = {torch.float64: "float64", torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def _to_jax(t: torch.Tensor):
    _, jnp, _ = _lib()
    t = t.detach().to("cpu")
    if t.dtype == torch.bfloat16:    # numpy has no bfloat16: go through float32 (exact) and cast in jax
        return jnp.asarray(t.float().numpy(), dtype=jnp.bfloat16)
    return jnp.asarray(t.contiguous().numpy())


def _to_torch(a, dtype: torch.dtype) -> torch.Tensor:
    _, jnp, _ = _lib()
    if dtype == torch.bfloat16:
        return torch.from_numpy(np.array(a.astype(jnp.float32))).to(torch.bfloat16)
    return torch.from_numpy(np.array(a))


class _FlaxFns:
    """The jitted forward and vjp of one flax module, per (shape, dtype, mode) through jax.jit's own cache."""

    def __init__(self, module, affine: bool):
        jax, _, _ = _lib()
        self.affine = affine

        def forward(params, stats, x, use_running_average):
            y, new = module.apply({"params": params, "batch_stats": stats}, x,
                                  use_running_average=use_running_average, mutable=["batch_stats"])
            return y, new["batch_stats"]

        def backward(params, stats, x, dy, use_running_average):
            y, pullback = jax.vjp(lambda p, xx: forward(p, stats, xx, use_running_average)[0], params, x)
            dparams, dx = pullback(dy.astype(y.dtype))
            return dx, dparams

        self.forward = jax.jit(forward, static_argnums=3)
        self.backward = jax.jit(backward, static_argnums=4)


class _Bridge(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, owner):
        params, stats, training = owner._jax_state()
        jx = _to_jax(x)
        ctx.fns = owner._fns
        y, new_stats = ctx.fns.forward(params, stats, jx, not training)
        if training and owner.track_running_stats:
            with torch.no_grad():
                owner.running_mean.copy_(_to_torch(new_stats["mean"], owner.running_mean.dtype))
                owner.running_var.copy_(_to_torch(new_stats["var"], owner.running_var.dtype))
        ctx.owner, ctx.saved = owner, (params, stats, jx, training)
        ctx.x_dtype = x.dtype
        out = torch.empty_like(x)          # torch's memory format (jax arrays have none)
        out.copy_(_to_torch(y, x.dtype))
        return out

    @staticmethod
    def backward(ctx, dy):
        params, stats, jx, training = ctx.saved
        owner = ctx.owner
        dx, dparams = ctx.fns.backward(params, stats, jx, _to_jax(dy), not training)
        gx = _to_torch(dx, ctx.x_dtype)
        gw = gb = None
        if owner.affine:
            gw = _to_torch(dparams["scale"], owner.weight.dtype)
            gb = _to_torch(dparams["bias"], owner.bias.dtype)
        return gx, gw, gb, None


class FlaxBatchNorm(torch.nn.Module):
    def __init__(self, spec: bncheck.Spec):
        super().__init__()
        if spec.momentum is None:
            raise bncheck.Unsupported("flax BatchNorm has no cumulative moving average (momentum=None)")
        c, kw = spec.num_features, dict(device="cpu", dtype=spec.dtype)
        self.affine, self.track_running_stats = spec.affine, spec.track_running_stats
        if spec.affine:
            self.weight = torch.nn.Parameter(torch.ones(c, **kw))
            self.bias = torch.nn.Parameter(torch.zeros(c, **kw))
        else:
            self.weight = self.bias = None
        if spec.track_running_stats:
            self.register_buffer("running_mean", torch.zeros(c, **kw))
            self.register_buffer("running_var", torch.ones(c, **kw))
        else:
            self.running_mean = self.running_var = None
        self._c, self._spec_dtype = c, spec.dtype
        self._spec = spec
        self._fns = None

    @property
    def _param_dtype(self) -> str:
        """The dtype the parameters and statistics have now (``.to()`` may have converted them)."""
        held = self.weight if self.affine else self.running_mean
        return _TO_JAX[held.dtype if held is not None else self._spec_dtype]

    def _module_for(self, x_dtype: torch.dtype):
        _, jnp, nn = _lib()
        spec, dtype = self._spec, _TO_JAX[x_dtype]
        key = (spec.momentum, spec.eps, dtype, self._param_dtype, spec.affine)
        if key not in _FNS:       # shared by every module with these attributes, so jit's cache is reused
            module = nn.BatchNorm(axis=1, momentum=1.0 - spec.momentum, epsilon=spec.eps, dtype=jnp.dtype(dtype),
                                  param_dtype=jnp.dtype(self._param_dtype), use_bias=spec.affine,
                                  use_scale=spec.affine, use_fast_variance=False)
            _FNS[key] = _FlaxFns(module, spec.affine)
        return _FNS[key]

    def _jax_state(self):
        _, jnp, _ = _lib()
        params = {"scale": _to_jax(self.weight), "bias": _to_jax(self.bias)} if self.affine else {}
        if self.track_running_stats:
            stats = {"mean": _to_jax(self.running_mean), "var": _to_jax(self.running_var)}
            training = self.training
        else:      # batch statistics in both modes; flax's running averages are computed and discarded
            dt = jnp.dtype(self._param_dtype)
            stats = {"mean": jnp.zeros(self._c, dt), "var": jnp.ones(self._c, dt)}
            training = True
        return params, stats, training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype not in _TO_JAX:
            raise TypeError(f"flax bridge: input dtype {x.dtype} is not a floating dtype jax takes")
        self._fns = self._module_for(x.dtype)
        return _Bridge.apply(x, self.weight, self.bias, self)


# Documented semantic differences from torch (flax 0.12 flax/linen/normalization.py, BatchNorm and _compute_stats):
#   biased-running-var: ra_var = momentum * ra_var + (1 - momentum) * var, where var is the biased (population)
#     batch variance; torch updates running_var with the unbiased one (n / (n - 1)).
#   missing-error: flax computes statistics of any batch, one value per channel included (var 0); torch raises.
#   nan-inf: an empty batch in training: the mean over no values is NaN (jnp.mean), and flax folds it into the
#     running averages unconditionally; torch returns the empty output and leaves the statistics unchanged.
@bncheck.implementation("flax-linen-bn", expect={"biased-running-var", "missing-error", "nan-inf"})
def build(spec: bncheck.Spec) -> torch.nn.Module:
    _lib()
    if torch.device(spec.device).type != "cpu":
        raise bncheck.Unsupported(f"the flax bridge runs jax on the CPU (device {spec.device!r})")
    return FlaxBatchNorm(spec)

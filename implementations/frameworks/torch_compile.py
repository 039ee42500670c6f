"""torch.compile (TorchDynamo + Inductor) of torch's own ``nn.BatchNorm{1,2,3}d``.

Inductor generates C++ on a CPU and Triton kernels on a GPU; the module's ``forward`` is replaced by its compiled
version (``torch.compile(module.forward)``), so parameters, buffers and ``state_dict()`` keys stay torch's own
(``torch.compile(module)`` would wrap them under ``_orig_mod.``, and ``module.compile()`` on torch 2.13 skips
the nn.Module frames and runs eagerly without a word).

Honesty of the compiled path:
- ``fullgraph=True``: every call runs one captured graph or raises; nothing silently falls back to eager.
- Recompilation: every new eps/momentum value (guarded as constants), rank, dtype, layout, mode (train/eval),
  grad mode and affine/tracking setting is a new graph. The compiled-code cache is kept across builds
  (``dynamic=True``, and parameter/buffer shapes dynamic too, so batch, channel and spatial sizes do not
  recompile: 2 graphs instead of 5 for C = 1..5) with a recompile limit high enough for a whole run, and
  ``fail_on_recompile_limit_hit`` makes reaching it an error instead of a silent eager fallback.
  Measured against ``torch._dynamo.reset()`` per build (static shapes), both on a shared 2-core machine with
  a cold Inductor cache, quick profile: 866 s kept vs 950 s reset. Inductor's on-disk graph cache makes
  later runs much faster (about 1 s per recompile instead of 20-60 s of C++ compilation under load).
- ``momentum=None`` is declined: the cumulative factor ``1 / num_batches_tracked`` is read from a tensor
  (``Tensor.item()``, torch/nn/modules/batchnorm.py ``_BatchNorm.forward``), which Dynamo cannot capture; with
  ``fullgraph=True`` it raises, and without it the graph breaks and BatchNorm runs eagerly, so no compiled code
  would be checked.
- ``torch-compile-bn-relu``: the same set-up for ``relu(bn(x))``, the epilogue Inductor fuses into the normalisation
  kernel (a declared ``epilogue="relu"``: checked against ``relu(bn(x))`` with torch's gradient semantics).
- ``error-type`` (expected): where torch rejects an input (one value per channel in training, eps <= 0), the
  compiled module rejects it too, but the ``ValueError`` is raised while Dynamo traces with fake tensors and comes
  out wrapped as ``torch._dynamo.exc.TorchRuntimeError`` (a ``RuntimeError``): ``except ValueError`` misses it.
"""
from __future__ import annotations

import functools

import torch

import bncheck

RECOMPILE_LIMIT = 100_000


@functools.lru_cache(maxsize=None)
def _backend_missing(device_type: str) -> str | None:
    """Why Inductor cannot generate code for this device here (None when it can)."""
    if device_type == "cuda":
        from torch.utils._triton import has_triton
        return None if has_triton() else "triton is not installed (Inductor's GPU backend): pip install triton"
    from torch._inductor import cpp_builder
    try:
        cpp_builder.get_cpp_compiler()
    except Exception as e:   # InvalidCxxCompiler, raised after trying every configured compiler
        return f"no C++ compiler for Inductor's CPU backend ({type(e).__name__}; set CXX)"
    return None


def compiled(forward, spec: bncheck.Spec):
    """``forward`` under ``torch.compile`` as this plugin sets it up (see the module docstring); Unsupported where
    it cannot be (momentum=None, no backend)."""
    if spec.momentum is None:
        raise bncheck.Unsupported("torch.compile cannot capture momentum=None (1/num_batches_tracked is read "
                                  "with Tensor.item(), a graph break): it would run eagerly")
    missing = _backend_missing(torch.device(spec.device).type)
    if missing:
        raise bncheck.Unsupported(missing)
    import torch._dynamo.config as cfg
    cfg.recompile_limit = max(cfg.recompile_limit, RECOMPILE_LIMIT)
    cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, RECOMPILE_LIMIT)
    cfg.fail_on_recompile_limit_hit = True
    cfg.force_parameter_static_shapes = False          # a new channel count does not recompile either
    cfg.force_nn_module_property_static_shapes = False
    return torch.compile(forward, fullgraph=True, dynamic=True)


@bncheck.implementation("torch-compile-bn", expect={"error-type"})
def build(spec: bncheck.Spec) -> torch.nn.Module:
    module = spec.torch_class(**spec.torch_kwargs())
    module.forward = compiled(module.forward, spec)
    return module


class _BatchNormRelu(torch.nn.Module):
    """torch's BatchNorm for the input rank, then ReLU (the epilogue Inductor fuses into its kernel)."""

    def __init__(self, spec: bncheck.Spec):
        super().__init__()
        self.bn = spec.torch_class(**spec.torch_kwargs())

    def forward(self, x):
        return torch.nn.functional.relu(self.bn(x))


@bncheck.implementation("torch-compile-bn-relu", epilogue="relu", expect={"error-type"},
                        state={k: f"bn.{k}" for k in ("weight", "bias", "running_mean", "running_var",
                                                      "num_batches_tracked")})
def build_bn_relu(spec: bncheck.Spec) -> torch.nn.Module:
    """relu(bn(x)) under torch.compile: Inductor generates one fused kernel for the normalisation and the ReLU."""
    module = _BatchNormRelu(spec)
    module.forward = compiled(module.forward, spec)
    return module

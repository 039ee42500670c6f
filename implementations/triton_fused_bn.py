"""BatchNorm with its epilogue fused, written in Triton (bncheck.kernels.triton_fused_bn): ``relu(bn(x))`` and
``relu(bn(x) + z)`` in as few passes over memory as the statistics allow. On a machine without CUDA it runs in the
Triton interpreter."""
import os

import torch

import bncheck

if not torch.cuda.is_available():   # must precede the first import of triton to take effect
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _build(spec: bncheck.Spec) -> torch.nn.Module:
    from bncheck import kernels
    return kernels.build(spec, f"triton-fused-bn-{spec.epilogue.replace('_', '-')}", spec.epilogue)


bncheck.implementation("triton-fused-bn-relu", epilogue="relu")(_build)
bncheck.implementation("triton-fused-bn-add-relu", epilogue="add_relu")(_build)

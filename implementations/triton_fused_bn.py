"""BatchNorm with its epilogue fused, written in Triton (bncheck.kernels.triton_fused_bn): ``relu(bn(x))`` and
``relu(bn(x) + z)`` in as few passes over memory as the statistics allow. On a machine without CUDA it runs in the
Triton interpreter."""
import os

import torch

import bncheck

if not torch.cuda.is_available():   # must precede the first import of triton to take effect
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _build(spec: bncheck.Spec) -> torch.nn.Module:
    if spec.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise bncheck.Unsupported(f"the fused kernels compute in float32; {spec.dtype} parameters are not supported")
    try:
        from bncheck.kernels import triton_kernels
        from bncheck.kernels.triton_fused_bn import TritonFusedBatchNorm
    except Exception as e:   # triton missing or broken: a declared gap, not a bug
        raise bncheck.Unsupported(f"triton cannot be imported: {type(e).__name__}: {e}") from None
    if triton_kernels.UNUSABLE:
        raise bncheck.Unsupported(triton_kernels.UNUSABLE)
    if torch.device(spec.device).type != "cuda" and not triton_kernels.INTERPRET:
        raise bncheck.Unsupported(f"the fused kernels run on CUDA devices, or on the CPU with TRITON_INTERPRET=1 "
                                  f"(device {spec.device!r})")
    return TritonFusedBatchNorm(spec.num_features, eps=spec.eps, momentum=spec.momentum, affine=spec.affine,
                                track_running_stats=spec.track_running_stats, device=spec.device, dtype=spec.dtype,
                                epilogue=spec.epilogue)


bncheck.implementation("triton-fused-bn-relu", epilogue="relu")(_build)
bncheck.implementation("triton-fused-bn-add-relu", epilogue="add_relu")(_build)

"""BatchNorm written in Triton (bncheck.kernels.triton_bn). On a machine without CUDA it runs in the Triton
interpreter."""
import os

import torch

import bncheck

if not torch.cuda.is_available():   # must precede the first import of triton to take effect
    os.environ.setdefault("TRITON_INTERPRET", "1")


@bncheck.implementation("triton-bn")
def build(spec: bncheck.Spec) -> torch.nn.Module:
    from bncheck import kernels
    return kernels.build(spec, "triton-bn")

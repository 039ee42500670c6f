"""BatchNorm in Triton: ``triton_kernels`` (the kernels and their launch plans) and ``triton_bn`` (the autograd
function and the drop-in module), ``triton_fused`` and ``triton_fused_bn`` (the same with a fused ReLU / add+ReLU
epilogue); ``build`` makes the module for a Spec, or says why it cannot run here. Importing the package imports
none of them, so neither triton nor torch."""


def build(spec, name: str, epilogue: str | None = None):
    """bncheck's Triton BatchNorm for ``spec``: ``TritonBatchNorm``, or with an ``epilogue`` ("relu", "add_relu")
    ``TritonFusedBatchNorm``. Raises ``bncheck.Unsupported`` naming why it cannot run here: parameters in a dtype
    the kernels do not compute from, triton missing or unusable, no CUDA device and no interpreter. ``name``: what
    the messages call it (the plugin's name)."""
    import torch

    from ..spec import Unsupported
    if spec.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise Unsupported(f"{name} computes in float32; {spec.dtype} parameters are not supported")
    try:
        from . import triton_kernels
        from .triton_bn import TritonBatchNorm
        from .triton_fused_bn import TritonFusedBatchNorm
    except Exception as e:   # triton missing or broken: a declared gap, not a bug
        raise Unsupported(f"triton cannot be imported: {type(e).__name__}: {e}") from None
    if triton_kernels.UNUSABLE:
        raise Unsupported(triton_kernels.UNUSABLE)
    if torch.device(spec.device).type != "cuda" and not triton_kernels.INTERPRET:
        raise Unsupported(f"{name} runs on CUDA devices, or on the CPU with TRITON_INTERPRET=1 "
                          f"(device {spec.device!r})")
    kwargs = dict(eps=spec.eps, momentum=spec.momentum, affine=spec.affine,
                  track_running_stats=spec.track_running_stats, device=spec.device, dtype=spec.dtype)
    if epilogue is None:
        return TritonBatchNorm(spec.num_features, **kwargs)
    return TritonFusedBatchNorm(spec.num_features, epilogue=epilogue, **kwargs)


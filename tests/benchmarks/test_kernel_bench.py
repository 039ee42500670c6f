"""pytest-benchmark timings of a training forward: torch native vs TritonBatchNorm (interpreter on the CPU).

Skipped by the default run (``--benchmark-skip``); run with ``pytest --benchmark-only tests/benchmarks``.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from bncheck.kernels.triton_bn import TritonBatchNorm  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPE = (8, 16, 32, 32) if DEVICE == "cuda" else (4, 8, 16, 16)


def _forward_train(module):
    x = torch.randn(SHAPE, device=DEVICE)
    module.train()

    def run():
        with torch.no_grad():
            y = module(x)
        if DEVICE == "cuda":
            torch.cuda.synchronize()
        return y
    return run


@pytest.mark.parametrize("impl", ["torch-native", "triton-bn"])
def test_forward_train(benchmark, impl):
    cls = torch.nn.BatchNorm2d if impl == "torch-native" else TritonBatchNorm
    run = _forward_train(cls(SHAPE[1], device=DEVICE))
    run()   # warm-up (compilation on CUDA)
    benchmark.group = f"forward-train {'x'.join(map(str, SHAPE))} {DEVICE}"
    y = benchmark.pedantic(run, rounds=5 if DEVICE == "cpu" else 50, iterations=1, warmup_rounds=1)
    assert y.shape == SHAPE

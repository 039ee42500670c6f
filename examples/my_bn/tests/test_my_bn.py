"""MyBatchNorm2d against torch's BatchNorm semantics, checked by bncheck."""
import bncheck
import torch

from my_bn import MyBatchNorm2d, MyBatchNormReLU2d


@bncheck.implementation("my-bn")
def build(spec):
    """How bncheck builds the layer for each configuration it tries."""
    if spec.ndim != 4:
        raise bncheck.Unsupported("MyBatchNorm2d takes 4-d input (N, C, H, W) only")
    return MyBatchNorm2d(spec.num_features, eps=spec.eps, momentum=spec.momentum, affine=spec.affine,
                         track_running_stats=spec.track_running_stats, device=spec.device, dtype=spec.dtype)


@bncheck.implementation("my-bn-relu", epilogue="relu")
def build_relu(spec):
    """The fused BatchNorm + ReLU: checked against relu(bn(x)) with torch's gradient semantics."""
    if spec.ndim != 4:
        raise bncheck.Unsupported("MyBatchNormReLU2d takes 4-d input (N, C, H, W) only")
    return MyBatchNormReLU2d(spec.num_features, eps=spec.eps, momentum=spec.momentum, affine=spec.affine,
                             track_running_stats=spec.track_running_stats, device=spec.device, dtype=spec.dtype)


def test_output_shape():
    assert MyBatchNorm2d(3)(torch.randn(2, 3, 4, 4)).shape == (2, 3, 4, 4)


def test_conforms_to_torch():
    """Every property bncheck checks (outputs, running statistics, modes, gradients, dtypes, errors, ...)."""
    bncheck.assert_conforms(build, profile="quick")


def test_running_statistics(bncheck):
    """The fixture's ``check`` returns the typed result, for assertions of your own."""
    result = bncheck.check(build, properties=["running-stats"], profile="quick")
    assert result.verdict == "clean", [f.line() for f in result.findings]
    assert result.cases > 0

"""torch's own BatchNorm: the reference implementations. They must come out clean."""
import torch
import torch.nn.functional as F

import bncheck
from bncheck.oracle import OracleBatchNorm


def _module_for(cls, ranks):
    def build(spec: bncheck.Spec) -> torch.nn.Module:
        if spec.ndim not in ranks:
            raise bncheck.Unsupported(f"{cls.__name__} takes rank {' or '.join(map(str, ranks))} input")
        return cls(**spec.torch_kwargs())
    return build


bncheck.implementation("torch-bn1d")(_module_for(torch.nn.BatchNorm1d, (2, 3)))
bncheck.implementation("torch-bn2d")(_module_for(torch.nn.BatchNorm2d, (4,)))
bncheck.implementation("torch-bn3d")(_module_for(torch.nn.BatchNorm3d, (5,)))


class FunctionalBatchNorm(torch.nn.Module):
    """``F.batch_norm`` driven with the module's own parameters and buffers, for any rank."""

    def __init__(self, spec: bncheck.Spec):
        super().__init__()
        kw = dict(device=spec.device, dtype=spec.dtype)
        self.eps, self.momentum, self.track = spec.eps, spec.momentum, spec.track_running_stats
        if spec.affine:
            self.weight = torch.nn.Parameter(torch.ones(spec.num_features, **kw))
            self.bias = torch.nn.Parameter(torch.zeros(spec.num_features, **kw))
        else:
            self.weight = self.bias = None
        if self.track:
            self.register_buffer("running_mean", torch.zeros(spec.num_features, **kw))
            self.register_buffer("running_var", torch.ones(spec.num_features, **kw))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=spec.device))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def forward(self, x):
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        use_batch = self.training or not self.track
        return F.batch_norm(x, self.running_mean if self.track else None, self.running_var if self.track else None,
                            self.weight, self.bias, use_batch, factor, self.eps)


@bncheck.implementation("torch-functional")
def functional(spec: bncheck.Spec) -> torch.nn.Module:
    return FunctionalBatchNorm(spec)


@bncheck.implementation("bncheck-oracle")
def oracle(spec: bncheck.Spec) -> torch.nn.Module:
    """The float64 oracle itself as a module (output cast to the input dtype): the harness checking itself."""
    return OracleBatchNorm(**spec.torch_kwargs())

"""Every generated scenario is valid: constructible, materialisable, accepted by torch (or rejected exactly
where the semantics say torch rejects it)."""
import torch
from hypothesis import HealthCheck, given, settings

from bncheck.properties import PROPERTIES
from bncheck.scenario import materialize


def _check(sc):
    data = materialize(sc)
    assert len(data.xs) == len(sc.steps) == len(data.dys)
    for x in data.xs:
        assert tuple(x.shape) == sc.shape and x.dtype == sc.torch_dtype
        if sc.layout == "channels_last":
            fmt = torch.channels_last if sc.rank == 4 else torch.channels_last_3d
            assert x.is_contiguous(memory_format=fmt)
        if sc.layout == "strided" and x.numel() > 1 and x.shape[-1] > 1:
            assert not x.is_contiguous()
    assert data.running_var.min() > 0
    spec = sc.spec()
    m = spec.torch_class(**spec.torch_kwargs())
    for k, step in enumerate(sc.steps):
        m.train(step.train)
        n = sc.reduction_size
        batch_stats = step.train or not sc.track_running_stats
        try:
            m(data.xs[k])
        except ValueError:
            assert batch_stats and (n == 1 or sc.eps <= 0)
        else:
            assert not (batch_stats and n == 1)


for _prop in PROPERTIES:
    def _make(prop):
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(sc=prop.strategy)
        def test(sc):
            _check(sc)
        test.__name__ = f"test_strategy_valid_{prop.name.replace('-', '_')}"
        return test
    globals()[f"test_strategy_valid_{_prop.name.replace('-', '_')}"] = _make(_prop)

"""Every generated scenario is valid: constructible, materialisable, accepted by torch (or rejected exactly
where the semantics say torch rejects it)."""
import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings

from bncheck.execute import _fresh
from bncheck.properties import ALL_LAYOUTS, BY_NAME, PROPERTIES
from bncheck.scenario import LAYOUTS, Scenario, materialize


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
        if sc.layout in ("permuted", "channel-slice", "batch-transposed") and x.numel() > 1:
            assert not x.is_contiguous() or max(_sizes_above_1(x)) <= 1
        copy = _fresh(x)        # what the implementation is called with: same sizes and strides
        assert copy.shape == x.shape and copy.stride() == x.stride() and torch.equal(copy, x)
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


def _sizes_above_1(x):
    return [s > 1 for s in x.shape] + [0]


def _views(x):
    """Which of the reshapes from-scratch BatchNorms use work on ``x`` without a copy."""
    n, c = x.shape[:2]
    out = {}
    for name, shape in (("N,C,-1", (n, c, -1)), ("N*C,-1", (n * c, -1))):
        try:
            x.view(shape)
            out[name] = True
        except RuntimeError:
            out[name] = False
    return out


@pytest.mark.parametrize("rank", [4, 5])
def test_layouts_include_strides_view_cannot_merge(rank):
    """strided and channels_last inputs still go through ``x.view(N, C, -1)``, strided ones ``x.view(N*C, -1)`` too;
    the permuted, channel-slice and batch-transposed views are valid BatchNorm input where these views fail."""
    assert set(ALL_LAYOUTS) == set(LAYOUTS)
    shape = (3, 2) + (4, 5, 6)[:rank - 2]
    works = {}
    for layout in LAYOUTS:
        sc = Scenario(shape=shape, layout=layout, dtype="float64", param_dtype="float64", seed=1)
        x = materialize(sc).xs[0]
        plain = materialize(sc.with_(layout="contiguous")).xs[0]
        assert torch.equal(x, plain) and x.shape == shape
        works[layout] = _views(x)
        copy = _fresh(x)
        assert copy.stride() == x.stride() and _views(copy) == works[layout]
        bn = sc.spec().torch_class(**sc.spec().torch_kwargs())
        torch.testing.assert_close(bn(x), bn(plain))
    assert works["contiguous"] == works["strided"] == {"N,C,-1": True, "N*C,-1": True}
    assert works["channels_last"] == {"N,C,-1": True, "N*C,-1": False}
    assert works["permuted"]["N,C,-1"] is False
    assert works["channel-slice"]["N*C,-1"] is False and works["batch-transposed"]["N*C,-1"] is False


def test_dtypes_layouts_property_draws_every_layout():
    seen = set()

    @seed(0)
    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(sc=BY_NAME["dtypes-layouts"].strategy)
    def draw(sc):
        seen.add(sc.layout)
    draw()
    assert seen == set(LAYOUTS)

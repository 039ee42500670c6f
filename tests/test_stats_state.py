"""``stats-not-buffers`` is decided on the objects: the running statistics read through the state mapping are the
very tensors ``state_dict()`` holds, and ``.to()`` converts them. Where the module keeps them, and under which
attribute names, does not matter: ``nn.Parameter(requires_grad=False)`` statistics and statistics reached through
a property of a non-module handle are state; plain tensor attributes are not."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bncheck import execute
from bncheck.compare import compare
from bncheck.properties import BY_NAME
from bncheck.registry import Implementation
from bncheck.scenario import Scenario, Step, materialize
from bncheck.search import search_property


class _Base(torch.nn.Module):
    def __init__(self, c, eps, momentum):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = torch.nn.Parameter(torch.ones(c))
        self.bias = torch.nn.Parameter(torch.zeros(c))

    def stats(self):
        raise NotImplementedError

    def forward(self, x):
        rm, rv = self.stats()
        return F.batch_norm(x, rm, rv, self.weight, self.bias, self.training, self.momentum, self.eps)


class ParameterStats(_Base):
    """Running statistics as parameters that need no gradient (a meta-learning pattern)."""

    def __init__(self, c, eps, momentum):
        super().__init__(c, eps, momentum)
        self.running_mean = torch.nn.Parameter(torch.zeros(c), requires_grad=False)
        self.running_var = torch.nn.Parameter(torch.ones(c), requires_grad=False)

    def stats(self):
        return self.running_mean, self.running_var


class Handle:
    """A non-module handle on a tensor its owner keeps in a buffer (as a framework's variable object does)."""

    def __init__(self, owner, name):
        self._owner, self._name = owner, name

    @property
    def value(self):
        return self._owner._buffers[self._name]


class PropertyPathStats(_Base):
    """Running statistics reached as ``moving_mean.value``: the handle is a plain attribute, its tensor a buffer."""

    def __init__(self, c, eps, momentum):
        super().__init__(c, eps, momentum)
        self.register_buffer("_moving_mean", torch.zeros(c))
        self.register_buffer("_moving_var", torch.ones(c))
        self.moving_mean, self.moving_var = Handle(self, "_moving_mean"), Handle(self, "_moving_var")

    def stats(self):
        return self.moving_mean.value, self.moving_var.value


class NestedStats(_Base):
    """Running statistics in a child module's buffers, reached through a nested path."""

    def __init__(self, c, eps, momentum):
        super().__init__(c, eps, momentum)
        self.stats_holder = torch.nn.Module()
        self.stats_holder.register_buffer("mean", torch.zeros(c))
        self.stats_holder.register_buffer("var", torch.ones(c))

    def stats(self):
        return self.stats_holder.mean, self.stats_holder.var


class PlainStats(_Base):
    """Running statistics as plain tensor attributes: not in state_dict(), not converted by .to()."""

    def __init__(self, c, eps, momentum):
        super().__init__(c, eps, momentum)
        self.running_mean, self.running_var = torch.zeros(c), torch.ones(c)

    def stats(self):
        return self.running_mean, self.running_var


class PlainAliasStats(_Base):
    """Plain attributes holding copies of registered buffers: the names exist in state_dict(), the tensors read
    through the mapping are not the ones state_dict() holds."""

    def __init__(self, c, eps, momentum):
        super().__init__(c, eps, momentum)
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))
        self.stat_mean, self.stat_var = torch.zeros(c), torch.ones(c)

    def stats(self):
        return self.stat_mean, self.stat_var


CASES = {   # class, state mapping, whether the statistics are module state
    "parameter": (ParameterStats, {}, True),
    "property-path": (PropertyPathStats, {"running_mean": "moving_mean.value", "running_var": "moving_var.value"},
                      True),
    "nested": (NestedStats, {"running_mean": "stats_holder.mean", "running_var": "stats_holder.var"}, True),
    "plain": (PlainStats, {}, False),
    "plain-alias": (PlainAliasStats, {"running_mean": "stat_mean", "running_var": "stat_var"}, False),
}


def _impl(case: str) -> Implementation:
    cls, state, _ = CASES[case]

    def build(spec):
        return cls(spec.num_features, spec.eps, 0.1 if spec.momentum is None else spec.momentum).to(spec.dtype)
    return Implementation(f"state-{case}", build, state=state)


@pytest.mark.parametrize("case", sorted(CASES))
def test_stats_not_buffers_is_decided_by_identity_and_by_to(case):
    sc = Scenario(shape=(5, 3, 4), steps=(Step(True, True), Step(False, False)))
    data = materialize(sc)
    trace = execute.run(_impl(case), sc, data)
    is_state = CASES[case][2]
    assert trace.stats_in_state_dict == {"running_mean": is_state, "running_var": is_state}
    assert trace.stats_follow_to == {"running_mean": is_state, "running_var": is_state}
    cmp = compare(sc, data, trace)
    flagged = [d for d in cmp.discrepancies if d.finding == "stats-not-buffers"]
    assert bool(flagged) is not is_state, [d.detail for d in cmp.discrepancies]
    assert not [d for d in cmp.discrepancies if d.finding != "stats-not-buffers"], cmp.discrepancies
    if flagged:
        assert "not among state_dict()'s tensors" in flagged[0].detail and "left" in flagged[0].detail


@pytest.mark.parametrize("case", ["parameter", "property-path", "plain"])
def test_the_state_property_agrees(case):
    res = search_property(_impl(case), BY_NAME["state"], profile="quick", seed=0)
    assert res.cases > 0
    assert ("stats-not-buffers" in {f.id for f in res.findings}) is not CASES[case][2], res.findings

"""A synchronised BatchNorm that, like ``torch.nn.SyncBatchNorm``, does not synchronise in eval mode: with
``track_running_stats=False`` each rank normalises its shard with that shard's own statistics, so a rank holding
one value per channel raises, as torch's BatchNorm does. That is torch's behaviour, not a crash: the sync check must
find it clean (``reference.torch_raises_at``, ``search.raises_as_torch``)."""
from __future__ import annotations

import textwrap

from bncheck.registry import discover
from bncheck.sync.check import check_sync
from bncheck.sync.ranks import RankFailure
from bncheck.sync.reference import SyncScenario, torch_raises_at
from bncheck.sync.search import raises_as_torch

PLUGIN = '''
import torch.nn.functional as F

import bncheck
from bncheck.sync.syncbn import SyncBatchNorm


class LocalEval(SyncBatchNorm):
    def forward(self, x):
        if not self.training and not self.track_running_stats:     # torch.nn.SyncBatchNorm: no sync in eval
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        return super().forward(x)


@bncheck.sync_implementation("local-eval-syncbn")
def build(spec, group):
    return LocalEval(spec.num_features, eps=spec.eps, momentum=spec.momentum, affine=spec.affine,
                     track_running_stats=spec.track_running_stats, process_group=group, device=spec.device,
                     dtype=spec.dtype)
'''


def test_where_torch_raises_in_an_untracked_eval_step():
    one = dict(shards=(1, 3), track_running_stats=False)
    assert torch_raises_at(SyncScenario(**one, steps=(True, False))) == 2
    assert torch_raises_at(SyncScenario(**one, steps=(True, True))) is None           # training syncs: 4 values
    assert torch_raises_at(SyncScenario(shards=(1, 3), steps=(False,))) is None        # tracked: running stats
    assert torch_raises_at(SyncScenario(shards=(2, 3), spatial=(1,), steps=(False,),
                                        track_running_stats=False)) is None
    sc = SyncScenario(**one, steps=(True, False))
    at = lambda k: RankFailure("crash", f"rank 0: ValueError: Expected more than 1 value (x.py:1) in forward of "
                                        f"step {k}", ranks=(0,), broken=False)
    assert raises_as_torch(sc, at(2)) and not raises_as_torch(sc, at(1))
    assert not raises_as_torch(sc, RankFailure("timeout", "did not finish in forward of step 2"))


def test_an_untracked_eval_that_normalises_each_shard_alone_is_clean(tmp_path):
    path = tmp_path / "local_eval.py"
    path.write_text(textwrap.dedent(PLUGIN))
    impl = discover(plugin_files=[path], entry_points=False).implementations["local-eval-syncbn"]
    r = check_sync(impl, profile="quick", seed=0, world_sizes=(2,))
    assert [f.id for f in r.findings] == [], [(f.id, f.scope, f.evidence[:2]) for f in r.findings]
    assert all(p.cases > 0 for p in r.properties.values()), r.properties

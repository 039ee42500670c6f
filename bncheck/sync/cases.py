"""Distributed cases: the scenario strategy, directed scenarios, the ranks' payloads and one run on the pool.

``scenarios(world_size)`` draws uneven shards (a rank with a single sample, and now and then an empty one), ranks 2
to 5, float32/float64, momentum (None included), eps, affine, track_running_stats, large offsets, rank-shifted
means and several train/eval steps. Every draw shrinks towards the plainest case: no empty shard, tracking on,
offset 0, one step.
"""
from __future__ import annotations

from hypothesis import strategies as st

from .ranks import RankPool
from .reference import SyncScenario, shard

SCENARIO_TIMEOUT_S = 30.0       # one scenario on every rank; a correct plugin needs well under a second


@st.composite
def scenarios(draw, world_size: int) -> SyncScenario:
    lo = 2 if world_size == 1 else 1            # torch needs more than one value per channel over all ranks
    shards = [draw(st.integers(lo, 5), label=f"shard {r}") for r in range(world_size)]
    if world_size > 1 and draw(st.booleans(), label="an empty shard"):
        r = draw(st.integers(0, world_size - 1), label="empty rank")
        shards[r] = 0
        if sum(shards) < 2:                     # still two values per channel over all ranks, whatever the rank
            shards[(r + 1) % world_size] = 2
    spatial_rank = draw(st.sampled_from([0, 1, 2, 3]), label="spatial axes")
    spatial = tuple(draw(st.integers(1, 3)) for _ in range(spatial_rank))
    return SyncScenario(
        shards=tuple(shards), channels=draw(st.integers(1, 4), label="channels"), spatial=spatial,
        dtype=draw(st.sampled_from(["float32", "float64"]), label="dtype"),
        steps=tuple(draw(st.lists(st.booleans(), min_size=1, max_size=3), label="train steps")),
        momentum=draw(st.one_of(st.just(0.1), st.none(), st.sampled_from([0.5, 1.0, 0.01])), label="momentum"),
        eps=draw(st.sampled_from([1e-5, 1e-3, 0.1]), label="eps"), affine=draw(st.booleans(), label="affine"),
        offset=draw(st.sampled_from([0.0, 100.0, 1e4]), label="offset"),
        rank_shift=draw(st.sampled_from([0.0, 1.0, 3.0]), label="rank_shift"),
        seed=draw(st.integers(0, 2 ** 16), label="seed"),
        track_running_stats=draw(st.sampled_from([True, False]), label="track_running_stats"))


def uneven_shards(world_size: int) -> tuple:
    """Distinct local batch sizes with a single-sample rank: where weighting by count matters."""
    return tuple((1, 4, 2, 5, 3, 6)[r % 6] + 6 * (r // 6) for r in range(world_size)) if world_size > 1 else (3,)


def edges(world_size: int) -> list[SyncScenario]:
    """Explicit examples every search tries first: an untracked eval step after training, with a single-sample rank
    (where torch's SyncBatchNorm, which does not synchronise in eval, raises, and whole-batch statistics do not)."""
    return [SyncScenario(shards=uneven_shards(world_size), channels=2, steps=(True, False),
                         track_running_stats=False, seed=2)]


def discriminating(world_size: int, seed: int = 1) -> SyncScenario:
    """An explicit first example per world size: uneven shards incl. one sample, rank means far apart."""
    return SyncScenario(shards=uneven_shards(world_size), channels=2, spatial=(3,), steps=(True, True, False),
                        rank_shift=2.0, seed=seed)


def payloads(sc: SyncScenario, data) -> list[dict]:
    init = {"running_mean": data.running_mean.numpy(), "running_var": data.running_var.numpy()}
    if sc.affine:
        init.update(weight=data.weight.numpy(), bias=data.bias.numpy())
    return [{"spec": sc.spec_kwargs(), "dtype": sc.dtype, "init": init,
             "steps": [{"train": tr, "x": shard(sc, x, r).numpy(), "dy": shard(sc, dy, r).numpy()}
                       for tr, x, dy in zip(sc.steps, data.xs, data.dys)]} for r in range(sc.world_size)]


def run_scenario(pool: RankPool, sc: SyncScenario, data, timeout_s: float = SCENARIO_TIMEOUT_S) -> list:
    """Every rank's results for one scenario (raises ``Declined`` / ``RankFailure``). A pool that a crash broke
    (its processes killed) is started again by ``join``."""
    if pool.world != sc.world_size:
        pool.join(sc.world_size)
    return pool.run(payloads(sc, data), timeout_s)

"""The facets of a distributed scenario: what a sync finding's scope is stated in (``bncheck.scope``).

Each facet reads one property of a ``SyncScenario`` (input rank, dtype, affine, tracking, momentum as a class, world
size, an empty shard, an eval step, a large offset) and gives the same scenario with that property changed to a
plain value, so that ``scope.isolate`` can tell which of them a failure needs. A variant keeps every other choice,
its data included (the seed), and is always a valid scenario: at least two values per channel over all ranks.
"""
from __future__ import annotations

from dataclasses import replace

from ..scope import Facet

LARGE_OFFSET = 100.0          # channel means this many std away from 0 and more: where E[x^2]-E[x]^2 loses digits


def _other_rank(sc):
    """Rank 4 (2 x 2 spatial values), or rank 2 for a rank-4 scenario."""
    return replace(sc, spatial=(2, 2) if sc.rank != 4 else ())


def _other_world_size(sc):
    """Two ranks (the first two shards, the larger one grown to keep two samples), or three for a two-rank
    scenario (a third shard of 2). An empty shard stays empty where there is one among the first two."""
    if sc.world_size == 2:
        return replace(sc, shards=sc.shards + (2,))
    shards = list((sc.shards + (2,))[:2])
    if sum(shards) < 2:
        big = shards.index(max(shards))
        shards[big] = 2 - sum(shards) + shards[big]
    return replace(sc, shards=tuple(shards))


def _no_empty_shard(sc):
    if 0 not in sc.shards:
        return None
    return replace(sc, shards=tuple(n or 1 for n in sc.shards))


def _momentum_class(m) -> str:
    return "None" if m is None else "a number"


def _show(name: str, fmt=str):
    return lambda values: f"{name} " + " or ".join(fmt(v) for v in values)


def _eq(name: str):
    return lambda values: f"{name}=" + " or ".join(str(v) for v in values)


def _flag(yes: str, no: str):
    return lambda values: " or ".join(yes if v else no for v in values)


FACETS = {f.name: f for f in [
    Facet("rank", lambda s: s.rank, _other_rank, _show("rank")),
    Facet("dtype", lambda s: s.dtype,
          lambda s: replace(s, dtype="float64" if s.dtype == "float32" else "float32"), _show("dtype")),
    Facet("affine", lambda s: s.affine, lambda s: replace(s, affine=not s.affine), _eq("affine")),
    Facet("track_running_stats", lambda s: s.track_running_stats,
          lambda s: replace(s, track_running_stats=not s.track_running_stats), _eq("track_running_stats")),
    Facet("momentum", lambda s: _momentum_class(s.momentum),
          lambda s: replace(s, momentum=0.1) if s.momentum is None else None,
          _eq("momentum")),
    Facet("world size", lambda s: s.world_size, _other_world_size, _show("world size")),
    Facet("empty shard", lambda s: 0 in s.shards, _no_empty_shard, _flag("an empty shard", "no empty shard")),
    Facet("eval step", lambda s: not all(s.steps),
          lambda s: replace(s, steps=(True,) * len(s.steps)) if not all(s.steps) else None,
          _flag("an eval step", "training steps only")),
    Facet("large offset", lambda s: s.offset >= LARGE_OFFSET,
          lambda s: replace(s, offset=0.0) if s.offset >= LARGE_OFFSET else None,
          _flag(f"a large offset (|mean| >= {LARGE_OFFSET:g})", "no large offset")),
]}

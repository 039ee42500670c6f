"""Hypothesis strategies for scenarios. Every drawn scenario is valid input for torch's BatchNorm."""
from __future__ import annotations

from hypothesis import strategies as st

from .scenario import LAYOUT_RANKS, Scenario, Step

FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")
MIXED = (("float16", "float32"), ("bfloat16", "float32"))


def dtype_pairs(dtypes=FLOAT_DTYPES, mixed=True):
    pairs = [(d, d) for d in dtypes] + ([p for p in MIXED if p[0] in dtypes] if mixed else [])
    return st.sampled_from(pairs)


@st.composite
def shapes(draw, ranks=(2, 3, 4, 5), max_n=8, max_c=5, max_spatial=5, min_n=0, min_reduction=1, max_numel=4096):
    rank = draw(st.sampled_from(ranks))
    n = draw(st.integers(min_n, max_n))
    c = draw(st.integers(1, max_c))
    spatial = tuple(draw(st.integers(1, max_spatial)) for _ in range(rank - 2))
    size = n
    for s in spatial:
        size *= s
    if size < min_reduction:                    # grow the batch until the reduction is large enough
        per = max(1, size // max(n, 1))
        n = -(-min_reduction // per)
    shape = (n, c) + spatial
    total = 1
    for s in shape:
        total *= s
    if total > max_numel:
        n = max(min_n, max_numel // max(1, total // max(n, 1)))
        shape = (n, c) + spatial
    return shape


def steps(min_steps=1, max_steps=5, train=None, grad=None):
    step = st.builds(Step, train=st.booleans() if train is None else st.just(train),
                     grad=st.booleans() if grad is None else st.just(grad))
    return st.lists(step, min_size=min_steps, max_size=max_steps).map(tuple)


momenta = st.one_of(st.just(0.1), st.none(), st.floats(0.0, 1.0, allow_nan=False).map(lambda m: round(m, 3)))
epsilons = st.sampled_from([1e-5, 1e-3, 1e-1, 1e-8])


@st.composite
def scenarios(draw, *, ranks=(2, 3, 4, 5), dtypes=st.sampled_from([("float32", "float32"), ("float64", "float64")]),
              layouts=("contiguous",), step_seqs=None, momentum=momenta, eps=epsilons, affine=st.booleans(),
              track=st.just(True), distributions=("normal",), offsets=(0.0,), shape_kw=None) -> Scenario:
    # the layout first, then a rank it exists for (channels_last and permuted need rank 4 or 5): each layout is
    # drawn as often as any other, whatever share of the ranks it allows
    layout = draw(st.sampled_from([l for l in layouts if set(ranks) & set(LAYOUT_RANKS.get(l, ranks))]))
    shape = draw(shapes(ranks=tuple(r for r in ranks if r in LAYOUT_RANKS.get(layout, ranks)), **(shape_kw or {})))
    dtype, pdtype = draw(dtypes)
    dist = draw(st.sampled_from(distributions))
    offset = draw(st.sampled_from(offsets)) if dist in ("offset", "constant-channel") else 0.0
    step_seq, m, e = draw(step_seqs if step_seqs is not None else steps()), draw(momentum), draw(eps)
    return Scenario(shape=shape, dtype=dtype, param_dtype=pdtype, layout=layout, steps=step_seq, momentum=m,
                    eps=representable_eps(e, pdtype), affine=draw(affine), track_running_stats=draw(track),
                    distribution=dist, offset=offset, seed=draw(st.integers(0, 2 ** 16)))


def representable_eps(eps: float, param_dtype: str) -> float:
    """``eps``, or 1e-5 where it rounds to 0 in the parameter dtype (1e-8 in float16). There torch itself has no
    single answer: with a zero running variance, torch 2.13's CPU eval gives 0 on a contiguous float16 input and NaN
    on a strided one (``var + eps`` in float16 is 0, and 0 * inf), so no reference is defined."""
    import torch
    return 1e-5 if float(torch.tensor(eps, dtype=getattr(torch, param_dtype))) == 0.0 else eps

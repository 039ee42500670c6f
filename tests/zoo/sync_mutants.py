"""Synchronised BatchNorm mutants: bncheck's SyncBatchNorm (bncheck/sync/syncbn.py) with distributed defects.

Each class names the catalog ids bncheck must report for it (``expect``), exactly. Most override one of the steps
a synchronised BatchNorm gets right or wrong (the ranks' local statistics, merging them, the running variance,
reducing the gradient sums); the last three have a crash in part of the scenarios, one of them with a second
defect behind it that the search must still name.
"""
from __future__ import annotations

import torch

from bncheck.sync.syncbn import SyncBatchNorm


class MeanOfVariances(SyncBatchNorm):
    """Global variance = the (count-weighted) mean of the ranks' variances: the spread of rank means is lost."""
    expect = frozenset({"sync-mean-of-variances"})

    def merge_statistics(self, counts, means, m2s):
        n = counts.sum(0)
        mean = (counts * means).sum(0) / n
        return mean, m2s.sum(0) / n


class UnweightedRanks(SyncBatchNorm):
    """Rank means and second moments averaged with equal weights, whatever each rank's batch size."""
    expect = frozenset({"sync-uneven-batch"})

    def merge_statistics(self, counts, means, m2s):
        live = (counts > 0).to(means.dtype)
        r = live.sum(0)
        local_var = torch.where(counts > 0, m2s / counts.clamp_min(1), torch.zeros_like(m2s))
        mean = (live * means).sum(0) / r
        var = (live * (local_var + (means - mean) ** 2)).sum(0) / r
        return mean, var


class LocalCount(SyncBatchNorm):
    """running_var's n / (n - 1) correction uses this rank's count, not the global one."""
    expect = frozenset({"sync-local-count"})

    def unbias_count(self, n_global, n_local):
        return n_local


class GradNotReduced(SyncBatchNorm):
    """Backward uses this rank's gradient sums only (no all_reduce), still divided by the global count."""
    expect = frozenset({"sync-grad-not-reduced"})

    def reduce_grad_sums(self, sums, n_global, n_local):
        return sums, n_global


class UnbiasedMerge(SyncBatchNorm):
    """The merged variance divides by N - 1 (normalises with the unbiased variance): not a sync knob."""
    expect = frozenset({"sync-mismatch"})

    def merge_statistics(self, counts, means, m2s):
        mean, var = super().merge_statistics(counts, means, m2s)
        n = counts.sum(0)
        return mean, var * n / (n - 1)


class OnePassVariance(SyncBatchNorm):
    """All-reduces each rank's sum of x and of x^2 and takes var = E[x^2] - E[x]^2 (clamped at 0), in the
    accumulation dtype: as |mean|/std grows the variance keeps fewer digits (none, in float32, at a mean of 1e4)."""
    expect = frozenset({"cancellation"})

    def local_statistics(self, xc):
        return xc.mean(1), (xc * xc).sum(1)        # the second slot carries sum x^2, not the squared deviations

    def merge_statistics(self, counts, means, sums_of_squares):
        n = counts.sum(0)
        mean = (counts * means).sum(0) / n
        return mean, (sums_of_squares.sum(0) / n - mean * mean).clamp_min(0)


class Rank4BiasedRunningVar(SyncBatchNorm, torch.nn.BatchNorm2d):
    """Written as a BatchNorm2d: its input check rejects anything but 4-D input (torch's SyncBatchNorm takes 2-D to
    5-D); and running_var is updated with the biased batch variance."""
    expect = frozenset({"rank-unsupported", "biased-running-var"})

    def forward(self, x):
        self._check_input_dim(x)                   # torch.nn.BatchNorm2d's: "expected 4D input (got 3D input)"
        return super().forward(x)

    def running_variance(self, var, n_global, n_local):
        return var


class CastsRunningStats(SyncBatchNorm):
    """Casts its running statistics to the input's dtype at every forward (for mixed precision); without
    track_running_stats they are None, and every forward raises AttributeError on every rank."""
    expect = frozenset({"crash"})

    def forward(self, x):
        self.running_mean.data = self.running_mean.data.to(x.dtype)
        self.running_var.data = self.running_var.data.to(x.dtype)
        return super().forward(x)


SYNC_MUTANTS = {
    "mean-of-variances": MeanOfVariances,
    "unweighted-ranks": UnweightedRanks,
    "local-count": LocalCount,
    "grad-not-reduced": GradNotReduced,
    "unbiased-merge": UnbiasedMerge,
    "one-pass-variance": OnePassVariance,
    "rank4-biased-running-var": Rank4BiasedRunningVar,
    "casts-running-stats": CastsRunningStats,
}

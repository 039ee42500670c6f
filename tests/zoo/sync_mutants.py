"""Synchronised BatchNorm mutants: bncheck's SyncBatchNorm (bncheck/sync/syncbn.py) with exactly one distributed defect.

Each class names the catalog id bncheck must report for it (``finding``). They override one of the three steps a
synchronised BatchNorm gets right or wrong: merging the ranks' statistics, the running-variance count, reducing the
gradient sums.
"""
from __future__ import annotations

import torch

from bncheck.sync.syncbn import SyncBatchNorm


class MeanOfVariances(SyncBatchNorm):
    """Global variance = the (count-weighted) mean of the ranks' variances: the spread of rank means is lost."""
    finding = "sync-mean-of-variances"

    def merge_statistics(self, counts, means, m2s):
        n = counts.sum(0)
        mean = (counts * means).sum(0) / n
        return mean, m2s.sum(0) / n


class UnweightedRanks(SyncBatchNorm):
    """Rank means and second moments averaged with equal weights, whatever each rank's batch size."""
    finding = "sync-uneven-batch"

    def merge_statistics(self, counts, means, m2s):
        live = (counts > 0).to(means.dtype)
        r = live.sum(0)
        local_var = torch.where(counts > 0, m2s / counts.clamp_min(1), torch.zeros_like(m2s))
        mean = (live * means).sum(0) / r
        var = (live * (local_var + (means - mean) ** 2)).sum(0) / r
        return mean, var


class LocalCount(SyncBatchNorm):
    """running_var's n / (n - 1) correction uses this rank's count, not the global one."""
    finding = "sync-local-count"

    def unbias_count(self, n_global, n_local):
        return n_local


class GradNotReduced(SyncBatchNorm):
    """Backward uses this rank's gradient sums only (no all_reduce), still divided by the global count."""
    finding = "sync-grad-not-reduced"

    def reduce_grad_sums(self, sums, n_global, n_local):
        return sums, n_global


class UnbiasedMerge(SyncBatchNorm):
    """The merged variance divides by N - 1 (normalises with the unbiased variance): not a sync knob."""
    finding = "sync-mismatch"

    def merge_statistics(self, counts, means, m2s):
        mean, var = super().merge_statistics(counts, means, m2s)
        n = counts.sum(0)
        return mean, var * n / (n - 1)


SYNC_MUTANTS = {
    "mean-of-variances": MeanOfVariances,
    "unweighted-ranks": UnweightedRanks,
    "local-count": LocalCount,
    "grad-not-reduced": GradNotReduced,
    "unbiased-merge": UnbiasedMerge,
}

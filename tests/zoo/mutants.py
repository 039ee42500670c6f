"""Mutants of ``ScratchBN``: each has exactly one defect, of a kind found in real from-scratch BatchNorm code.

Every mutant overrides one method of ``ScratchBN`` (or, once, of a correct variant) and names, in ``finding``, the
catalog id that a perfect diagnosis reports for it. The first line of its docstring states the defect. ``tests/test_zoo_sanity.py`` shows, against torch,
that each defect shows where it should and nowhere else.
"""
from __future__ import annotations

import math

import torch

from .reference import (LOW_PRECISION, ScratchBN, VarMeanBN, bcast_shape, output_memory_format,
                        values_per_channel)


# -- running statistics: momentum -------------------------------------------------------------------------------

class InvertedMomentum(ScratchBN):
    """Running update follows the Keras convention new = m*old + (1-m)*batch with torch's m."""
    finding = "inverted-momentum"

    def _blend(self, old, new, factor):
        return factor * old + (1 - factor) * new


class MomentumIgnored(ScratchBN):
    """The momentum argument is ignored; the running update always uses 0.1.

    This includes momentum=None, which also becomes 0.1.
    """
    finding = "momentum-ignored"

    def _momentum_factor(self):
        return 0.1


class MomentumNoneAsDefault(ScratchBN):
    """momentum=None falls back to 0.1 instead of a cumulative moving average."""
    finding = "momentum-none"

    def _momentum_factor(self):
        return 0.1 if self.momentum is None else self.momentum


class MomentumNoneLastBatch(ScratchBN):
    """momentum=None replaces the running statistics with the last batch's (factor 1), not a cumulative average."""
    finding = "momentum-none"

    def _momentum_factor(self):
        return 1.0 if self.momentum is None else self.momentum


class MomentumNoneCrash(ScratchBN):
    """momentum=None is used as a number, so the first training step raises TypeError."""
    finding = "momentum-none"

    def _momentum_factor(self):
        return self.momentum


# -- running statistics: what is stored, and when ---------------------------------------------------------------

class BiasedRunningVar(ScratchBN):
    """running_var is updated with the biased batch variance (no n/(n-1) correction)."""
    finding = "biased-running-var"

    def _unbiased(self, var, n):
        return var


class StatsUpdatedInEval(ScratchBN):
    """Running statistics (and num_batches_tracked) keep adapting in eval mode, after the output is computed.

    The eval output itself is right: it is normalised with the running statistics as they were before the call.
    """
    finding = "stats-updated-in-eval"

    def forward(self, x):
        y = super().forward(x)
        if not self.training and self.track_running_stats:     # "keep the estimates fresh at test time"
            self._count_batch()
            self._update_running(*self._batch_stats(x, x.to(self._compute_dtype(x))), values_per_channel(x))
        return y


class StatsNotUpdated(ScratchBN):
    """Running statistics and num_batches_tracked never change in training: left frozen as for fine-tuning."""
    finding = "stats-not-updated"
    freeze_running_stats = True

    def _updates_running(self, training):
        return training and self.track_running_stats and not self.freeze_running_stats


class StatsNotUpdatedCounted(ScratchBN):
    """Running statistics never change in training, although num_batches_tracked still counts the batches."""
    finding = "stats-not-updated"

    def _update_running(self, mean, var, n):
        pass


class RunningStatsHoldGraph(ScratchBN):
    """The running update runs with autograd on, so the buffers carry grad_fn history."""
    finding = "running-stats-hold-graph"

    def _update_running(self, mean, var, n):
        if n == 0:
            return
        factor = self._momentum_factor()
        self.running_mean = self._blend(self.running_mean, self._channel(mean), factor).to(self.running_mean.dtype)
        self.running_var = self._blend(self.running_var, self._unbiased(self._channel(var), n),
                                       factor).to(self.running_var.dtype)


class StatsNotBuffers(ScratchBN):
    """Running statistics are plain tensor attributes, so state_dict() and .to() do not see them."""
    finding = "stats-not-buffers"

    def _init_running_stats(self, num_features, factory):
        self.running_mean = torch.zeros(num_features, **factory)
        self.running_var = torch.ones(num_features, **factory)
        self.num_batches_tracked = torch.tensor(0, dtype=torch.long, device=factory["device"])


class StateShapeDrift(ScratchBN):
    """The running update assigns keepdim-shaped statistics, so the buffers become (1, C, 1, ...) after a step."""
    finding = "state-shape-drift"

    def _update_running(self, mean, var, n):
        if n == 0:
            return
        with torch.no_grad():
            factor = self._momentum_factor()
            self.running_mean = self._blend(self.running_mean.reshape(mean.shape), mean,
                                            factor).to(self.running_mean.dtype)
            self.running_var = self._blend(self.running_var.reshape(var.shape), self._unbiased(var, n),
                                           factor).to(self.running_var.dtype)


class NanAfterEmptyBatch(ScratchBN):
    """An empty batch is not skipped, so its NaN mean/variance poison the running statistics."""
    finding = "nan-inf"

    def _update_running(self, mean, var, n):
        with torch.no_grad():
            factor = self._momentum_factor()
            self.running_mean.copy_(self._blend(self.running_mean, self._channel(mean), factor))
            self.running_var.copy_(self._blend(self.running_var, self._unbiased(self._channel(var), n), factor))


# -- which statistics normalise the output ----------------------------------------------------------------------

class UnbiasedNormalization(ScratchBN):
    """The output is normalised with the unbiased batch variance (torch.var's default correction)."""
    finding = "unbiased-normalization"

    def _norm_stats(self, x, training, mean, var):
        if self._use_batch_stats(training):
            n = values_per_channel(x)
            return mean, var * (n / max(n - 1, 1))
        return super()._norm_stats(x, training, mean, var)


class EvalUsesBatchStats(ScratchBN):
    """Eval mode normalises with the batch statistics instead of the running estimates."""
    finding = "eval-uses-batch-stats"

    def _use_batch_stats(self, training):
        return True


class TrainUsesRunningStats(ScratchBN):
    """Training updates the running statistics, then normalises with them instead of the batch statistics."""
    finding = "train-uses-running-stats"

    def _use_batch_stats(self, training):
        return not self.track_running_stats


class ModeFromGradMode(ScratchBN):
    """Train/eval is decided by torch.is_grad_enabled() instead of module.training."""
    finding = "mode-from-grad-mode"

    def _training_mode(self):
        return torch.is_grad_enabled()


class EvalModeIgnored(ScratchBN):
    """Always trains (batch statistics and a running update), whatever .eval() says."""
    finding = "eval-mode-ignored"

    def _training_mode(self):
        return True


class NoTrackEvalUsesRunning(ScratchBN):
    """With track_running_stats=False, eval normalises with fixed mean 0 / variance 1 instead of batch statistics."""
    finding = "no-track-eval-uses-running"

    def _norm_stats(self, x, training, mean, var):
        if not training and not self.track_running_stats:
            shape = bcast_shape(x)
            dtype = self._compute_dtype(x)
            return (torch.zeros(shape, dtype=dtype, device=x.device),
                    torch.ones(shape, dtype=dtype, device=x.device))
        return super()._norm_stats(x, training, mean, var)


class BatchOnlyReduction(ScratchBN):
    """Statistics are taken over the batch axis only (one per channel and position), not over N and space.

    The running update averages the per-position statistics (variance corrected by N/(N-1)) over positions to fit
    the (C,) buffers; for rank-2 input there is one position and the result is correct.
    """
    finding = "wrong-reduction-axes"

    def _reduce_dims(self, x):
        return (0,)


# -- the normalisation formula ----------------------------------------------------------------------------------

class EpsOutsideSqrt(ScratchBN):
    """Normalises by sqrt(var) + eps instead of sqrt(var + eps)."""
    finding = "eps-outside-sqrt"

    def _normalize(self, xc, mean, var):
        return (xc - mean) / (torch.sqrt(var) + self.eps)


class EpsHardcoded(ScratchBN):
    """Uses a hard-coded eps of 1e-3 (the Keras default) whatever eps was passed."""
    finding = "eps-ignored"

    def _normalize(self, xc, mean, var):
        return (xc - mean) / torch.sqrt(var + 1e-3)


class EpsDropped(ScratchBN):
    """Leaves eps out entirely: (x - mean) / sqrt(var)."""
    finding = "eps-ignored"

    def _normalize(self, xc, mean, var):
        return (xc - mean) / torch.sqrt(var)


class AffineSwapped(ScratchBN):
    """weight and bias are swapped: y = x_hat * bias + weight."""
    finding = "affine-wrong"

    def _affine(self, y):
        if not self.affine:
            return y
        shape = bcast_shape(y)
        return y * self.bias.to(y.dtype).reshape(shape) + self.weight.to(y.dtype).reshape(shape)


class AffineOnePlusWeight(ScratchBN):
    """Scales by (1 + weight), a zero-centred-gamma convention, although weight is initialised to ones."""
    finding = "affine-wrong"

    def _affine(self, y):
        if not self.affine:
            return y
        shape = bcast_shape(y)
        return y * (1 + self.weight.to(y.dtype).reshape(shape)) + self.bias.to(y.dtype).reshape(shape)


# -- numerics ---------------------------------------------------------------------------------------------------

class Cancellation(ScratchBN):
    """Variance by E[x^2] - E[x]^2 in the compute dtype, which cancels catastrophically when |mean| >> std."""
    finding = "cancellation"

    def _batch_stats(self, x, xc):
        dims = self._reduce_dims(x)
        mean = xc.mean(dims, keepdim=True)
        var = xc.square().mean(dims, keepdim=True) - mean.square()
        return mean, var


def sequential_sum(xs: torch.Tensor) -> torch.Tensor:
    """Sum ``xs`` of shape (C, N, S) over N then S with an accumulator of ``xs.dtype``, one addition at a time."""
    acc = xs.new_zeros(xs.shape[0], xs.shape[2])
    for i in range(xs.shape[1]):
        acc = acc + xs[:, i]
    total = xs.new_zeros(xs.shape[0])
    for j in range(xs.shape[2]):
        total = total + acc[:, j]
    return total


class LowPrecisionAccumulation(ScratchBN):
    """For float16/bfloat16 input, mean and variance sums are accumulated sample by sample in the input dtype."""
    finding = "low-precision-accumulation"

    def _batch_stats(self, x, xc):
        if x.dtype not in LOW_PRECISION:
            return super()._batch_stats(x, xc)
        channels, n = x.shape[1], values_per_channel(x)
        xs = x.transpose(0, 1).reshape(channels, x.shape[0], math.prod(x.shape[2:]))
        mean = sequential_sum(xs) / n
        centered = xs - mean.reshape(channels, 1, 1)
        var = sequential_sum(centered * centered) / n
        shape = bcast_shape(x)
        return mean.to(xc.dtype).reshape(shape), var.to(xc.dtype).reshape(shape)


class DtypePromotion(ScratchBN):
    """Returns the float32 compute result for float16/bfloat16 input instead of casting back."""
    finding = "dtype-promotion"

    def _finish(self, y, x):
        return y.contiguous(memory_format=output_memory_format(x))


class NanGradConstantChannel(VarMeanBN):
    """Normalises by sqrt(std**2 + eps) with std = sqrt(var): a constant channel gets NaN input gradients.

    The statistics come from ``torch.var_mean`` (as in the correct ``VarMeanBN``), whose variance of a constant
    channel is exactly zero, so the derivative of ``sqrt`` at zero (inf) meets a zero upstream gradient.
    """
    finding = "nan-inf"

    def _normalize(self, xc, mean, var):
        std = torch.sqrt(var)
        return (xc - mean) / torch.sqrt(std * std + self.eps)


# -- gradients --------------------------------------------------------------------------------------------------

class BatchStatsDetached(ScratchBN):
    """Batch mean and variance are detached, so the input gradient treats them as constants."""
    finding = "batch-stats-detached"

    def _batch_stats(self, x, xc):
        mean, var = super()._batch_stats(x, xc)
        return mean.detach(), var.detach()


class NoGradToAffine(ScratchBN):
    """weight and bias are applied detached, so they never receive gradients."""
    finding = "no-grad-to-affine"

    def _affine(self, y):
        if not self.affine:
            return y
        shape = bcast_shape(y)
        return y * self.weight.detach().to(y.dtype).reshape(shape) + self.bias.detach().to(y.dtype).reshape(shape)


# -- inputs and robustness --------------------------------------------------------------------------------------

class InputMutated(ScratchBN):
    """When the input does not require grad, the result is written into the input tensor to save memory."""
    finding = "input-mutated"

    def _finish(self, y, x):
        out = super()._finish(y, x)
        if not x.requires_grad:
            return x.copy_(out)
        return out


class NonContiguousCrash(ScratchBN):
    """Reduces per (sample, channel) plane through x.view(N * C, H * W), which fails on channels_last input."""
    finding = "non-contiguous-crash"

    def _batch_stats(self, x, xc):
        batch, channels = x.shape[:2]
        n, plane = values_per_channel(x), math.prod(x.shape[2:])
        mean = xc.view(batch * channels, plane).sum(1).view(batch, channels).sum(0) / n
        centered = xc - mean.reshape(bcast_shape(x))
        var = centered.view(batch * channels, plane).square().sum(1).view(batch, channels).sum(0) / n
        shape = bcast_shape(x)
        return mean.reshape(shape), var.reshape(shape)


class RankUnsupported(ScratchBN):
    """Rejects 5D input, which BatchNorm3d accepts."""
    finding = "rank-unsupported"

    def _check_input(self, x):
        if x.dim() not in (2, 3, 4):
            raise ValueError(f"expected 2D, 3D or 4D input (got {x.dim()}D input)")


class Rank3ReshapeScrambled(ScratchBN):
    """For 3D input, statistics come from x.reshape(-1, C) instead of x.transpose(1, 2).reshape(-1, C).

    The reshape mixes the channel and length axes, so each "channel" is a mixture of several; ranks 2, 4 and 5 (and
    3D input of length 1) are right.
    """
    finding = "rank-wrong-results"

    def _batch_stats(self, x, xc):
        if x.dim() != 3:
            return super()._batch_stats(x, xc)
        flat = xc.reshape(-1, xc.shape[1])
        mean = flat.mean(0)
        var = (flat - mean).square().mean(0)
        return mean.reshape(bcast_shape(x)), var.reshape(bcast_shape(x))


class MissingError(ScratchBN):
    """Does not raise for one value per channel in training (normalises it to zero instead)."""
    finding = "missing-error"

    def _check_batch_size(self, x):
        pass


class WrongErrorType(ScratchBN):
    """Rejects one value per channel in training, as torch does, but with a RuntimeError instead of a ValueError."""
    finding = "error-type"

    def _check_batch_size(self, x):
        try:
            super()._check_batch_size(x)
        except ValueError as e:
            raise RuntimeError(str(e)) from None


class AffineFalseCrash(ScratchBN):
    """Applies weight and bias unconditionally, so affine=False raises AttributeError."""
    finding = "crash"

    def _affine(self, y):
        shape = bcast_shape(y)
        return y * self.weight.to(y.dtype).reshape(shape) + self.bias.to(y.dtype).reshape(shape)


class FlattenViewCrash(ScratchBN):
    """Flattens the spatial axes with x.view(N, C, -1), which fails when they cannot be merged (permuted strides).

    Contiguous, channels_last and last-axis-strided inputs all merge, so only a view whose spatial axes are stored
    out of order (or a half input converted with its strides kept) shows it. The size is spelled out instead of -1
    so that a zero-size batch, which -1 cannot resolve, still runs.
    """
    finding = "non-contiguous-crash"

    def _batch_stats(self, x, xc):
        flat = xc.view(xc.shape[0], xc.shape[1], math.prod(xc.shape[2:]))
        mean = flat.mean((0, 2), keepdim=True)
        var = (flat - mean).square().mean((0, 2), keepdim=True)
        shape = bcast_shape(x)
        return mean.reshape(shape), var.reshape(shape)


class StatsUpdatedBeforeEvalOutput(ScratchBN):
    """In eval mode the running statistics are first updated from the batch, then used to normalise it.

    Two steps of one defect ("adapt to the test batch, then normalise"): the statistics change in eval, and the eval
    output differs from torch's because it already uses the changed statistics.
    """
    finding = "stats-updated-in-eval"

    def forward(self, x):
        if not self.training and self.track_running_stats:
            self._count_batch()
            self._update_running(*self._batch_stats(x, x.to(self._compute_dtype(x))), values_per_channel(x))
        return super().forward(x)


# -- semantics seen in real libraries ----------------------------------------------------------------------------

class ZeroDebiasedAverage(ScratchBN):
    """The running statistics are zero-debiased moving averages: training step k weights the batch by m / (1 - (1 - m)^k).

    TensorFlow's ExponentialMovingAverage(zero_debias=True) family: the first training step copies the batch
    statistics. momentum=None (torch's cumulative average) and the ends 0 and 1 are left as torch has them.
    """
    finding = "zero-debiased-average"

    def _momentum_factor(self):
        m = self.momentum
        if m is None or m in (0.0, 1.0):
            return super()._momentum_factor()
        return m / (1 - (1 - m) ** float(self.num_batches_tracked))


class CounterFrozen(ScratchBN):
    """num_batches_tracked never counts; the running statistics are torch's (the cumulative average counts for itself).
    """
    finding = "num-batches-tracked-wrong"

    def _count_batch(self):
        self._updates = getattr(self, "_updates", 0) + 1

    def _momentum_factor(self):
        return 1.0 / self._updates if self.momentum is None else self.momentum


class ReducedPrecision(ScratchBN):
    """A float64 input is computed in float32 and cast back (statistics, output and gradients at float32 precision)."""
    finding = "reduced-precision"

    def _compute_dtype(self, x):
        return torch.float32 if x.dtype in LOW_PRECISION + (torch.float64,) else x.dtype


class AffineFalseCrashMissingError(ScratchBN):
    """Two defects, one behind the other: affine=False raises AttributeError, and one value per channel in training is accepted.

    Every scenario with one value per channel and affine=False crashes first; the missing check shows with affine=True.
    """
    finding = ("crash", "missing-error")

    def _check_batch_size(self, x):
        pass

    def _affine(self, y):
        shape = bcast_shape(y)
        return y * self.weight.to(y.dtype).reshape(shape) + self.bias.to(y.dtype).reshape(shape)


MUTANTS: dict[str, type[ScratchBN]] = {
    "inverted-momentum": InvertedMomentum,
    "momentum-ignored": MomentumIgnored,
    "momentum-none-as-default": MomentumNoneAsDefault,
    "momentum-none-crash": MomentumNoneCrash,
    "momentum-none-last-batch": MomentumNoneLastBatch,
    "biased-running-var": BiasedRunningVar,
    "stats-updated-in-eval": StatsUpdatedInEval,
    "stats-not-updated": StatsNotUpdated,
    "stats-not-updated-counted": StatsNotUpdatedCounted,
    "running-stats-hold-graph": RunningStatsHoldGraph,
    "stats-not-buffers": StatsNotBuffers,
    "state-shape-drift": StateShapeDrift,
    "nan-after-empty-batch": NanAfterEmptyBatch,
    "unbiased-normalization": UnbiasedNormalization,
    "eval-uses-batch-stats": EvalUsesBatchStats,
    "train-uses-running-stats": TrainUsesRunningStats,
    "mode-from-grad-mode": ModeFromGradMode,
    "eval-mode-ignored": EvalModeIgnored,
    "no-track-eval-uses-running": NoTrackEvalUsesRunning,
    "batch-only-reduction": BatchOnlyReduction,
    "eps-outside-sqrt": EpsOutsideSqrt,
    "eps-hardcoded": EpsHardcoded,
    "eps-dropped": EpsDropped,
    "affine-swapped": AffineSwapped,
    "affine-one-plus-weight": AffineOnePlusWeight,
    "cancellation": Cancellation,
    "low-precision-accumulation": LowPrecisionAccumulation,
    "dtype-promotion": DtypePromotion,
    "nan-grad-constant-channel": NanGradConstantChannel,
    "batch-stats-detached": BatchStatsDetached,
    "no-grad-to-affine": NoGradToAffine,
    "input-mutated": InputMutated,
    "non-contiguous-crash": NonContiguousCrash,
    "rank-unsupported": RankUnsupported,
    "rank3-reshape-scrambled": Rank3ReshapeScrambled,
    "missing-error": MissingError,
    "wrong-error-type": WrongErrorType,
    "affine-false-crash": AffineFalseCrash,
    "flatten-view-crash": FlattenViewCrash,
    "stats-updated-before-eval-output": StatsUpdatedBeforeEvalOutput,
    "zero-debiased-average": ZeroDebiasedAverage,
    "counter-frozen": CounterFrozen,
    "reduced-precision": ReducedPrecision,
    "affine-false-crash-missing-error": AffineFalseCrashMissingError,
}


def findings_of(cls) -> frozenset:
    """The catalog ids a mutant must be reported with (one, or several for a mutant with defects behind each other)."""
    return frozenset([cls.finding] if isinstance(cls.finding, str) else cls.finding)

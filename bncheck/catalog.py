"""The finding catalog: every finding bncheck can report, in one place.

Ids are stable: they appear in reports, in the JSON, and in plugins' ``expect`` sets. Adding a class of bug
means adding one entry here (and, where an oracle knob expresses it, naming that knob setting in ``knobs``).

An entry belongs to one plugin kind (``kind``, whose reference ``knobs`` are written for), and may be named by
other kinds too, each with knob settings of its own reference (``elsewhere``): ``cancellation`` is a BatchNorm
oracle knob and also a sync reference knob, because a synchronised BatchNorm can compute its variance by
E[x^2]-E[x]^2 just as well. ``knob_hypotheses(kind)`` gives every entry a kind can name by a knob, with that
kind's settings.
"""
from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Entry:
    id: str
    meaning: str
    kind: str = "batchnorm"            # batchnorm | fusion | sync
    # Oracle knob settings that express this bug: alternatives, each tried as one counterfactual in diagnosis.
    knobs: tuple = ()
    # Other kinds that name this bug with knobs of their own reference: ((kind, knob settings), ...)
    elsewhere: tuple = ()

    @property
    def kinds(self) -> tuple:
        """Every plugin kind whose diagnosis can name this entry by a knob (its own kind first)."""
        return (self.kind,) + tuple(k for k, _ in self.elsewhere)

    def knobs_for(self, kind: str) -> tuple:
        """The knob settings expressing this bug in ``kind``'s reference (empty: none there)."""
        if kind == self.kind:
            return self.knobs
        return next((knobs for k, knobs in self.elsewhere if k == kind), ())


_ENTRIES = [
    Entry("inverted-momentum", "running = m*old + (1-m)*batch (Keras/Flax convention)",
          knobs=({"momentum_direction": "inverted"},)),
    Entry("momentum-ignored", "the momentum argument has no effect (a fixed non-zero factor is used; statistics "
          "that never change are stats-not-updated)",
          knobs=tuple({"momentum_override": m} for m in (0.1, 0.01, 0.9, 0.99, 1.0))),
    Entry("momentum-none", "momentum=None is not handled as a cumulative average (taken as 0.1, as 0, as the last "
          "batch, or crashes)",
          knobs=({"momentum_none": "as-0.1"}, {"momentum_none": "zero"}, {"momentum_none": "last-batch"})),
    Entry("zero-debiased-average", "running statistics are zero-debiased moving averages (TensorFlow's "
          "ExponentialMovingAverage(zero_debias=True)): the first training step copies the batch statistics, step k "
          "weights the batch by m/(1-(1-m)^k)", knobs=({"momentum_debias": True},)),
    Entry("biased-running-var", "running_var is updated with the biased batch variance",
          knobs=({"running_var_unbiased": False},), elsewhere=(("sync", ({"unbias": "none"},)),)),
    Entry("unbiased-normalization", "the output is normalised with the unbiased batch variance",
          knobs=({"norm_var_unbiased": True},)),
    Entry("eps-outside-sqrt", "(x-mean)/(sqrt(var)+eps) instead of (x-mean)/sqrt(var+eps)",
          knobs=({"eps_placement": "outside"},)),
    Entry("eps-ignored", "the eps argument is not used (missing, or a different constant)",
          knobs=tuple({"eps_override": e} for e in (0.0, 1e-3, 1e-5, 1e-8, 1e-12))),
    Entry("eval-uses-batch-stats", "eval mode normalises with batch statistics",
          knobs=({"eval_stats": "batch"},)),
    Entry("train-uses-running-stats", "training normalises with running statistics (before or after updating)",
          knobs=({"train_stats": "running-after"}, {"train_stats": "running-before"})),
    Entry("mode-from-grad-mode", "train/eval follows torch.is_grad_enabled(), not module.training",
          knobs=({"mode_source": "grad"},)),
    Entry("eval-mode-ignored", "always trains (batch statistics, running update), whatever .eval() says",
          knobs=({"mode_source": "always-train"},)),
    Entry("train-mode-ignored", "always evaluates (running statistics, no update), whatever .train() says",
          knobs=({"mode_source": "always-eval"},)),
    Entry("stats-updated-in-eval", "running statistics change in eval mode (after the eval output, or before it "
          "and then used to normalise it)",
          knobs=({"update_in_eval": True}, {"update_in_eval": "before-output"})),
    Entry("stats-not-updated", "running statistics never change in training (whether num_batches_tracked counts "
          "or not)", knobs=({"update_stats": False}, {"update_stats": False, "count_frozen": True})),
    Entry("num-batches-tracked-wrong", "num_batches_tracked never counts, counts by 2, or counts in eval steps too "
          "(the running statistics themselves as torch's)",
          knobs=({"counter": "frozen"}, {"counter": "double"}, {"counter": "eval-too"}),
          elsewhere=(("sync", ({"counter": "frozen"},)),)),
    Entry("no-track-eval-uses-running", "track_running_stats=False but eval does not use batch statistics",
          knobs=({"untracked_eval_stats": "zero-one"},)),
    Entry("affine-wrong", "weight/bias not applied, applied wrongly (1 + weight; a weight constrained positive as "
          "relu(weight) + 1e-6), or swapped",
          knobs=tuple({"affine_mode": a} for a in ("ignored", "swapped", "weight-only", "bias-only", "one-plus-weight",
                                                   "positive-weight"))),
    Entry("wrong-reduction-axes", "statistics are not taken over (N, spatial) per channel",
          knobs=({"reduction": "batch-only"}, {"reduction": "per-sample"}, {"reduction": "fixed-0-2-3"})),
    Entry("stats-broadcast-axis", "(C,)-shaped statistics broadcast against the last axis, not the channel axis",
          knobs=({"stats_broadcast": "last-axis"},)),
    Entry("cancellation", "variance by E[x^2]-E[x]^2: error past a stable algorithm's bound as |mean|/std grows",
          knobs=({"naive_variance": "input"},), elsewhere=(("sync", ({"variance": "one-pass"},)),)),
    Entry("low-precision-accumulation", "reductions accumulate in float16/bfloat16"),
    Entry("reduced-precision", "computes a float64 input in float32 (and casts back): errors at float32's "
          "roundoff, within float32's budget",
          knobs=({"compute_dtype": "float32"},)),
    Entry("batch-stats-detached", "the input gradient treats the batch mean/var as constants",
          knobs=({"detach_stats": "both"}, {"detach_stats": "mean"}, {"detach_stats": "var"})),
    Entry("no-grad-to-affine", "weight/bias get no (or a wrong) gradient",
          knobs=({"detach_affine": True},)),
    Entry("running-stats-hold-graph", "running buffers carry autograd history"),
    Entry("stats-not-buffers", "running stats missing from state_dict() or not moved by .to()"),
    Entry("state-shape-drift", "a running-stat buffer's shape differs from (C,) or changes after a step"),
    Entry("dtype-promotion", "the output dtype differs from the input dtype"),
    Entry("input-mutated", "the input tensor (or an epilogue's residual z) is modified in place (for a fold: the conv "
          "or BatchNorm it was given)"),
    Entry("non-contiguous-crash", "fails on channels_last or other non-contiguous input that torch accepts"),
    Entry("rank-unsupported", "fails (raises, or returns another shape) on an input rank torch accepts"),
    Entry("rank-wrong-results", "wrong values on an input rank torch accepts, where other ranks are right"),
    Entry("output-shape", "the output is not a tensor like the input: another shape or rank, not a tensor (a tuple, "
          "None), complex, or on another device"),
    Entry("layout-not-preserved", "output memory format differs from the input's (channels_last in, contiguous out)"),
    Entry("nan-inf", "NaN/Inf where torch gives finite values"),
    Entry("missing-error", "accepts input torch rejects (e.g. one value per channel in training)"),
    Entry("error-type", "rejects input torch rejects, but raises another exception type (an `except` for torch's "
          "misses it)"),
    # Fused epilogues (a plugin declaring epilogue="relu" | "add_relu": relu(bn(x)) or relu(bn(x) + z))
    Entry("epilogue-mask-source", "the ReLU's gradient mask is taken from the pre-BN input or from bn(x) before "
          "the residual add, not from the output", knobs=({"relu_mask": "input"}, {"relu_mask": "bn"})),
    Entry("epilogue-mask-ignored", "the backward ignores the ReLU's mask (the gradient passes where the output is "
          "0), or recomputes it wrongly at 0 (passes it where the pre-activation is exactly 0)",
          knobs=({"relu_mask": "ignored"}, {"relu_mask": "at-zero"})),
    Entry("relu-before-affine", "the ReLU is applied to the normalised input before weight and bias: "
          "relu(xhat) * weight + bias", knobs=({"relu_at": "before-affine"},)),
    Entry("residual-misplaced", "the residual z is added before the BatchNorm (relu(bn(x + z))) or after the ReLU "
          "(relu(bn(x)) + z)", knobs=({"residual": "before-bn"}, {"residual": "after-relu"})),
    Entry("residual-grad-wrong", "the residual's gradient dz is missing, or not masked by the ReLU",
          knobs=({"dz": "missing"}, {"dz": "unmasked"})),
    Entry("stats-from-residual", "running statistics are computed from x + z, not from x",
          knobs=({"stats_from": "x+z"},)),
    Entry("output-mismatch", "differs from the oracle, cause not identified (closest knob setting shown)"),
    Entry("crash", "raises where torch works"),
    Entry("timeout", "does not return within the time limit where torch works"),
    # Conv-BN folding (knobs: bncheck.folding.fold.FoldKnobs of the float64 fold reference)
    Entry("fold-transposed-axis", "scales the wrong weight axis for a transposed convolution", kind="fusion",
          knobs=({"scale_axis": "dim0"}, {"scale_axis": "flat-rows"})),
    Entry("fold-eps-ignored", "folds without eps (or with a different constant)", kind="fusion",
          knobs=tuple({"eps_override": e} for e in (0.0, 1e-3, 1e-5, 1e-8, 1e-12))),
    Entry("fold-bias-none-crash", "fails when the convolution has no bias", kind="fusion"),
    Entry("fold-groups", "wrong result for grouped or depthwise convolutions", kind="fusion"),
    Entry("fold-wrong-module", "the folded module differs from the conv in type, weight/bias shape, device or "
          "hyperparameters, or has no bias", kind="fusion"),
    Entry("fold-mismatch", "folded module differs from bn(conv(x)) otherwise (evidence: the fold-reference knob "
          "setting it matches, e.g. mean not subtracted, or the closest one)", kind="fusion",
          knobs=({"mean_mode": "ignored"}, {"mean_mode": "added"}, {"conv_bias": "unscaled"},
                 {"conv_bias": "ignored"}, {"beta_mode": "ignored"}, {"beta_mode": "scaled"},
                 {"scale_form": "no-sqrt"}, {"scale_form": "eps-outside"}, {"scale_form": "no-weight"})),
    # Synchronised BatchNorm
    # (knobs of the float64 sync reference, bncheck/sync/reference.py: SyncKnobs)
    Entry("sync-mean-of-variances", "global variance taken as the mean of per-rank variances", kind="sync",
          knobs=({"var_merge": "mean-of-variances"}, {"var_merge": "mean-of-variances", "backward": "autograd"})),
    Entry("sync-uneven-batch", "rank statistics averaged without weighting by local batch size", kind="sync",
          knobs=({"weighting": "unweighted"}, {"weighting": "unweighted", "backward": "autograd"})),
    Entry("sync-local-count", "running_var unbiased with the local count instead of the global one", kind="sync",
          knobs=({"unbias": "local"},)),
    Entry("sync-grad-not-reduced", "backward does not all-reduce the gradient sums", kind="sync",
          knobs=({"grad_sums": "local"}, {"grad_sums": "local-mean"})),
    Entry("sync-mismatch", "differs from single-process BatchNorm on the whole batch, cause not identified",
          kind="sync"),
]

CATALOG: dict[str, Entry] = {e.id: e for e in _ENTRIES}
assert len(CATALOG) == len(_ENTRIES), "duplicate catalog id"


def check_ids(ids, where: str) -> frozenset[str]:
    """Validate a set of finding ids (e.g. a plugin's ``expect``); unknown ids are an error naming ``where``."""
    ids = frozenset(ids)
    unknown = sorted(ids - CATALOG.keys())
    if unknown:
        raise ValueError(f"{where}: unknown finding id(s) {unknown}; known ids: {', '.join(sorted(CATALOG))}")
    return ids


def knob_hypotheses(kind: str = "batchnorm") -> list[Entry]:
    """Catalog entries that a knob setting of ``kind``'s reference expresses, in catalog order; an entry of another
    kind comes as ``kind`` sees it (its ``knobs`` are the settings for ``kind``)."""
    out = []
    for e in _ENTRIES:
        knobs = e.knobs_for(kind)
        if knobs:
            out.append(e if e.kind == kind else replace(e, kind=kind, knobs=knobs, elsewhere=()))
    return out

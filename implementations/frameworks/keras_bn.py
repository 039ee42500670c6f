"""Keras 3 ``keras.layers.BatchNormalization`` on the torch backend, ported from a torch BatchNorm as a careful
user would: ``axis=1`` (channels first), ``momentum = 1 - m`` (Keras weights the *old* value), ``epsilon = eps``,
``center = scale = affine``, ``training`` from ``module.training``, the layer built for the input rank, its
variables in the parameter dtype.

With the torch backend a Keras layer is a ``torch.nn.Module`` whose variables hold ``torch.nn.Parameter`` values
(``keras/src/backend/torch/core.py``, ``Variable._initialize``); the moving statistics are non-trainable
Parameters, reached as ``<variable>.value``.

Expected differences from torch (keras 3.15, ``keras/src/...``; each checked in the installed source):
- ``biased-running-var``: ``layers/normalization/batch_normalization.py:385-391`` updates ``moving_variance``
  with the variance from ``ops.moments`` (line 436), the biased (divide by n) batch variance; torch updates
  ``running_var`` with the unbiased one.
- ``cancellation``: ``backend/torch/nn.py:976-982`` (``moments``) computes the variance as
  ``E[x^2] - E[x]^2`` ("faster but less numerically stable", its own comment), so channels whose |mean| is large
  against their std lose precision.
- ``dtype-promotion``: a float16/bfloat16 input to a layer with float32 variables (torch's mixed precision) is
  cast to the layer's compute dtype by ``Layer.__call__`` (``layers/layer.py:882-900``, ``convert_input``) and
  the output is returned in the compute dtype (``batch_normalization.py:405``), float32; torch returns the
  input dtype.
- ``missing-error``: Keras does not check the batch: one value per channel in training
  (``batch_normalization.py:363-364`` goes straight to ``_moments``) gives variance 0 where torch raises
  "Expected more than 1 value per channel when training".
- ``nan-inf``: a zero-size batch in training: ``moments`` (``backend/torch/nn.py:974``) takes ``torch.mean``
  over no elements, NaN, and ``batch_normalization.py:385-391`` assigns it to the moving statistics (and the
  gamma gradient is NaN); torch returns the empty output and leaves its running statistics unchanged.
- ``reduced-precision``: a float64 layer (variables float64) given float64 input computes in float32 and returns
  float64 values rounded to float32 (measured with keras 3.15: +-0.973633348941803 = float32(0.97363335) for a
  2-sample batch whose exact output is +-0.97292098); a user porting a float64 model gets float32 accuracy.
Declined (no Keras equivalent): ``momentum=None`` (Keras has only an exponential moving average) and
``track_running_stats=False`` (Keras always keeps moving statistics and always normalises with them in
inference, ``batch_normalization.py:392-394``).
"""
from __future__ import annotations

import os
import sys

import torch

import bncheck

NOT_INSTALLED = "keras is not installed: pip install bncheck[frameworks]"


def _keras():
    """keras, imported with the torch backend, or Unsupported saying why not."""
    loaded = sys.modules.get("keras")
    if loaded is None and "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"    # the backend is chosen once, when keras is first imported
    try:
        import keras
    except ImportError as e:
        if e.name == "keras":
            raise bncheck.Unsupported(NOT_INSTALLED) from None
        raise bncheck.Unsupported(f"keras could not be imported: {type(e).__name__}: {e}") from None
    backend = keras.backend.backend()
    if backend != "torch":
        raise bncheck.Unsupported(f"keras is already imported with the {backend!r} backend; this bridge needs "
                                  f"the torch backend (KERAS_BACKEND=torch before keras is first imported)")
    return keras


class KerasBatchNorm(torch.nn.Module):
    """A torch module calling the Keras layer with ``training`` taken from ``module.training``."""

    def __init__(self, layer):
        super().__init__()
        self.bn = layer

    def forward(self, x):
        return self.bn(x, training=self.training)


STATE = {"weight": "bn.gamma.value", "bias": "bn.beta.value",
         "running_mean": "bn.moving_mean.value", "running_var": "bn.moving_variance.value"}


@bncheck.implementation(
    "keras-bn", state=STATE,
    expect={"biased-running-var", "cancellation", "dtype-promotion", "missing-error", "nan-inf", "reduced-precision"})
def build(spec: bncheck.Spec) -> torch.nn.Module:
    keras = _keras()
    if spec.momentum is None:
        raise bncheck.Unsupported("Keras BatchNormalization has no cumulative moving average (momentum=None)")
    if not spec.track_running_stats:
        raise bncheck.Unsupported("Keras BatchNormalization always keeps moving statistics and uses them in "
                                  "inference (no track_running_stats=False)")
    dtype = str(spec.dtype).removeprefix("torch.")
    with keras.device(spec.device):
        layer = keras.layers.BatchNormalization(axis=1, momentum=1.0 - spec.momentum, epsilon=spec.eps,
                                                center=spec.affine, scale=spec.affine, dtype=dtype)
        layer.build((None, spec.num_features) + (None,) * (spec.ndim - 2))
    return KerasBatchNorm(layer)

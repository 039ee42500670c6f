"""Ultralytics' conv-BN folding (ultralytics 8.4.190), ``ultralytics.utils.torch_utils.fuse_conv_and_bn`` for
convolutions and ``fuse_deconv_and_bn`` for transposed convolutions, as ``BaseModel.fuse`` uses them
(``nn/tasks.py:264`` for ``Conv``/``DWConv`` modules, ``:268`` for ``ConvTranspose``).

A module-form fusion plugin: ``fold(conv, bn)`` calls the function Ultralytics uses for that kind of conv and
returns what it returns. Nothing is declined.

Ultralytics reads ``importlib.metadata.version("torchvision")`` when it is imported
(``ultralytics/utils/__init__.py:89``); ``corpus/requirements-nodeps.txt`` installs the torchvision 0.28.0 wheel
for that metadata. Its compiled operators do not load beside the CPU torch here, and nothing imported here
imports torchvision.

Predicted differences from torch's ``fuse_conv_bn_eval`` (``site-packages/ultralytics/utils/torch_utils.py``):
- ``input-mutated``: both fold the given module in place instead of a copy: ``conv.weight, conv.bias =
  fuse_conv_bn_weights(...)`` (line 396) and ``deconv.bias`` / ``deconv.weight = nn.Parameter(...)`` (lines
  426-429), then return that same module (lines 402, 430); torch's ``fuse_conv_bn_eval`` deep-copies the conv.
  This is by design (``BaseModel.fuse`` replaces the conv by the result anyway), but a caller that keeps the
  unfolded conv sees it changed.
The arithmetic is torch's own ``torch.nn.utils.fusion.fuse_conv_bn_weights`` (imported at line 22); for a
transposed conv ``fuse_deconv_and_bn`` views the weight in the conv layout per group (line 425) and back (line
429), which is right for grouped transposed convs too: no value finding is predicted.
"""
from __future__ import annotations

import os

import torch

import bncheck

PACKAGE = "ultralytics"
PREDICTED = frozenset({"input-mutated"})


@bncheck.fusion("ultralytics-fuse-conv-and-bn", expect=PREDICTED)
def fold(conv: torch.nn.Module, bn: torch.nn.Module) -> torch.nn.Module:
    os.environ.setdefault("YOLO_VERBOSE", "False")     # no settings banner in the worker's output
    try:
        from ultralytics.utils.torch_utils import fuse_conv_and_bn, fuse_deconv_and_bn
    except ImportError as e:
        raise bncheck.Unsupported(f"ultralytics could not be imported ({e}): pip install -r "
                                  f"corpus/requirements.txt and --no-deps -r corpus/requirements-nodeps.txt") \
            from None
    if isinstance(conv, torch.nn.modules.conv._ConvTransposeNd):
        return fuse_deconv_and_bn(conv, bn)
    return fuse_conv_and_bn(conv, bn)

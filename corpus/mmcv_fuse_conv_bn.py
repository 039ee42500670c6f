"""OpenMMLab's conv-BN folding, ``mmcv.cnn.fuse_conv_bn`` (mmcv-lite 2.2.0, the build without compiled ops): it
walks a model and folds every BatchNorm that follows an ``nn.Conv2d`` into that conv.

A module-form fusion plugin, ported as a user of the public API would use it: ``fuse_conv_bn(nn.Sequential(conv,
bn))`` and the conv slot of the result. ``fuse_conv_bn`` only picks up ``nn.Conv2d`` children
(``cnn/utils/fuse_conv_bn.py:54``; anything else is recursed into, not fused, line 58), so every other conv type
(Conv1d, Conv3d, transposed convs) is declined.

Predicted differences from torch's ``fuse_conv_bn_eval`` (``site-packages/mmcv/cnn/utils/fuse_conv_bn.py``):
- ``input-mutated``: ``_fuse_conv_bn`` assigns ``conv.weight`` and ``conv.bias`` of the given conv (lines 21-23)
  and returns it (line 24): the unfolded conv is changed in place; torch folds a deep copy.
- ``crash``: a BatchNorm with ``affine=False``: ``factor = bn.weight / torch.sqrt(...)`` (line 20) divides
  ``None`` and raises TypeError; torch's fold takes a missing weight as 1 and a missing bias as 0.
(A conv without bias is handled, lines 17-18; grouped and depthwise Conv2d are folded per output channel, line
21, which is right.)
"""
from __future__ import annotations

import torch

import bncheck

PACKAGE = "mmcv-lite"
PREDICTED = frozenset({"input-mutated", "crash"})


@bncheck.fusion("mmcv-fuse-conv-bn", expect=PREDICTED)
def fold(conv: torch.nn.Module, bn: torch.nn.Module) -> torch.nn.Module:
    try:
        from mmcv.cnn import fuse_conv_bn
    except ImportError as e:
        raise bncheck.Unsupported(f"mmcv-lite could not be imported ({e}): pip install -r "
                                  f"corpus/requirements.txt and --no-deps -r corpus/requirements-nodeps.txt") \
            from None
    if not isinstance(conv, torch.nn.Conv2d):
        raise bncheck.Unsupported(f"mmcv's fuse_conv_bn folds only nn.Conv2d, not {type(conv).__name__}")
    return fuse_conv_bn(torch.nn.Sequential(conv, bn))[0]

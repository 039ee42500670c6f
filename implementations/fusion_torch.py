"""torch's own conv-BN folding, ``torch.nn.utils.fusion.fuse_conv_bn_eval``: the reference fusion plugin.

It must come out clean. One declared gap: for a *grouped* ConvTranspose torch reshapes the scale to
``(1, C_out, 1, ...)`` against a weight of shape ``(C_in, C_out/groups, ...)``, which raises a size mismatch (or,
with C_out/groups == 1, broadcasts to a weight of the wrong shape): pytorch/pytorch#180995, open for torch 2.13.
That case is declined here, not reported.
"""
import torch
from torch.nn.utils.fusion import fuse_conv_bn_eval

import bncheck


@bncheck.fusion("torch-fuse-conv-bn")
def fold(conv: torch.nn.Module, bn: torch.nn.Module) -> torch.nn.Module:
    transposed = isinstance(conv, torch.nn.modules.conv._ConvTransposeNd)
    if transposed and conv.groups > 1:
        raise bncheck.Unsupported("grouped ConvTranspose: fuse_conv_bn_weights scales axis 1 as if it held all "
                                  "C_out channels (pytorch/pytorch#180995)")
    return fuse_conv_bn_eval(conv, bn, transpose=transposed)

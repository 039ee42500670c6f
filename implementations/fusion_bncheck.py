"""bncheck's own conv-BN folding helper (``bncheck.folding.fold.fold_conv_bn``): the fold computed in float64 from the
conv's and BatchNorm's tensors, then cast back to the conv's dtype and device.

Handles Conv and ConvTranspose in 1-3 dims, groups (grouped transposed convs included), convs without bias and
BatchNorms with affine=False. It must come out clean.
"""
import torch

import bncheck
from bncheck.folding.fold import fold_conv_bn


@bncheck.fusion("bncheck-fold")
def fold(conv: torch.nn.Module, bn: torch.nn.Module) -> torch.nn.Module:
    return fold_conv_bn(conv, bn)

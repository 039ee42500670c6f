"""Seed document 000, second half ("BatchNorm kết hợp Convolution"): folding an eval-mode BatchNorm into the conv
before it, reproduced as written (cells In [9] and In [10]) in weights form.

The document folds a Conv2d with C_out=64 and a bias: W' = W * gamma/sqrt(v+eps) with gamma, v reshaped to
(C_out, 1, 1, 1), b' = gamma/sqrt(v+eps) * (b - mu) + beta, squeezed. The only change is the hard-coded 64,
here the BatchNorm's channel count. Where the formula holds, and where it does not (as bncheck finds it; see
``expect``):

- holds: Conv2d with a bias, any groups (depthwise too: axis 0 is the output channel), stride/padding/dilation,
  float32/float64/float16 (computed in the conv's dtype like torch), any eps and running statistics;
- ConvTranspose: the scale is applied along axis 0, which is C_in for a transposed weight (wrong when
  C_in == C_out, a broadcast error or a wrongly shaped weight otherwise);
- a conv without bias: ``b.view`` on None raises;
- a BatchNorm with affine=False: ``gamma.view`` on None raises (the document's own class always has gamma/beta);
- Conv1d/Conv3d: the (C, 1, 1, 1) reshape fits 4-d weights only (a 5-d weight of the wrong shape, or a
  broadcast against the wrong axis);
- C_out == 1: ``b_.squeeze()`` leaves a 0-d bias, which the conv rejects.
"""
import torch

import bncheck


@bncheck.fusion(
    "seed-000-fold",
    expect={"fold-transposed-axis", "fold-bias-none-crash", "rank-unsupported", "crash", "fold-wrong-module"},
)
def fold(W, b, running_mean, running_var, weight, bias, eps, transposed):
    C = running_mean.numel()      # the document's 64

    # Reshap trước khi nhân
    gamma = weight.view(C, 1, 1, 1)
    var = running_var.view(C, 1, 1, 1)
    mean = running_mean.view(C, 1, 1, 1)
    beta = bias.view(C, 1, 1, 1)

    W_ = W * (gamma / torch.sqrt(var + eps))
    b_ = (gamma / torch.sqrt(var + eps)) * (b.view(C, 1, 1, 1) - mean) + beta
    b_ = b_.squeeze()
    return W_, b_

"""Fused BatchNorm epilogues: a correct ``relu(bn(x) [+ z])`` built on ``ScratchBN``, and mutants with one defect of
the epilogue each, of the kinds found in hand-written fused kernels.

``EpilogueBN(..., epilogue="relu" | "add_relu")`` is called as ``forward(x)`` or ``forward(x, z)``; its ReLU is
torch's (``torch.relu``: the backward masks by the saved output), so it has torch's gradient semantics: ``dz`` the
masked upstream gradient, the BatchNorm backward run on the masked gradient. Every mutant names, in ``finding``, the
catalog id a perfect diagnosis reports for it, and in ``epilogue`` the epilogue it declares.
"""
from __future__ import annotations

import torch

from .reference import ScratchBN


class EpilogueBN(ScratchBN):
    """relu(bn(x)) or relu(bn(x) + z), with torch's semantics."""
    epilogue = "relu"

    def __init__(self, *args, epilogue: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if epilogue is not None:
            self.epilogue = epilogue

    def forward(self, x, z=None):
        y = super().forward(x)
        return self._activate(self._residual(y, z), x)

    def _residual(self, y, z):
        return y if self.epilogue == "relu" else y + z

    def _activate(self, pre, x):
        return torch.relu(pre)


class _MaskedRelu(torch.autograd.Function):
    """max(pre, 0) with a backward that multiplies by a given mask."""

    @staticmethod
    def forward(ctx, pre, mask):
        ctx.save_for_backward(mask)
        return pre.clamp_min(0)

    @staticmethod
    def backward(ctx, grad):
        (mask,) = ctx.saved_tensors
        return grad * mask.to(grad.dtype), None


class MaskFromInput(EpilogueBN):
    """The ReLU's gradient mask is taken from the pre-BN input x > 0, not from the output."""
    finding = "epilogue-mask-source"

    def _activate(self, pre, x):
        return _MaskedRelu.apply(pre, x.detach() > 0)


class MaskFromBN(EpilogueBN):
    """With a residual, the ReLU's gradient mask is taken from bn(x) > 0 before the add, not from the output."""
    finding = "epilogue-mask-source"
    epilogue = "add_relu"

    def forward(self, x, z=None):
        y = ScratchBN.forward(self, x)
        return _MaskedRelu.apply(y + z, y.detach() > 0)


class MaskIgnored(EpilogueBN):
    """The backward ignores the ReLU: the gradient passes where the output is 0 (a straight-through ReLU)."""
    finding = "epilogue-mask-ignored"

    def _activate(self, pre, x):
        return _MaskedRelu.apply(pre, torch.ones_like(pre, dtype=torch.bool))


class MaskAtZero(EpilogueBN):
    """The backward recomputes the mask as pre-activation >= 0, so the gradient passes where the output is exactly 0.
    """
    finding = "epilogue-mask-ignored"

    def _activate(self, pre, x):
        return _MaskedRelu.apply(pre, pre.detach() >= 0)


class ReluBeforeAffine(EpilogueBN):
    """The ReLU is applied to the normalised input before weight and bias: relu(xhat) * weight + bias."""
    finding = "relu-before-affine"

    def _affine(self, y):
        return super()._affine(torch.relu(y))

    def _activate(self, pre, x):
        return pre


class ResidualBeforeBN(EpilogueBN):
    """The residual is added to the input: relu(bn(x + z)), its statistics included."""
    finding = "residual-misplaced"
    epilogue = "add_relu"

    def forward(self, x, z=None):
        return torch.relu(ScratchBN.forward(self, x + z))


class ResidualAfterRelu(EpilogueBN):
    """The residual is added after the ReLU: relu(bn(x)) + z."""
    finding = "residual-misplaced"
    epilogue = "add_relu"

    def forward(self, x, z=None):
        return torch.relu(ScratchBN.forward(self, x)) + z


class _UnmaskedResidual(torch.autograd.Function):
    """relu(y + z) whose gradient to z is the upstream gradient itself (the mask forgotten for dz)."""

    @staticmethod
    def forward(ctx, y, z):
        out = (y + z).clamp_min(0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return grad * (out > 0).to(grad.dtype), grad


class ResidualGradUnmasked(EpilogueBN):
    """dz is the upstream gradient, not masked by the ReLU."""
    finding = "residual-grad-wrong"
    epilogue = "add_relu"

    def forward(self, x, z=None):
        return _UnmaskedResidual.apply(ScratchBN.forward(self, x), z)


class ResidualGradMissing(EpilogueBN):
    """The residual is added detached: z gets no gradient."""
    finding = "residual-grad-wrong"
    epilogue = "add_relu"

    def _residual(self, y, z):
        return y + z.detach()


class StatsFromResidual(EpilogueBN):
    """The running statistics are updated from the batch statistics of x + z (the output normalises x)."""
    finding = "stats-from-residual"
    epilogue = "add_relu"

    def forward(self, x, z=None):
        self._sum = (x + z).detach()
        return super().forward(x, z)

    def _update_running(self, mean, var, n):
        xz = self._sum.to(mean.dtype)
        dims = self._reduce_dims(xz)
        m = xz.mean(dims, keepdim=True)
        super()._update_running(m, (xz - m).square().mean(dims, keepdim=True), n)


class ResidualInPlace(EpilogueBN):
    """The result is written into z's memory (as a kernel that reuses the residual's buffer for its output does)."""
    finding = "input-mutated"
    epilogue = "add_relu"

    def forward(self, x, z=None):
        out = super().forward(x, z)
        with torch.no_grad():
            z.copy_(out.detach())
        return out


CORRECT = {"relu": dict(cls=EpilogueBN, epilogue="relu"), "add-relu": dict(cls=EpilogueBN, epilogue="add_relu")}

MUTANTS = {
    "mask-from-input": MaskFromInput,
    "mask-from-bn": MaskFromBN,
    "mask-ignored": MaskIgnored,
    "mask-at-zero": MaskAtZero,
    "relu-before-affine": ReluBeforeAffine,
    "residual-before-bn": ResidualBeforeBN,
    "residual-after-relu": ResidualAfterRelu,
    "residual-grad-unmasked": ResidualGradUnmasked,
    "residual-grad-missing": ResidualGradMissing,
    "stats-from-residual": StatsFromResidual,
    "residual-in-place": ResidualInPlace,
}

"""Seed document 001 (Chinese notebook "批量归一化", d2l style): batch_norm() and BatchNorm, as written.

Reproduced with its bugs. The adapter passes the Spec's momentum straight into the class's keep-fraction
convention, and tells bncheck where the state lives.
"""
import torch
from torch import nn

import bncheck


def batch_norm(X, gamma, beta, moving_mu, moving_var, momentum, eps):
    assert len(X.shape) in (2, 4) #只处理全连接层和2维卷积层
    # 通过is_grad_enabled判断当前是训练来是推理，如果是推理，则直接使用移动平均的均值和方差
    if not torch.is_grad_enabled():
        Y_hat = (X - moving_mu) / torch.sqrt(moving_var + eps)
    else: 
        # 全连接层
        if len(X.shape) == 2:
            mu = X.mean(dim=0)
            var = ((X - mu)**2).mean(dim=0)
        # 卷积层，将通道维看作是特征维，求均值和方差时，保持形状方法进行broadcasting
        if len(X.shape) == 4:
            mu = X.mean(dim=(0, 2, 3), keepdim=True)
            var = ((X - mu)**2).mean(dim=(0, 2, 3), keepdim=True)
        Y_hat = (X - mu) / torch.sqrt(var + eps)
        # 对移动平均的均值与方差进行更新
        moving_mu = momentum * moving_mu + (1 - momentum) * mu
        moving_var = momentum * moving_var + (1 - momentum) * var
    Y = Y_hat * gamma + beta
    return Y, moving_mu, moving_var


class BatchNorm(nn.Module):
    def __init__(self, num_features, num_dim, momentum=0.9, eps=1e-5):
        super().__init__()
        if num_dim == 2:
            shape = (1, num_features)
        if num_dim == 4:
            shape = (1, num_features, 1, 1)
        # 初始化mu为0，var为1
        self.moving_mu = torch.zeros(shape)
        self.moving_var = torch.ones(shape)
        # gamma和beta属于需要进行更新的参数
        self.gamma = nn.Parameter(torch.ones(shape))
        self.beta = nn.Parameter(torch.zeros(shape))
        self.momentum = momentum
        self.eps = eps

    def forward(self, x):
        if x.device != self.moving_mu.device:
            self.moving_mu, self.moving_var = self.moving_mu.to(x.device), self.moving_var.to(x.device)
            self.gamma.data = self.gamma.data.to(x.device)
            self.beta.data = self.beta.data.to(x.device)
        x, self.moving_mu, self.moving_var = batch_norm(
            x, self.gamma.data, self.beta.data, self.moving_mu, self.moving_var, self.momentum, self.eps)
        return x


@bncheck.implementation(
    "seed-001",
    state={"weight": "gamma", "bias": "beta", "running_mean": "moving_mu", "running_var": "moving_var"},
    expect={
        # verified against the code: keep-fraction momentum, is_grad_enabled() decides the mode, biased moving var,
        # gamma.data/beta.data cut the affine gradients, plain (1, C[, 1, 1]) attributes (not buffers, left in
        # float32 by .to(), and they keep the graph), ranks 3/5 fail, momentum=None raises, no error for one value
        # per channel, float32 attributes promote half input
        "inverted-momentum", "mode-from-grad-mode", "biased-running-var", "no-grad-to-affine", "stats-not-buffers",
        "state-shape-drift", "running-stats-hold-graph", "rank-unsupported", "momentum-none", "missing-error",
        "dtype-promotion",
        # an empty batch (always a training step here) poisons the running statistics with NaN; torch leaves
        # them unchanged
        "nan-inf",
    },
)
def build(spec: bncheck.Spec) -> nn.Module:
    if not spec.affine:
        raise bncheck.Unsupported("the class always has gamma/beta (no affine=False)")
    if not spec.track_running_stats:
        raise bncheck.Unsupported("the class always tracks moving stats (no track_running_stats=False)")
    return BatchNorm(spec.num_features, spec.ndim, momentum=spec.momentum, eps=spec.eps).to(spec.device, spec.dtype)

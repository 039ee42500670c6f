"""Seed document 003 (Korean notebook "Batch Normalization"): the BatchNorm class, as written.

Reproduced with its bugs; the adapter maps the Spec to the constructor and names the state.
"""
import torch
from torch import nn

import bncheck


class BatchNorm(nn.Module):
    '''
    channels: 입력의 피쳐 수
    eps: 분모에 사용되는 엡실론. div-by-zero 에러 방지
    momentum: 이동지수평균을 위한 모멘텀
    affine: 정규화된 값에 대해 스케일 및 시프트 적용 여부 결정
    track_running_stats: 평군과 분산에 대한 이동평균 계산 여부 결정
    '''
    def __init__(self, channels: int, *,
                 eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, track_running_stats: bool = True):
        super().__init__()
        
        self.channels = channels
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        
        # parameters for scale and shift
        if self.affine:
            self.gamma = nn.Parameter(torch.ones(channels)) # 곱하기 1
            self.beta = nn.Parameter(torch.zeros(channels)) # 더하기 0
        
        # parameters for exponential moving average
        if self.track_running_stats:
            self.register_buffer('exp_mean', torch.zeros(channels)) # 평균 0
            self.register_buffer('exp_var', torch.ones(channels)) # 분산 1
    
    def forward(self, x: torch.Tensor):
        # shape(x) = (batch_size, channels, dimensions*)
        # ex - 2D image x will be (batch_size, channels, height, width)
        
        x_shape = x.shape
        batch_size = x_shape[0]
        
        assert self.channels == x_shape[1]
        
        # reshape into [batch_size, channels, n]
        x = x.view(batch_size, self.channels, -1)
        
        # calculate batch mean & var in training mode,
        # or if we have not tracked exponential moving average
        if self.training or not self.track_running_stats:
            mean = x.mean(dim=[0,2]) # first and last dimension
            mean_x2 = (x ** 2).mean(dim=[0,2])
            
            var = mean_x2 - (mean ** 2)
        
        # update exponential moving averages
        if self.training and self.track_running_stats:
            self.exp_mean = (1-self.momentum) * self.exp_mean + self.momentum * mean
            self.exp_var = (1-self.momentum) * self.exp_var + self.momentum * var
        else:
            # use exponential moving averages as estimates
            mean = self.exp_mean
            var = self.exp_var
            
        # normalize
        x_norm = (x - mean.view(1,-1,1)) / torch.sqrt(var + self.eps).view(1,-1,1)
        
        # scale and shift
        if self.affine:
            x_norm = self.gamma.view(1,-1,1) * x_norm + self.beta.view(1,-1,1)
        
        return x_norm.view(x_shape) # reshape to original shape


@bncheck.implementation(
    "seed-003",
    state={"weight": "gamma", "bias": "beta", "running_mean": "exp_mean", "running_var": "exp_var"},
    expect={
        # verified against the code: E[x^2]-E[x]^2, biased running var, running stats keep the graph,
        # track_running_stats=False raises AttributeError, momentum=None raises, no error for one value per
        # channel, float32 buffers promote half input, x.view(N, C, -1) raises on spatial axes stored out of order;
        # `(x ** 2).mean(...)` squares a float16 input in float16, so one value past 256 makes E[x^2], the variance
        # and running_var inf where torch accumulates in float32 (nan-inf: found by the search on seeds 6 and 7 as
        # "only with dtype float16 and input outliers", by its probe otherwise)
        "cancellation", "biased-running-var", "running-stats-hold-graph", "crash", "momentum-none",
        "missing-error", "dtype-promotion", "non-contiguous-crash", "nan-inf",
    },
)
def build(spec: bncheck.Spec) -> nn.Module:
    return BatchNorm(spec.num_features, eps=spec.eps, momentum=spec.momentum, affine=spec.affine,
                     track_running_stats=spec.track_running_stats).to(spec.device, spec.dtype)

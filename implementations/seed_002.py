"""Seed document 002 (notebook "Batch Normalization", custom BN): the BatchNorm class, as written.

Reproduced with its bugs. The class has no eps argument (it hard-codes 1e-5); the adapter maps the rest.
"""
import torch
import torch.nn as nn

import bncheck


class BatchNorm(nn.Module):
    def __init__(self, num_features, momentum=0.1, affine=True, track_running_stats=True):
        super().__init__()
        
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.eps = 1e-5
        self.num_features=num_features
        self.momentum = momentum
        
        if affine:
            self.gamma = nn.Parameter(torch.ones(num_features))
            self.beta = nn.Parameter(torch.zeros(num_features))
        else:
            self.beta, self.gamma = None, None
        
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
            
        else :
            self.running_mean = torch.tensor(0)
            self.running_var =  torch.tensor(1)


    
    def forward(self, x):
        
        if len(x.shape) == 2:
            dim = 0
            gamma = self.gamma[None, :]
            beta = self.beta[None, :]
           
        elif len(x.shape) == 4 and x.shape[1] == self.num_features:
            dim = (0, 2, 3)
            gamma = self.gamma[None, :, None, None]
            beta = self.beta[None, :, None, None]
        else:
            raise Exception(f"expected len of input dim be 2 or 4 but got {x.shape},\
            num_features be at 2 dim")
        
        
        if self.training :
            mean = x.mean(dim=dim, keepdim=True)
            var = x.var(dim=dim, unbiased=False, keepdim=True)

            # Update running stats (for inference)
            self.running_mean = (1 - self.momentum) * self.running_mean + self.momentum * mean.detach()
            self.running_var = (1 - self.momentum) * self.running_var + self.momentum * var.detach()
        else:
            mean = self.running_mean
            var = self.running_var
        
        x_norm  = (x - mean)/torch.sqrt(var + self.eps) 
        
        if self.affine:
            x_norm = gamma * x_norm + beta
            
        
        return x_norm


@bncheck.implementation("seed-002", state={"weight": "gamma", "bias": "beta"},
                         expect={
        # verified against the code: eps hard-coded 1e-5, biased running var, stats broadcast into (1, C, 1, C),
        # (C,) stats broadcast against the last axis in 4-D eval, affine=False crashes, ranks 3/5 raise,
        # momentum=None raises, float32 buffers promote half input
        "eps-ignored", "biased-running-var", "state-shape-drift", "stats-broadcast-axis", "crash",
        "rank-unsupported", "momentum-none", "dtype-promotion",
        # no batch-size check: one value per channel in training gives variance 0 where torch raises (forward goes
        # straight to x.mean / x.var); an empty training batch makes x.mean NaN, blended into the running
        # statistics (torch leaves them unchanged); with track_running_stats=False eval normalises with the
        # constants torch.tensor(0) / torch.tensor(1) set in __init__, not with batch statistics
        "missing-error", "nan-inf", "no-track-eval-uses-running",
        # and those constants are int64 tensors: var + self.eps is float32, so a float64 input is normalised in
        # float32 precision there (and training updates them even without tracking, which eval then uses)
        "reduced-precision",
    })
def build(spec: bncheck.Spec) -> nn.Module:
    return BatchNorm(spec.num_features, momentum=spec.momentum, affine=spec.affine,
                     track_running_stats=spec.track_running_stats).to(spec.device, spec.dtype)

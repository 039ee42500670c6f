import os
import torch
import bncheck


class Die(torch.nn.Module):
    def forward(self, x):
        os._exit(3)


@bncheck.implementation("bad-dying")
def build(spec):
    return Die()

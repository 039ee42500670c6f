import time
import torch
import bncheck


class Hang(torch.nn.Module):
    def forward(self, x):
        while True:
            time.sleep(1)


@bncheck.implementation("bad-hanging")
def build(spec):
    return Hang()

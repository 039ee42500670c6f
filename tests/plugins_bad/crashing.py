import torch
import bncheck


class Boom(torch.nn.Module):
    def forward(self, x):
        raise RuntimeError("kernel exploded")


@bncheck.implementation("bad-crashing")
def build(spec):
    return Boom()

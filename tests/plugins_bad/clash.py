import torch
import bncheck


@bncheck.implementation("torch-bn2d")
def build(spec):
    return torch.nn.BatchNorm2d(spec.num_features)

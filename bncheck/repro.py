"""Reproducers: a finding's minimal scenario as a standalone Python script."""
from __future__ import annotations

import os
from pathlib import Path

TEMPLATE = '''\
"""bncheck reproducer: {name}  {fid}  ({where})

config: {config}
Run: python this_file.py   (prints each discrepancy with its evidence; exits 1 while the finding reproduces)
"""
import sys

import torch

from bncheck import compare, execute
from bncheck.registry import Registry
from bncheck.scenario import Scenario, Step, materialize

{load}
scenario = {scenario!r}
data = materialize(scenario)          # inputs, upstream gradients, weight/bias/initial stats from the seed
trace = execute.run(impl, scenario, data)
result = compare.compare(scenario, data, trace)
for d in result.discrepancies:
    print(d.where(scenario), "-", d.detail)

# the same steps on torch, side by side
spec = scenario.spec()
ref = spec.torch_class(**spec.torch_kwargs())
with torch.no_grad():
    if spec.affine:
        ref.weight.copy_(data.weight); ref.bias.copy_(data.bias)
    if spec.track_running_stats:
        ref.running_mean.copy_(data.running_mean); ref.running_var.copy_(data.running_var)
for k, step in enumerate(scenario.steps):
    ref.train(step.train)
    try:
        with torch.set_grad_enabled(step.grad):
            y = ref(data.xs[k])
        print(f"torch step {{k + 1}}: output[:2]={{y.flatten()[:2].tolist()}}",
              f"running_mean={{None if ref.running_mean is None else ref.running_mean.tolist()}}",
              f"running_var={{None if ref.running_var is None else ref.running_var.tolist()}}")
    except Exception as e:
        print(f"torch step {{k + 1}}: raises {{type(e).__name__}}: {{e}}")
sys.exit(1 if result.discrepancies else 0)
'''


def portable_source(source: str) -> str:
    kind, _, where = source.partition(":")
    if kind == "file":
        try:
            return "file:" + os.path.relpath(where, Path.cwd()) if Path(where).is_relative_to(Path.cwd()) else source
        except ValueError:
            return source
    return source


def load_plugin(name: str, source: str, indent: str = "") -> str:
    """Reproducer lines that re-load plugin ``name`` from its source into ``impl`` (every kind's script uses them)."""
    lines = [
        "registry = Registry()",
        f"registry.load_source({portable_source(source)!r})",
        f"if {name!r} not in registry.implementations:",
        f"    sys.exit(f\"could not load {name!r}: {{registry.errors}}\")",
        f"impl = registry.implementations[{name!r}]",
    ]
    return "".join(indent + line + "\n" for line in lines)


def script(name: str, source: str, fid: str, where: str, scenario) -> str:
    return TEMPLATE.format(name=name, fid=fid, where=where, config=scenario.describe(),
                           load=load_plugin(name, source), scenario=scenario)

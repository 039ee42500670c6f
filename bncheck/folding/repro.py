"""Reproducers of fusion findings: a standalone script per finding that folds the scenario's pair with the plugin
and prints the discrepancy (exits 1 while the finding reproduces)."""
from __future__ import annotations

from ..registry import Implementation
from ..repro import load_plugin
from .cases import FoldScenario

TEMPLATE = '''\
"""bncheck reproducer: {name}  {fid}  ({where})

example: {config}
Run: python this_file.py   (prints the discrepancy; exits 1 while the finding reproduces)
"""
import sys

import torch

from bncheck.folding.cases import FoldScenario, evaluate, materialize, module_fold, oracle_output
from bncheck.registry import Registry

{load}
scenario = {scenario!r}
conv, bn, x = materialize(scenario)   # eval-mode conv + BatchNorm with the scenario's values, and an input
print(conv, bn, sep="\\n")
try:
    fused = module_fold(impl)(conv, bn)          # the plugin (a weights-form fold is wrapped into a module)
    with torch.no_grad():
        got = fused(x).double()
    ref = oracle_output(conv, bn, x)             # bn(conv(x)) in float64, not folded
    print("max |fused(x) - bn(conv(x))| =", (got - ref).abs().max().item() if got.shape == ref.shape
          else f"shapes differ: {{tuple(got.shape)}} vs {{tuple(ref.shape)}}")
except Exception as e:
    print("folding or the folded module raises", type(e).__name__, e)

outcome = evaluate(impl, scenario)               # all checks, against the derived error budget
for p in outcome.problems:
    print(p.where, "-", p.detail)
sys.exit(1 if outcome.problems else 0)
'''


def script(impl: Implementation, fid: str, where: str, sc: FoldScenario) -> str:
    return TEMPLATE.format(name=impl.name, fid=fid, where=where, config=sc.describe(),
                           load=load_plugin(impl.name, impl.source), scenario=sc)

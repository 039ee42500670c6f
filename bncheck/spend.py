"""Spending a plugin's time: a budget per plugin, shared out over its properties, and configurations drawn by cost.

A plugin's cost per case differs by orders of magnitude: eager torch runs a case in milliseconds, a compiled
framework (torch.compile, jax.jit) compiles every new *configuration* for seconds and then runs any shape of it
in milliseconds. So the search spends time, not a fixed number of examples:

* ``Spending`` holds the plugin's budget (``PROFILE_BUDGET_S``; None: no limit, ``--profile thorough`` covers every
  configuration it draws) and hands each property its share when it starts: what is left over the properties left,
  so time a fast property did not use goes to the later ones. A property stops drawing when its share is spent;
  a failure already found is still shrunk (up to one more share) and diagnosed.
* Each case is split into its configurations (``config_keys``: one per step, everything a compiler specialises
  on: dtypes, rank, layout, train/eval, grad mode, momentum, eps, affine, tracking; not the sizes). Their cost is
  measured as the search goes: ``new_cost``, a case with a configuration not seen before, and ``seen_cost``, a
  case whose configurations were all seen. While a new configuration fits in what is left of the share, new ones
  come first; after that a case that would compile again is skipped before it runs (Hypothesis draws another),
  and the rest of the share goes to many shapes of the configurations already compiled. A plugin for which new
  configurations cost no more than seen ones is never restricted.

What was spent is reported per property (``PropertyResult.spent``): cases, configurations, seconds, and whether
the share ran out.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

PROFILE_BUDGET_S = {"quick": 20.0, "default": 30.0, "thorough": None}
EXPENSIVE_RATIO = 5.0      # a new configuration costing this many times a seen one (and ...)
EXPENSIVE_MIN_S = 0.5      # ... at least this long) is rationed
MIN_CASES = 3              # cases every property runs before its share can stop it
PATIENCE = 200             # draws needing a new configuration a property skips before it takes one anyway


def config_keys(sc) -> frozenset:
    """The configurations a scenario runs: one per step, without the sizes."""
    return frozenset((sc.dtype, sc.param_dtype, sc.rank, sc.layout, st.train, st.grad, sc.momentum, sc.eps,
                      sc.affine, sc.track_running_stats) for st in sc.steps)


@dataclass
class Spent:
    """How one property spent its share."""
    share_s: float | None = None
    seconds: float = 0.0
    configs: int = 0               # configurations run for the first time in this property
    skipped: int = 0               # cases not run because they would have needed a new configuration
    ran: int = 0                   # cases run
    ran_out: bool = False          # the share was spent before the examples

    def describe(self) -> str:
        share = "no limit" if self.share_s is None else f"share {self.share_s:.0f} s"
        out = f"{self.seconds:.1f} s ({share}), {self.configs} new configuration(s)"
        if self.skipped:
            out += f", {self.skipped} case(s) needing another skipped"
        return out + (", share spent" if self.ran_out else "")


@dataclass
class Spending:
    budget_s: float | None
    start: float = field(default_factory=time.monotonic)
    seen: set = field(default_factory=set)
    new_cost: float = 0.0          # running means, seconds per case
    seen_cost: float = 0.0
    n_new: int = 0
    n_seen: int = 0
    warm: bool = False             # the plugin's first case ran (it carries one-time costs: imports, start-up)

    @classmethod
    def for_profile(cls, profile: str, budget_s: float | None = None) -> "Spending":
        return cls(budget_s if budget_s is not None else PROFILE_BUDGET_S.get(profile))

    def share(self, properties_left: int) -> float | None:
        if self.budget_s is None:
            return None
        left = self.budget_s - (time.monotonic() - self.start)
        return max(left, 0.0) / max(properties_left, 1)

    @property
    def expensive(self) -> bool:
        return self.n_new > 0 and self.new_cost >= EXPENSIVE_MIN_S and \
            self.new_cost >= EXPENSIVE_RATIO * max(self.seen_cost, 1e-3)

    def is_new(self, sc) -> bool:
        return not config_keys(sc) <= self.seen

    def affordable(self, sc, deadline: float | None, spent: Spent) -> bool:
        """Whether to run ``sc`` now: a case of seen configurations always, a new one while it fits. A property
        that has run nothing yet takes a new configuration after ``PATIENCE`` draws of none it has seen (drawing is
        cheap): no property goes unchecked."""
        if deadline is None or not self.expensive or not self.is_new(sc):
            return True
        if spent.ran == 0 and spent.skipped >= PATIENCE:
            return True
        return deadline - time.monotonic() > 1.5 * self.new_cost

    def ran(self, sc, seconds: float, spent: Spent) -> None:
        keys = config_keys(sc)
        spent.ran += 1
        if not self.warm:          # one-time costs are no configuration's
            self.warm = True
            spent.configs += len(keys - self.seen)
            self.seen |= keys
            return
        if keys <= self.seen:
            self.n_seen += 1
            self.seen_cost += (seconds - self.seen_cost) / self.n_seen
        else:
            spent.configs += len(keys - self.seen)
            self.seen |= keys
            self.n_new += 1
            self.new_cost += (seconds - self.new_cost) / self.n_new

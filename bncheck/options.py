"""The check options, defined once: the CLI's ``bncheck run`` and the pytest plugin (``--bncheck-*``) both add them
from here, and both validate them here, so a flag means the same thing wherever it is given.

``add_check_options(addoption, prefix)`` takes any argparse-style ``add_argument``/``addoption`` (pytest's has the
same keywords); ``CheckOptions.from_namespace`` reads the parsed values back and ``validate`` checks them, naming the
flag as it was spelled. Nothing here imports torch: the pytest plugin reads these options on every pytest run.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

PROFILES = ("quick", "default", "thorough")
DEVICES = ("cpu", "cuda")
WORLD_SIZES = (2, 3, 4)
MAX_WORLD_SIZE = 16


@dataclass(frozen=True)
class Option:
    name: str          # the flag after its prefix ("seed": --seed, --bncheck-seed); the attribute is name with "_"
    kwargs: dict       # argparse keywords


OPTIONS = (
    Option("profile", dict(choices=PROFILES, default="default",
                           help="search effort: Hypothesis examples per property and rounds (quick, default, "
                                "thorough)")),
    Option("seed", dict(type=int, default=0, metavar="N",
                        help="seed every search derives from: the same seed gives the same run")),
    Option("device", dict(choices=DEVICES, default="cpu")),
    Option("jobs", dict(type=int, default=os.cpu_count() or 1, metavar="N", help="worker processes")),
    Option("property", dict(action="append", default=[], metavar="NAME",
                            help="only these BatchNorm properties (fusion and sync plugins have their own)")),
    Option("strict", dict(action="store_true",
                          help="an expected finding that neither the search nor its directed probe reproduces fails "
                               "(otherwise it is a warning)")),
    Option("world-size", dict(action="append", default=[], type=int, metavar="R",
                              help=f"world sizes for sync plugins, repeatable (default: "
                                   f"{' '.join(map(str, WORLD_SIZES))})")),
)
BY_NAME = {o.name: o for o in OPTIONS}


def _dest(prefix: str, name: str) -> str:
    return (prefix + name).replace("-", "_")


def add_check_options(addoption, prefix: str = "", skip=(), **defaults) -> None:
    """Add every check option as ``--{prefix}{name}`` (dest ``{prefix}{name}`` with "_"); ``skip`` leaves some out,
    ``defaults`` (by attribute name) replaces a default."""
    for o in OPTIONS:
        if o.name in skip:
            continue
        kw = dict(o.kwargs)
        key = o.name.replace("-", "_")
        if key in defaults:
            kw["default"] = defaults[key]
        addoption(f"--{prefix}{o.name}", dest=_dest(prefix, o.name), **kw)


class OptionError(ValueError):
    """A check option with a bad value; the message starts with the flag as spelled."""


@dataclass(frozen=True)
class CheckOptions:
    """Parsed check options (``seed=None``: not given)."""
    profile: str = "default"
    seed: int | None = 0
    device: str = "cpu"
    jobs: int = 1
    properties: tuple = ()
    strict: bool = False
    world_sizes: tuple = ()
    prefix: str = field(default="", compare=False)

    @classmethod
    def from_namespace(cls, ns, prefix: str = "", **override) -> "CheckOptions":
        def get(name, default):
            return getattr(ns, _dest(prefix, name), default)
        opts = cls(profile=get("profile", cls.profile), seed=get("seed", cls.seed), device=get("device", cls.device),
                   jobs=get("jobs", BY_NAME["jobs"].kwargs["default"]), properties=tuple(get("property", ())),
                   strict=bool(get("strict", False)), world_sizes=tuple(get("world-size", ())), prefix=prefix)
        return replace(opts, **override)

    def flag(self, name: str) -> str:
        return f"--{self.prefix}{name}"

    def validate(self) -> "CheckOptions":
        """Raise ``OptionError`` naming the first bad option; returns self."""
        from .properties import BY_NAME as PROPERTIES
        if self.profile not in PROFILES:
            raise OptionError(f"{self.flag('profile')} {self.profile}: one of {', '.join(PROFILES)}")
        if self.jobs < 1:
            raise OptionError(f"{self.flag('jobs')} {self.jobs}: must be at least 1")
        bad = [p for p in self.properties if p not in PROPERTIES]
        if bad:
            raise OptionError(f"{self.flag('property')} {bad[0]}: unknown property; known: {', '.join(PROPERTIES)}")
        if self.device == "cuda":
            import torch
            if not torch.cuda.is_available():
                raise OptionError(f"{self.flag('device')} cuda: CUDA is not available on this machine")
        bad = [w for w in self.world_sizes if not 1 <= w <= MAX_WORLD_SIZE]
        if bad:
            raise OptionError(f"{self.flag('world-size')} {bad[0]}: must be between 1 and {MAX_WORLD_SIZE}")
        return self

    def run_kwargs(self) -> dict:
        """The keywords ``runner.run_all`` takes (besides the implementations)."""
        return dict(jobs=self.jobs, profile=self.profile, seed=self.seed, device=self.device,
                    properties=list(self.properties) or None,
                    world_sizes=tuple(sorted(set(self.world_sizes))) or WORLD_SIZES)

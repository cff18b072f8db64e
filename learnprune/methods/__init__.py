"""Pruning methods, one file each, all keeping the interface of :class:`PruningMethod`.

``METHODS`` maps the names used by recipes and the command line to the classes;
:func:`build_method` builds one from recipe options.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from learnprune.errors import ConfigError
from learnprune.methods.base import Dense, PruningMethod, TrainingContext
from learnprune.methods.dessilbi import DessiLBI, DessiLBIMethod
from learnprune.methods.diffprune import DiffPrune
from learnprune.methods.hardconcrete import HardConcrete
from learnprune.methods.magnitude import GMP, Magnitude
from learnprune.methods.scl import SCL
from learnprune.methods.ticket import Ticket

METHODS: dict[str, type[PruningMethod]] = {
    "dense": Dense,
    "magnitude": Magnitude,
    "gmp": GMP,
    "scl": SCL,
    "dessilbi": DessiLBIMethod,
    "diffprune": DiffPrune,
    "hardconcrete": HardConcrete,
    "ticket": Ticket,
}


def build_method(
    name: str, model: nn.Module, options: Mapping[str, Any], context: TrainingContext
) -> PruningMethod:
    """The method ``name`` attached to ``model``, from recipe ``options``.

    Raises :class:`ConfigError` for an unknown method or option.
    """
    key = name.strip().lower()
    if key not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    cls = METHODS[key]
    unknown = sorted(set(options) - set(cls.recipe_options))
    if unknown:
        takes = ", ".join(cls.recipe_options) or "no options"
        raise ConfigError(f"method {key} has no option {', '.join(unknown)}; it takes {takes}")
    return cls.from_options(model, options, context)


__all__ = [
    "GMP",
    "METHODS",
    "SCL",
    "Dense",
    "DessiLBI",
    "DessiLBIMethod",
    "DiffPrune",
    "HardConcrete",
    "Magnitude",
    "PruningMethod",
    "TrainingContext",
    "build_method",
]

"""The phases of a run, the same for every method: dense warm-up, mask learning, fine-tuning.

A recipe gives them in epochs (``[train] phases = {warmup = W, learn = L, finetune = F}``,
or ``--phases W,L,F``); the run is ``epochs = W + L + F`` long::

    [0, W)           warm-up      the dense model trains (every group kept, gates held)
    [W, W + L)       learning     the method learns its mask (SCL, DiffPrune, hard-concrete,
                                  GMP's schedule, DessiLBI's path)
    [W + L, epochs)  fine-tuning  the mask is fixed, the weights train on

Each method maps them onto its own timing (:class:`~learnprune.methods.base.TrainingContext`
carries them): the budgeted methods and GMP take ``begin_epoch = W`` and ``end_epoch = W + L``;
magnitude prunes once at ``W``; dense ignores them. A recipe gives either ``phases`` or a
method's own ``begin_epoch``/``end_epoch``/``prune_epoch``, not both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from learnprune import validation
from learnprune.errors import ConfigError

PHASE_NAMES = ("warmup", "learn", "finetune")
TIMING_OPTIONS = ("begin_epoch", "end_epoch", "prune_epoch")
"""Method options that place a method's own phase; ``phases`` replaces them."""


@dataclass(frozen=True)
class Phases:
    """Lengths of the three phases in epochs (fractions allowed; the sum is whole)."""

    warmup: float = 0.0
    learn: float = 0.0
    finetune: float = 0.0

    @classmethod
    def parse(cls, value: object) -> Phases:
        """From ``{"warmup": W, "learn": L, "finetune": F}`` (missing keys: 0), a list
        ``[W, L, F]`` or the text ``"W,L,F"``. Raises ConfigError: an unknown key, a
        value that is not a number >= 0, or a total that is not a whole number >= 1."""
        if isinstance(value, Phases):
            return value
        if isinstance(value, str):
            parts = [part.strip() for part in value.split(",")]
            if len(parts) != len(PHASE_NAMES):
                raise ConfigError(
                    f"phases takes three numbers of epochs W,L,F (warm-up, learning, "
                    f"fine-tuning), got {value!r}"
                )
            numbers: list[object] = []
            for part in parts:
                try:
                    numbers.append(float(part))
                except ValueError:
                    numbers.append(part)
            value = numbers
        if isinstance(value, (list, tuple)):
            if len(value) != len(PHASE_NAMES):
                raise ConfigError(
                    f"phases takes three numbers of epochs (warm-up, learning, fine-tuning), "
                    f"got {list(value)!r}"
                )
            value = dict(zip(PHASE_NAMES, value, strict=True))
        if not isinstance(value, Mapping):
            raise ConfigError(
                "phases must be a table {warmup = W, learn = L, finetune = F} in epochs, "
                f"got {value!r}"
            )
        unknown = sorted(set(value) - set(PHASE_NAMES))
        if unknown:
            raise ConfigError(
                f"unknown phase {', '.join(map(str, unknown))}; known: {', '.join(PHASE_NAMES)}"
            )
        phases = cls(
            **{
                name: validation.non_negative(f"phases {name}", value.get(name, 0))
                for name in PHASE_NAMES
            }
        )
        total = phases.epochs
        if total < 1 or total != int(total):
            raise ConfigError(
                f"phases must add up to a whole number of epochs >= 1, got "
                f"{phases.warmup:g} + {phases.learn:g} + {phases.finetune:g} = {total:g}"
            )
        return phases

    @property
    def epochs(self) -> float:
        """``W + L + F``: the run's length."""
        return self.warmup + self.learn + self.finetune

    @property
    def learn_begin(self) -> float:
        """The epoch at which mask learning begins (``W``)."""
        return self.warmup

    @property
    def learn_end(self) -> float:
        """The epoch at which mask learning ends and fine-tuning begins (``W + L``)."""
        return self.warmup + self.learn

    def as_dict(self) -> dict[str, float]:
        return {name: getattr(self, name) for name in PHASE_NAMES}

    def text(self) -> str:
        """``"warm-up 1, learn 2, fine-tune 1 epochs"``."""
        return f"warm-up {self.warmup:g}, learn {self.learn:g}, fine-tune {self.finetune:g} epochs"

    def check_epochs(self, epochs: Any) -> None:
        """Raise ConfigError when an explicit ``epochs`` is not ``W + L + F``."""
        if epochs is not None and epochs != self.epochs:
            raise ConfigError(
                f"epochs {epochs} does not match the phases: {self.warmup:g} + {self.learn:g} "
                f"+ {self.finetune:g} = {self.epochs:g} epochs (give one of the two)"
            )

    def refuse_timing(self, options: Mapping[str, Any]) -> None:
        """Raise ConfigError when a method's own timing option is given beside the phases."""
        given = [key for key in TIMING_OPTIONS if key in options]
        if given:
            raise ConfigError(
                f"both train.phases and method.{given[0]} are given; the phases place the "
                f"method's phase (learning from epoch {self.learn_begin:g} to "
                f"{self.learn_end:g}): drop one of the two"
            )

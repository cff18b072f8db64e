"""Reaching a sparsity or FLOPs budget by adapting one global regularisation strength.

Learned methods (SCL, DiffPrune) take a penalty strength ``λ``; users usually know the
budget instead ("95 % sparsity", "at most 30 % of the FLOPs"). :class:`LambdaController`
adapts ``λ`` in log space after every step,

    log λ_{t+1} = log λ_t + η · (b* − b_t) / b_scale

where ``b_t`` is the measured budget quantity (sparsity, or the fraction of dense FLOPs
removed) and ``b*`` the target: ``λ`` grows while the network is denser than the budget
and shrinks once it is sparser, so the penalty settles where the budget is met. ``λ``
stays within ``[λ_min, λ_max]`` so one noisy stretch cannot send it to 0 or infinity.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from learnprune import validation
from learnprune.errors import ConfigError

BUDGET_KINDS = ("sparsity", "flops")


def parse_target(target: float | str | Mapping[str, float] | None) -> tuple[str, float] | None:
    """``0.9`` or ``{"sparsity": 0.9}`` -> ``("sparsity", 0.9)``; ``{"flops": 0.3}`` keeps
    30 % of the dense FLOPs, i.e. removes 70 %: -> ``("flops", 0.7)``."""
    if target is None:
        return None
    if isinstance(target, Mapping):
        if len(target) != 1:
            raise ConfigError(f"target must name one budget, sparsity or flops; got {dict(target)}")
        ((kind, value),) = target.items()
        kind = validation.choice("target kind", kind, BUDGET_KINDS)
        if kind == "flops":
            keep = validation.real("flops target", value)
            if not 0.0 < keep <= 1.0:
                raise ConfigError(
                    f"a flops target is the fraction of dense FLOPs kept, in (0, 1]; got {value}"
                )
            return "flops", 1.0 - keep
        return "sparsity", validation.fraction("sparsity target", value)
    return "sparsity", validation.fraction("target", target)


@dataclass
class LambdaController:
    """Multiplicative adaptation of ``λ`` towards a budget (see the module docstring)."""

    lam: float
    target: float
    rate: float = 0.01
    lam_min: float = 1e-8
    lam_max: float = 1e3
    down_rate: float | None = None
    """``η`` once the budget is exceeded (default: ``rate``). Methods whose closed groups
    rarely reopen (DiffPrune) lower λ faster past the budget, so it is not overshot."""

    def __post_init__(self) -> None:
        self.lam = validation.positive("lam", self.lam)
        self.rate = validation.positive("lam_rate", self.rate)
        self.lam = min(max(self.lam, self.lam_min), self.lam_max)

    def update(self, achieved: float) -> float:
        """One step: move ``log λ`` by ``η · (target − achieved)``; return the new ``λ``."""
        gap = self.target - achieved
        rate = self.rate if gap >= 0 or self.down_rate is None else self.down_rate
        log_lam = math.log(self.lam) + rate * gap * 100.0
        self.lam = min(max(math.exp(log_lam), self.lam_min), self.lam_max)
        return self.lam

    def state_dict(self) -> dict[str, Any]:
        return {
            "lam": self.lam,
            "target": self.target,
            "rate": self.rate,
            "down_rate": self.down_rate,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.lam = float(state["lam"])
        self.target = float(state["target"])
        self.rate = float(state["rate"])
        down = state.get("down_rate")
        self.down_rate = None if down is None else float(down)

"""The part every learned method shares: one global ``λ``, and a budget it can be adapted to.

SCL, DiffPrune and hard-concrete each penalise kept groups with one strength. Given
``target=`` (a sparsity, or ``{"flops": f}``, the fraction of dense FLOPs to keep) a
:class:`~learnprune.budget.LambdaController` moves ``λ`` after every step towards the
budget. What is measured against the budget:

    sparsity budget:  Σ_g n_g (1 − k_g) / N          (N = all prunable weights)
    FLOPs budget:     Σ_g c_g (1 − k_g) / Σ_g c_g    (c_g: FLOPs cost, :mod:`learnprune.costs`)

with ``k_g ∈ {0, 1}`` whether the final model would keep group ``g``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from learnprune import budget, costs, validation
from learnprune.groups import model_input_shape
from learnprune.masking import GroupGate
from learnprune.methods.base import PruningMethod, TrainingContext


class BudgetedMethod(PruningMethod):
    """A pruning method with one global ``λ`` that ``target=`` adapts.

    Subclasses call :meth:`set_target` before the gates are attached (so a bad target
    leaves the model untouched), :meth:`setup_budget` once they are, and
    :meth:`update_lambda` in ``after_step``; ``current_lam`` is the strength to use.
    """

    budget: tuple[str, float] | None = None
    controller: budget.LambdaController | None = None

    def set_target(self, target: float | Mapping[str, float] | None) -> None:
        """Check and keep ``target`` (raises ConfigError)."""
        self.budget = budget.parse_target(target)

    def setup_budget(
        self,
        start_lam: float,
        lam_rate: float,
        input_shape: Sequence[int] | None,
        down_rate: float | None = None,
    ) -> None:
        """Build the λ controller and the group costs it measures (the rates are checked
        with or without a target, so a wrong one never passes unnoticed)."""
        lam_rate = validation.positive("lam_rate", lam_rate)
        if down_rate is not None:
            down_rate = validation.positive("lam_down_rate", down_rate)
        self.base_lam = start_lam
        self.controller = (
            budget.LambdaController(
                max(start_lam, 1e-8), self.budget[1], lam_rate, down_rate=down_rate
            )
            if self.budget
            else None
        )
        self.budget_costs = costs.group_costs(
            self.model,
            self.plan,
            flops=self.budget_kind == "flops",
            input_shape=model_input_shape(self.model, input_shape),
            example_inputs=self.example_inputs,
        )
        self.budget_total = costs.total_cost(self.plan, self.budget_costs)

    @property
    def current_lam(self) -> float:
        """``λ`` now: adapted with a target, the starting value without."""
        return self.controller.lam if self.controller else self.base_lam

    @property
    def budget_kind(self) -> str | None:
        return self.budget[0] if self.budget else None

    def budget_text(self) -> str:
        """``", target flops 0.7"`` for :meth:`describe` (empty without a target)."""
        return f", target {self.budget[0]} {self.budget[1]:g}" if self.budget else ""

    def kept_indicator(self, gate: GroupGate) -> Tensor:
        """``k_g`` as 0/1 floats (subclasses may return a cached one)."""
        return gate.keep().float()

    def budget_achieved(self) -> float:
        """Sparsity, or for a FLOPs budget the fraction of the gated FLOPs removed."""
        with torch.no_grad():
            removed = float(
                sum(
                    costs.weighted_sum(self.budget_costs[name], 1.0 - self.kept_indicator(gate))
                    for name, gate in self.gates.items()
                )
            )
        if self.budget_kind == "flops":
            return removed / self.budget_total if self.budget_total else 0.0
        return removed / self.total_weights if self.total_weights else 0.0

    def update_lambda(self) -> None:
        """One step of the λ controller (nothing without a target)."""
        if self.controller is not None:
            self.controller.update(self.budget_achieved())

    def extra_state(self) -> dict[str, Any]:
        return {"controller": self.controller.state_dict() if self.controller else None}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        if self.controller is not None and state.get("controller"):
            self.controller.load_state_dict(state["controller"])

    @classmethod
    def from_options(
        cls, model: nn.Module, options: Mapping[str, Any], context: TrainingContext
    ) -> PruningMethod:
        return cls(model, input_shape=context.input_shape, **options)

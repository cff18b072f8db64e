"""The part every learned method shares: one global ``λ``, and a budget it is driven to.

SCL, DiffPrune and hard-concrete each penalise kept groups with one strength. Given
``target=`` (a sparsity, or ``{"flops": f}``, the fraction of dense FLOPs to keep) the
budget of :mod:`learnprune.budget` takes over over the mask-learning phase
``[begin_step, end_step)``: the target follows a schedule (``schedule="cubic"`` by
default), a controller moves ``λ`` after every step so the achieved budget tracks it
(``controller="lagrangian"`` by default), and at ``end_step`` the *exact finish*
(``finish="exact"``, the default) sets the mask to the budget by the method's own scores
(:meth:`BudgetedMethod.gate_scores`: SCL's ``S``, DiffPrune's ``φ``, hard-concrete's
``log α``) and freezes the gates; training goes on with that mask. ``finish="none"`` keeps
the papers' form: the controller keeps tracking the final target until the run ends.
Before ``begin_step`` is the dense warm-up (:mod:`learnprune.phases`): the gates are held at
their start values (deterministic, every group kept), get no gradient and ``λ = 0``.
What is measured against the budget:

    sparsity budget:  Σ_g n_g (1 − k_g) / N          (N = all prunable weights)
    FLOPs budget:     Σ_g c_g (1 − k_g) / Σ_g c_g    (c_g: FLOPs cost, :mod:`learnprune.costs`)

with ``k_g ∈ {0, 1}`` whether the final model would keep group ``g``. A sparsity budget
counts each group's own weights. Where a weight is cut by two groups (coupled channels) or,
under a FLOPs budget, compaction removes it with another layer's group (a dropped filter
takes the next layer's input slice with it, :func:`learnprune.costs.compaction_plan`), the
FLOPs budget is ``1 − C(k) / C(1)`` over all Conv/Linear FLOPs (:class:`~learnprune.costs.
KeptCost`): the FLOPs of the model as compaction leaves it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from learnprune import budget, costs, validation
from learnprune.accounting import prunable_modules
from learnprune.errors import ConfigError
from learnprune.groups import GroupSet, model_input_shape
from learnprune.masking import GroupGate
from learnprune.methods.base import PruningMethod, TrainingContext

BUDGET_OPTIONS = (
    "target",
    "schedule",
    "controller",
    "finish",
    "multiplier_lr",
    "quadratic_lr",
    "begin_epoch",
    "end_epoch",
)
"""Recipe options of the budget, shared by every budgeted method."""


class BudgetedMethod(PruningMethod):
    """A pruning method with one global ``λ`` that ``target=`` drives (module docstring).

    Subclasses call :meth:`set_target` before the gates are attached (so a bad target
    leaves the model untouched), :meth:`setup_budget` once they are, and
    :meth:`update_lambda` in ``after_step``; ``current_lam`` is the strength to use. They
    give :meth:`gate_scores` and :meth:`fix_gate` for the exact finish.
    """

    budget: tuple[str, float] | None = None
    controller: budget.Controller | None = None
    schedule: budget.TargetSchedule | None = None
    finish: str = "none"
    finished: bool = False
    kept_cost: costs.KeptCost | None = None
    """What a keep assignment costs where groups share weights (``None``: additive)."""
    achieved_at_finish: float | None = None
    """The budget the learned gates had reached when the exact finish set it."""
    learn_begin: int = 0
    """The step at which mask learning begins; the steps before it are the dense warm-up."""
    _fixed_values: list[Tensor]
    """The method's parameters as the exact finish left them (written back each step)."""

    def set_target(
        self,
        target: float | Mapping[str, float] | None,
        *,
        schedule: str = "cubic",
        controller: str = "lagrangian",
        finish: str = "exact",
        multiplier_lr: float = 0.05,
        quadratic_lr: float | None = None,
        begin_step: int = 0,
        end_step: int | None = None,
    ) -> None:
        """Check and keep ``target`` and how it is reached (raises ConfigError).

        ``multiplier_lr`` and ``quadratic_lr`` are ``η₁`` and ``η₂`` of the
        ``"lagrangian"`` controller (``quadratic_lr=None``: ``η₂ = η₁``).

        ``end_step=None`` (a run of unknown length): the target is demanded from
        ``begin_step`` on and the exact finish happens at :meth:`finalize`.
        """
        self.budget = budget.parse_target(target)
        self.schedule_kind = validation.choice("schedule", schedule, budget.SCHEDULES)
        self.controller_kind = validation.choice("controller", controller, budget.CONTROLLERS)
        self.finish = (
            validation.choice("finish", finish, budget.FINISHES) if self.budget else "none"
        )
        self.multiplier_lr = validation.positive("multiplier_lr", multiplier_lr)
        self.quadratic_lr = (
            None if quadratic_lr is None else validation.non_negative("quadratic_lr", quadratic_lr)
        )
        begin = validation.integer("begin_step", begin_step)
        end = None if end_step is None else validation.integer("end_step", end_step)
        self.learn_begin = begin
        self.schedule = (
            budget.TargetSchedule(self.budget[1], self.schedule_kind, begin, end)
            if self.budget
            else None
        )

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
            budget.make_controller(
                self.controller_kind,
                start_lam,
                self.budget[1],
                rate=lam_rate,
                down_rate=down_rate,
                multiplier_lr=self.multiplier_lr,
                quadratic_lr=self.quadratic_lr,
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
        self.kept_cost = None
        shape = model_input_shape(self.model, input_shape)
        cost_plan = self.plan
        if self.budget_kind == "flops":  # what compaction removes with each group counts too
            cost_plan = costs.compaction_plan(
                self.model, self.plan, input_shape=shape, example_inputs=self.example_inputs
            )
        if self.budget and costs.shares_weights(cost_plan):
            per_weight = costs.weight_costs(
                self.model,
                flops=self.budget_kind == "flops",
                input_shape=shape,
                example_inputs=self.example_inputs,
            )
            weights = [f"{name}.weight" for name, _module in prunable_modules(self.model)]
            self.kept_cost = costs.KeptCost(cost_plan, per_weight, weights)
        if self.warming_up:
            self._hold_gates()

    @property
    def warming_up(self) -> bool:
        """Whether the run is in its dense warm-up (before ``begin_step``)."""
        return self.step < self.learn_begin and not self.finished

    @property
    def current_lam(self) -> float:
        """``λ`` now: adapted with a target, the starting value without; 0 in the warm-up."""
        if self.warming_up:
            return 0.0
        return self.controller.lam if self.controller else self.base_lam

    def before_optimizer_step(self) -> None:
        """In the warm-up the gates get no gradient (so no optimizer state either: the
        learning phase starts from the gates' start values and fresh momentum)."""
        if self.warming_up:
            for param in self.parameters():
                param.grad = None

    @property
    def budget_kind(self) -> str | None:
        return self.budget[0] if self.budget else None

    def budget_text(self) -> str:
        """``", target flops 0.3 kept (cubic to step 450, lagrangian, finish exact)"`` for
        :meth:`describe` (empty without a target); after a warm-up ``"(dense to step 50,
        cubic to step 450, ...)"``."""
        if not self.budget or self.schedule is None:
            return ""
        reach = (
            f"{self.schedule.kind} to step {self.schedule.end}"
            if self.schedule.end is not None and self.schedule.kind != "constant"
            else "constant"
        )
        if self.learn_begin > 0:
            reach = f"dense to step {self.learn_begin}, {reach}"
        kind, removed = self.budget  # a FLOPs budget is kept as the share removed
        asked = f"flops {1.0 - removed:g} kept" if kind == "flops" else f"sparsity {removed:g}"
        return f", target {asked} ({reach}, {self.controller_kind}, finish {self.finish})"

    def scheduled_target(self) -> float | None:
        """``b_t`` at the current step (``None`` without a target)."""
        return self.schedule(self.step) if self.schedule is not None else None

    def kept_indicator(self, gate: GroupGate) -> Tensor:
        """``k_g`` as 0/1 floats (subclasses may return a cached one)."""
        return gate.keep().float()

    def removed_share(self, kept: Mapping[str, Tensor]) -> float:
        """``1 − C(k) / C(1)`` (:class:`~learnprune.costs.KeptCost`) for ``{set name: k}``,
        where groups share weights: the share of the whole cost (all Conv/Linear weights,
        or their FLOPs) a keep assignment removes."""
        assert self.kept_cost is not None
        with torch.no_grad():
            whole = self.kept_cost.total
            return 1.0 - self.kept_cost(kept) / whole if whole else 0.0

    def budget_achieved(self) -> float:
        """Sparsity, or for a FLOPs budget the fraction of the gated FLOPs removed (of all
        the Conv/Linear FLOPs where groups share weights, :meth:`removed_share`)."""
        if self.kept_cost is not None:
            return self.removed_share(
                {name: self.kept_indicator(gate) for name, gate in self.gates.items()}
            )
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

    def tracked_budget(self) -> float:
        """What the controller tracks: :meth:`budget_achieved` (the final model's), or
        for gates whose kept share moves only late an expected one (hard-concrete)."""
        return self.budget_achieved()

    def update_lambda(self) -> None:
        """One step of the budget, called after the step count is advanced: the controller
        during the phase (and after it with ``finish="none"``), the exact finish once
        ``end_step`` steps are done. Nothing without a target or once finished."""
        if self.finished or self.warming_up:
            self._restore_fixed()
            return
        if self.step == self.learn_begin and self.learn_begin > 0:
            self._release_gates()  # the warm-up is over: mask learning begins
        if self.controller is None or self.schedule is None:
            return
        if self.step < self.schedule.begin:
            return
        end = self.schedule.end
        if self.finish == "exact" and end is not None and self.step >= end:
            self.finish_exactly()
            return
        self.controller.update(self.tracked_budget(), self.schedule(self.step))

    # --- the exact finish ------------------------------------------------------------
    def gate_scores(self, gate: GroupGate) -> Tensor:
        """The learned score of each group of one set, higher = more worth keeping."""
        raise NotImplementedError

    def fix_gate(self, gate: GroupGate, keep: Tensor) -> None:
        """Set one gate to keep exactly ``keep`` (bool ``(G,)``) and freeze it there."""
        raise NotImplementedError

    def finish_protects(self, group_set: GroupSet) -> bool:
        """Whether the exact finish keeps the best group of ``group_set`` whatever the
        budget (default: every structured set, so the network stays connected)."""
        return group_set.kind != "element"

    def exact_keep(self) -> dict[str, Tensor]:
        """``{set name: bool keep (G,)}`` meeting the budget by the gates' scores: one
        ranking over every group of every set (:func:`~learnprune.budget.exact_keep`),
        costs ``n_g`` (sparsity) or ``c_g`` (FLOPs)."""
        assert self.budget is not None
        names = [s.name for s in self.plan.sets]
        scores, cost, protected = [], [], []
        for group_set in self.plan.sets:
            gate = self.gates[group_set.name]
            score = self.gate_scores(gate).detach().float().cpu()
            scores.append(score)
            set_cost = self.budget_costs[group_set.name]
            cost.append(
                set_cost.double().cpu()
                if isinstance(set_cost, Tensor)
                else torch.full((group_set.num_groups,), set_cost, dtype=torch.float64)
            )
            guard = torch.zeros(group_set.num_groups, dtype=torch.bool)
            if self.finish_protects(group_set) and group_set.num_groups:
                guard[int(torch.argmax(score))] = True
            protected.append(guard)
        if self.kept_cost is not None:  # a weight of two kept groups costs once
            sizes = [s.num_groups for s in self.plan.sets]
            kept_cost = self.kept_cost

            def by_set(keep: Tensor) -> dict[str, Tensor]:
                return dict(zip(names, torch.split(keep, sizes), strict=True))

            keep = budget.exact_keep_shared(
                torch.cat(scores),
                (1.0 - self.budget[1]) * kept_cost.total,
                torch.cat(protected),
                lambda keep: kept_cost(by_set(keep)),
                lambda keep: torch.cat(list(kept_cost.marginal(by_set(keep)).values())),
                open_now=torch.cat(
                    [
                        self.kept_indicator(self.gates[s.name]).detach().bool().cpu()
                        for s in self.plan.sets
                    ]
                ),
            )
        else:
            whole = self.total_weights if self.budget_kind == "sparsity" else self.budget_total
            ungated = whole - self.budget_total  # excluded layers' weights: always kept
            keep_budget = (1.0 - self.budget[1]) * whole - ungated
            keep = budget.exact_keep(
                torch.cat(scores), torch.cat(cost), keep_budget, torch.cat(protected)
            )
        return dict(
            zip(names, torch.split(keep, [s.num_groups for s in self.plan.sets]), strict=True)
        )

    def finish_exactly(self) -> None:
        """Set every mask to the budget by the scores, freeze the gates, stop the
        controller (the masks stay fixed from here on)."""
        self.achieved_at_finish = self.tracked_budget()
        keep = self.exact_keep()
        with torch.no_grad():
            for name, gate in self.gates.items():
                self.fix_gate(gate, keep[name].to(self.gate_scores(gate).device))
        self._freeze()

    def _freeze(self) -> None:
        """Gates deterministic from here on, and their values kept: they stay trainable
        tensors (so DDP and optimizers see the same parameters every step) but
        :meth:`update_lambda` writes the fixed values back after every step."""
        self.finished = True
        self._fixed_values = [param.detach().clone() for param in self.parameters()]
        for gate in self.gates.values():
            gate.frozen = True

    def _hold_gates(self) -> None:
        """The warm-up: gates deterministic, their start values kept (as :meth:`_freeze`,
        until :meth:`_release_gates`)."""
        self._fixed_values = [param.detach().clone() for param in self.parameters()]
        for gate in self.gates.values():
            gate.frozen = True

    def _release_gates(self) -> None:
        for gate in self.gates.values():
            gate.frozen = False

    @torch.no_grad()
    def _restore_fixed(self) -> None:
        for param, value in zip(self.parameters(), self._fixed_values, strict=True):
            param.copy_(value)

    def finalize(self) -> nn.Module:
        """An exact finish still due (a run shorter than the phase, or one without a
        known length) happens first."""
        if self.finish == "exact" and not self.finished and self.gates:
            self.finish_exactly()
        return super().finalize()

    def final_metrics(self, evaluate: Any) -> dict[str, Any]:
        """What the run records about the budget: ``finish``, the schedule, controller."""
        if not self.budget:
            return {}
        assert self.schedule is not None
        return {
            "finish": self.finish,
            "budget": {
                "kind": self.budget[0],
                "target": self.budget[1],
                "schedule": self.schedule.kind,
                "begin_step": self.schedule.begin,
                "end_step": self.schedule.end,
                "controller": self.controller_kind,
                "achieved_before_finish": self.achieved_at_finish,
            },
        }

    def extra_state(self) -> dict[str, Any]:
        return {
            "controller": self.controller.state_dict() if self.controller else None,
            "finished": self.finished,
            "achieved_at_finish": self.achieved_at_finish,
        }

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        saved = state.get("controller")
        if self.controller is not None and saved:
            kind = saved.get("kind", "integral")
            if kind != self.controller_kind:
                raise ConfigError(
                    f"the checkpoint's λ controller is {kind!r}, this run's "
                    f"{self.controller_kind!r}"
                )
            self.controller.load_state_dict(saved)
        if state.get("finished") and not self.finished:
            self._freeze()
        elif self.warming_up:
            self._hold_gates()  # the loaded gates: still their start values
        elif not self.finished:
            self._release_gates()
        self.achieved_at_finish = state.get("achieved_at_finish")

    @classmethod
    def budget_steps(cls, options: dict[str, Any], context: TrainingContext) -> dict[str, Any]:
        """Recipe options in epochs -> steps: ``begin_epoch`` (default 0) and ``end_epoch``
        (default three quarters of the run, as GMP's), or the run's phases ``W``, ``W + L``,
        become ``begin_step``/``end_step``. Phases with a fine-tuning phase need the exact
        finish (a ConfigError otherwise: the mask would not be fixed)."""
        options = dict(options)
        phases = context.phases
        if (
            phases is not None
            and phases.finetune > 0
            and (options.get("target") is None or options.get("finish") == "none")
        ):
            raise ConfigError(
                f"the phases' fine-tuning (finetune = {phases.finetune:g}) needs the mask fixed, "
                'which the exact finish does: give a target (and finish = "exact") or '
                "finetune = 0"
            )
        options["begin_step"], options["end_step"] = context.phase_steps(options, allow_equal=False)
        return options

    @classmethod
    def from_options(
        cls, model: nn.Module, options: Mapping[str, Any], context: TrainingContext
    ) -> PruningMethod:
        return cls(
            model, input_shape=context.input_shape, **cls.budget_steps(dict(options), context)
        )

"""L0 regularization with hard-concrete gates (Louizos, Welling, Kingma, ICLR 2018).

Reproduces the official code (AMLab-Amsterdam/L0_regularization, ``l0_layers.py``,
../shared/METHODS.md section 3.4). One gate per group with parameter ``log α``; stretch
limits ``γ = −0.1``, ``ζ = 1.1``, temperature ``β = 2/3``, ``ε = 10⁻⁶``.

* Training (one sample per minibatch, shared by every tensor of the group set):
  ``u ~ U(ε, 1 − ε)``, ``s = σ((log u − log(1 − u) + log α) / β)``,
  ``z = clamp(s (ζ − γ) + γ, 0, 1)``.
* Test time: ``z = clamp(σ(log α)(ζ − γ) + γ, 0, 1)``.
* ``P(z ≠ 0) = 1 − Q(0) = σ(log α − β log(−γ/ζ))``, clamped to ``[ε, 1 − ε]``.
* Penalty (the code's ``regularization``, divided by ``N``, the training-set size)::

      R = (1/N) Σ_layers [ Σ_g P(z_g ≠ 0) Σ_{θ ∈ g} (λ_l + ½ w θ²) + Σ_{b ungated} ½ w b² ]

  with ``w`` the weight decay (the prior precision; it is *not* also given to the
  optimizer) and ``λ_l`` per layer (1 in the LeNet-5 recipe).
* ``log α ~ N(log((1 − d)/d), 0.01)`` with ``d`` the initial drop rate (0.5; the reference
  MLP uses 0.2 for its input layer), clamped to ``[log 10⁻², log 10²]`` after every step.
* Gates: input units of Linear layers and output feature maps of convs (``l0_units``),
  like the reference; any other group kind works too.

Where we differ from the code, and why:

* A conv's bias belongs to its feature map's group here. The code gates it at test time
  (the gate multiplies the conv's output) but drops it altogether in training without
  ``local_rep`` (``F.conv2d(input, weights, None, ...)``), and its penalty gives a conv bias
  ``−(½ w b² − λ)`` inside the log-prior, i.e. a *reward* of ``λ`` for an open map (a sign
  slip: weights get ``−½ w θ² − λ``). We train with the bias and charge it like a weight:
  one parameter of the 26 (conv1) or 501 (conv2) in a LeNet-5-Caffe map.
* ``local_rep`` (a gate sample per example) is not offered: the LeNet-5 recipe leaves it off.
* Expected L0 and FLOPs are reported per epoch; FLOPs count 2 per multiply-add over the
  gated weights (FlopCounterMode's convention), where the code counts ``2n − 1`` per output.
  ``penalty="flops"`` charges each group its FLOPs (mean weight 1) instead of its size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from learnprune import costs, validation
from learnprune.errors import ConfigError
from learnprune.groups import GroupPlan, GroupSet, model_input_shape, scatter
from learnprune.masking import GroupGate, raw_tensor
from learnprune.methods.base import TrainingContext, model_device
from learnprune.methods.budgeted import BUDGET_OPTIONS, BudgetedMethod

GAMMA, ZETA, EPSILON = -0.1, 1.1, 1e-6
LOG_ALPHA_RANGE = (math.log(1e-2), math.log(1e2))
PENALTIES = ("l0", "flops")
SLOW_GATE_LR = 1e-3
"""The reference's rate (Adam 10⁻³), below which ``gate_lr``'s default keeps the weights'."""


class HardConcreteGate(GroupGate):
    """``log α`` of one group set; ``forward()`` gives the sampled (training) or test-time
    gate values."""

    def __init__(self, group_set: GroupSet, droprate_init: float, temperature: float) -> None:
        super().__init__(group_set)
        mean = math.log(1 - droprate_init) - math.log(droprate_init)
        self.init_mean = mean  # log((1 − d)/d): the exact finish ranks log α from it
        self.log_alpha = nn.Parameter(torch.empty(group_set.num_groups).normal_(mean, 1e-2))
        self.temperature = temperature
        self.register_buffer("u", torch.full((group_set.num_groups,), 0.5), persistent=False)
        self.frozen = False  # after the exact finish: the test-time gate in training too

    def draw(self) -> None:
        """New uniform noise ``u ~ U(ε, 1 − ε)`` for the next forward pass."""
        self.u = torch.empty_like(self.u).uniform_(EPSILON, 1 - EPSILON)

    def forward(self) -> Tensor:
        if self.training and not self.frozen:
            u = self.u
            s = torch.sigmoid((torch.log(u) - torch.log(1 - u) + self.log_alpha) / self.temperature)
        else:
            s = torch.sigmoid(self.log_alpha)
        return torch.clamp(s * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)

    @torch.no_grad()
    def test_time(self) -> Tensor:
        """``clamp(σ(log α)(ζ − γ) + γ, 0, 1)``."""
        return torch.clamp(torch.sigmoid(self.log_alpha) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)

    def keep(self) -> Tensor:
        return self.test_time() > 0

    def prob_open(self, log_alpha: Tensor | None = None) -> Tensor:
        """``P(z ≠ 0) = σ(log α − β log(−γ/ζ))`` (the code's ``1 − cdf_qz(0)``), of the
        gate's ``log α`` or of ``log_alpha``."""
        log_alpha = self.log_alpha if log_alpha is None else log_alpha
        logit_q0 = math.log(-GAMMA / ZETA)
        q0 = torch.sigmoid(logit_q0 * self.temperature - log_alpha).clamp(EPSILON, 1 - EPSILON)
        return 1 - q0

    def open_share(self) -> Tensor:
        """``P(z ≠ 0)`` mapped onto ``[0, 1]`` over the clamp range of ``log α``:
        ``(P − P_lo)/(P_hi − P_lo)``, ``P_lo, P_hi`` at ``log α = log 10⁻², log 10²``.

        ``P_lo`` is 0.047 (β = 2/3): a gate as closed as it gets still counts 4.7 % open
        in ``P``, so an expected sparsity above 0.953 is out of reach (a 0.98 target
        raised ``λ`` for the whole phase and left most gates tied at the floor)."""
        bounds = self.prob_open(torch.tensor(LOG_ALPHA_RANGE, device=self.log_alpha.device))
        return (self.prob_open() - bounds[0]) / (bounds[1] - bounds[0])


class HardConcrete(BudgetedMethod):
    """The hard-concrete L0 baseline (see the module docstring for the formulas).

    Args:
        model: the model.
        groups: ``"l0_units"`` (the reference: Linear input units, conv feature maps) or
            another group kind.
        lam: ``λ``, per parameter; one number, or one per group set (the reference's
            ``--lambas``). The starting scale with ``target``.
        weight_decay: ``w``, the L2 prior precision inside the penalty (5e-4 in the recipe).
        n_train: ``N`` (default: the training-set size of the run).
        droprate_init: ``d``, one number or one per group set.
        temperature: ``β`` (2/3).
        penalty: ``"l0"`` (expected number of parameters) or ``"flops"`` (each group's
            FLOPs instead of its size, mean weight 1).
        target: a sparsity or ``{"flops": f}`` budget that ``λ`` is scaled to reach,
            measured on the test-time gates (the final model).
        schedule, controller, finish, multiplier_lr, quadratic_lr, begin_step, end_step:
            how the target is reached (:mod:`learnprune.methods.budgeted`,
            :mod:`learnprune.budget`); ``multiplier_lr`` and ``quadratic_lr`` are ``η₁``
            and ``η₂`` (default ``η₁``) of the ``"lagrangian"`` controller (``η₁`` default
            10: with Adam at 10⁻³ log α moves about 10⁻³ a step whatever λ, so the gain
            matters little; the exact finish lands the budget).
        lam_rate: ``η`` of the ``"integral"`` controller (``k_i / 100`` of ``"pi"``).
        gate_lr: learning rate of ``log α`` (follows the schedule). Default: the weights',
            except with a target and a phase of ``T = end_step − begin_step`` steps where
            ``(log 10² − log 10⁻²)/T > 10⁻³``: that rate, so ``log α`` (which Adam moves by
            about its rate a step) can cross its clamp range once within the phase; at
            Adam 10⁻³ a 225-step phase moved it by 0.2, the budget was reached only by
            the exact finish and the ranking it kept was poor (300 steps at 0.95: 0.67
            test accuracy, 0.79 at this rate, 0.041). Phases of 9210 steps and more keep
            the weights' rate.
        exclude: layers left dense; input_shape: one example's shape; example_inputs: the
            model's real inputs for coupled groups and the classifier (token ids).
    """

    name = "hardconcrete"
    recipe_options = (
        "groups",
        "lam",
        "weight_decay",
        "n_train",
        "droprate_init",
        "temperature",
        "penalty",
        "lam_rate",
        "gate_lr",
        "exclude",
        *BUDGET_OPTIONS,
    )

    def __init__(
        self,
        model: nn.Module,
        groups: str | Sequence[GroupSet] = "l0_units",
        *,
        lam: float | Sequence[float] = 1.0,
        weight_decay: float = 5e-4,
        n_train: int = 60000,
        droprate_init: float | Sequence[float] = 0.5,
        temperature: float = 2.0 / 3.0,
        penalty: str = "l0",
        target: float | Mapping[str, float] | None = None,
        lam_rate: float = 2e-5,
        gate_lr: float | None = None,
        exclude: Sequence[str] = (),
        input_shape: Sequence[int] | None = None,
        example_inputs: Any = None,
        schedule: str = "cubic",
        controller: str = "lagrangian",
        finish: str = "exact",
        multiplier_lr: float = 10.0,
        quadratic_lr: float | None = None,
        begin_step: int = 0,
        end_step: int | None = None,
    ) -> None:
        self.weight_decay = validation.non_negative("weight_decay", weight_decay)
        self.n_train = validation.integer("n_train", n_train, minimum=1)
        self.temperature = validation.positive("temperature", temperature)
        self.penalty = validation.choice("penalty", penalty, PENALTIES)
        self.gate_lr = None if gate_lr is None else validation.positive("gate_lr", gate_lr)
        self._lam_option, self._drop_option = lam, droprate_init
        self.set_target(
            target,
            schedule=schedule,
            controller=controller,
            finish=finish,
            multiplier_lr=multiplier_lr,
            quadratic_lr=quadratic_lr,
            begin_step=begin_step,
            end_step=end_step,
        )
        super().__init__(
            model, groups, exclude=exclude, input_shape=input_shape, example_inputs=example_inputs
        )
        # λ_l times the adapted scale; measured on the test-time gates, which close late (log
        # α < −2.4): λ rises until they do, then falls 50 times faster so it does not overshoot
        lam_rate = validation.positive("lam_rate", lam_rate)
        self.setup_budget(1.0, lam_rate, input_shape, down_rate=50 * lam_rate)
        shape = model_input_shape(model, input_shape)
        self._sizes = {s.name: _uniform(s.sizes(weights_only=False)) for s in self.plan.sets}
        traced = {"input_shape": shape, "example_inputs": self.example_inputs}
        self._costs = (
            costs.group_costs(model, self.plan, flops=True, **traced)
            if self.penalty == "flops"
            else dict(self._sizes)
        )
        self._flop_costs = (
            costs.group_costs(model, self.plan, flops=True, normalise=False, **traced)
            if shape is not None or self.example_inputs is not None
            else None
        )
        self._ungated_biases = self._find_ungated_biases()
        self._sets = {s.name: s for s in self.plan.sets}
        self.draw_noise_each_forward()

    # --- gates ------------------------------------------------------------------------
    def validate_plan(self, plan: GroupPlan) -> None:
        """Per-set λ and drop rates, checked before any gate is attached."""
        self.lams = _per_set("lam", self._lam_option, plan, validation.non_negative)
        self._drop_rates = _per_set("droprate_init", self._drop_option, plan, _open_fraction)

    def make_gate(self, group_set: GroupSet) -> HardConcreteGate:
        return HardConcreteGate(group_set, self._drop_rates[group_set.name], self.temperature)

    def _find_ungated_biases(self) -> list[tuple[nn.Module, str]]:
        """Biases of gated layers that no group holds (Linear biases under input-unit
        gates): the reference's ``½ w b²`` term."""
        held = {piece.param for s in self.plan.sets for piece in s.slices}
        layers = {piece.module for s in self.plan.sets for piece in s.slices}
        found = []
        for layer in sorted(layers):
            module = self.model.get_submodule(layer)
            name = f"{layer}.bias" if layer else "bias"
            if getattr(module, "bias", None) is not None and name not in held:
                found.append((module, "bias"))
        return found

    @property
    def lam_scale(self) -> float:
        """The factor the budget controller puts on every ``λ_l`` (1 without a target)."""
        return self.current_lam

    # --- the common interface -------------------------------------------------------
    def optimizer_groups(self) -> list[dict[str, Any]]:
        group: dict[str, Any] = {"params": self.parameters(), "weight_decay": 0.0}
        rate = self.gate_lr if self.gate_lr is not None else self.phase_gate_lr()
        if rate is not None:
            group["base_lr"] = rate
        return [group]

    def phase_gate_lr(self) -> float | None:
        """``gate_lr``'s default with a target: ``(log 10² − log 10⁻²)/T`` for a phase of
        ``T`` steps where that exceeds 10⁻³, else ``None`` (the weights' rate)."""
        if self.schedule is None or self.schedule.end is None:
            return None
        low, high = LOG_ALPHA_RANGE
        rate = (high - low) / (self.schedule.end - self.schedule.begin)
        return rate if rate > SLOW_GATE_LR else None

    def regularizer(self) -> Tensor:
        """``R`` of the module docstring, with gradients for ``log α`` and the weights."""
        total = torch.zeros((), device=model_device(self.model))
        decay = 0.5 * self.weight_decay
        for group_set in self.plan.sets:
            gate = self.gates[group_set.name]
            p_open = gate.prob_open()
            per_group = costs.weighted_sum(self._costs[group_set.name], p_open) * (
                self.lams[group_set.name] * self.lam_scale
            )
            if decay:
                squares = {
                    piece.param: raw_tensor(
                        self.model.get_submodule(piece.module), piece.attr
                    ).square()
                    for piece in group_set.slices
                }
                per_group = per_group + decay * torch.dot(p_open, group_set.gather(squares))
            total = total + per_group
        if decay:
            for module, attr in self._ungated_biases:
                total = total + decay * raw_tensor(module, attr).square().sum()
        return total / self.n_train

    def after_step(self) -> None:
        super().after_step()
        with torch.no_grad():
            for gate in self.gates.values():
                gate.log_alpha.clamp_(*LOG_ALPHA_RANGE)
        self.update_lambda()

    @torch.no_grad()
    def tracked_budget(self) -> float:
        """The *expected* budget, ``Σ_g c_g (1 − P̃_g)`` over the whole (as CoFi pruning's
        constraint), ``P̃_g`` the gate's :meth:`~HardConcreteGate.open_share` (``P(z ≠ 0)``
        over its reachable range, so every target is reachable): test-time gates close
        only once ``log α < −2.4``, so the final model's budget moves in one late jump that
        a controller cannot track."""
        if self.kept_cost is not None:  # groups share weights: Π of the probabilities
            return self.removed_share(
                {name: gate.open_share() for name, gate in self.gates.items()}
            )
        removed = float(
            sum(
                costs.weighted_sum(self.budget_costs[name], 1.0 - gate.open_share())
                for name, gate in self.gates.items()
            )
        )
        whole = self.budget_total if self.budget_kind == "flops" else self.total_weights
        return removed / whole if whole else 0.0

    def gate_scores(self, gate: GroupGate) -> Tensor:
        """``log α − log((1 − d)/d)``: what ``log α`` learned, from the mean it started at.

        Within a set this ranks as ``log α`` (and ``P(z ≠ 0)``, monotone in it) does; across
        sets it does not let the initial drop rates decide: a phase of a few hundred steps
        moves ``log α`` by about ``lr · steps`` (0.2-0.4 at Adam 10⁻³), less than the
        reference MLP's head start of ``log 4 = 1.39`` for its input layer (``d = 0.2``),
        which then took the whole budget and left the next layers one unit each."""
        return gate.log_alpha - gate.init_mean

    def fix_gate(self, gate: GroupGate, keep: Tensor) -> None:
        """Kept: gate ``z̄ = 1`` (``log α = log 100``), with the group's tensors scaled by
        the test-time gate they had, ``θ ← z̄ θ`` where ``z̄ > 0`` (so a kept group computes
        what it computed, ``1 · z̄θ = z̄ · θ``, and fine-tunes at the weights' full rate
        instead of ``z̄`` times it: a short phase leaves kept gates near ``z̄ ≈ 0.1-0.5``);
        dropped: ``log 0.01`` (gate 0)."""
        low, high = LOG_ALPHA_RANGE
        open_value = gate.test_time()
        fold = torch.where(keep & (open_value > 0), open_value, torch.ones_like(open_value))
        for piece in self._sets[gate.group_set_name].slices:
            weight = raw_tensor(self.model.get_submodule(piece.module), piece.attr)
            weight.mul_(scatter(fold, piece).to(weight.dtype))
        log_alpha = gate.log_alpha
        log_alpha.copy_(
            torch.where(keep, torch.full_like(log_alpha, high), torch.full_like(log_alpha, low))
        )

    @torch.no_grad()
    def expected_l0_and_flops(self) -> tuple[float, float | None]:
        """``E[L0] = Σ_g P(z_g ≠ 0) n_g`` over the gated parameters, plus the ungated biases
        of gated layers (as the reference counts them), and ``E[FLOPs] = Σ_g P(z_g ≠ 0) ·
        2 · MACs_g`` over the gated weights (``None`` without an input shape)."""
        l0 = float(sum(raw_tensor(m, a).numel() for m, a in self._ungated_biases))
        flops = 0.0 if self._flop_costs is not None else None
        for name, gate in self.gates.items():
            p_open = gate.prob_open()
            l0 += float(costs.weighted_sum(self._sizes[name], p_open))
            if self._flop_costs is not None:
                flops += 2 * float(costs.weighted_sum(self._flop_costs[name], p_open))
        return l0, flops

    def epoch_end(self, epoch: int, evaluate: Callable[[], tuple[float, float]]) -> dict[str, Any]:
        l0, flops = self.expected_l0_and_flops()
        out: dict[str, Any] = {"expected_l0": l0, "lam_scale": self.lam_scale}
        if flops is not None:
            out["expected_gated_flops"] = flops
        return out

    def describe(self) -> str:
        lams = sorted(set(self.lams.values()))
        return (
            f"hardconcrete (λ {', '.join(f'{v:g}' for v in lams)}{self.budget_text()}, "
            f"N {self.n_train}, weight decay {self.weight_decay:g}, β {self.temperature:.3g}): "
            f"{self.plan.describe()}"
        )

    @classmethod
    def from_options(
        cls, model: nn.Module, options: Mapping[str, Any], context: TrainingContext
    ) -> HardConcrete:
        options = cls.budget_steps(dict(options), context)
        if "n_train" not in options and context.train_size is not None:
            options["n_train"] = context.train_size
        return cls(model, input_shape=context.input_shape, **options)


def _uniform(values: Tensor) -> Tensor | float:
    """One number when every group has the same value (no device copy in the hot path)."""
    return float(values[0]) if values.numel() and bool((values == values[0]).all()) else values


def _open_fraction(label: str, value: Any) -> float:
    """A number strictly between 0 and 1 (a drop rate)."""
    number = validation.real(label, value)
    if not 0.0 < number < 1.0:
        raise ConfigError(f"{label} must lie in (0, 1), got {value!r}")
    return number


def _per_set(
    label: str,
    value: float | Sequence[float],
    plan: GroupPlan,
    check: Callable[[str, Any], float],
) -> dict[str, float]:
    """One number for every set, or a list with one per set: ``{set name: value}``."""
    if isinstance(value, int | float):
        values = [check(label, value)] * len(plan.sets)
    else:
        values = [check(label, v) for v in value]
        if len(values) != len(plan.sets):
            names = ", ".join(s.name for s in plan.sets)
            raise ConfigError(
                f"{label} has {len(values)} values for {len(plan.sets)} group sets ({names})"
            )
    return {s.name: v for s, v in zip(plan.sets, values, strict=True)}

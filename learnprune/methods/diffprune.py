"""DiffPrune — deterministic approximate binary gates with L0 regularization (Shulman 2020).

The paper's body was not available (../shared/METHODS.md section 3): what follows meets
every claim of its abstract, and each detail it leaves open is a named option.

**Gate.** One real parameter ``φ_g`` per group ``g``. The pre-gate variable is

    x_g = φ_g                      (mode "deterministic", and every mode in eval)
    x_g = φ_g + σ ε_g,  ε_g ~ Logistic(0, 1)           (mode "stochastic", training)

and the gate an approximately binary, differentiable transform ``z_g = T(x_g)`` with exact
plateaus: ``T(x) = 0`` for ``x ≤ a``, ``T(x) = 1`` for ``x ≥ b``, monotone in between
(:data:`TRANSFORMS`):

* ``"linear"``:  ``T(x) = clamp(½ + x / (2τ), 0, 1)``,  band ``[a, b] = [−τ, τ]``;
* ``"sigmoid"``: ``T(x) = clamp(σ(x/τ)(ζ − γ) + γ, 0, 1)`` with ``γ = −0.1, ζ = 1.1`` (the
  hard-concrete stretch, without its noise), band ``[τ log(−γ/ζ), τ log((1−γ)/(ζ−1))]``.

As ``τ → 0`` the gate tends to ``1[x > 0]``: with noise, a Bernoulli variable with
``P(z = 1) = P(x > 0)``, the abstract's deterministic transformation of a real random
variable. The parameters seen by the network are ``θ̃ = θ ⊙ z`` (broadcast over each group),
or for activation gates the outputs ``a ⊙ z``.

**Re-opening.** ``T`` is flat on its plateaus, so a closed gate would get no gradient. The
backward pass uses ``∂z/∂x = T'(x)`` inside the band and ``ℓ · T'(centre)`` on the plateaus
(``leak = ℓ``, default 0.1): task gradient and penalty both flow, scaled alike, and a gate
re-opens when the task gains more from it than the penalty costs. ``φ`` is clamped to
``[2a, 2b]`` after every step so a closed gate stays within reach.

**Surrogate L0**, one global ``λ``, each gate weighted by the parameters it removes::

    R = Σ_g n_g z_g                          (deterministic: the exact count at the plateaus)
    R = Σ_g n_g P(z_g ≠ 0) = Σ_g n_g σ((φ_g − a) / σ)          (stochastic)

    loss = L_task + λ R / N                 (N = the model's prunable weights)

so ``λ`` is the loss the whole dense network is worth (``λ R / N = λ`` × density). With a
FLOPs budget ``n_g`` becomes the group's FLOPs cost (:mod:`learnprune.costs`).
``target=`` adapts ``λ`` to a sparsity or FLOPs budget as for SCL.

**Groups** over parameters (``element``, ``in_channel``, ``out_channel``, ``coupled``,
``l0_units``, custom sets) or over activations (``"activation"``: a gate on every
Conv/Linear layer's output units / feature maps but the classifier's; stochastic gates draw
noise per example there, see :mod:`learnprune.activation_gates`).

**Final model.** Gates at their deterministic value ``T(φ)``; groups with ``z = 0`` are
removed from the masks and the open gates' values are folded into the weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from learnprune import activation_gates, costs, masking, validation
from learnprune.errors import ConfigError
from learnprune.groups import GroupPlan, GroupSet
from learnprune.masking import GatedTensor, GroupGate
from learnprune.methods.base import model_device
from learnprune.methods.budgeted import BUDGET_OPTIONS, BudgetedMethod

STRETCH_LOW, STRETCH_HIGH = -0.1, 1.1  # γ, ζ of the "sigmoid" transform


@dataclass(frozen=True)
class GateTransform:
    """An approximately binary transform ``T(x) = clamp(value(x), 0, 1)``.

    ``value`` is monotone increasing; ``slope`` its derivative; ``band(τ) = (a, b)`` the
    interval where ``0 < T < 1``.
    """

    name: str
    value: Callable[[Tensor, float], Tensor]
    slope: Callable[[Tensor, float], Tensor]
    band: Callable[[float], tuple[float, float]]


def _sigmoid_slope(x: Tensor, tau: float) -> Tensor:
    s = torch.sigmoid(x / tau)
    return (STRETCH_HIGH - STRETCH_LOW) * s * (1 - s) / tau


TRANSFORMS: dict[str, GateTransform] = {
    "linear": GateTransform(
        "linear",
        value=lambda x, tau: torch.div(x, 2 * tau).add_(0.5),  # 0.5 + x / (2τ), one tensor
        slope=lambda x, tau: torch.full_like(x, 1 / (2 * tau)),
        band=lambda tau: (-tau, tau),
    ),
    "sigmoid": GateTransform(
        "sigmoid",
        value=lambda x, tau: torch.sigmoid(x / tau) * (STRETCH_HIGH - STRETCH_LOW) + STRETCH_LOW,
        slope=_sigmoid_slope,
        band=lambda tau: (
            tau * math.log(-STRETCH_LOW / STRETCH_HIGH),
            tau * math.log((1 - STRETCH_LOW) / (STRETCH_HIGH - 1)),
        ),
    ),
}
MODES = ("deterministic", "stochastic")


class _ApproxBinary(torch.autograd.Function):
    """``z = clamp(value(x), 0, 1)``; backward ``T'(x)`` in the band, ``ℓ T'(0)`` outside."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, transform: GateTransform, tau: float, leak: float) -> Tensor:
        z, saved = gate_value(x, transform, tau)
        ctx.transform, ctx.tau, ctx.leak = transform, tau, leak
        ctx.save_for_backward(saved)
        return z

    @staticmethod
    def backward(ctx: Any, grad_z: Tensor) -> tuple[Tensor, None, None, None]:
        (saved,) = ctx.saved_tensors
        return grad_z * gate_slope(saved, ctx.transform, ctx.tau, ctx.leak), None, None, None


def gate_value(x: Tensor, transform: GateTransform, tau: float) -> tuple[Tensor, Tensor]:
    """``z = T(x)`` (exact zeros and ones), and what :func:`gate_slope` needs of the forward
    pass: ``z`` itself for ``"linear"``, ``x`` for the others."""
    z = transform.value(x, tau).clamp_(0.0, 1.0)
    return z, (z if transform.name == "linear" else x)


def gate_slope(saved: Tensor, transform: GateTransform, tau: float, leak: float) -> Tensor:
    """``∂z/∂x``: ``T'(x)`` inside the band, ``ℓ T'(0)`` on the plateaus (``saved`` from
    :func:`gate_value`)."""
    centre = float(transform.slope(torch.zeros(()), tau))
    if transform.name == "linear":
        # inside the band ⟺ 0 < z < 1: hardtanh's backward kernel passes its gradient there
        # and writes zeros elsewhere, straight into floats, in one pass (a bool mask and
        # torch.where cost several times more on CPU); the same values as
        # 1[z (1 − z) > 0] · T'(0)(1 − ℓ) + ℓ T'(0)
        inside = torch.ops.aten.hardtanh_backward(
            saved.new_full((), centre * (1 - leak)).expand(saved.shape), saved, 0.0, 1.0
        )
        return inside.add_(centre * leak)
    low, high = transform.band(tau)
    inside = (saved > low) & (saved < high)
    return torch.where(inside, transform.slope(saved, tau), leak * centre)


def approx_binary(x: Tensor, transform: GateTransform, tau: float, leak: float = 0.1) -> Tensor:
    """``T(x)`` with exact zeros and ones, and the leaky gradient that lets gates re-open."""
    return _ApproxBinary.apply(x, transform, tau, leak)


class _GatedWeight(torch.autograd.Function):
    """``W̃ = W ⊙ T(x)`` for element gates (``x`` shaped like ``W``, flat), and the set's
    open mass ``m = Σ_g c_g T(x_g)`` that the surrogate L0 counts, in one node. The backward
    pass gets both outputs' gradients at once and gives::

        ∂L/∂W = g ⊙ z,        ∂L/∂x = (g ⊙ W + c · ∂L/∂m) · T'(x)        (g = ∂L/∂W̃)

    with the leaky ``T'`` of :func:`gate_slope` applied once to the sum, as the separate
    nodes ``W * z`` and ``Σ c z`` over :func:`approx_binary` give it. ``z`` and ``saved``
    come in computed from ``x`` (:func:`gate_value`). ``cost=None``: no mass (stochastic
    gates count ``P(z ≠ 0)`` instead); ``m`` is then 0.
    """

    @staticmethod
    def forward(
        ctx: Any,
        weight: Tensor,
        x: Tensor,
        z: Tensor,
        saved: Tensor,
        cost: costs.Cost | None,
        transform: GateTransform,
        tau: float,
        leak: float,
    ) -> tuple[Tensor, Tensor]:
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(weight, z, saved)
        ctx.cost, ctx.transform, ctx.tau, ctx.leak = cost, transform, tau, leak
        mass = z.new_zeros(()) if cost is None else costs.weighted_sum(cost, z)
        return weight * z.view(weight.shape), mass

    @staticmethod
    def backward(
        ctx: Any, grad: Tensor | None, grad_mass: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        weight, z, saved = ctx.saved_tensors
        unused = (None,) * 7  # z, saved, cost, transform, tau, leak: no gradient
        grad_weight = None
        if ctx.needs_input_grad[0] and grad is not None:
            grad_weight = grad * z.view(grad.shape)
        if not ctx.needs_input_grad[1] or (grad is None and grad_mass is None):
            return grad_weight, *unused
        grad_z = None if grad is None else (grad * weight).view(z.shape)
        if grad_mass is not None and ctx.cost is not None:
            cost = ctx.cost
            term = (
                grad_mass * cost
                if isinstance(cost, float)
                else cost.to(z.device, z.dtype) * grad_mass
            )
            grad_z = term.expand(z.shape).clone() if grad_z is None else grad_z.add_(term)
        if grad_z is None:
            return grad_weight, *unused
        slope = gate_slope(saved, ctx.transform, ctx.tau, ctx.leak)
        return grad_weight, grad_z.mul_(slope), *unused[1:]


def logistic_noise(shape: Sequence[int], like: Tensor) -> Tensor:
    """``ε = log u − log(1 − u)``, ``u ~ U(0, 1)``: standard logistic noise."""
    u = torch.empty(tuple(shape), device=like.device, dtype=like.dtype).uniform_(1e-6, 1 - 1e-6)
    return torch.log(u) - torch.log1p(-u)


class DiffPruneGate(GroupGate):
    """The gate parameters ``φ`` of one group set; ``forward()`` gives ``z = T(x)``.

    In stochastic mode the noise ``ε`` is drawn once per forward pass of the model
    (:meth:`draw`, called by the method's pre-hook), so every member tensor of a set sees
    the same ``z``.
    """

    def __init__(
        self,
        group_set: GroupSet,
        *,
        transform: GateTransform,
        tau: float,
        init: float,
        mode: str,
        sigma: float,
        leak: float,
    ) -> None:
        super().__init__(group_set)
        self.phi = nn.Parameter(torch.full((group_set.num_groups,), float(init)))
        self.transform, self.tau, self.mode, self.sigma, self.leak = (
            transform,
            tau,
            mode,
            sigma,
            leak,
        )
        self.register_buffer("noise", torch.zeros(group_set.num_groups), persistent=False)
        self._last: tuple[Tensor, int] | None = None  # z of the last forward pass, φ's version
        self._last_mass: tuple[Tensor, int] | None = None  # fused path: Σ c z, φ's version
        self._value: tuple[Tensor, Tensor, int] | None = None  # z, saved, φ's version
        self.cost: costs.Cost | None = None
        """``c_g``, what the surrogate L0 counts per group (set by the method)."""
        self.frozen = False  # after the exact finish: the deterministic gate, no noise

    @property
    def stochastic(self) -> bool:
        return self.mode == "stochastic"

    def draw(self) -> None:
        """New noise ``ε`` for the next forward pass."""
        self.noise = logistic_noise(self.noise.shape, self.phi.detach())

    def forward(self) -> Tensor:
        x = self.phi
        if self.stochastic and self.training and not self.frozen:
            x = x + self.sigma * self.noise
            return approx_binary(x, self.transform, self.tau, self.leak)
        z = approx_binary(x, self.transform, self.tau, self.leak)
        if torch.is_grad_enabled():
            self._last = (z, self.phi._version)
        return z

    def gated(self, weight: Tensor, member: GatedTensor) -> Tensor:
        """``W ⊙ z``; element gates in one fused node with the open mass
        (:class:`_GatedWeight`)."""
        if not member.elementwise:
            return super().gated(weight, member)
        x = self.phi
        noisy = self.stochastic and not self.frozen
        if noisy and self.training:
            x = x + self.sigma * self.noise
            z, saved = gate_value(x.detach(), self.transform, self.tau)
        else:  # afresh at every forward pass (a write to φ its version counter does not
            # see, e.g. through ``.data``, must not leave stale gates); the regularizer and
            # the budget of the same step share it (:meth:`current_value`)
            z, saved = gate_value(x.detach(), self.transform, self.tau)
            self._value = (z, saved, self.phi._version)
        cost = None if noisy else self.cost
        out, mass = _GatedWeight.apply(
            weight, x, z, saved, cost, self.transform, self.tau, self.leak
        )
        if cost is not None and torch.is_grad_enabled():
            self._last_mass = (mass, self.phi._version)
        return out

    def current_value(self) -> tuple[Tensor, Tensor]:
        """``T(φ)`` without noise and what its slope needs (:func:`gate_value`), computed
        once for each value of ``φ`` (any in-place change of ``φ`` is a new value)."""
        phi = self.phi
        cached = self._value
        if (
            cached is not None
            and cached[2] == phi._version
            and cached[0].device == phi.device
            and cached[0].dtype == phi.dtype
        ):
            return cached[0], cached[1]
        z, saved = gate_value(phi.detach(), self.transform, self.tau)
        self._value = (z, saved, phi._version)
        return z, saved

    def fused_mass(self) -> Tensor | None:
        """``Σ_g c_g z_g`` of the last forward pass through :meth:`gated`, while ``φ`` has
        not changed since (``None`` otherwise); its gradient reaches ``φ`` through that
        pass's node."""
        last = self._last_mass
        if last is not None and last[1] == self.phi._version and torch.is_grad_enabled():
            return last[0]
        return None

    def per_example(self, batch: int) -> Tensor:
        """``z`` of shape ``(B, G)``, one noise draw per example (activation gates)."""
        if self.frozen:
            return self.deterministic().expand(batch, self.num_groups)
        x = self.phi + self.sigma * logistic_noise((batch, self.num_groups), self.phi.detach())
        return approx_binary(x, self.transform, self.tau, self.leak)

    @torch.no_grad()
    def deterministic(self) -> Tensor:
        """``T(φ)``: the gate values of the final model."""
        return self.transform.value(self.phi, self.tau).clamp(0.0, 1.0)

    def keep(self) -> Tensor:
        return self.deterministic() != 0

    def open_mass(self) -> Tensor:
        """What the surrogate L0 counts per group: ``z_g`` (deterministic) or
        ``P(z_g ≠ 0) = σ((φ_g − a)/σ)`` (stochastic); differentiable in ``φ``."""
        if self.stochastic and not self.frozen:
            low, _high = self.transform.band(self.tau)
            return torch.sigmoid((self.phi - low) / self.sigma)
        last = self._last
        if last is not None and last[1] == self.phi._version and torch.is_grad_enabled():
            return last[0]  # the forward pass's z: one node, its gradient already on the graph
        return approx_binary(self.phi, self.transform, self.tau, self.leak)


class DiffPrune(BudgetedMethod):
    """Deterministic approximate binary gates over any groups, surrogate L0, one global λ.

    Args:
        model: the model.
        groups: a parameter group kind (``"element"``, ``"in_channel"``, ``"out_channel"``,
            ``"coupled"``, ``"l0_units"``), custom group sets, or ``"activation"`` (gates on
            the output units / feature maps of every Conv/Linear layer but the classifier).
        lam: ``λ``, the loss the dense network's parameters are worth (see the module
            docstring); the starting value with ``target``.
        mode: ``"deterministic"`` (no noise; the default) or ``"stochastic"``.
        transform: ``"linear"`` (default) or ``"sigmoid"`` (:data:`TRANSFORMS`).
        tau: ``τ``, the half-width of the linear band (default 0.05: with Adam at 10⁻³ a
            gate crosses the band in about 100 steps, so most gates sit exactly at 0 or 1;
            at 0.5 LeNet-300-100 reached 21 % sparsity in 5 epochs at λ 1, at 0.05 86 %).
        sigma: ``σ``, the scale of the logistic noise in stochastic mode (default ``τ``: a
            smaller noise leaves ``P(z ≠ 0)`` saturated and the penalty without gradient).
        leak: ``ℓ``, the plateau gradient relative to the band centre's.
        init: starting ``φ`` (default ``b``, the band's upper edge: every gate exactly 1).
        gate_lr: learning rate of the gates (default: the weights'; follows the schedule).
        per_example: with activation gates in stochastic mode, one noise draw per example.
        target: a sparsity or ``{"flops": f}`` budget that ``λ`` is driven to reach.
        schedule, controller, finish, multiplier_lr, quadratic_lr, begin_step, end_step:
            how the target is reached (:mod:`learnprune.methods.budgeted`,
            :mod:`learnprune.budget`); ``multiplier_lr`` and ``quadratic_lr`` are ``η₁``
            and ``η₂`` (default ``η₁``) of the ``"lagrangian"`` controller (``η₁`` default
            3: 300-step LeNet-300-100 run at 0.95: 0.972 when the finish came (1: 0.922,
            10: 0.998); 5 epochs: 0.959, mean gap 5.4 points).
        lam_rate: ``η`` of the ``"integral"`` controller (``k_i / 100`` of ``"pi"``).
        lam_down_rate: ``"integral"``'s ``η`` past the budget (default ``50 η``): a closed gate
            seldom reopens, so λ must fall fast once the target is reached or the sparsity
            overshoots it (LeNet-300-100, target 0.9: 96.3% with a symmetric η).
        exclude: layers left dense (``fnmatch`` patterns).
        input_shape: one example's shape (coupled groups, FLOPs budgets).
        example_inputs: the model's real inputs for coupled groups and the classifier
            (token ids for an embedding), instead of a random example of ``input_shape``.
    """

    name = "diffprune"
    recipe_options = (
        "lam",
        "groups",
        "mode",
        "transform",
        "tau",
        "sigma",
        "leak",
        "init",
        "gate_lr",
        "per_example",
        "lam_rate",
        "lam_down_rate",
        "exclude",
        *BUDGET_OPTIONS,
    )

    def __init__(
        self,
        model: nn.Module,
        groups: str | Sequence[GroupSet] = "element",
        *,
        lam: float = 1.0,
        mode: str = "deterministic",
        transform: str = "linear",
        tau: float = 0.05,
        sigma: float = 0.05,
        leak: float = 0.1,
        init: float | None = None,
        gate_lr: float | None = None,
        per_example: bool = True,
        target: float | Mapping[str, float] | None = None,
        lam_rate: float = 2e-5,
        lam_down_rate: float | None = None,
        exclude: Sequence[str] = (),
        input_shape: Sequence[int] | None = None,
        example_inputs: Any = None,
        schedule: str = "cubic",
        controller: str = "lagrangian",
        finish: str = "exact",
        multiplier_lr: float = 3.0,
        quadratic_lr: float | None = None,
        begin_step: int = 0,
        end_step: int | None = None,
    ) -> None:
        self.lam = validation.non_negative("lam", lam)
        self.mode = validation.choice("mode", mode, MODES)
        self.transform = TRANSFORMS[validation.choice("transform", transform, tuple(TRANSFORMS))]
        self.tau = validation.positive("tau", tau)
        self.sigma = validation.positive("sigma", sigma)
        self.leak = validation.non_negative("leak", leak)
        low, high = self.transform.band(self.tau)
        self.phi_range = (2 * low, 2 * high)
        self.init = high if init is None else validation.real("init", init)
        self.gate_lr = None if gate_lr is None else validation.positive("gate_lr", gate_lr)
        if not isinstance(per_example, bool):
            raise ConfigError(f"per_example must be true or false, got {per_example!r}")
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
        self.on_activations = isinstance(groups, str) and groups.strip().lower() in (
            "activation",
            "activations",
        )
        self.per_example = per_example and self.on_activations and self.mode == "stochastic"
        self._handles: list = []
        super().__init__(
            model,
            "out_channel" if self.on_activations else groups,
            exclude=exclude,
            input_shape=input_shape,
            example_inputs=example_inputs,
        )
        lam_rate = validation.positive("lam_rate", lam_rate)
        down = 50 * lam_rate if lam_down_rate is None else lam_down_rate
        self.setup_budget(self.lam, lam_rate, input_shape, down_rate=down)
        for name, gate in self.gates.items():
            gate.cost = self.budget_costs[name]
        if self.mode == "stochastic":
            self.draw_noise_each_forward()

    # --- gates ------------------------------------------------------------------------
    def validate_plan(self, plan: GroupPlan) -> None:
        if self.on_activations:
            activation_gates.check_model(self.model, plan)

    def make_gate(self, group_set: GroupSet) -> DiffPruneGate:
        return DiffPruneGate(
            group_set,
            transform=self.transform,
            tau=self.tau,
            init=self.init,
            mode=self.mode,
            sigma=self.sigma,
            leak=self.leak,
        )

    def attach_gates(self, model: nn.Module, plan: GroupPlan) -> dict[str, GroupGate]:
        if not self.on_activations:
            return masking.attach(model, plan, self.make_gate)
        gates = {s.name: self.make_gate(s) for s in plan.sets}
        sampler = (lambda gate, batch: gate.per_example(batch)) if self.per_example else None
        self._handles = activation_gates.attach(model, plan, gates, sampler)
        return gates

    # --- the common interface -------------------------------------------------------
    def optimizer_groups(self) -> list[dict[str, Any]]:
        group: dict[str, Any] = {"params": self.parameters(), "weight_decay": 0.0}
        if self.gate_lr is not None:
            group["base_lr"] = self.gate_lr
        return [group]

    def surrogate_l0(self) -> Tensor:
        """``R = Σ_g n_g z_g`` (or ``Σ_g n_g P(z_g ≠ 0)``), differentiable in ``φ``."""
        total = torch.zeros((), device=model_device(self.model))
        for name, gate in self.gates.items():
            mass = gate.fused_mass()
            if mass is None:
                mass = costs.weighted_sum(self.budget_costs[name], gate.open_mass())
            total = total + mass
        return total

    def regularizer(self) -> Tensor:
        """``λ R / N``."""
        return self.surrogate_l0() * (self.current_lam / max(self.total_weights, 1))

    def after_step(self) -> None:
        super().after_step()
        low, high = self.phi_range
        with torch.no_grad():
            for gate in self.gates.values():
                gate.phi.clamp_(low, high)
        self.update_lambda()

    def gate_scores(self, gate: GroupGate) -> Tensor:
        return gate.phi  # z = T(φ), monotone in φ

    def fix_gate(self, gate: GroupGate, keep: Tensor) -> None:
        """Kept: ``φ`` unchanged where ``z > 0`` (its value stays folded), ``b`` (``z = 1``)
        where the finish opens it; dropped: ``φ = 2a`` (``z = 0``)."""
        _low, high = self.transform.band(self.tau)
        phi = gate.phi
        opened = torch.where(gate.deterministic() > 0, phi, torch.full_like(phi, high))
        phi.copy_(torch.where(keep, opened, torch.full_like(phi, self.phi_range[0])))

    def masks(self) -> dict[str, Tensor]:
        if self.on_activations:
            return activation_gates.read_masks(self.plan, self.gates)
        return super().masks()

    def finalize(self) -> nn.Module:
        if self.on_activations:
            self.stop_noise_draws()
            activation_gates.fold(self.model, self.plan, self.gates, self._handles)
            self._handles = []
            self.gates = {}
            return self.model
        return super().finalize()

    def epoch_end(self, epoch: int, evaluate: Callable[[], tuple[float, float]]) -> dict[str, Any]:
        out: dict[str, Any] = {"lam": self.current_lam}
        with torch.no_grad():
            values = torch.cat([g.deterministic() for g in self.gates.values()])
        out["gates_open"] = int((values > 0).sum())
        out["gates_between"] = int(((values > 0) & (values < 1)).sum())
        return out

    def describe(self) -> str:
        where = "activations" if self.on_activations else "parameters"
        return (
            f"diffprune (λ {self.lam:g}{self.budget_text()}, {self.mode}, {self.transform.name} "
            f"τ {self.tau:g}, on {where}): {self.plan.describe()}"
        )


__all__ = ["TRANSFORMS", "DiffPrune", "DiffPruneGate", "GateTransform", "approx_binary"]

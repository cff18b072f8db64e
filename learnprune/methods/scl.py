"""SCL — Sparse Connectivity Learning (Tang et al., IEEE TNNLS 2022, arXiv 2201.05020).

Every prunable weight is re-parameterised with a binary mask of a trainable real mask
variable ``S`` (one per group):

    W̃ = W ⊙ M,        M = H(S) = 1[S > 0]

The forward pass, in training and in eval, uses exactly ``W ⊙ H(S)``: there is no soft
mask anywhere. ``H`` has zero derivative almost everywhere, so the backward pass uses a
straight-through estimator with a proxy derivative ``h``: ``∂M/∂S := h(S)``. The paper
proves ``h`` must be *positive* for the mask variables to converge, and adopts the
identity STE (``h ≡ 1``); ``leaky_relu`` (``h = 1`` for ``s > 0``, ``a`` below) and
``softplus`` (``h = σ(s)``) also satisfy it. ``relu`` (``h = 1[s > 0]``) breaks the principle
— a closed mask gets no gradient and can never re-open — and is here for the ablation only.

Objective, one global ``λ``, no per-layer knob:

    J = L(W ⊙ M) + λ · Σ_l Σ_i M_{l,i}            (λ per kept connection)

so with the identity STE and element groups

    ∂J/∂S = W ⊙ ∂L/∂W̃ + λ                         (``normalize="none"``)

Per-feature normalisation (the paper: mask gradients of different features are very
unbalanced). The task part ``g = W ⊙ ∂L/∂W̃`` of a *feature* ``j`` is rescaled before the λ
term is added, so λ keeps one global meaning (a gradient of ``λ`` per connection against
task gradients of unit size):

    g_j ← g_j / (‖g_j‖ + ε),   then   ∂J/∂S = g + λ · h(S)

with ``‖·‖`` the L2 norm (``"l2"``, the default), the root mean square (``"rms"``: each
entry is then of size ~1 whatever the layer's width) or the largest entry (``"max"``). A
feature is one output unit: a row of a Linear weight, one output filter of a conv. With
``"l2"`` an entry of a feature with ``n`` connections is of size ``~1/√n``, so the same λ
prunes wide-fan-in layers harder; on LeNet-300-100 it gave the best error at equal
sparsity of the four (BENCHMARKS.md, SCL ablations), hence the default. For
structured groups (channels, coupled, custom) the mask variable ``S_g`` stands for the
``n_g`` connections of group ``g``: the exact gradient is ``Σ_{i∈g} W_i ∂L/∂W̃_i +
λ n_g h(S_g)``; normalised, the per-connection task gradient ``g_g / n_g`` of the whole group
set (one layer, or one coupled channel set) is one feature and ``λ h(S_g)`` is added.

The normalisation and the λ term are applied to the *complete* gradient of a step, right
before the optimizer uses it: :meth:`SCL.before_optimizer_step`, which a hook on every
``torch.optim`` optimizer's ``step()`` calls (and learnprune's loop and its Lightning and
Hugging Face callbacks call explicitly). So gradients accumulated over several
``backward()`` calls, or averaged over the ranks by DDP, are normalised once, as the
gradient of the whole batch: ``normalise(mean_r g_r)``, not ``mean_r normalise(g_r)``.
:meth:`SCL.regularizer` only *reports* ``λ · Σ M`` (it carries no gradient). A loop whose
gradients are computed inside ``optimizer.step(closure)`` calls
``method.before_optimizer_step()`` in the closure, after ``backward()``.

Beyond the paper: ``target=`` a sparsity (``0.95``) or a FLOPs budget
(``{"flops": 0.3}``, the fraction of dense FLOPs kept) to which ``λ`` is adapted in log
space (:mod:`learnprune.budget`); with a FLOPs budget each connection's λ term is weighted
by its FLOPs. ``groups="out_channel"`` or ``"coupled"`` gives structured SCL.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from learnprune import costs, validation
from learnprune.errors import ConfigError
from learnprune.groups import GroupSet
from learnprune.masking import GatedTensor, GroupGate
from learnprune.methods.budgeted import BUDGET_OPTIONS, BudgetedMethod

ProxyDerivative = Callable[[Tensor, float], Tensor]

STE_PROXIES: dict[str, ProxyDerivative] = {
    "identity": lambda s, _a: torch.ones_like(s),
    "leaky_relu": lambda s, a: torch.where(s > 0, torch.ones_like(s), torch.full_like(s, a)),
    "softplus": lambda s, _a: torch.sigmoid(s),
    "relu": lambda s, _a: (s > 0).to(s.dtype),  # zero region: breaks the principle (ablation)
}
"""``h(s)``, the proxy derivative ``∂M/∂S`` of each straight-through estimator."""

POSITIVE_STES = ("identity", "leaky_relu", "softplus")
NORMALIZATIONS = ("none", "l2", "rms", "max")


def positive(x: Tensor) -> Tensor:
    """``1[x > 0]`` in ``x``'s dtype. Written straight into a float tensor: building a bool
    tensor and converting it is about 8 times slower on CPU."""
    return torch.gt(x, 0, out=torch.empty_like(x))


class _StepWithSTE(torch.autograd.Function):
    """``M = 1[S > 0]`` forward; ``∂L/∂S = ∂L/∂M · h(S)`` backward."""

    @staticmethod
    def forward(ctx: Any, mask_variable: Tensor, ste: str, slope: float) -> Tensor:
        ctx.save_for_backward(mask_variable)
        ctx.ste, ctx.slope = ste, slope
        return positive(mask_variable)

    @staticmethod
    def backward(ctx: Any, grad_mask: Tensor) -> tuple[Tensor, None, None]:
        if ctx.ste == "identity":  # h ≡ 1: the gradient passes straight through
            return grad_mask, None, None
        (mask_variable,) = ctx.saved_tensors
        return grad_mask * STE_PROXIES[ctx.ste](mask_variable, ctx.slope), None, None


def binary_step(mask_variable: Tensor, ste: str = "identity", slope: float = 0.1) -> Tensor:
    """``H(S) = 1[S > 0]`` with the straight-through estimator ``ste`` in the backward pass."""
    return _StepWithSTE.apply(mask_variable, ste, slope)


class _MaskedWeight(torch.autograd.Function):
    """``W̃ = W ⊙ M`` for element masks, one node for what ``W * binary_step(S)`` builds
    three of. ``M = 1[S > 0]`` comes in computed (shaped like ``W``); the backward pass
    gives both gradients at once::

        ∂L/∂W = g ⊙ M,        ∂L/∂S = (g ⊙ W) · h(S)        (g = ∂L/∂W̃)
    """

    @staticmethod
    def forward(
        ctx: Any, weight: Tensor, mask_variable: Tensor, mask: Tensor, ste: str, slope: float
    ) -> Tensor:
        ctx.save_for_backward(weight, mask_variable, mask)
        ctx.ste, ctx.slope = ste, slope
        return weight * mask

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None, None]:
        weight, mask_variable, mask = ctx.saved_tensors
        grad_weight = grad * mask if ctx.needs_input_grad[0] else None
        grad_mask_variable = None
        if ctx.needs_input_grad[1]:
            grad_mask_variable = (grad * weight).view(mask_variable.shape)
            if ctx.ste != "identity":  # h ≡ 1 needs no product
                grad_mask_variable.mul_(STE_PROXIES[ctx.ste](mask_variable, ctx.slope))
        return grad_weight, grad_mask_variable, None, None, None


class SCLMask(GroupGate):
    """The mask variables ``S`` of one group set; ``forward()`` gives ``M = H(S)``.

    With ``keep_one`` the group with the largest ``S`` stays open even when ``S ≤ 0`` (its
    gradient is the STE's as usual): a structured set that closes completely disconnects the
    network, after which no gradient can reopen anything.
    """

    def __init__(
        self, group_set: GroupSet, init: float, ste: str, slope: float, keep_one: bool = False
    ) -> None:
        super().__init__(group_set)
        self.mask_variable = nn.Parameter(torch.full((group_set.num_groups,), float(init)))
        self.ste = ste
        self.slope = slope
        self.keep_one = keep_one
        self.last_mask: Tensor | None = None  # M of the last forward pass, for the regularizer
        self._mask_version = -1
        self.cost: costs.Cost | None = None
        """``c_g``, what the penalty counts per kept group (set by the method)."""
        self.kept_cost: Tensor | None = None
        """``Σ_g c_g M_g`` of :attr:`last_mask`, summed while the mask is still in cache."""

    def forward(self) -> Tensor:
        mask = binary_step(self.mask_variable, self.ste, self.slope)
        if self.keep_one:
            mask = mask + self._guard(mask.detach())
        self._remember(mask.detach())
        return mask

    def _remember(self, mask: Tensor) -> None:
        self.last_mask, self._mask_version = mask, self.mask_variable._version
        self.kept_cost = None if self.cost is None else costs.weighted_sum(self.cost, mask)

    def _guard(self, mask: Tensor) -> Tensor:
        """``1 − M`` at the group with the largest ``S``, zero elsewhere."""
        guard = torch.zeros_like(mask)
        best = int(self.mask_variable.detach().argmax())
        guard[best] = 1.0 - mask[best]
        return guard

    def current_mask(self) -> Tensor:
        """``M = 1[S > 0]`` now (0/1 floats), computed once for each value of ``S`` (the
        forward pass, the regularizer and the budget share it)."""
        variable = self.mask_variable
        last = self.last_mask
        if (
            last is not None
            and self._mask_version == variable._version
            and last.device == variable.device
            and last.dtype == variable.dtype
        ):
            return last
        mask = positive(variable.detach())
        if self.keep_one:
            mask = mask + self._guard(mask)
        self._remember(mask)
        return mask

    def gated(self, weight: Tensor, member: GatedTensor) -> Tensor:
        """``W ⊙ M``; element masks in one fused node (:class:`_MaskedWeight`)."""
        if not member.elementwise or self.keep_one:
            return super().gated(weight, member)
        # M from S afresh at every forward pass (a write to S that its version counter
        # does not see, e.g. through ``.data``, must not leave a stale mask); the
        # regularizer and the budget of the same step share it (:meth:`current_mask`).
        mask = positive(self.mask_variable.detach())
        self._remember(mask)
        mask = mask.view(member.shape)
        return _MaskedWeight.apply(weight, self.mask_variable, mask, self.ste, self.slope)

    def keep(self) -> Tensor:
        return self.current_mask() != 0


def normalize_per_feature(
    grad: Tensor, features: int, norm: str, eps: float = 1e-12, *, in_place: bool = False
) -> Tensor:
    """``g_j / (‖g_j‖ + ε)`` for the ``features`` equal slices of a flat gradient."""
    if norm == "none":
        return grad
    rows = grad.view(features, -1)
    if norm == "max":
        scale = rows.abs().amax(dim=1, keepdim=True)
    else:
        scale = torch.linalg.vector_norm(rows, dim=1, keepdim=True)
        if norm == "rms":
            scale = scale / rows.shape[1] ** 0.5
    scale = scale.add_(eps).reciprocal_()
    return rows.mul_(scale).view(grad.shape) if in_place else (rows * scale).view(grad.shape)


class SCL(BudgetedMethod):
    """Sparse Connectivity Learning: binary masks of learned mask variables, identity STE,
    per-feature normalised mask gradients, one global penalty on kept connections.

    Args:
        model: the model; its Conv/Linear weights get masks.
        groups: ``"element"`` (the paper), or ``"out_channel"``, ``"in_channel"``,
            ``"coupled"``, custom group sets (structured SCL).
        lam: ``λ``, the penalty per kept connection (the starting value with ``target``).
        ste: ``"identity"`` (the paper's choice), ``"leaky_relu"``, ``"softplus"``, or
            ``"relu"`` (zero-region STE, for the ablation only).
        ste_slope: ``a``, the slope below zero of ``leaky_relu``.
        normalize: ``"l2"``, ``"rms"``, ``"max"`` or ``"none"`` (see the module docstring).
        init: starting value ``c > 0`` of every mask variable (all connections on).
        mask_lr: learning rate of the mask variables (default: the weights' rate; it follows
            the same schedule).
        mask_momentum: SGD momentum of the mask variables (default: the weights').
        target: a sparsity in ``[0, 1)`` or ``{"sparsity": s}`` / ``{"flops": f}`` (the
            fraction of dense FLOPs to keep); ``λ`` is then driven to reach it
            (:mod:`learnprune.methods.budgeted`); ``lam`` is the controller's scale.
        lam_rate: ``η`` of the ``"integral"`` controller and ``k_i / 100`` of ``"pi"``
            (change of ``log λ`` per step per percentage point of budget gap).
        schedule, controller, finish, multiplier_lr, quadratic_lr, begin_step, end_step:
            how the target is reached (:mod:`learnprune.methods.budgeted`,
            :mod:`learnprune.budget`); ``multiplier_lr`` and ``quadratic_lr`` are ``η₁``
            and ``η₂`` of the ``"lagrangian"`` controller (defaults 10 and 100: 300-step
            LeNet-300-100 run at 0.95: 0.952 when the finish came, against 0.867 at
            ``η₁ = 0.05`` and 0.989 at 1; the PI controller 0.991, the integral one 0.018;
            ``η₂ = 100`` rather than ``η₁`` damps the early oscillation, mean gap 14.8 ->
            8.3 points).
        keep_one: structured sets keep their best group open (beyond the paper: a set that
            closes completely disconnects the network for good).
        exclude: layers left dense (``fnmatch`` patterns).
        input_shape: one example's shape (for coupled groups and FLOPs budgets).
        example_inputs: the model's real inputs for coupled groups and the classifier
            (token ids for an embedding), instead of a random example of ``input_shape``.
    """

    name = "scl"
    recipe_options = (
        "lam",
        "groups",
        "ste",
        "ste_slope",
        "normalize",
        "init",
        "mask_lr",
        "mask_momentum",
        "lam_rate",
        "keep_one",
        "exclude",
        *BUDGET_OPTIONS,
    )

    def __init__(
        self,
        model: nn.Module,
        groups: str | Sequence[GroupSet] = "element",
        *,
        lam: float = 0.005,
        ste: str = "identity",
        ste_slope: float = 0.1,
        normalize: str = "l2",
        init: float = 1.0,
        mask_lr: float | None = None,
        mask_momentum: float | None = None,
        target: float | Mapping[str, float] | None = None,
        lam_rate: float = 2e-5,
        keep_one: bool = True,
        exclude: Sequence[str] = (),
        input_shape: Sequence[int] | None = None,
        example_inputs: Any = None,
        schedule: str = "cubic",
        controller: str = "lagrangian",
        finish: str = "exact",
        multiplier_lr: float = 10.0,
        quadratic_lr: float = 100.0,
        begin_step: int = 0,
        end_step: int | None = None,
    ) -> None:
        self.ste = validation.choice("ste", ste, tuple(STE_PROXIES))
        self.ste_slope = validation.positive("ste_slope", ste_slope)
        self.normalize = validation.choice("normalize", normalize, NORMALIZATIONS)
        self.init = validation.positive("init", init)
        self.lam = validation.non_negative("lam", lam)
        self.mask_lr = None if mask_lr is None else validation.positive("mask_lr", mask_lr)
        self.mask_momentum = (
            None
            if mask_momentum is None
            else validation.non_negative("mask_momentum", mask_momentum)
        )
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
        if not isinstance(keep_one, bool):
            raise ConfigError(f"keep_one must be true or false, got {keep_one!r}")
        self.keep_one = keep_one
        super().__init__(
            model, groups, exclude=exclude, input_shape=input_shape, example_inputs=example_inputs
        )
        self.setup_budget(self.lam, lam_rate, input_shape)
        for name, gate in self.gates.items():
            gate.cost = self.budget_costs[name]
        self.features = {s.name: _feature_count(s) for s in self.plan.sets}
        self._processors = {name: self._make_processor(name) for name in self.gates}
        self._pending: set[str] = set()  # sets with a new task gradient not yet processed
        self._hooks = [
            gate.mask_variable.register_post_accumulate_grad_hook(self._mark_pending(name))
            for name, gate in self.gates.items()
        ]
        self._step_hook = register_optimizer_step_pre_hook(_process_before_step(weakref.ref(self)))
        weakref.finalize(self, self._step_hook.remove)

    # --- gates ------------------------------------------------------------------------
    def make_gate(self, group_set: GroupSet) -> SCLMask:
        keep_one = self.keep_one and group_set.kind != "element"
        return SCLMask(group_set, self.init, self.ste, self.ste_slope, keep_one)

    def _mark_pending(self, set_name: str) -> Callable[[Tensor], None]:
        def hook(_mask_variable: Tensor) -> None:
            self._pending.add(set_name)

        return hook

    def before_optimizer_step(self) -> None:
        """Normalise the task gradient of every mask variable and add the λ term (once per
        step, whatever number of ``backward()`` calls accumulated it)."""
        for name in sorted(self._pending):
            self._processors[name](self.gates[name].mask_variable)
        self._pending.clear()
        super().before_optimizer_step()  # the warm-up drops these gradients

    def _make_processor(self, set_name: str) -> Callable[[Tensor], None]:
        group_set = next(s for s in self.plan.sets if s.name == set_name)
        structured = group_set.kind != "element"

        cost = self.budget_costs[set_name]
        sizes = group_set.sizes().clamp(min=1)
        if self.normalize == "none":
            lam_weight: Tensor | float = cost  # λ · cost_g, the exact gradient
            task_scale: Tensor | float = 1.0
        elif structured:  # per connection: g_g / n_g normalised, λ · cost_g / n_g
            lam_weight = cost / sizes
            task_scale = 1.0 / sizes
        else:
            lam_weight, task_scale = cost, 1.0
        features = self.features[set_name]

        @torch.no_grad()
        def hook(mask_variable: Tensor) -> None:
            grad = mask_variable.grad
            if grad is None:
                return
            if not isinstance(task_scale, float):
                grad.mul_(task_scale.to(grad.device, grad.dtype))
            normalize_per_feature(grad, features, self.normalize, in_place=True)
            weight = (
                lam_weight
                if isinstance(lam_weight, float)
                else lam_weight.to(grad.device, grad.dtype)
            )
            if self.ste == "identity":
                grad.add_(self.current_lam * weight)
            else:
                proxy = STE_PROXIES[self.ste](mask_variable.detach(), self.ste_slope)
                grad.add_(proxy.mul_(self.current_lam * weight))

        return hook

    def _kept_cost(self, name: str, gate: SCLMask) -> Tensor:
        """``Σ_g cost_g · M_g`` of one set, as a 0-dim tensor (summed once for each ``M``)."""
        mask = gate.current_mask()
        if gate.kept_cost is None:
            gate.kept_cost = costs.weighted_sum(self.budget_costs[name], mask)
        return gate.kept_cost

    # --- the common interface -------------------------------------------------------
    def optimizer_groups(self) -> list[dict[str, Any]]:
        group: dict[str, Any] = {"params": self.parameters(), "weight_decay": 0.0}
        if self.mask_lr is not None:
            group["base_lr"] = self.mask_lr
        if self.mask_momentum is not None:
            group["momentum"] = self.mask_momentum
        return [group]

    def regularizer(self) -> Tensor:
        """``λ · Σ_g cost_g · M_g`` (reported only; its gradient is applied by the hook)."""
        with torch.no_grad():
            total = sum(self._kept_cost(name, gate) for name, gate in self.gates.items())
        return total * self.current_lam

    def after_step(self) -> None:
        super().after_step()
        self.update_lambda()

    def kept_indicator(self, gate: GroupGate) -> Tensor:
        return gate.current_mask()  # M of the last forward pass when S has not changed

    def gate_scores(self, gate: GroupGate) -> Tensor:
        return gate.mask_variable  # M = 1[S > 0]: S is the score

    def fix_gate(self, gate: GroupGate, keep: Tensor) -> None:
        """``S = +c`` where kept, ``−c`` where dropped (``c`` the initial value)."""
        gate.mask_variable.copy_(torch.where(keep, self.init, -self.init))

    def finish_protects(self, group_set: GroupSet) -> bool:
        return self.keep_one and group_set.kind != "element"

    def finalize(self) -> nn.Module:
        self._step_hook.remove()
        return super().finalize()

    def describe(self) -> str:
        return (
            f"scl (λ {self.lam:g}{self.budget_text()}, ste {self.ste}, "
            f"normalize {self.normalize}): {self.plan.describe()}"
        )


def _process_before_step(method: weakref.ref[SCL]) -> Callable[..., None]:
    """A pre-hook for every optimizer's ``step()``: the SCL method's pending mask gradients
    processed first (a weak reference: the hook does not keep the method alive). A step
    given a closure computes its gradients inside, after this hook: such loops (Lightning)
    call :meth:`SCL.before_optimizer_step` themselves once the closure's backward is done."""

    def hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        positional = args[1:] if args and args[0] is optimizer else args  # (self, closure)
        if any(a is not None for a in positional) or kwargs.get("closure") is not None:
            return  # the gradients are computed inside step(): the loop calls us after them
        scl = method()
        if scl is not None and scl._pending:
            scl.before_optimizer_step()

    return hook


def _feature_count(group_set: GroupSet) -> int:
    """Number of features the normalisation treats separately: output units for element
    sets, the whole set for structured ones."""
    if group_set.kind == "element":
        return group_set.slices[0].shape[0]
    return 1

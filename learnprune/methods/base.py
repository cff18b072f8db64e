"""The interface every pruning method keeps.

::

    method = SomeMethod(model, groups="element", exclude=["fc3"], ...)  # attaches gates
    optimizer = SGD(method.model_parameters() + method.parameters(), ...)
    loss = task_loss + method.regularizer()
    loss.backward(); optimizer.step(); method.after_step()
    method.masks()        # {parameter name: bool keep mask}, readable at any time
    method.finalize()     # bake the masks into the weights, remove the parametrizations

A method attaches one gate per group set when it is built (see :mod:`learnprune.masking`),
so ``model(x)`` runs the gated network from then on. Its schedule counts the calls to
``after_step()``; ``state_dict()`` holds that count and the gates, so a run resumes exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from learnprune import masking, validation
from learnprune.accounting import prunable_modules
from learnprune.errors import CheckpointError, ConfigError
from learnprune.groups import GroupPlan, GroupSet, build_groups
from learnprune.phases import Phases


@dataclass(frozen=True)
class TrainingContext:
    """What a method built from a recipe needs to know about the run that will train it."""

    epochs: int
    steps_per_epoch: int
    total_steps: int
    input_shape: tuple[int, ...] | None = None
    pretrained: bool = False
    train_size: int | None = None
    """Number of training examples (``N`` of the hard-concrete penalty)."""
    phases: Phases | None = None
    """The run's phases in epochs (:mod:`learnprune.phases`); ``None``: each method's own
    ``begin_epoch``/``end_epoch`` (or ``prune_epoch``) place its phase."""

    @property
    def phase_bounds(self) -> tuple[int, int] | None:
        """``(W, W + L)`` in steps: where mask learning begins and where fine-tuning begins
        (``None`` without phases)."""
        if self.phases is None:
            return None
        return self.steps(self.phases.learn_begin), self.steps(self.phases.learn_end)

    def steps(self, epochs: float) -> int:
        """The step reached after ``epochs`` (fractional) epochs; with ``max_steps`` the
        run is compressed into ``total_steps`` and so are the method's schedules."""
        return round(epochs / self.epochs * self.total_steps)

    def phase_steps(
        self, options: dict[str, Any], *, allow_equal: bool, reason: str = ""
    ) -> tuple[int, int]:
        """``(begin_step, end_step)`` of a method's phase: the run's learning phase
        ``[W, W + L)`` when it has :attr:`phases`, else from the recipe options
        ``begin_epoch`` (default 0) and ``end_epoch`` (default three quarters of the run),
        both popped from ``options``; ``end_step`` is at least ``begin_step + 1``.

        Raises:
            ConfigError: an epoch out of range, ``end_epoch`` after the last epoch, or
                ``begin_epoch`` after ``end_epoch`` (or equal to it, unless
                ``allow_equal``); ``reason`` ends that message. With phases: a
                ``begin_epoch``/``end_epoch`` beside them, or no learning phase (unless
                ``allow_equal``).
        """
        if self.phases is not None:
            self.phases.refuse_timing(options)
            begin_step, end_step = self.phase_bounds  # type: ignore[misc]
            if begin_step == end_step and not allow_equal:
                raise ConfigError(
                    f"the phases have no mask learning (learn = {self.phases.learn:g} epochs)"
                    + reason
                )
            return begin_step, max(end_step, begin_step + 1)
        begin = validation.non_negative("begin_epoch", options.pop("begin_epoch", 0))
        end_given = "end_epoch" in options
        end = validation.positive("end_epoch", options.pop("end_epoch", 0.75 * self.epochs))
        if end > self.epochs:
            raise ConfigError(f"end_epoch {end:g} is after the last epoch {self.epochs}")
        if begin > end or (begin == end and not allow_equal):
            raise ConfigError(
                f"begin_epoch {begin:g} is {'after' if begin > end else 'not before'} "
                f"end_epoch {end:g}"
                + ("" if end_given else " (the default: three quarters of the run)")
                + reason
            )
        return self.steps(begin), max(self.steps(end), self.steps(begin) + 1)


class PruningMethod:
    """Base class: group sets, their gates, a step counter, and the common interface.

    Subclasses set ``name``, implement :meth:`make_gate`, and override the hooks they need.
    """

    name: ClassVar[str] = "method"
    has_masks: ClassVar[bool] = True
    saves_initial_weights: ClassVar[bool] = False
    """Whether a run keeps the model's starting weights (``init.pt``, for lottery tickets)."""
    supports_n_of_m: ClassVar[bool] = False
    recipe_options: ClassVar[tuple[str, ...]] = ()
    """Option names a recipe may give (what :meth:`from_options` accepts)."""

    def __init__(
        self,
        model: nn.Module,
        groups: str | Sequence[GroupSet] = "element",
        *,
        exclude: Sequence[str] = (),
        input_shape: Sequence[int] | None = None,
        example_inputs: Any = None,
    ) -> None:
        """Build the group plan (:func:`~learnprune.groups.build_groups`: ``exclude``,
        ``input_shape`` or the model's real ``example_inputs`` for ``coupled`` groups and
        the classifier) and attach the gates. A plan the method refuses, or a model that
        does not run on the given input, is refused before the model is touched."""
        self.model = model
        self.example_inputs = example_inputs
        """The model's real inputs given at construction (``None``: ``input_shape`` or
        none); budgets trace FLOPs on them."""
        self.step = 0
        self.total_weights = sum(m.weight.numel() for _n, m in prunable_modules(model))
        if self.has_masks:
            self.plan = build_groups(
                model,
                groups,
                exclude=exclude,
                input_shape=input_shape,
                example_inputs=example_inputs,
            )
            if not self.supports_n_of_m and any(s.n_of_m for s in self.plan.sets):
                raise ConfigError(f"{self.name} does not support n:m groups")
            self.validate_plan(self.plan)  # before the model is touched
            self.gates: dict[str, masking.GroupGate] = self.attach_gates(model, self.plan)
        else:
            self.plan = GroupPlan([])
            self.gates = {}

    # --- what subclasses provide -------------------------------------------------------
    def validate_plan(self, plan: GroupPlan) -> None:
        """Refuse (with a ConfigError) a plan the method cannot work with, before any gate
        is attached, so a refused method leaves the model as it was."""

    def attach_gates(self, model: nn.Module, plan: GroupPlan) -> dict[str, masking.GroupGate]:
        """Build the gates and put them in the forward pass (default: parametrizations of
        the member tensors, :func:`~learnprune.masking.attach`)."""
        return masking.attach(model, plan, self.make_gate)

    def make_gate(self, group_set: GroupSet) -> masking.GroupGate:
        """The gate for one group set (default: a fixed keep mask, all kept)."""
        return masking.FixedMask(group_set)

    @classmethod
    def from_options(
        cls, model: nn.Module, options: Mapping[str, Any], context: TrainingContext
    ) -> PruningMethod:
        """Build from recipe options (epochs rather than steps); see each method."""
        return cls(model, **options)

    # --- the common interface ----------------------------------------------------------
    def parameters(self) -> list[nn.Parameter]:
        """The method's own learnable tensors (mask variables, gate logits)."""
        seen: dict[int, nn.Parameter] = {}
        for gate in self.gates.values():
            for param in gate.parameters():
                seen.setdefault(id(param), param)
        return list(seen.values())

    def model_parameters(self) -> list[nn.Parameter]:
        """The model's own trainable tensors (the raw weights under the gates)."""
        return masking.model_weights(self.model, self.parameters())

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """Parameter groups for the method's own tensors (no weight decay by default). A
        group may carry ``base_lr``, its own rate, which follows the run's schedule."""
        own = self.parameters()
        return [{"params": own, "weight_decay": 0.0}] if own else []

    def external_optimizer_groups(self) -> list[dict[str, Any]]:
        """:meth:`optimizer_groups` for an optimizer that learnprune's loop does not drive
        (Lightning, the Hugging Face Trainer): a group's own rate ``base_lr`` becomes its
        ``lr``, which that loop's schedule then scales like every group's."""
        groups = []
        for group in self.optimizer_groups():
            group = dict(group)
            if "base_lr" in group:
                group["lr"] = float(group.pop("base_lr"))
            groups.append(group)
        return groups

    def build_optimizer(self, config: Any) -> torch.optim.Optimizer | None:
        """The optimizer to train with, for methods that are one (DessiLBI); ``None``: the
        engine builds SGD or Adam over :meth:`model_parameters` and :meth:`optimizer_groups`."""
        return None

    def epoch_end(self, epoch: int, evaluate: Callable[[], tuple[float, float]]) -> dict[str, Any]:
        """Called after each epoch's evaluation with a function that evaluates the model on
        the test set as it is; returns extra metrics for that epoch's line."""
        return {}

    def final_metrics(self, evaluate: Callable[[], tuple[float, float]]) -> dict[str, Any]:
        """Extra results measured before :meth:`finalize` (for ``final.json``)."""
        return {}

    def regularizer(self) -> Tensor:
        """A scalar added to the task loss (zero for methods without one)."""
        return torch.zeros((), device=model_device(self.model))

    def before_optimizer_step(self) -> None:
        """Called once per step when its gradients are complete (after every ``backward()``
        of the step and, under DDP, their average over the ranks) and before
        ``optimizer.step()``: methods that transform gradients do it here (SCL)."""

    def after_step(self) -> None:
        """Called once after every optimizer step: schedules, clamps, prox steps."""
        self.step += 1

    def masks(self) -> dict[str, Tensor]:
        """``{parameter name (unmasked model): bool keep mask}`` for every gated tensor."""
        return masking.read_masks(self.model)

    def finalize(self) -> nn.Module:
        """Bake the masks (and any gate values) into the weights; remove the gates."""
        self.stop_noise_draws()
        masking.finalize(self.model)
        self.gates = {}
        return self.model

    def draw_noise_each_forward(self) -> None:
        """For stochastic gates (with a ``draw()`` method): new noise before every forward
        pass of the model in training mode, so all member tensors of a set see one draw."""
        self._noise_hook = self.model.register_forward_pre_hook(self._draw_noise)

    def _draw_noise(self, module: nn.Module, _inputs: object) -> None:
        if module.training:
            for gate in self.gates.values():
                gate.draw()

    def stop_noise_draws(self) -> None:
        """Remove the hook of :meth:`draw_noise_each_forward` (nothing if there is none)."""
        hook = getattr(self, "_noise_hook", None)
        if hook is not None:
            hook.remove()
            self._noise_hook = None

    def sparsity(self) -> float:
        """Current fraction of zero Conv/Linear weights under the masks (see accounting)."""
        zeros = sum(
            int((~mask).sum())
            for name, mask in self.masks().items()
            if name.endswith("weight") and mask.dim() >= 2
        )
        return zeros / self.total_weights if self.total_weights else 0.0

    def describe(self) -> str:
        """A short human summary of the method and what it prunes."""
        return f"{self.name}: {self.plan.describe()}" if self.has_masks else self.name

    def state_dict(self) -> dict[str, Any]:
        """Step count and gate states; enough, with the model's weights, to resume."""
        return {
            "method": self.name,
            "step": self.step,
            "gates": {name: gate.state_dict() for name, gate in self.gates.items()},
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (raises CheckpointError on a mismatch)."""
        if state.get("method") != self.name:
            raise CheckpointError(
                f"checkpoint holds method {state.get('method')!r}, not {self.name!r}"
            )
        saved_gates = state.get("gates", {})
        if set(saved_gates) != set(self.gates):
            raise CheckpointError("checkpoint's group sets do not match this model's")
        self.step = int(state["step"])
        for name, gate in self.gates.items():
            try:
                gate.load_state_dict(saved_gates[name])
            except RuntimeError as err:
                raise CheckpointError(f"gate {name}: {err}") from err
        self.load_extra_state(state.get("extra", {}))

    def extra_state(self) -> dict[str, Any]:
        """Subclass state beyond the step and the gates."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`extra_state`."""


class FixedMaskMethod(PruningMethod):
    """Base of methods whose masks are set from outside the gradient (magnitude, GMP,
    lottery tickets): :class:`~learnprune.masking.FixedMask` gates whose zeros are stored in
    the weights after every step, so training skips the product ``W ⊙ M``."""

    def __init__(self, model: nn.Module, groups: Any = "element", **kwargs: Any) -> None:
        super().__init__(model, groups, **kwargs)
        self._zero_targets = masking.zero_targets(model)

    def make_gate(self, group_set: GroupSet) -> masking.FixedMask:
        return masking.FixedMask(group_set)

    def set_masks(self, keep: Mapping[str, Tensor]) -> None:
        """New keep masks ``{set name: bool (G,)}``; their zeros go into the weights."""
        for name, gate in self.gates.items():
            if name in keep:
                gate.set(keep[name])
        masking.store_zeros(self._zero_targets, force=True)

    def after_step(self) -> None:
        """Count the step; keep the masks' zeros stored in the weights (see
        :func:`~learnprune.masking.store_zeros`)."""
        super().after_step()
        masking.store_zeros(self._zero_targets)


class Dense(PruningMethod):
    """No pruning: the dense baseline, trained by the same engine."""

    name = "dense"
    has_masks = False

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)

    @classmethod
    def from_options(
        cls, model: nn.Module, options: Mapping[str, Any], context: TrainingContext
    ) -> Dense:
        return cls(model)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters (CPU for a model without any)."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")

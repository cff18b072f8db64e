"""Magnitude baselines: one-shot magnitude pruning and gradual magnitude pruning (GMP).

Both rank groups by the magnitude of their weights,

    s_g = sqrt( (1/n_g) · Σ_{i ∈ g} w_i² )          (``score="rms"``, the default)

(``|w_i|`` for element groups; ``"l1"`` uses the mean ``|w_i|``, ``"l2"`` the plain norm
``‖w_g‖₂``), computed on the *gated* weights so a group once dropped stays dropped, and keep
the best groups under the budget of :mod:`learnprune.selection` (the target is the fraction
of all Conv/Linear weights removed, as reported).

* :class:`Magnitude` — Han et al. 2015: prune once, at step ``prune_at`` (``0`` = now, for a
  trained model), then fine-tune with the mask fixed. With element groups and the global
  scope its masks equal ``torch.nn.utils.prune.global_unstructured(..., L1Unstructured)``.
* :class:`GMP` — Zhu & Gupta 2017, "To prune, or not to prune": every ``frequency`` steps
  between ``begin_step`` (``t₀``) and ``end_step`` (``t₀ + nΔt``) prune to

      s_t = s_f + (s_i − s_f) · (1 − (t − t₀) / (nΔt))³

  so the network loses many weights early, when they are redundant, and few at the end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from learnprune import selection, validation
from learnprune.errors import ConfigError
from learnprune.groups import GroupPlan, GroupSet
from learnprune.masking import effective_parameters
from learnprune.methods.base import FixedMaskMethod, TrainingContext

SCORES = ("rms", "l1", "l2")
SCOPES = ("global", "layer")


def magnitude_scores(
    model: nn.Module, sets: Sequence[GroupSet], score: str = "rms"
) -> dict[str, Tensor]:
    """``{set name: s_g}`` from the gated weights of ``model`` (see the module docstring)."""
    weights = {name: tensor.detach() for name, tensor in effective_parameters(model)}
    scores = {}
    for group_set in sets:
        if score == "l1":
            total = group_set.gather({k: v.abs() for k, v in weights.items()}, weights_only=True)
        else:
            total = group_set.gather({k: v.square() for k, v in weights.items()}, weights_only=True)
        sizes = group_set.sizes().to(total.device).clamp(min=1)
        if score == "rms":
            scores[group_set.name] = (total / sizes).sqrt()
        elif score == "l1":
            scores[group_set.name] = total / sizes
        else:
            scores[group_set.name] = total.sqrt()
    return scores


class _MagnitudePruning(FixedMaskMethod):
    """Shared by :class:`Magnitude` and :class:`GMP`: fixed masks set from magnitudes."""

    def __init__(
        self,
        model: nn.Module,
        target: float | None,
        groups: str | Sequence[GroupSet],
        *,
        scope: str,
        score: str,
        exclude: Sequence[str],
        input_shape: Sequence[int] | None,
        example_inputs: Any = None,
    ) -> None:
        self.scope = validation.choice("scope", scope, SCOPES)
        self.score = validation.choice("score", score, SCORES)
        self.target = None if target is None else validation.fraction("target", target)
        self.current_target = 0.0
        super().__init__(
            model, groups, exclude=exclude, input_shape=input_shape, example_inputs=example_inputs
        )

    def validate_plan(self, plan: GroupPlan) -> None:
        n_of_m = [s.n_of_m for s in plan.sets if s.n_of_m is not None]
        if n_of_m:
            n, m = n_of_m[0]
            if self.target is not None:
                raise ConfigError(
                    f"n:m groups fix the sparsity at {1 - n / m:g}; do not pass a target"
                )
            self.target = 0.0
        elif self.target is None:
            raise ConfigError(f"{self.name} needs a target sparsity in [0, 1)")
        selection.check_target(plan, self.target, self.total_weights, self.scope)

    @torch.no_grad()
    def prune_to(self, sparsity: float) -> None:
        """Drop the lowest-magnitude groups so that ``sparsity`` of the weights are removed."""
        scores = magnitude_scores(self.model, self.plan.sets, self.score)
        keep = selection.select(self.plan, scores, sparsity, self.total_weights, self.scope)
        self.set_masks(keep)
        self.current_target = sparsity

    def extra_state(self) -> dict[str, Any]:
        return {"current_target": self.current_target}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.current_target = float(state.get("current_target", 0.0))


class Magnitude(_MagnitudePruning):
    """One-shot magnitude pruning to ``target`` at step ``prune_at``, then fine-tuning.

    Args:
        model: the model to prune (trained already if ``prune_at=0``).
        target: fraction of all Conv/Linear weights to remove (``None`` with ``n:m``).
        groups: ``"element"``, ``"out_channel"``, ``"in_channel"``, ``"coupled"``,
            ``"2:4"``-style ``n:m``, or custom group sets.
        scope: ``"global"`` (one ranking over all layers) or ``"layer"`` (each layer
            loses ``target`` of its weights).
        score: ``"rms"``, ``"l1"`` or ``"l2"`` (see the module docstring).
        prune_at: the step at which to prune; ``0`` prunes now.
        exclude: layers to leave dense (``fnmatch`` patterns).
        input_shape: one example's shape, for ``coupled`` groups.
        example_inputs: the model's real inputs for ``coupled`` groups and the classifier
            (token ids for an embedding), instead of a random example of ``input_shape``.
    """

    name = "magnitude"
    supports_n_of_m = True
    recipe_options = ("target", "groups", "scope", "score", "exclude", "prune_epoch")

    def __init__(
        self,
        model: nn.Module,
        target: float | None = None,
        groups: str | Sequence[GroupSet] = "element",
        *,
        scope: str = "global",
        score: str = "rms",
        prune_at: int = 0,
        exclude: Sequence[str] = (),
        input_shape: Sequence[int] | None = None,
        example_inputs: Any = None,
    ) -> None:
        super().__init__(
            model,
            target,
            groups,
            scope=scope,
            score=score,
            exclude=exclude,
            input_shape=input_shape,
            example_inputs=example_inputs,
        )
        self.prune_at = validation.integer("prune_at", prune_at)
        if self.prune_at == 0:
            self.prune_to(self.target)

    @classmethod
    def from_options(
        cls, model: nn.Module, options: Mapping[str, Any], context: TrainingContext
    ) -> Magnitude:
        """Recipe options; ``prune_epoch`` defaults to 0 from a trained model, else half the
        run; with the run's phases it is the end of the warm-up (``W``: one-shot pruning,
        then learning and fine-tuning with the mask fixed)."""
        options = dict(options)
        if context.phases is not None:
            context.phases.refuse_timing(options)
            options["prune_epoch"] = context.phases.learn_begin
        default_epoch = 0 if context.pretrained else context.epochs / 2
        prune_epoch = validation.non_negative(
            "prune_epoch", options.pop("prune_epoch", default_epoch)
        )
        if prune_epoch > context.epochs:
            raise ConfigError(f"prune_epoch {prune_epoch} is after the last epoch {context.epochs}")
        return cls(
            model, prune_at=context.steps(prune_epoch), input_shape=context.input_shape, **options
        )

    def after_step(self) -> None:
        super().after_step()
        if self.step == self.prune_at:
            self.prune_to(self.target)


class GMP(_MagnitudePruning):
    """Gradual magnitude pruning (Zhu & Gupta 2017) with the cubic schedule.

    Args:
        model: the model, usually trained from scratch with the schedule.
        target: final sparsity ``s_f`` (fraction of all Conv/Linear weights).
        begin_step: ``t₀``, the step of the first pruning.
        end_step: ``t₀ + nΔt``, the step at which ``s_f`` is reached.
        frequency: ``Δt``, steps between two pruning events.
        initial: ``s_i``, the sparsity of the first pruning event.
        groups, scope, score, exclude, input_shape, example_inputs: as for :class:`Magnitude`.
    """

    name = "gmp"
    recipe_options = (
        "target",
        "groups",
        "scope",
        "score",
        "exclude",
        "initial",
        "frequency",
        "begin_epoch",
        "end_epoch",
    )

    def __init__(
        self,
        model: nn.Module,
        target: float,
        groups: str | Sequence[GroupSet] = "element",
        *,
        begin_step: int = 0,
        end_step: int,
        frequency: int = 100,
        initial: float = 0.0,
        scope: str = "global",
        score: str = "rms",
        exclude: Sequence[str] = (),
        input_shape: Sequence[int] | None = None,
        example_inputs: Any = None,
    ) -> None:
        super().__init__(
            model,
            target,
            groups,
            scope=scope,
            score=score,
            exclude=exclude,
            input_shape=input_shape,
            example_inputs=example_inputs,
        )
        self.begin_step = validation.integer("begin_step", begin_step)
        self.end_step = validation.integer("end_step", end_step)
        if self.end_step <= self.begin_step:
            raise ConfigError(f"end_step ({end_step}) must come after begin_step ({begin_step})")
        self.frequency = validation.integer("frequency", frequency, minimum=1)
        self.initial = validation.fraction("initial", initial)
        if self.initial > self.target:
            raise ConfigError(f"initial sparsity {initial} exceeds the target {target}")
        if self.begin_step == 0:
            self.prune_to(self.schedule(0))

    def schedule(self, step: int) -> float:
        """``s_t = s_f + (s_i − s_f)(1 − (t − t₀)/(nΔt))³``, clamped to ``[s_i, s_f]``."""
        progress = min(max((step - self.begin_step) / (self.end_step - self.begin_step), 0.0), 1.0)
        return self.target + (self.initial - self.target) * (1.0 - progress) ** 3

    @classmethod
    def from_options(
        cls, model: nn.Module, options: Mapping[str, Any], context: TrainingContext
    ) -> GMP:
        """Recipe options in epochs: ``begin_epoch`` (default 0), ``end_epoch`` (default
        three quarters of the run), ``frequency`` in steps (default 100)."""
        options = dict(options)
        if options.get("target") is None:
            raise ConfigError("gmp needs a target sparsity in [0, 1), e.g. --target 0.9")
        begin_step, end_step = context.phase_steps(
            options, allow_equal=True, reason="; pruning must begin before it ends"
        )
        return cls(
            model,
            begin_step=begin_step,
            end_step=end_step,
            input_shape=context.input_shape,
            **options,
        )

    def after_step(self) -> None:
        super().after_step()
        if self.begin_step <= self.step <= self.end_step and (
            (self.step - self.begin_step) % self.frequency == 0 or self.step == self.end_step
        ):
            self.prune_to(self.schedule(self.step))

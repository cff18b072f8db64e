"""A budget for learned masks: the target, its schedule, the controller that moves ``λ``.

Learned methods (SCL, DiffPrune, hard-concrete) take a penalty strength ``λ``; users know
the budget instead ("95 % sparsity", "at most 30 % of the FLOPs"). Three pieces
(../shared/METHODS.md section 7):

**Target schedule** over the mask-learning phase ``[t₀, t₁)`` (steps), as GMP's
(Zhu & Gupta 2017), from ``b₀ = 0`` to the budget ``b_f``::

    cubic:     b_t = b_f + (b₀ − b_f)(1 − (t − t₀)/(t₁ − t₀))³
    linear:    b_t = b₀ + (b_f − b₀)(t − t₀)/(t₁ − t₀)
    constant:  b_t = b_f                            (demanded from the first step)

clamped to ``[b₀, b_f]`` outside the phase.

**Controller**, with ``g_t = b_t − b̂_t`` the gap between the scheduled budget and the
achieved one (sparsity, or the fraction of FLOPs removed; ``g > 0``: too dense):

* ``"lagrangian"`` (CoFi pruning, Xia et al. 2022; Sheared-LLaMA, Xia et al. 2023): the
  penalty ``λ₁(k̂ − k_t) + λ₂(k̂ − k_t)²`` on the kept share ``k̂ = 1 − b̂`` is minimised by
  the gates and maximised by ``λ₁, λ₂`` (gradient ascent), so the strength a kept unit
  feels is its derivative, in units of the method's ``λ_ref``::

      λ_t = λ_ref (λ₁ + 2 λ₂ g_t),   λ₁ ← λ₁ + η₁ g_t,   λ₂ ← λ₂ + η₂ g_t²

  ``λ₁`` may turn negative (a reward for kept units) when the network is sparser than the
  schedule, so closed units reopen; it starts at 0, like the schedule.
* ``"pi"``: proportional-integral on ``log λ`` with anti-windup::

      log λ_t = I_t + k_p g_t,   I_{t+1} = clamp(I_t + k_i g_t, log λ_min, log λ_max)

  (the integral stops at the bounds, and is not integrated while the output is saturated
  in the direction of the gap).
* ``"integral"``: the fixed-rate integral controller of earlier versions,
  ``log λ_{t+1} = log λ_t + η (b_t − b̂_t) · 100`` (with its own rate past the budget).

The *exact finish* that ends the phase lives with the methods
(:mod:`learnprune.methods.budgeted`), its ranking here (:func:`exact_keep`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from learnprune import validation
from learnprune.errors import ConfigError

BUDGET_KINDS = ("sparsity", "flops")
SCHEDULES = ("cubic", "linear", "constant")
CONTROLLERS = ("lagrangian", "pi", "integral")
FINISHES = ("exact", "none")


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


@dataclass(frozen=True)
class TargetSchedule:
    """``b_t`` of the module docstring over the phase ``[begin, end)``; ``end=None``: no
    known length, the budget is demanded from ``begin`` on (as ``"constant"``)."""

    final: float
    kind: str = "cubic"
    begin: int = 0
    end: int | None = None
    initial: float = 0.0

    def __post_init__(self) -> None:
        validation.choice("schedule", self.kind, SCHEDULES)
        if self.end is not None and self.end <= self.begin:
            raise ConfigError(
                f"the mask-learning phase must end after it begins (steps {self.begin}, {self.end})"
            )

    def __call__(self, step: int) -> float:
        if self.kind == "constant" or self.end is None:
            return self.final
        progress = min(max((step - self.begin) / (self.end - self.begin), 0.0), 1.0)
        if self.kind == "linear":
            return self.initial + (self.final - self.initial) * progress
        return self.final + (self.initial - self.final) * (1.0 - progress) ** 3


class Controller(Protocol):
    """Moves ``λ`` after each step from the achieved and the scheduled budget."""

    lam: float

    def update(self, achieved: float, target: float) -> float: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


@dataclass
class LambdaController:
    """``"integral"``: multiplicative adaptation of ``λ`` (see the module docstring)."""

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

    def update(self, achieved: float, target: float | None = None) -> float:
        """One step: move ``log λ`` by ``η · (target − achieved)``; return the new ``λ``."""
        if target is not None:
            self.target = target
        gap = self.target - achieved
        rate = self.rate if gap >= 0 or self.down_rate is None else self.down_rate
        log_lam = math.log(self.lam) + rate * gap * 100.0
        self.lam = min(max(math.exp(log_lam), self.lam_min), self.lam_max)
        return self.lam

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "integral",
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


@dataclass
class LagrangianController:
    """``"lagrangian"``: ``λ = λ_ref (λ₁ + 2 λ₂ g)``, ``λ₁ += η₁ g``, ``λ₂ += η₂ g²``."""

    lam_ref: float
    lr: float = 0.05
    """``η₁`` (change of ``λ₁`` per step at a gap of 1, i.e. 100 points)."""
    quadratic_lr: float | None = None
    """``η₂`` (default ``η₁``)."""
    lambda1: float = 0.0
    lambda2: float = 0.0
    lam: float = 0.0

    def __post_init__(self) -> None:
        self.lam_ref = validation.positive("lam", self.lam_ref)
        self.lr = validation.positive("multiplier_lr", self.lr)
        self.quadratic_lr = (
            self.lr
            if self.quadratic_lr is None
            else validation.non_negative("quadratic_lr", self.quadratic_lr)
        )

    def update(self, achieved: float, target: float) -> float:
        gap = target - achieved
        self.lambda1 += self.lr * gap
        self.lambda2 += self.quadratic_lr * gap * gap
        self.lam = self.lam_ref * (self.lambda1 + 2.0 * self.lambda2 * gap)
        return self.lam

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": "lagrangian",
            "lambda1": self.lambda1,
            "lambda2": self.lambda2,
            "lam": self.lam,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.lambda1 = float(state["lambda1"])
        self.lambda2 = float(state["lambda2"])
        self.lam = float(state["lam"])


@dataclass
class PIController:
    """``"pi"``: ``log λ = I + k_p g``, ``I += k_i g`` with anti-windup (module docstring)."""

    lam: float
    gain_i: float = 2e-3
    """``k_i``: change of the integral per step at a gap of 1 point (0.01)."""
    gain_p: float = 0.2
    """``k_p``: ``log λ`` offset at a gap of 1 point."""
    lam_min: float = 1e-8
    lam_max: float = 1e3
    integral: float = 0.0

    def __post_init__(self) -> None:
        self.lam = min(max(validation.positive("lam", self.lam), self.lam_min), self.lam_max)
        self.gain_i = validation.positive("lam_rate", self.gain_i)
        self.gain_p = validation.non_negative("lam_gain", self.gain_p)
        self.integral = math.log(self.lam)

    def update(self, achieved: float, target: float) -> float:
        gap = (target - achieved) * 100.0  # points
        low, high = math.log(self.lam_min), math.log(self.lam_max)
        raw = self.integral + self.gain_p * gap
        saturated = (raw >= high and gap > 0) or (raw <= low and gap < 0)
        if not saturated:
            self.integral = min(max(self.integral + self.gain_i * gap, low), high)
        log_lam = min(max(self.integral + self.gain_p * gap, low), high)
        self.lam = math.exp(log_lam)
        return self.lam

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "pi", "integral": self.integral, "lam": self.lam}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.integral = float(state["integral"])
        self.lam = float(state["lam"])


def make_controller(
    kind: str,
    lam: float,
    final: float,
    *,
    rate: float,
    down_rate: float | None = None,
    multiplier_lr: float = 0.05,
    quadratic_lr: float | None = None,
) -> Controller:
    """The controller named ``kind`` (:data:`CONTROLLERS`) starting from ``λ = lam``."""
    kind = validation.choice("controller", kind, CONTROLLERS)
    lam = max(lam, 1e-8)
    if kind == "lagrangian":
        return LagrangianController(lam, multiplier_lr, quadratic_lr)
    if kind == "pi":
        return PIController(lam, gain_i=rate * 100.0)
    return LambdaController(lam, final, rate, down_rate=down_rate)


def exact_keep(scores: Tensor, cost: Tensor, keep_budget: float, protected: Tensor) -> Tensor:
    """Which groups to keep so that their cost is the largest not above ``keep_budget``,
    by score.

    Groups are kept highest score first (``protected`` ones, ``keep_one``'s, before all);
    ties go to the lower index (a stable sort), so the result is deterministic. Once the
    next group in that order no longer fits, the remaining ones are tried in the same
    order and kept where they still fit (greedy: with unequal costs, e.g. FLOPs, a cheap
    group may fill what an expensive one cannot). With unit costs (element groups under a
    sparsity budget) the kept count is ``⌊keep_budget⌋`` exactly.

    Returns a bool tensor, ``True`` where the group is kept.
    """
    costs = cost.double().cpu()
    order = torch.sort(-scores.detach().double().cpu(), stable=True).indices
    first = protected.cpu()[order]
    order = torch.cat([order[first], order[~first]])
    cumulative = torch.cumsum(costs[order], 0)
    slack = 1e-9 * max(float(cumulative[-1]), 1.0) if len(cumulative) else 0.0
    count = int(torch.searchsorted(cumulative, torch.tensor(keep_budget + slack), right=True))
    count = max(count, int(protected.sum()))
    keep = torch.zeros(scores.numel(), dtype=torch.bool)
    keep[order[:count]] = True
    left = keep_budget + slack - (float(cumulative[count - 1]) if count else 0.0)
    rest = order[count:]
    if len(rest):
        smallest = float(costs[rest].min())
        for index in rest.tolist():
            if left < smallest:
                break
            if costs[index] <= left:
                keep[index] = True
                left -= float(costs[index])
    return keep


def exact_keep_shared(
    scores: Tensor,
    keep_budget: float,
    protected: Tensor,
    cost: Callable[[Tensor], float],
    marginal: Callable[[Tensor], Tensor],
    open_now: Tensor | None = None,
) -> Tensor:
    """:func:`exact_keep` where groups share weights, so what a kept set costs is not the
    sum of its groups' costs (coupled channels, :class:`learnprune.costs.KeptCost`).

    ``cost(keep)`` is the cost of a keep assignment (it grows as groups are added);
    ``marginal(keep)`` what adding each group would add to it now (it only grows as
    groups are added). Groups are taken in the same order as :func:`exact_keep`'s
    (``protected`` first, then by score, ties to the lower index): the longest prefix of
    that order whose cost fits ``keep_budget`` (bisection), then the remaining groups in
    order wherever their marginal cost still fits (one that does not fit once never fits
    later, so each is tried once); a group that adds nothing even with every other group
    kept (its weights cost nothing, e.g. inputs compaction leaves in place) is kept at once.
    ``open_now`` (the gates' state when the finish comes): past the prefix a group the
    method learned to close is added only where it buys part of the budget, never because
    it is free (its weights were not trained while it was closed, and keeping it would
    change the function for nothing).

    Returns a bool tensor, ``True`` where the group is kept.
    """
    order = torch.sort(-scores.detach().double().cpu(), stable=True).indices
    first = protected.cpu()[order]
    order = torch.cat([order[first], order[~first]])
    slack = 1e-9 * max(abs(keep_budget), 1.0)

    def prefix(count: int) -> Tensor:
        keep = torch.zeros(scores.numel(), dtype=torch.bool)
        keep[order[:count]] = True
        return keep

    low = int(protected.sum())  # the protected groups are kept whatever they cost
    high = scores.numel()
    if cost(prefix(low)) > keep_budget + slack:
        return prefix(low)
    while low < high:  # the largest count whose prefix fits
        middle = (low + high + 1) // 2
        if cost(prefix(middle)) <= keep_budget + slack:
            low = middle
        else:
            high = middle - 1
    keep = prefix(low)
    left = keep_budget + slack - cost(keep)
    allowed = torch.ones_like(keep) if open_now is None else open_now.bool().cpu()
    keep |= (marginal(torch.ones_like(keep)).double().cpu() <= 0) & allowed  # cost nothing
    tried = keep.clone()
    while True:
        rest = order[~tried[order]]
        if not len(rest):
            break
        added = marginal(keep).double().cpu()[rest]
        fits = torch.nonzero((added <= left) & ((added > 0) | allowed[rest])).flatten()
        if not len(fits):
            break
        at = int(fits[0])
        tried[rest[: at + 1]] = True
        keep[rest[at]] = True
        left -= float(added[at])
    return keep

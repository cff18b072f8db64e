"""DessiLBI — Deep structurally splitted Linearized Bregman Iteration (Fu et al., ICML 2020,
TPAMI 2022; official code DessiLBI2020/DessiLBI, snapshot d9d7e24).

An optimizer on the *inverse scale space*: every prunable weight ``W`` is coupled to a
sparse copy ``Γ`` through the augmented loss

    L̄(W, Γ) = L(W) + (1 / 2ν) · ‖W − Γ‖²

and ``Γ`` follows a Linearized Bregman Iteration on a sub-gradient variable ``z`` (the
code's name; ``V`` in the paper). Starting from ``Γ = 0`` (the empty model) the support of
``Γ`` grows along the iterations, from simple to complex models; stopping early gives a
sparse structure ("winning tickets"), read out as ``W* = W ⊙ 1[Γ ≠ 0]``.

The reference update (``variant="reference"``, ``code/slbi_opt.py``), per coupled tensor
with gradient ``g`` (learning rate ``α``, momentum ``m``):

    g   ← g + wd · W                          (weight decay, tensors of ndim > 1 only)
    buf ← m · buf + g                         (heavy ball; ``d = buf``, or ``g + m·buf`` Nesterov)
    W   ← W − α κ d − (α κ / ν) (W − Γ)        (the coupling term outside the momentum)
    z   ← z + (α / ν) (W_old − Γ)             (from the *old* W and Γ)
    Γ   ← κ · prox(z)

with ``prox`` the soft threshold ``sign(z) · max(|z| − λ, 0)`` element-wise (``"lasso"``, the
default for Linear weights) or the group soft threshold per output filter
``max(0, 1 − λ/‖z_g‖₂) · z_g`` (``"group"``, the reference code's prox for conv weights);
``λ = 1`` in the reference code. Tensors that are not coupled (biases, norm layers) take
``p ← p − α κ d``.

**Filters of different fan-in.** Under ``"group"`` filter ``g`` (``d_g`` weights) enters
``supp(Γ)`` once ``‖z_g‖₂ > λ``, i.e. once the RMS of its ``z`` exceeds ``λ / √d_g``: the
wider a filter, the earlier it enters. A first conv layer (ResNet-20: ``d_g = 27`` against
576 in the last stage) waits about 4.6 times as long as the last stage, so along a short
path its filters never enter and ``W* = W ⊙ 1[Γ ≠ 0]`` is cut off at its input (at chance).
The default ``prox="auto"`` therefore takes, for conv weights of an optimizer whose conv
layers do not all have one fan-in, the *rescaled* group prox (the lottery code's)::

    Γ_g = κ · max(0, 1 − λ_c / (‖z_g‖₂ / √d_g)) · z_g,    λ_c = conv_lam or λ / √d_max

whose threshold on ``‖z_g‖₂`` is ``λ_c √d_g = λ √(d_g / d_max)`` by default (``d_max`` the
largest fan-in): every filter enters when the RMS of its ``z`` exceeds the same
``λ / √d_max``, the widest filters exactly when the reference would let them, every narrower
one earlier. Where all conv layers share one fan-in the two proxes only differ by a constant
and ``"auto"`` is the reference ``"group"``; ``prox="group"`` keeps the reference anyway.

Weight decay sits inside the momentum: the code adds ``wd · W`` to the buffer in place
after ``buf ← m · buf + g``, so ``buf_t = m · buf_{t−1} + g_t + wd · W_t``, the same as
decaying the gradient first (as ``torch.optim.SGD`` does). It decays the tensors of
``ndim ≠ 1`` whose name lacks ``"bn"``; here those of ``ndim > 1`` (the name test only
ever meets 1-D tensors, and a 0-d parameter, which the code would decay, is not decayed).

Variants found in the official examples, as named options:

* ``"lottery"`` (``example/lottery/slbi.py``): weight decay on every tensor but biases
  (norm-layer weights included); conv filters use the **rescaled group**
  prox ``max(0, 1 − λ_conv / (‖z_g‖₂ / √d_g)) · z_g`` (``prox="rescaled_group"``).
* ``"normalize"`` (``example/cifar_prune/slbi_noconv_with_normalize.py``): every W step,
  coupled or not, uses ``α`` (not ``ακ``), the z step ``α/(νκ)``; the z increment
  ``u = W_old − Γ`` is multiplied by ``p = min(1 − frac_nonzero(Γ), 0.01)`` and divided
  element-wise by ``s = max(|W_new|, 1)``; ``Γ = κ · s · soft_threshold(z, λ)`` element-wise
  for conv and Linear weights::

      W ← W − α d − (α / ν) (W − Γ)             (uncoupled tensors: p ← p − α d)
      b ← μ_z · b + u,  u ← b                   (LBI momentum, ``lbi_momentum`` μ_z > 0)
      z ← z + (α / νκ) · p · u / s

  The code's LBI momentum (``lbi_momentum``) starts ``b = u`` but then updates it with a
  non-in-place add, ``b.mul_(μ_z).add(u)``, so from the second step on ``b ← μ_z · b``: every
  later increment is dropped and z only moves by ever smaller copies of the first. That is
  a bug (its script runs μ_z = 0), so the default ``lbi_momentum_rule="heavy_ball"`` is the
  momentum above; ``"released"`` reproduces the released code.

The path: :meth:`DessiLBI.record_epoch` stores, after every epoch, each weight's first
epoch in ``supp(Γ)``, the prune order (``‖W_filter‖₂ − first_epoch`` for conv filters,
``|W_ij| − first_epoch_ij`` for Linear, from the ``W`` of that epoch end) and the support
itself; :meth:`ticket` returns the masks at an epoch, :meth:`prune_by_order` the masks that
prune by the stored order, as the reference does (or by the order of the current ``W``).

**A budget through the path** (``DessiLBIMethod(target=...)``, a sparsity or
``{"flops": f}``): the path runs as above to the end of its phase (``end_step``; default
the end of the run), then the *exact finish* (``finish="exact"``) sets the masks to exactly
the budget by the prune order (:meth:`DessiLBI.budget_scores`: earlier entry into
``supp(Γ)`` first, magnitude within an entry epoch; :class:`PathBudget` ranks with
:func:`learnprune.budget.exact_keep`) and :meth:`DessiLBI.fix_masks` fixes them: from
then on ``z`` and ``Γ`` stand still and every coupled weight takes the masked plain step

    g ← g ⊙ M,   (decay, momentum as above),   W ← (W − α κ d) ⊙ M

(``α d`` under ``"normalize"``), the fine-tuning of the official code's ``post_mode
finetune``. ``finish="none"`` keeps the pure path (``W*`` of its last point); either way
the run records the first path epoch whose ``supp(Γ)`` reached the budget.

Two pitfalls of the code (METHODS.md 2.6) concern the optimizer itself: it used the removed
``Tensor.add_(scalar, tensor)`` signature (here every update is written with ``alpha=`` or
fused ops), and the ImageNet example passed ``nesterov=`` to a toolbox that had no such
argument (here ``nesterov`` is an option). The growing fixes are in :mod:`learnprune.growing`.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from learnprune import budget, costs, validation
from learnprune.accounting import prunable_modules
from learnprune.errors import ConfigError
from learnprune.groups import GroupPlan, GroupSet, TensorSlices, model_input_shape
from learnprune.methods.base import PruningMethod, TrainingContext

VARIANTS = ("reference", "lottery", "normalize")
PROXES = ("auto", "lasso", "group", "rescaled_group")
ORDERS = ("stored", "current")
LBI_MOMENTUM_RULES = ("heavy_ball", "released")
NEVER = 2000
"""The reference code's sentinel ``first_epoch`` of a weight never in ``supp(Γ)``."""


def soft_threshold(z: Tensor, lam: float) -> Tensor:
    """``sign(z) · max(|z| − λ, 0)``, the proximal map of ``λ‖·‖₁`` (one fused kernel:
    ``softshrink``)."""
    return torch.nn.functional.softshrink(z, lam)


def group_soft_threshold(z: Tensor, lam: float, rescaled: bool = False) -> Tensor:
    """``max(0, 1 − λ / ‖z_g‖₂) · z_g`` for every output filter ``g`` (``z[g]``); with
    ``rescaled`` the norm is divided by ``√d_g`` (the lottery code's prox)."""
    flat = z.reshape(z.shape[0], -1)
    norms = flat.norm(dim=1, keepdim=True)
    if rescaled:
        norms = norms / math.sqrt(flat.shape[1])
    scale = torch.clamp(1 - lam / norms.clamp(min=1e-30), min=0)
    return (flat * scale).reshape(z.shape)


def _fan_in(param: Tensor) -> int:
    """``d_g``, the weights of one output filter: ``in_channels/groups · kernel size``."""
    return param[0].numel()


def default_coupled(name: str, param: Tensor) -> bool:
    """The reference code couples every 2-D (Linear) and 4-D (conv) weight."""
    return param.ndim in (2, 4) and name.endswith("weight")


def coupled_except(exclude: str | Sequence[str] = ()) -> Callable[[str, Tensor], bool]:
    """:func:`default_coupled` but for the tensors and layers that match one of the
    ``exclude`` patterns (``fnmatch``; ``"fc3"`` names the layer: ``fc3.weight`` stays plain)."""
    patterns = validation.patterns("exclude", exclude)

    def coupled(name: str, param: Tensor) -> bool:
        layer = name.rpartition(".")[0]
        excluded = any(fnmatch.fnmatchcase(n, p) for p in patterns for n in (name, layer))
        return default_coupled(name, param) and not excluded

    return coupled


class DessiLBI(torch.optim.Optimizer):
    """The DessiLBI optimizer (see the module docstring for the update of each variant).

    Args:
        params: ``model.named_parameters()`` (names make the masks readable), or param
            groups ``{"params": [...], "names": [...], "coupled": bool}``.
        lr: ``α``.
        kappa: ``κ``, the damping factor of the inverse scale space (1 in every recipe).
        nu: ``ν`` (``mu`` in the code): the coupling strength ``1/ν`` between W and Γ.
        momentum: heavy-ball momentum of the W step.
        nesterov: Nesterov momentum.
        weight_decay: L2 weight decay (applied as each variant does).
        prox: ``"auto"`` (lasso for Linear; for conv the rescaled group prox where the
            conv layers' fan-ins differ, else group; see the module docstring),
            ``"lasso"``, ``"group"``, ``"rescaled_group"`` (conv; Linear stays lasso).
        lam: ``λ``, the threshold of the prox (1 in the reference code).
        conv_lam: threshold of the rescaled group prox (the lottery code's ``conv_lambda``;
            default ``lam`` for ``"rescaled_group"``, ``lam / √d_max`` for ``"auto"``).
        variant: ``"reference"``, ``"lottery"`` or ``"normalize"``.
        lbi_momentum: ``μ_z``, momentum of the z increment (``variant="normalize"`` only).
        lbi_momentum_rule: ``"heavy_ball"`` (``b ← μ_z · b + u``) or ``"released"`` (the
            released code's ``b ← μ_z · b`` after the first step; see the module docstring).
        coupled: which named tensors get ``z`` and ``Γ`` (default: 2-D and 4-D weights).
    """

    def __init__(
        self,
        params: Iterable[tuple[str, Tensor]] | Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        kappa: float = 1.0,
        nu: float = 100.0,
        momentum: float = 0.9,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        prox: str = "auto",
        lam: float = 1.0,
        conv_lam: float | None = None,
        variant: str = "reference",
        lbi_momentum: float = 0.0,
        lbi_momentum_rule: str = "heavy_ball",
        coupled: Any = default_coupled,
    ) -> None:
        lr = validation.positive("lr", lr)
        kappa = validation.positive("kappa", kappa)
        nu = validation.positive("nu", nu)
        momentum = validation.non_negative("momentum", momentum)
        if momentum >= 1:
            raise ConfigError(f"momentum must be < 1, got {momentum}")
        if nesterov and momentum == 0:
            raise ConfigError("nesterov momentum needs momentum > 0")
        weight_decay = validation.non_negative("weight_decay", weight_decay)
        prox = validation.choice("prox", prox, PROXES)
        lam = validation.positive("lam", lam)
        if conv_lam is not None:
            conv_lam = validation.positive("conv_lam", conv_lam)
        variant = validation.choice("variant", variant, VARIANTS)
        lbi_momentum = validation.non_negative("lbi_momentum", lbi_momentum)
        if lbi_momentum >= 1:
            raise ConfigError(f"lbi_momentum must be < 1, got {lbi_momentum}")
        if lbi_momentum > 0 and variant != "normalize":
            raise ConfigError('lbi_momentum is an option of variant "normalize"')
        lbi_momentum_rule = validation.choice(
            "lbi_momentum_rule", lbi_momentum_rule, LBI_MOMENTUM_RULES
        )
        groups = _param_groups(params, coupled)
        defaults = {
            "lr": lr,
            "kappa": kappa,
            "nu": nu,
            "momentum": momentum,
            "nesterov": nesterov,
            "weight_decay": weight_decay,
            "prox": prox,
            "lam": lam,
            "conv_lam": conv_lam,
            "variant": variant,
            "lbi_momentum": lbi_momentum,
            "lbi_momentum_rule": lbi_momentum_rule,
        }
        super().__init__(groups, defaults)
        self.epoch = 0
        for group in self.param_groups:
            if group["coupled"]:
                for param in group["params"]:
                    state = self.state[param]
                    state["z"] = torch.zeros_like(param)
                    state["gamma"] = torch.zeros_like(param)
                    state["first_epoch"] = torch.full_like(param, NEVER, dtype=torch.int32)
        self.support_history: list[dict[str, int]] = []
        fan_ins = {_fan_in(p) for _n, p in self.coupled() if p.ndim == 4}
        self.fan_ins_differ = len(fan_ins) > 1
        """Whether the coupled conv weights have more than one fan-in (``prox="auto"``)."""
        self.widest_fan_in = max(fan_ins, default=1)
        """``d_max``, the largest fan-in of a coupled conv filter."""

    @classmethod
    def for_model(
        cls, model: nn.Module, lr: float, *, exclude: str | Sequence[str] = (), **options: Any
    ) -> DessiLBI:
        """DessiLBI over ``model.named_parameters()``, every Linear and conv weight coupled
        but those matching ``exclude`` (``fnmatch`` patterns of tensor or layer names)::

            optimizer = DessiLBI.for_model(model, lr=0.1, kappa=1.0, nu=100.0, momentum=0.9)

        ``options`` are the other arguments of :class:`DessiLBI` (``kappa``, ``nu``,
        ``momentum``, ``nesterov``, ``weight_decay``, ``prox``, ``lam``, ``conv_lam``,
        ``variant``, ``lbi_momentum``, ``lbi_momentum_rule``)."""
        return cls(list(model.named_parameters()), lr, coupled=coupled_except(exclude), **options)

    # --- the update -------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        """One DessiLBI step (see the module docstring)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for name, param in zip(group["names"], group["params"], strict=True):
                if param.grad is None:
                    continue
                self._step_one(name, param, group)
        return loss

    def fix_masks(self, masks: Mapping[str, Tensor]) -> None:
        """Fix the keep mask of the named coupled tensors (bool, their shape): ``W ← W ⊙ M``
        now, then the masked plain step of the module docstring, ``z`` and ``Γ`` frozen."""
        params = dict(self.coupled())
        for name, mask in masks.items():
            if name not in params or tuple(mask.shape) != tuple(params[name].shape):
                raise ConfigError(f"no coupled tensor {name} of shape {tuple(mask.shape)}")
        with torch.no_grad():
            for name, mask in masks.items():
                param = params[name]
                keep = mask.to(device=param.device, dtype=torch.bool).clone()
                self.state[param]["fixed_mask"] = keep
                param.mul_(keep)
                buffer = self.state[param].get("momentum_buffer")
                if buffer is not None:
                    buffer.mul_(keep)

    def _step_one(self, name: str, param: Tensor, group: Mapping[str, Any]) -> None:
        lr, kappa, nu = group["lr"], group["kappa"], group["nu"]
        momentum, variant = group["momentum"], group["variant"]
        state = self.state[param]
        grad = param.grad
        fixed = state.get("fixed_mask")
        if fixed is not None:  # the fine-tuning after a budget's finish: masked plain step
            grad = grad * fixed
        # decay before the momentum in every variant; which tensors: reference and
        # normalize those of ndim > 1 (not biases, not norm layers), lottery all but biases
        decays = group["weight_decay"] > 0 and (
            not name.endswith("bias") if variant == "lottery" else param.ndim > 1
        )
        if decays:
            grad = grad.add(param, alpha=group["weight_decay"])
        if momentum > 0:
            buffer = state.get("momentum_buffer")
            if buffer is None:
                buffer = state["momentum_buffer"] = grad.clone()
            else:
                buffer.mul_(momentum).add_(grad)
            direction = grad.add(buffer, alpha=momentum) if group["nesterov"] else buffer
        else:
            direction = grad

        if not group["coupled"] or fixed is not None:
            param.add_(direction, alpha=-lr if variant == "normalize" else -lr * kappa)
            if fixed is not None:
                param.mul_(fixed)
            return
        z, gamma = state["z"], state["gamma"]
        coupling = param - gamma  # W_old − Γ_old
        if variant == "normalize":
            param.add_(direction, alpha=-lr).add_(coupling, alpha=-lr / nu)
            share = min(1.0 - float(torch.count_nonzero(gamma)) / gamma.numel(), 0.01)
            scale = param.abs().clamp(min=1.0)
            increment = self._lbi_momentum(state, coupling, group)
            z.add_(increment * share / scale, alpha=lr / (nu * kappa))
            gamma.copy_(kappa * scale * soft_threshold(z, group["lam"]))
            return
        # z ← z + (α/ν)(W_old − Γ), then W ← W − ακ d − (ακ/ν)(W_old − Γ), in place
        z.add_(coupling, alpha=lr / nu)
        param.add_(direction, alpha=-lr * kappa).add_(coupling, alpha=-lr * kappa / nu)
        prox = self._prox(z, param, group)
        state["gamma"] = prox.mul_(kappa) if kappa != 1.0 else prox

    @staticmethod
    def _lbi_momentum(state: dict[str, Any], increment: Tensor, group: Mapping[str, Any]) -> Tensor:
        """``b ← μ_z · b + u`` (first step ``b = u``), or the released ``b ← μ_z · b``."""
        mu_z = group["lbi_momentum"]
        if mu_z == 0:
            return increment
        buffer = state.get("lbi_momentum_buffer")
        if buffer is None:
            buffer = state["lbi_momentum_buffer"] = increment.clone()
        elif group["lbi_momentum_rule"] == "released":
            buffer.mul_(mu_z)
        else:
            buffer.mul_(mu_z).add_(increment)
        return buffer

    def prox_of(self, param: Tensor, group: Mapping[str, Any]) -> tuple[str, float]:
        """``(prox, threshold)`` that ``param``'s ``Γ`` takes in ``group``: ``"lasso"``
        (threshold ``λ``), ``"group"`` (``λ``) or ``"rescaled_group"`` (``λ_c``), with
        ``"auto"`` resolved as the module docstring says; ``variant="normalize"`` is
        element-wise whatever ``prox`` says."""
        prox, conv_lam = group["prox"], group["conv_lam"]
        if param.ndim != 4 or prox == "lasso" or group["variant"] == "normalize":
            return "lasso", group["lam"]
        if prox == "auto" and group["variant"] == "lottery":
            prox = "rescaled_group"
        elif prox == "auto":
            if not self.fan_ins_differ:
                return "group", group["lam"]
            if conv_lam is None:
                conv_lam = group["lam"] / math.sqrt(self.widest_fan_in)
            return "rescaled_group", conv_lam
        if prox == "group":
            return "group", group["lam"]
        return "rescaled_group", group["lam"] if conv_lam is None else conv_lam

    def _prox(self, z: Tensor, param: Tensor, group: Mapping[str, Any]) -> Tensor:
        prox, threshold = self.prox_of(param, group)
        if prox == "lasso":
            return soft_threshold(z, threshold)
        return group_soft_threshold(z, threshold, rescaled=prox == "rescaled_group")

    def filter_groups(self, param: Tensor) -> bool:
        """Whether ``param``'s ``Γ`` is sparse by whole output filters (a group prox)."""
        group = next(g for g in self.param_groups if any(p is param for p in g["params"]))
        return self.prox_of(param, group)[0] != "lasso"

    # --- reading the path ---------------------------------------------------------------
    def coupled(self) -> Iterator[tuple[str, Tensor]]:
        """``(name, W)`` of every coupled tensor."""
        for group in self.param_groups:
            if group["coupled"]:
                yield from zip(group["names"], group["params"], strict=True)

    def masks(self) -> dict[str, Tensor]:
        """``{name: 1[Γ ≠ 0]}`` for every coupled tensor (bool); the fixed mask instead
        where :meth:`fix_masks` set one."""
        masks = {}
        for name, param in self.coupled():
            fixed = self.state[param].get("fixed_mask")
            masks[name] = fixed.clone() if fixed is not None else self.state[param]["gamma"] != 0
        return masks

    @property
    def fixed(self) -> bool:
        """Whether :meth:`fix_masks` fixed some mask (the path stands still)."""
        return any("fixed_mask" in self.state[p] for _n, p in self.coupled())

    def support(self) -> dict[str, int]:
        """Size of ``supp(Γ)`` per coupled tensor."""
        return {
            name: int(torch.count_nonzero(self.state[p]["gamma"])) for name, p in self.coupled()
        }

    @contextlib.contextmanager
    def sparse_view(self) -> Iterator[None]:
        """Inside the block every coupled ``W`` is ``W* = W ⊙ 1[Γ ≠ 0]`` (``W ⊙ M`` with
        masks fixed by :meth:`fix_masks`); restored bit for bit on exit."""
        saved = []
        masks = self.masks()
        with torch.no_grad():
            for name, param in self.coupled():
                saved.append((param, param.detach().clone()))
                param.mul_(masks[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for param, original in saved:
                    param.copy_(original)

    @torch.no_grad()
    def record_epoch(self, epoch: int | None = None) -> dict[str, int]:
        """Record the path after an epoch: each weight's first epoch in ``supp(Γ)`` and the
        prune order from the current ``W`` (the reference's ``update_prune_order``), and
        the support; return the support sizes."""
        self.epoch = self.epoch + 1 if epoch is None else int(epoch)
        for _name, param in self.coupled():
            state = self.state[param]
            entered = (state["gamma"] != 0) & (state["first_epoch"] == NEVER)
            state["first_epoch"][entered] = self.epoch
            state["prune_order"] = self._prune_score(param)
        support = self.support()
        self.support_history.append(support)
        return support

    def ticket(self, epoch: int) -> dict[str, Tensor]:
        """The masks of the weights that had entered ``supp(Γ)`` by ``epoch`` (the support at
        that epoch, where the support only grew)."""
        return {name: self.state[p]["first_epoch"] <= epoch for name, p in self.coupled()}

    def prune_order_scores(self, order: str = "stored") -> dict[str, Tensor]:
        """The reference's prune order: conv ``‖W_filter‖₂ − min first_epoch(filter)`` (one
        per filter), Linear ``|W_ij| − first_epoch_ij``; higher = keep.

        ``order="stored"`` (the reference's): the scores :meth:`record_epoch` stored at the
        last epoch end (from the ``W`` of then; kept in :meth:`state_dict`);
        ``"current"``: recomputed from the current ``W``."""
        order = validation.choice("order", order, ORDERS)
        scores = {}
        for name, param in self.coupled():
            if order == "current":
                scores[name] = self._prune_score(param)
            elif "prune_order" in self.state[param]:
                scores[name] = self.state[param]["prune_order"].clone()
            else:
                raise ConfigError(
                    f"no prune order stored for {name}: record_epoch() stores it at the end "
                    'of each epoch, or use order="current"'
                )
        return scores

    def entry_epochs(self, param: Tensor, epoch: int | None = None) -> Tensor:
        """Each weight's first epoch in ``supp(Γ)``: :meth:`record_epoch`'s, a weight in
        ``supp(Γ)`` now but not recorded yet counting as entering in the epoch under way
        (``self.epoch + 1``); with ``epoch``, entries after it count as never (``NEVER``)."""
        state = self.state[param]
        first = state["first_epoch"].to(torch.float64)
        pending = (state["gamma"] != 0) & (first == NEVER)
        first = torch.where(pending, float(self.epoch + 1), first)
        if epoch is not None:
            first = torch.where(first > epoch, float(NEVER), first)
        return first

    def budget_scores(self, epoch: int | None = None) -> dict[str, Tensor]:
        """The prune order as one score per group a budget ranks, higher = keep, float64:
        a filter under a group prox ``rms(W_g) − min_{i∈g} e_i`` (``rms = ‖W_g‖₂/√d_g``),
        any other weight ``|W_i| − e_i``, with ``e`` the :meth:`entry_epochs`.

        Inside one tensor this is the reference order (``‖W_g‖₂`` and ``rms(W_g)`` rank a
        layer's filters alike); the RMS puts a filter on the scale of one weight, so that
        filters of different fan-in and single weights can share one ranking."""
        scores = {}
        for name, param in self.coupled():
            first = self.entry_epochs(param, epoch)
            weight = param.detach().to(torch.float64)
            if self.filter_groups(param):
                rms = weight.reshape(len(weight), -1).norm(dim=1) / math.sqrt(_fan_in(param))
                scores[name] = rms - first.reshape(len(weight), -1).amin(dim=1)
            else:
                scores[name] = (weight.abs() - first).reshape(-1)
        return scores

    def _prune_score(self, param: Tensor) -> Tensor:
        first = self.state[param]["first_epoch"].to(param.dtype)
        if param.ndim == 4:
            norms = param.detach().reshape(param.shape[0], -1).norm(dim=1)
            return norms - first.reshape(param.shape[0], -1).amin(dim=1)
        return param.detach().abs() - first

    def prune_by_order(
        self,
        percent: float,
        names: Sequence[str] | None = None,
        prune_bias: bool = False,
        order: str = "stored",
    ) -> dict[str, Tensor]:
        """Keep masks that drop, in each named tensor, the ``percent`` % lowest scores
        (conv: whole filters); the reference's ``prune_layer_by_order_by_list``. With
        ``prune_bias`` (how the reference's prune example runs) the masks also cover the
        bias of every conv layer the optimizer holds, dropping the biases of the dropped
        filters (``{"conv3.bias": keep per filter}``). ``order``: the scores of
        :meth:`prune_order_scores` (the reference prunes by the order ``"stored"`` at the
        last :meth:`record_epoch`; ``"current"`` recomputes it from the current ``W``).

        As there, the threshold ``t`` is ``numpy.percentile(score, percent)`` (linear
        interpolation) in the score's own float dtype, and a conv filter is kept if
        ``score ≥ t``, a Linear (or any other non-conv) weight only if ``score > t``. Ties
        at ``t`` are common, the float32 scores ``|W| − 2000`` of weights never in
        ``supp(Γ)`` being coarse (spacing 2⁻¹³), so a Linear weight may lose more than
        ``percent`` %. ``percent = 0`` keeps everything (the reference's strict ``>`` would
        drop each Linear weight's minimum)."""
        percent = validation.real("percent", percent)
        if not 0 <= percent <= 100:
            raise ConfigError(f"percent must lie in [0, 100], got {percent}")
        masks = {}
        params = dict(self.coupled())
        held = {n for group in self.param_groups for n in group["names"]}
        for name, score in self.prune_order_scores(order).items():
            param = params[name]
            keep = torch.ones_like(score, dtype=torch.bool)
            if percent > 0 and (names is None or name in names):
                if score.dtype not in (torch.float32, torch.float64):
                    score = score.float()  # numpy has no bfloat16
                threshold = np.percentile(score.detach().cpu().numpy(), percent)
                threshold = torch.as_tensor(threshold, dtype=score.dtype, device=score.device)
                keep = score >= threshold if param.ndim == 4 else score > threshold
            if param.ndim == 4:  # one score per filter
                bias = name.removesuffix("weight") + "bias"
                if prune_bias and name.endswith("weight") and bias in held:
                    masks[bias] = keep.clone()
                keep = keep.view(-1, 1, 1, 1).expand_as(param).clone()
            masks[name] = keep
        return masks

    # --- state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["path"] = {"epoch": self.epoch, "support_history": list(self.support_history)}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        path = state_dict.pop("path", {"epoch": 0, "support_history": []})
        super().load_state_dict(state_dict)
        for _name, param in self.coupled():  # torch casts every state tensor to W's dtype
            if "fixed_mask" in self.state[param]:
                self.state[param]["fixed_mask"] = self.state[param]["fixed_mask"] != 0
        self.epoch = int(path["epoch"])
        self.support_history = [dict(s) for s in path["support_history"]]


def _param_groups(params: Iterable[Any], coupled: Any) -> list[dict[str, Any]]:
    """Normalise the ``params`` argument into a coupled and a plain group (or keep the
    user's groups, each needing ``names`` and ``coupled``)."""
    items = list(params)
    if not items:
        raise ConfigError("DessiLBI got no parameters")
    if isinstance(items[0], dict):
        groups = []
        for group in items:
            group = dict(group)
            group["params"] = list(group["params"])
            group.setdefault("names", [f"param{i}" for i in range(len(group["params"]))])
            group.setdefault("coupled", False)
            groups.append(group)
        return groups
    if isinstance(items[0], Tensor):
        items = [(f"param{i}", p) for i, p in enumerate(items)]
    named = [(n, p) for n, p in items if p.requires_grad]
    coupled_pairs = [(n, p) for n, p in named if coupled(n, p)]
    plain_pairs = [(n, p) for n, p in named if not coupled(n, p)]
    groups = []
    for pairs, is_coupled in ((coupled_pairs, True), (plain_pairs, False)):
        if pairs:
            groups.append(
                {
                    "params": [p for _n, p in pairs],
                    "names": [n for n, _p in pairs],
                    "coupled": is_coupled,
                }
            )
    if not coupled_pairs:
        raise ConfigError("DessiLBI found no Linear or conv weight to couple")
    return groups


class PathBudget:
    """A budget over what a DessiLBI path selects: whole filters where ``Γ`` is filter
    sparse (a group prox), single weights elsewhere; the Conv/Linear weights it does not
    rank (uncoupled, or not in ``ranked``) are one group each, always kept.

    With ``k_g ∈ {0, 1}`` whether group ``g`` is kept and ``c_g`` its cost
    (:func:`learnprune.costs.group_costs`: ``n_g`` weights, or FLOPs)::

        achieved = Σ_g c_g (1 − k_g) / Σ_g c_g      (sparsity, or the FLOPs removed)

    over every Conv/Linear weight of the model, so a sparsity is the one ``final.json``
    reports and a FLOPs budget the share of the effective FLOPs.

    Args:
        model: the model (FLOPs are traced on it).
        optimizer: its DessiLBI optimizer (which tensors are coupled, which by filter).
        target: ``(kind, value)`` as :func:`learnprune.budget.parse_target` gives.
        input_shape: one example's shape, for a FLOPs budget.
        ranked: the coupled tensors to rank (default: all).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: DessiLBI,
        target: tuple[str, float],
        input_shape: Sequence[int] | None = None,
        ranked: Iterable[str] | None = None,
    ) -> None:
        self.kind, self.value = target
        coupled = dict(optimizer.coupled())
        chosen = set(coupled if ranked is None else ranked)
        self.by_filter: dict[str, bool] = {}
        """``{tensor: whether its groups are filters}`` for the ranked tensors."""
        sets = []
        for layer, module in prunable_modules(model):
            name = f"{layer}.weight" if layer else "weight"
            shape = tuple(module.weight.shape)
            if name in coupled and name in chosen:
                by_filter = optimizer.filter_groups(coupled[name])
                self.by_filter[name] = by_filter
                groups = shape[0] if by_filter else module.weight.numel()
                piece = TensorSlices(layer, "weight", shape, 0 if by_filter else None)
                kind = "out_channel" if by_filter else "element"
            else:
                groups, kind = 1, "custom"
                piece = TensorSlices(
                    layer, "weight", shape, None, torch.zeros(shape, dtype=torch.long)
                )
            sets.append(GroupSet(name, kind, groups, (piece,)))
        self.plan = GroupPlan(sets)
        flops = self.kind == "flops"
        self.costs = costs.group_costs(
            model,
            self.plan,
            flops=flops,
            input_shape=model_input_shape(model, input_shape) if flops else None,
        )
        self.total = costs.total_cost(self.plan, self.costs)

    def support_keep(self, optimizer: DessiLBI) -> dict[str, Tensor]:
        """``k_g`` of ``supp(Γ)``: a filter is kept if any of its ``Γ`` is non-zero."""
        coupled = dict(optimizer.coupled())
        keep = {}
        for group_set in self.plan.sets:
            if group_set.name not in self.by_filter:
                keep[group_set.name] = torch.ones(1, dtype=torch.bool)
                continue
            nonzero = (optimizer.state[coupled[group_set.name]]["gamma"] != 0).cpu()
            if self.by_filter[group_set.name]:
                keep[group_set.name] = nonzero.reshape(len(nonzero), -1).any(dim=1)
            else:
                keep[group_set.name] = nonzero.reshape(-1)
        return keep

    def achieved(self, keep: Mapping[str, Tensor]) -> float:
        """The budget ``keep`` (``{set: k_g}``) achieves (class docstring)."""
        removed = sum(
            float(costs.weighted_sum(self.costs[s.name], 1.0 - keep[s.name].double()))
            for s in self.plan.sets
        )
        return removed / self.total if self.total else 0.0

    def exact_keep(self, scores: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``{set: k_g}`` whose cost is the largest not above ``(1 − b) Σ_g c_g``, by
        ``scores`` (``{tensor: one score per group}``, :meth:`DessiLBI.budget_scores`):
        one ranking over every group (:func:`learnprune.budget.exact_keep`). The groups
        not ranked are kept first, and so is the best filter of every filter-sparse
        tensor (a conv layer never closes completely)."""
        ranking, cost, protected = [], [], []
        for group_set in self.plan.sets:
            count = group_set.num_groups
            set_cost = self.costs[group_set.name]
            cost.append(
                set_cost.double()
                if isinstance(set_cost, Tensor)
                else torch.full((count,), set_cost, dtype=torch.float64)
            )
            guard = torch.zeros(count, dtype=torch.bool)
            if group_set.name in self.by_filter:
                score = scores[group_set.name].detach().double().cpu().reshape(-1)
                if self.by_filter[group_set.name]:
                    guard[int(torch.argmax(score))] = True
            else:
                score = torch.zeros(count, dtype=torch.float64)
                guard[:] = True
            ranking.append(score)
            protected.append(guard)
        keep = budget.exact_keep(
            torch.cat(ranking),
            torch.cat(cost),
            (1.0 - self.value) * self.total,
            torch.cat(protected),
        )
        counts = [s.num_groups for s in self.plan.sets]
        names = [s.name for s in self.plan.sets]
        return dict(zip(names, torch.split(keep, counts), strict=True))

    def masks(self, keep: Mapping[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
        """The ranked tensors' bool keep masks, in their shapes, from ``{set: k_g}``."""
        params = dict(model.named_parameters())
        masks = {}
        for name, by_filter in self.by_filter.items():
            shape = params[name].shape
            kept = keep[name]
            masks[name] = (
                kept.view(-1, *([1] * (len(shape) - 1))).expand(shape).clone()
                if by_filter
                else kept.view(shape).clone()
            )
        return masks


def named_parameters_for(model: nn.Module) -> list[tuple[str, Tensor]]:
    """``model.named_parameters()`` as a list (the natural ``params`` argument)."""
    return list(model.named_parameters())


class DessiLBIMethod(PruningMethod):
    """DessiLBI as a learnprune method: the engine trains with the :class:`DessiLBI`
    optimizer, records the path after every epoch, evaluates ``W`` and ``W*``, and the
    final model is ``W*`` (``finalize``).

    The model keeps its plain weights (no gates): sparsity comes from the support of ``Γ``,
    which the iteration count controls. ``masks()`` and ``sparsity()`` read ``supp(Γ)``.
    Recipe options: ``kappa``, ``nu``, ``prox``, ``lam``, ``conv_lam``, ``variant``,
    ``lbi_momentum``, ``lbi_momentum_rule`` and ``exclude`` (weights left uncoupled,
    ``fnmatch`` patterns); ``lr``, momentum, Nesterov and weight decay come from ``[train]``.

    A budget: ``target`` (a sparsity, or ``{"flops": f}`` keeping ``f`` of the dense
    FLOPs), ``finish`` (``"exact"``, the default with a target, or ``"none"``) and
    ``end_epoch``, the end of the path phase (default: the end of the run). At ``end_step``
    the masks are set to exactly the budget by the prune order (:class:`PathBudget`) and
    fixed; the steps after it fine-tune ``W`` under them (module docstring).
    """

    name = "dessilbi"
    has_masks = False
    saves_initial_weights = True
    recipe_options = (
        "kappa",
        "nu",
        "prox",
        "lam",
        "conv_lam",
        "variant",
        "lbi_momentum",
        "lbi_momentum_rule",
        "exclude",
        "target",
        "finish",
        "end_epoch",
    )

    def __init__(
        self,
        model: nn.Module,
        *,
        kappa: float = 1.0,
        nu: float = 100.0,
        prox: str = "auto",
        lam: float = 1.0,
        conv_lam: float | None = None,
        variant: str = "reference",
        lbi_momentum: float = 0.0,
        lbi_momentum_rule: str = "heavy_ball",
        exclude: Sequence[str] = (),
        target: float | Mapping[str, float] | None = None,
        finish: str = "exact",
        end_step: int | None = None,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__(model)
        self.options = {
            "kappa": kappa,
            "nu": nu,
            "prox": prox,
            "lam": lam,
            "conv_lam": conv_lam,
            "variant": variant,
            "lbi_momentum": lbi_momentum,
            "lbi_momentum_rule": lbi_momentum_rule,
        }
        self.exclude = validation.patterns("exclude", exclude)
        names = [*dict(model.named_modules()), *dict(model.named_parameters())]
        validation.warn_unmatched("exclude", self.exclude, names)
        # build once to validate the options now, before any training
        self.optimizer: DessiLBI = self._make(
            lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.0
        )
        self.budget = budget.parse_target(target)
        self.finish = (
            validation.choice("finish", finish, budget.FINISHES) if self.budget else "none"
        )
        self.end_step = None if end_step is None else validation.integer("end_step", end_step, 1)
        """The step after which the exact finish fixes the masks (``None``: at finalize)."""
        self.path_budget = (
            PathBudget(model, self.optimizer, self.budget, input_shape) if self.budget else None
        )
        self.finished = False
        self.achieved_at_finish: float | None = None
        """The budget ``supp(Γ)`` had reached when the exact finish set the masks."""
        self.budget_epoch: int | None = None
        """The first path epoch whose ``supp(Γ)`` reached the budget (``None``: not yet)."""

    def _make(self, **train: Any) -> DessiLBI:
        return DessiLBI.for_model(self.model, exclude=self.exclude, **train, **self.options)

    def build_optimizer(self, config: Any) -> DessiLBI:
        """The optimizer the engine trains with (``lr``, momentum, Nesterov, weight decay
        from the run's training config)."""
        if getattr(config, "optimizer", "sgd") != "sgd":
            raise ConfigError('dessilbi is its own optimizer; set train.optimizer = "sgd"')
        self.optimizer = self._make(
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
        return self.optimizer

    def masks(self) -> dict[str, Tensor]:
        return self.optimizer.masks()

    def sparsity(self) -> float:
        zeros = sum(int((~mask).sum()) for mask in self.masks().values())
        return zeros / self.total_weights if self.total_weights else 0.0

    def support_budget(self) -> float | None:
        """The budget ``supp(Γ)`` achieves now (sparsity or FLOPs removed; ``None``
        without a target)."""
        if self.path_budget is None:
            return None
        return self.path_budget.achieved(self.path_budget.support_keep(self.optimizer))

    def after_step(self) -> None:
        """Count the step; the exact finish once ``end_step`` steps are done."""
        super().after_step()
        if (
            self.finish == "exact"
            and not self.finished
            and self.end_step is not None
            and self.step >= self.end_step
        ):
            self.finish_exactly()

    def finish_exactly(self) -> None:
        """Set the masks to exactly the budget by the prune order and fix them (the path
        stops; coupled tensors outside the ranking keep ``supp(Γ)``)."""
        assert self.path_budget is not None
        self.achieved_at_finish = self.support_budget()
        keep = self.path_budget.exact_keep(self.optimizer.budget_scores())
        masks = self.optimizer.masks()
        masks.update(self.path_budget.masks(keep, self.model))
        self.optimizer.fix_masks(masks)
        self.finished = True

    def epoch_end(self, epoch: int, evaluate: Any) -> dict[str, Any]:
        """Record the path (and the first epoch its support reached the budget); evaluate
        the sparse model ``W*``."""
        support = self.optimizer.record_epoch(epoch)
        with self.optimizer.sparse_view():
            loss, accuracy = evaluate()
        extra = {"test_accuracy_sparse": accuracy, "test_loss_sparse": loss, "support": support}
        if self.budget is not None:
            reached = self.support_budget()
            extra["support_budget"] = reached
            if self.budget_epoch is None and reached is not None and reached <= self.budget[1]:
                self.budget_epoch = epoch
        return extra

    def final_metrics(self, evaluate: Any) -> dict[str, Any]:
        loss, accuracy = evaluate()
        out: dict[str, Any] = {"test_accuracy_dense_w": accuracy, "test_loss_dense_w": loss}
        if self.budget is not None:
            out["finish"] = self.finish
            out["budget"] = {
                "kind": self.budget[0],
                "target": self.budget[1],
                "end_step": self.end_step,
                "achieved_before_finish": self.achieved_at_finish,
                "support_reached_at_epoch": self.budget_epoch,
            }
        return out

    @torch.no_grad()
    def finalize(self) -> nn.Module:
        """``W ← W* = W ⊙ 1[Γ ≠ 0]`` (the fixed masks after an exact finish, which a run
        ending before ``end_step`` does first): the sparse model of the path's last point."""
        if self.finish == "exact" and not self.finished:
            self.finish_exactly()
        masks = self.optimizer.masks()
        for name, param in self.optimizer.coupled():
            param.mul_(masks[name])
        return self.model

    def describe(self) -> str:
        shown = {k: v for k, v in self.options.items() if v is not None}
        if not shown["lbi_momentum"]:  # the z step has no momentum: nothing to say
            del shown["lbi_momentum"], shown["lbi_momentum_rule"]
        options = ", ".join(f"{k} {v}" for k, v in shown.items())
        coupled = sum(1 for _ in self.optimizer.coupled())
        text = f"dessilbi ({options}): {coupled} coupled weight tensors"
        if self.budget is not None:
            end = "the run's end" if self.end_step is None else f"step {self.end_step}"
            text += f", target {self.budget[0]} {self.budget[1]:g} (finish {self.finish}"
            text += f" at {end})" if self.finish == "exact" else ")"
        return text

    def extra_state(self) -> dict[str, Any]:
        return {
            "finished": self.finished,
            "achieved_at_finish": self.achieved_at_finish,
            "budget_epoch": self.budget_epoch,
        }

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.finished = bool(state.get("finished", False))
        self.achieved_at_finish = state.get("achieved_at_finish")
        self.budget_epoch = state.get("budget_epoch")

    @classmethod
    def from_options(
        cls, model: nn.Module, options: Mapping[str, Any], context: TrainingContext
    ) -> DessiLBIMethod:
        """Recipe options; ``end_epoch`` (default: the last epoch) becomes ``end_step``; with
        the run's phases, the end of their learning phase (``end_epoch`` is refused there)."""
        options = dict(options)
        timing = {"end_epoch": options.pop("end_epoch")} if "end_epoch" in options else {}
        if context.phases is None:
            timing.setdefault("end_epoch", context.epochs)
        _begin, end_step = context.phase_steps(timing, allow_equal=False)
        return cls(model, input_shape=context.input_shape, end_step=end_step, **options)

"""Lottery tickets: a fixed mask found on a DessiLBI path, retrained from the starting weights.

DessiLBI's path grows the support of ``Γ`` from the empty model; the support at an early
epoch ``e`` is a sparse structure found without training to convergence. The ticket is
that structure retrained from the *same starting weights* the path began with (the
lottery procedure of the official code, ``example/lottery``): reset the model to
``init.pt`` of the DessiLBI run, keep the mask ``1[first_epoch ≤ e]`` fixed, and train.

``layers="conv"`` masks conv weights only, as the official lottery code does
(``generate_strong_mask_dict``); ``"all"`` masks every coupled weight.

A ticket at a budget (``target``: a sparsity, or ``{"flops": f}`` keeping ``f`` of the
dense FLOPs) is instead the source run's prune order cut at exactly that budget
(:class:`~learnprune.methods.dessilbi.PathBudget`, as DessiLBI's own exact finish):
weights and filters that entered ``supp(Γ)`` earlier first (up to ``epoch`` if given),
then by magnitude of the source's ``W``; the mask is retrained from the starting weights
as above.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from learnprune import budget, validation
from learnprune.checkpoint import load_checkpoint
from learnprune.errors import CheckpointError, ConfigError
from learnprune.groups import GroupSet, TensorSlices
from learnprune.methods.base import FixedMaskMethod, TrainingContext
from learnprune.methods.dessilbi import DessiLBI, PathBudget

LAYERS = ("conv", "all")


def ticket_masks(run_dir: str | Path, epoch: int, layers: str = "all") -> dict[str, Tensor]:
    """``{weight name: 1[first_epoch ≤ epoch]}`` from a DessiLBI run's last checkpoint."""
    state = load_checkpoint(Path(run_dir) / "checkpoint.pt", expect={"method": "dessilbi"})
    optimizer = state["optimizer_state"]
    masks: dict[str, Tensor] = {}
    for group in optimizer["param_groups"]:
        if not group.get("coupled"):
            continue
        for name, index in zip(group["names"], group["params"], strict=True):
            first = optimizer["state"].get(index, {}).get("first_epoch")
            if first is None:
                raise CheckpointError(f"{run_dir}: no path recorded for {name}")
            if layers == "conv" and first.ndim != 4:
                continue
            masks[name] = first <= epoch
    recorded = optimizer.get("path", {}).get("epoch", 0)
    if epoch > recorded:
        raise ConfigError(f"{run_dir} recorded its path up to epoch {recorded}, not {epoch}")
    return masks


def budget_ticket_masks(
    run_dir: str | Path,
    model: nn.Module,
    target: float | Mapping[str, float],
    epoch: int | None = None,
    layers: str = "all",
    input_shape: Sequence[int] | None = None,
) -> dict[str, Tensor]:
    """``{weight name: keep mask}`` at exactly ``target`` by the prune order of a DessiLBI
    run's last checkpoint (its ``W``, entry epochs and ``Γ``; entries after ``epoch``, if
    given, count as never). ``model`` (the architecture, left untouched) gives the FLOPs;
    ``layers="conv"`` ranks the conv weights only and keeps every other layer whole."""
    parsed = budget.parse_target(target)
    assert parsed is not None
    state = load_checkpoint(Path(run_dir) / "checkpoint.pt", expect={"method": "dessilbi"})
    saved = state["optimizer_state"]
    recorded = saved.get("path", {}).get("epoch", 0)
    if epoch is not None and epoch > recorded:
        raise ConfigError(f"{run_dir} recorded its path up to epoch {recorded}, not {epoch}")
    source = copy.deepcopy(model)
    try:
        source.load_state_dict(state["model_state"])
        params = dict(source.named_parameters())
        groups = [
            {"params": [params[n] for n in group["names"]], "names": list(group["names"]),
             "coupled": bool(group.get("coupled"))}
            for group in saved["param_groups"]
        ]  # fmt: skip
        optimizer = DessiLBI(groups, lr=1.0)
        optimizer.load_state_dict(saved)
    except (KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{run_dir}: its checkpoint does not fit this model ({err})") from err
    coupled = [name for name, param in optimizer.coupled() if layers == "all" or param.ndim == 4]
    if not coupled:
        raise ConfigError(f"{run_dir} coupled no {'conv ' if layers == 'conv' else ''}weights")
    path = PathBudget(source, optimizer, parsed, input_shape, ranked=coupled)
    keep = path.exact_keep(optimizer.budget_scores(epoch))
    return path.masks(keep, source)


def random_masks_like(masks: Mapping[str, Tensor], seed: int = 0) -> dict[str, Tensor]:
    """The lottery tickets' control: per tensor a keep mask with as many kept entries as
    ``masks[name]`` (``k = Σ mask``), at ``k`` positions drawn uniformly without
    replacement (one ``torch.Generator`` seeded ``seed``, the tensors in ``masks``'s order).
    Same shapes, same per-layer kept counts, no structure."""
    generator = torch.Generator().manual_seed(seed)
    random: dict[str, Tensor] = {}
    for name, mask in masks.items():
        kept = int(torch.as_tensor(mask).bool().sum())
        keep = torch.zeros(mask.numel(), dtype=torch.bool)
        keep[torch.randperm(mask.numel(), generator=generator)[:kept]] = True
        random[name] = keep.reshape(mask.shape).to(mask.device)
    return random


class Ticket(FixedMaskMethod):
    """Train with fixed masks, e.g. a lottery ticket read from a DessiLBI run.

    Args:
        model: the model (reset to the source run's starting weights by the recipe's
            ``init``; ``learnprune ticket`` does both).
        masks: ``{weight name: bool keep mask}``.
    """

    name = "ticket"
    recipe_options = ("source", "epoch", "layers", "target")

    def __init__(self, model: nn.Module, masks: Mapping[str, Tensor]) -> None:
        params = dict(model.named_parameters())
        unknown = sorted(set(masks) - set(params))
        if unknown:
            raise ConfigError(f"ticket masks name tensors the model does not have: {unknown}")
        for name, mask in masks.items():
            if tuple(mask.shape) != tuple(params[name].shape):
                raise ConfigError(f"ticket mask for {name} has shape {tuple(mask.shape)}")
        sets = [
            GroupSet(
                name,
                "element",
                params[name].numel(),
                (
                    TensorSlices(
                        name.rpartition(".")[0], name.rpartition(".")[2], tuple(params[name].shape)
                    ),
                ),
            )
            for name in masks
        ]
        if not sets:
            raise ConfigError("the ticket has no masks")
        super().__init__(model, sets)
        self.set_masks({name: mask.reshape(-1) for name, mask in masks.items()})

    @classmethod
    def from_options(
        cls, model: nn.Module, options: Mapping[str, Any], context: TrainingContext
    ) -> Ticket:
        """``source`` (a DessiLBI run directory), ``epoch``, ``layers`` (``"all"``/``"conv"``),
        ``target`` (a budget: then ``epoch`` is optional)."""
        target = options.get("target")
        if "source" not in options or ("epoch" not in options and target is None):
            raise ConfigError("method ticket needs source (a dessilbi run) and epoch or target")
        epoch = options.get("epoch")
        epoch = None if epoch is None else validation.integer("epoch", epoch, minimum=1)
        layers = validation.choice("layers", options.get("layers", "all"), LAYERS)
        if target is not None:
            masks = budget_ticket_masks(
                options["source"], model, target, epoch, layers, context.input_shape
            )
            return cls(model, masks)
        assert epoch is not None
        return cls(model, ticket_masks(options["source"], epoch, layers))

"""Lottery tickets: a fixed mask found on a DessiLBI path, retrained from the starting weights.

DessiLBI's path grows the support of ``Γ`` from the empty model; the support at an early
epoch ``e`` is a sparse structure found without training to convergence. The ticket is
that structure retrained from the *same starting weights* the path began with (the
lottery procedure of the official code, ``example/lottery``): reset the model to
``init.pt`` of the DessiLBI run, keep the mask ``1[first_epoch ≤ e]`` fixed, and train.

``layers="conv"`` masks conv weights only, as the official lottery code does
(``generate_strong_mask_dict``); ``"all"`` masks every coupled weight.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from learnprune import validation
from learnprune.checkpoint import load_checkpoint
from learnprune.errors import CheckpointError, ConfigError
from learnprune.groups import GroupSet, TensorSlices
from learnprune.methods.base import FixedMaskMethod, TrainingContext

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
    recipe_options = ("source", "epoch", "layers")

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
        """``source`` (a DessiLBI run directory), ``epoch``, ``layers`` (``"all"``/``"conv"``)."""
        if "source" not in options or "epoch" not in options:
            raise ConfigError("method ticket needs source (a dessilbi run) and epoch")
        epoch = validation.integer("epoch", options["epoch"], minimum=1)
        layers = validation.choice("layers", options.get("layers", "all"), LAYERS)
        return cls(model, ticket_masks(options["source"], epoch, layers))

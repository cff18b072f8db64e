"""Growing a network with DessiLBI (the official code's ``example/grow-network``).

DessiLBI selects conv filters into ``supp(Γ)`` from simple to complex. If a layer uses
nearly all of its filters, it is too narrow. Starting from a narrow network:

1. train ``local_epochs`` epochs with DessiLBI (group prox per conv filter);
2. per growable layer, the share of its filters in ``supp(Γ)``; every layer at or above
   ``τ`` grows: ``width ← max(width + step, ⌈factor · width⌉)`` (``step`` 8 for VGG, 4 for
   ResNet; ``factor`` 1.1);
3. build the wider network, copy every old tensor into the leading block of the new one
   (old filters keep their place; new filters and input slices keep their fresh
   initialisation), start a new DessiLBI optimizer; repeat until no layer grows (or
   ``max_rounds``);
4. fine-tune the final width with SGD for ``finetune_epochs``.

Growable layers: every conv of VGG-16 (its width is its filters); every *stage* of a CIFAR
ResNet (the convs writing the stage's residual channels and its blocks' inner convs share
the stage's width, so a stage grows as one).

Fixed from the reference code (METHODS.md 2.6): ``get_new_arc`` read ``args.filter_grow``,
which the parser never defines, and crashed when the first conv had to grow; here every
layer grows by the same rule. ``grow_filter`` was called without ``topk_dict``, so its
fallback copied the old filters into the first rows; that is what happens here, by design.
The fine-tuning schedule multiplied the rate by ``lr ** (epoch // n)`` (by 0.05 per third
with lr 0.05) instead of a decay factor; here it is cosine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from learnprune import run_directory, validation
from learnprune.accounting import count
from learnprune.checkpoint import atomic_write_json, save_torch
from learnprune.config import TrainConfig
from learnprune.data import Dataset
from learnprune.engine import evaluate, train
from learnprune.errors import ConfigError
from learnprune.methods.base import Dense
from learnprune.methods.dessilbi import DessiLBIMethod
from learnprune.models import build_model

GROW_FILES = ("grow.json", "model.pt", "final.json")
GROWABLE = ("vgg16", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110")


@dataclass
class GrowConfig:
    """The growing schedule (the reference's defaults: τ 0.8, 10 local epochs, +8 / +4,
    factor 1.1, ν 100, fine-tune 40 epochs)."""

    start_width: int = 16
    tau: float = 0.8
    local_epochs: int = 10
    max_rounds: int = 10
    step: int | None = None
    factor: float = 1.1
    finetune_epochs: int = 40
    nu: float = 100.0
    kappa: float = 1.0
    lam: float = 1.0
    history: list[dict[str, Any]] = field(default_factory=list)

    def validate(self) -> GrowConfig:
        self.start_width = validation.integer("start_width", self.start_width, minimum=1)
        self.tau = validation.real("tau", self.tau)
        if not 0 < self.tau <= 1:
            raise ConfigError(f"tau must lie in (0, 1], got {self.tau}")
        self.local_epochs = validation.integer("local_epochs", self.local_epochs, minimum=1)
        self.max_rounds = validation.integer("max_rounds", self.max_rounds, minimum=1)
        if self.step is not None:
            self.step = validation.integer("step", self.step, minimum=1)
        self.factor = validation.real("factor", self.factor)
        if self.factor < 1:
            raise ConfigError(f"factor must be >= 1, got {self.factor}")
        self.finetune_epochs = validation.integer("finetune_epochs", self.finetune_epochs)
        self.nu = validation.positive("nu", self.nu)
        self.lam = validation.positive("lam", self.lam)
        return self


def initial_widths(model: str, start: int) -> list[int]:
    """``start`` for every growable layer: the 13 convs of VGG-16, the 3 ResNet stages."""
    if model == "vgg16":
        return [start] * 13
    if model.startswith("resnet"):
        return [start] * 3
    raise ConfigError(f"growing needs one of {', '.join(GROWABLE)}, got {model!r}")


def layer_members(model: nn.Module, name: str) -> list[list[str]]:
    """Names of the conv weights that make up each growable layer, in width order."""
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if name == "vgg16":
        return [[f"{n}.weight"] for n in convs]
    stages: list[list[str]] = [[], [], []]
    for conv in convs:
        if conv.startswith("stem"):
            stages[0].append(f"{conv}.weight")
        else:
            stage = int(conv.split(".")[0].removeprefix("layer")) - 1
            stages[stage].append(f"{conv}.weight")
    return stages


@torch.no_grad()
def copy_into(old: nn.Module, new: nn.Module) -> None:
    """Copy every tensor of ``old`` into the leading block of the same tensor of ``new``."""
    target = new.state_dict()
    for key, value in old.state_dict().items():
        if key not in target:
            continue
        if value.ndim == 0:
            target[key].copy_(value)
            continue
        block = tuple(
            slice(0, min(a, b)) for a, b in zip(value.shape, target[key].shape, strict=True)
        )
        target[key][block] = value[block].to(target[key].device)


def selected_share(method: DessiLBIMethod, members: list[list[str]]) -> list[float]:
    """Per growable layer, the share of its filters with ``Γ ≠ 0``."""
    masks = method.masks()
    shares = []
    for names in members:
        selected = total = 0
        for name in names:
            filters = masks[name].flatten(1).any(1)
            selected += int(filters.sum())
            total += filters.numel()
        shares.append(selected / total if total else 0.0)
    return shares


def grow(
    model_name: str,
    data: Dataset,
    train_config: TrainConfig,
    config: GrowConfig,
    *,
    log: Callable[[str], None] = print,
    quiet: bool = False,
    on_round: Callable[[list[dict[str, Any]]], None] | None = None,
    **model_options: Any,
) -> tuple[nn.Module, GrowConfig]:
    """Grow ``model_name`` from ``config.start_width``; return the fine-tuned model and the
    config with its ``history`` (widths, selected shares and accuracy of every round)."""
    config.validate()
    model_name = model_name.lower()
    widths = initial_widths(model_name, config.start_width)
    step = config.step or (8 if model_name == "vgg16" else 4)

    def make(current: list[int]) -> nn.Module:
        return build_model(
            model_name,
            num_classes=data.num_classes,
            in_channels=data.input_shape[0],
            widths=list(current) if model_name == "vgg16" else tuple(current),
            **model_options,
        )

    previous: nn.Module | None = None
    model = make(widths)
    for round_index in range(config.max_rounds):
        model = make(widths)
        if previous is not None:
            copy_into(previous, model)
        # the grow code's plain group prox (its slbi_opt.py), not the rescaled default
        method = DessiLBIMethod(
            model, nu=config.nu, kappa=config.kappa, lam=config.lam, prox="group"
        )
        local = TrainConfig(
            **{
                **asdict(train_config),
                "epochs": config.local_epochs,
                "seed": train_config.seed + round_index,
            }
        )
        train(model, method, data, local, quiet=True)
        shares = selected_share(method, layer_members(model, model_name))
        loss, accuracy = evaluate(
            model, data.x_test.to(_device(model)), data.y_test.to(_device(model))
        )
        grown = [
            max(w + step, math.ceil(config.factor * w)) if share >= config.tau else w
            for w, share in zip(widths, shares, strict=True)
        ]
        config.history.append(
            {
                "round": round_index + 1,
                "widths": list(widths),
                "selected_share": shares,
                "test_accuracy": accuracy,
                "test_loss": loss,
                "grown_to": grown,
            }
        )
        if on_round is not None:
            on_round(config.history)
        if not quiet:
            log(
                f"round {round_index + 1}: widths {widths}, selected "
                f"{[round(s, 2) for s in shares]}, test {accuracy:.2%}"
            )
        if grown == widths:
            break
        previous, widths = model, grown
    if config.finetune_epochs:
        finetune = TrainConfig(
            **{**asdict(train_config), "epochs": config.finetune_epochs, "lr_schedule": "cosine"}
        )
        train(model, Dense(model), data, finetune, quiet=quiet, log=log)
    return model, config


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def grow_run(
    model_name: str,
    data: Dataset,
    data_name: str,
    train_config: TrainConfig,
    config: GrowConfig,
    out: Path,
    *,
    quiet: bool = False,
) -> dict[str, Any]:
    """:func:`grow` into a run directory (``grow.json``, ``model.pt``, ``final.json``).

    The directory is claimed (:func:`learnprune.run_directory.claim`) for the whole run; a
    grow that fails removes what it created unless a round was recorded in ``grow.json``."""
    initial_widths(model_name.lower(), config.start_width)  # refuse a model before mkdir
    claimed = run_directory.claim(out)
    try:
        if claimed.foreign_files(GROW_FILES):
            raise ConfigError(f"{out} already holds files; choose another --out")
        claimed.remove_leftovers(GROW_FILES)
        return _grow_into(model_name, data, data_name, train_config, config, out, quiet=quiet)
    finally:
        claimed.release()


def _grow_into(
    model_name: str,
    data: Dataset,
    data_name: str,
    train_config: TrainConfig,
    config: GrowConfig,
    out: Path,
    *,
    quiet: bool,
) -> dict[str, Any]:
    from learnprune.runner import environment

    started = time.perf_counter()
    model, config = grow(
        model_name,
        data,
        train_config,
        config,
        quiet=quiet,
        on_round=lambda history: atomic_write_json(out / "grow.json", history),
    )
    device = _device(model)
    loss, accuracy = evaluate(model, data.x_test.to(device), data.y_test.to(device))
    counts = count(model.cpu(), data.input_shape)
    save_torch(out / "model.pt", model.state_dict())
    final_widths = config.history[-1]["widths"]
    result = {
        "method": "dessilbi-grow",
        "model": model_name,
        "data": data_name,
        "widths": final_widths,
        "rounds": len(config.history),
        "test_accuracy": accuracy,
        "test_error": 1 - accuracy,
        "test_loss": loss,
        **counts.as_dict(),
        "seconds": time.perf_counter() - started,
        "grow_config": {k: v for k, v in asdict(config).items() if k != "history"},
        "train_config": asdict(train_config),
        "history": config.history,
        "environment": environment(),
    }
    atomic_write_json(out / "final.json", result)
    return result

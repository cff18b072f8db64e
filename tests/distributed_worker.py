"""Trains every method a few steps with the Python API and saves what each rank holds.

Run by ``tests/test_distributed.py`` twice on the same tiny data set and global batch:
``python tests/distributed_worker.py OUT`` (one process) and
``torchrun --standalone --nproc_per_node 2 tests/distributed_worker.py OUT`` (a gloo
process group set up the way a user's DDP script does, then ``learnprune.train``).
Each rank writes ``OUT/rank<r>.pt``: per method the model's tensors (weights, mask
variables, gate parameters, buffers), the keep masks, the method's state and the state
of its own optimizer (DessiLBI's Γ and z); and ``resume_*`` entries: a 2-epoch run against
one stopped after epoch 1 and resumed from its checkpoint.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from learnprune import distributed
from learnprune.config import TrainConfig
from learnprune.data import Dataset
from learnprune.engine import Schedule, train
from learnprune.methods import build_method
from learnprune.methods.base import TrainingContext
from learnprune.models import build_model

EPOCHS = 2
BATCH = 64
TRAIN = 256
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # method: (method options, train options)
    "scl": ({"lam": 0.01}, {"lr": 0.05}),
    "scl-coupled": ({"lam": 0.01, "groups": "coupled"}, {"lr": 0.05}),
    "dessilbi": ({"nu": 5.0, "kappa": 1.0}, {"lr": 0.1}),
    "diffprune": ({"lam": 0.05, "target": 0.5}, {"optimizer": "adam", "lr": 1e-3}),
    "diffprune-stochastic": (
        {"lam": 0.05, "mode": "stochastic"},
        {"optimizer": "adam", "lr": 1e-3},
    ),
    "hardconcrete": ({}, {"optimizer": "adam", "lr": 1e-3}),
    "gmp": ({"target": 0.8, "begin_epoch": 0, "end_epoch": 1.5, "frequency": 2}, {"lr": 0.05}),
    "magnitude": ({"target": 0.8, "prune_epoch": 1}, {"lr": 0.05}),
}


def tiny_data() -> Dataset:
    """MNIST-shaped random images with labels a linear rule of the pixels (learnable)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(TRAIN + 64, 1, 28, 28, generator=generator)
    y = (x.flatten(1)[:, :10].argmax(1)).long()
    return Dataset("tiny", x[:TRAIN], y[:TRAIN], x[TRAIN:], y[TRAIN:], 10)


def config(train_options: dict[str, Any], epochs: int = EPOCHS, **extra: Any) -> TrainConfig:
    options = {"momentum": 0.9, "weight_decay": 1e-4, "lr_schedule": "cosine", **extra}
    return TrainConfig(epochs=epochs, batch_size=BATCH, **{**options, **train_options})


def trained(
    case: str,
    data: Dataset,
    out: Path | None = None,
    *,
    resume: bool = False,
    seed: int = 0,
    **extra: Any,
) -> dict[str, Any]:
    """``case`` trained on ``data`` (from ``out``'s checkpoint with ``resume``); what the
    rank then holds."""
    name = case.split("-")[0]
    method_options, train_options = CASES[case]
    torch.manual_seed(seed)
    model = build_model("lenet300")
    schedule = Schedule.of(len(data.x_train), config(train_options))
    context = TrainingContext(
        epochs=EPOCHS,
        steps_per_epoch=schedule.steps_per_epoch,
        total_steps=schedule.total_steps,
        input_shape=data.input_shape,
        train_size=len(data.x_train),
    )
    method = build_method(name, model, method_options, context)
    seen = {"train": 0, "test": 0}  # examples this rank's model was run on

    def count(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        seen["train" if module.training else "test"] += len(inputs[0])

    model.register_forward_pre_hook(count)
    train_config = config(train_options, **extra)
    train(model, method, data, train_config, out_dir=out, resume=resume, quiet=True)
    own = getattr(method, "optimizer", None)
    return {
        "tensors": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "masks": {k: v.clone() for k, v in method.masks().items()},
        "step": method.step,
        "optimizer": own.state_dict()["state"] if own is not None else None,
        "seen": seen,
    }


def resumed(data: Dataset, root: Path) -> dict[str, Any]:
    """The same DiffPrune run (constant rate, λ adapted to a target) straight through, and
    stopped after epoch 1 then resumed from the checkpoint rank 0 wrote (into a model
    seeded differently: everything must come from the checkpoint)."""
    straight = trained("diffprune", data, root / "straight", lr_schedule="constant")
    trained("diffprune", data, root / "stopped", lr_schedule="constant", epochs=1)
    again = trained(
        "diffprune", data, root / "stopped", resume=True, seed=123, lr_schedule="constant"
    )
    return {"straight": straight, "resumed": again}


def main(out: Path) -> None:
    torch.set_num_threads(1)
    if "WORLD_SIZE" in os.environ:  # under torchrun: a user's DDP script
        dist.init_process_group("gloo")
    data = tiny_data()
    results: dict[str, Any] = {case: trained(case, data) for case in CASES}
    root = out / f"runs-{distributed.world_size()}"
    results["resume"] = resumed(data, root)
    results["world_size"] = distributed.world_size()
    torch.save(results, out / f"rank{distributed.rank()}-of-{distributed.world_size()}.pt")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))

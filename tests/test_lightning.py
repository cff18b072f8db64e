"""The Lightning callback, trained by real ``lightning.Trainer`` fits on a tiny MLP: GMP's
schedule through a checkpoint and a resume, DiffPrune's regularizer in the gradients with
gradient accumulation, DessiLBI as the module's optimizer, and finalize."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader, TensorDataset

L = pytest.importorskip("lightning")

from lightning.pytorch.callbacks import Callback, ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

from learnprune import DessiLBI, DiffPrune  # noqa: E402
from learnprune.errors import ConfigError  # noqa: E402
from learnprune.integrations.lightning import LearnpruneCallback, parameter_groups  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # Lightning's hints on workers etc.
]

FEATURES, CLASSES = 20, 4


def mlp() -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(fc1=nn.Linear(FEATURES, 32), relu=nn.ReLU(), fc2=nn.Linear(32, CLASSES))
    )


def loader(batches: int = 4, batch_size: int = 16) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batches * batch_size, FEATURES, generator=generator)
    y = torch.randint(0, CLASSES, (batches * batch_size,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


class Classifier(L.LightningModule):
    """An MLP as ``self.model``; SGD over :func:`parameter_groups`, or DessiLBI."""

    def __init__(self, optimizer: str = "sgd", task_loss: bool = True) -> None:
        super().__init__()
        self.model = mlp()
        self.optimizer = optimizer
        self.task_loss = task_loss

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        loss = F.cross_entropy(self.model(x), y)
        if self.task_loss:
            return loss
        return {"loss": loss * 0.0}  # only the regularizer moves the gates

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer == "dessilbi":
            return DessiLBI.for_model(self, lr=0.1, nu=1.0, lam=0.1, momentum=0.0)
        return torch.optim.SGD(parameter_groups(self, weight_decay=1e-4), lr=0.1)


def make_trainer(**kwargs: Any) -> L.Trainer:
    settings: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_train_batches": 4,
        "log_every_n_steps": 1,
    }
    settings.update(kwargs)
    return L.Trainer(**settings)


class StopAfterEpochs(Callback):
    """Ends the fit after ``epochs`` epochs as an interruption would (a checkpoint exists)."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


class MethodProbe(Callback):
    """The method's step count when training starts and its sparsity when it ends (before
    finalize)."""

    def __init__(self, prune: LearnpruneCallback) -> None:
        self.prune = prune
        self.step_at_start = -1
        self.sparsity_at_end = -1.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.step_at_start = self.prune.method.step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.sparsity_at_end = self.prune.method.sparsity()


def test_gmp_resumes_its_schedule_from_a_checkpoint_and_finalizes(tmp_path) -> None:
    options = {"module": "model", "target": 0.8, "end_epoch": 1.5, "frequency": 1}
    torch.manual_seed(0)
    first = LearnpruneCallback("gmp", finalize=False, **options)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    make_trainer(
        max_epochs=2,
        enable_checkpointing=True,
        callbacks=[first, StopAfterEpochs(1), checkpoint],
    ).fit(Classifier(), loader())
    gmp = first.method
    # 2 epochs of 4 steps: the schedule ends at epoch 1.5 = step 6
    assert (gmp.begin_step, gmp.end_step) == (0, 6)
    assert gmp.step == 4
    assert gmp.sparsity() == pytest.approx(gmp.schedule(4), abs=0.01) and gmp.sparsity() < 0.78
    assert parametrize.is_parametrized(first._module.model.fc1)  # finalize=False

    torch.manual_seed(1)  # other initial weights: the checkpoint's must come back
    second = LearnpruneCallback("gmp", **options)
    probe = MethodProbe(second)
    module = Classifier()
    make_trainer(
        max_epochs=2,
        callbacks=[second, probe],
        logger=CSVLogger(tmp_path, name="logs"),
    ).fit(module, loader(), ckpt_path=tmp_path / "last.ckpt")

    assert probe.step_at_start == 4  # the method's step count came back with the checkpoint
    assert second.method.step == 8
    assert probe.sparsity_at_end == pytest.approx(0.8, abs=0.005)  # schedule's end reached
    # finalized: a plain module, 80% of its weights zero
    assert not parametrize.is_parametrized(module.model.fc1)
    assert not parametrize.is_parametrized(module.model.fc2)
    weights = torch.cat([module.model.fc1.weight.flatten(), module.model.fc2.weight.flatten()])
    assert float((weights == 0).float().mean()) == pytest.approx(0.8, abs=0.005)
    assert second.sparsity() == pytest.approx(float((weights == 0).float().mean()))

    with open(next(tmp_path.glob("logs/*/metrics.csv"))) as handle:
        rows = list(csv.DictReader(handle))
    overall = [float(r["learnprune/sparsity"]) for r in rows if r["learnprune/sparsity"]]
    assert overall[-1] == pytest.approx(0.8, abs=0.005)
    epoch_row = next(r for r in rows if r.get("learnprune/kept/fc1"))
    kept = {name: float(epoch_row[f"learnprune/kept/{name}"]) for name in ("fc1", "fc2")}
    for name in kept:
        assert float(epoch_row[f"learnprune/sparsity/{name}"]) == pytest.approx(1 - kept[name])
    removed = (1 - kept["fc1"]) * 32 * FEATURES + (1 - kept["fc2"]) * CLASSES * 32
    assert removed / (32 * FEATURES + CLASSES * 32) == pytest.approx(0.8, abs=0.005)


class GradientProbe(Callback):
    """At every optimizer step: the gates' gradients and the regularizer's own gradient."""

    def __init__(self, prune: LearnpruneCallback) -> None:
        self.prune = prune
        self.got: list[list[torch.Tensor]] = []
        self.expected: list[tuple[torch.Tensor, ...]] = []

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
    ) -> None:
        gates = self.prune.method.parameters()
        self.got.append([gate.grad.clone() for gate in gates])
        # DiffPrune's penalty reuses the z of the last forward pass: run one afresh
        pl_module.model(torch.zeros(1, FEATURES))
        self.expected.append(torch.autograd.grad(self.prune.method.regularizer(), gates))


def test_regularizer_reaches_the_gates_once_per_step_with_gradient_accumulation() -> None:
    torch.manual_seed(0)
    prune = LearnpruneCallback(lambda model: DiffPrune(model, lam=2.0), finalize=False)
    probe = GradientProbe(prune)
    trainer = make_trainer(
        max_epochs=1, limit_train_batches=6, accumulate_grad_batches=2, callbacks=[prune, probe]
    )
    trainer.fit(Classifier(task_loss=False), loader(batches=6))

    assert trainer.global_step == 3
    assert prune.method.step == 3  # after_step once per optimizer step, not per batch
    assert len(probe.got) == 3
    for got, expected in zip(probe.got, probe.expected, strict=True):
        for grad, reg_grad in zip(got, expected, strict=True):
            assert reg_grad.abs().min() > 0  # λ/N · T'(φ) for every gate
            torch.testing.assert_close(grad, reg_grad)  # two half-batches summed: λ once
    # the gates are parameters of the module's optimizer, without weight decay
    gate_ids = {id(p) for p in prune.method.parameters()}
    groups = trainer.optimizers[0].param_groups
    gate_groups = [g for g in groups if gate_ids & {id(p) for p in g["params"]}]
    assert len(gate_groups) == 1 and gate_groups[0]["weight_decay"] == 0.0
    assert gate_ids == {id(p) for p in gate_groups[0]["params"]}
    assert trainer.callback_metrics["learnprune/regularizer"] > 0


class MaskGradientProbe(Callback):
    """SCL's fc1 mask gradient as the optimizer will use it, at every optimizer step."""

    def __init__(self, prune: LearnpruneCallback) -> None:
        self.prune = prune
        self.got: list[torch.Tensor] = []

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
    ) -> None:
        self.got.append(self.prune.method.gates["fc1.weight"].mask_variable.grad.clone())


def test_scl_normalises_the_accumulated_mask_gradient_once_per_step() -> None:
    """Two micro-batches per step: each output unit's task gradient has unit L2 norm and λ
    is added once — normalise(g₁ + g₂) + λ, not normalise(g₁) + normalise(g₂) + 2λ."""
    torch.manual_seed(0)
    lam = 0.25
    prune = LearnpruneCallback("scl", module="model", lam=lam, finalize=False)
    probe = MaskGradientProbe(prune)  # after the callback: sees what the optimizer uses
    trainer = make_trainer(
        max_epochs=1, limit_train_batches=4, accumulate_grad_batches=2, callbacks=[prune, probe]
    )
    trainer.fit(Classifier(), loader(batches=4))
    assert len(probe.got) == 2 and prune.method.step == 2
    for grad in probe.got:
        task = grad.reshape(32, FEATURES) - lam
        torch.testing.assert_close(task.norm(dim=1), torch.ones(32))


@pytest.mark.parametrize("method", [None, "dessilbi"])
def test_dessilbi_optimizer_records_its_path_and_finalizes_to_its_support(
    method: str | None,
) -> None:
    torch.manual_seed(0)
    prune = LearnpruneCallback(method)
    trainer = make_trainer(max_epochs=2, callbacks=[prune])
    module = Classifier(optimizer="dessilbi")
    trainer.fit(module, loader())

    optimizer = trainer.optimizers[0]
    assert prune.dessilbi is optimizer and isinstance(optimizer, DessiLBI)
    assert optimizer.epoch == 2 and len(optimizer.support_history) == 2
    support = optimizer.support()
    total = 32 * FEATURES + CLASSES * 32
    assert 0 < sum(support.values()) < 0.5 * total  # Γ is sparse
    first, last = (sum(s.values()) for s in optimizer.support_history)
    assert first < last == sum(support.values())  # the support grew along the path
    metrics = trainer.callback_metrics
    assert float(metrics["learnprune/support"]) == sum(support.values())
    assert float(metrics["learnprune/support/model.fc1"]) == support["model.fc1.weight"]
    assert float(metrics["learnprune/sparsity"]) == pytest.approx(1 - sum(support.values()) / total)
    # finalized to W* = W ⊙ 1[Γ ≠ 0]
    for name, weight in optimizer.coupled():
        in_support = optimizer.state[weight]["gamma"] != 0
        assert torch.equal(weight != 0, in_support), name
    assert torch.count_nonzero(module.model.fc1.bias) > 0  # biases are not coupled
    if method == "dessilbi":  # the method reads the module's optimizer
        assert prune.method.optimizer is optimizer


def test_options_are_checked_when_the_callback_is_made() -> None:
    with pytest.raises(ConfigError, match="unknown method"):
        LearnpruneCallback("prune-everything")
    with pytest.raises(ConfigError, match="factory takes none"):
        LearnpruneCallback(lambda model: DiffPrune(model), lam=1.0)
    with pytest.raises(ConfigError, match="log_sparsity_every"):
        LearnpruneCallback("gmp", target=0.5, log_sparsity_every=-1)


@pytest.mark.parametrize("method", ["scl", "diffprune"])
def test_ddp_on_two_cpu_processes_matches_one_process(tmp_path, method: str) -> None:
    """Lightning's ``strategy="ddp"`` (gloo): the gradients are averaged before the callback's
    ``before_optimizer_step``, so the method's state is the same on both ranks and matches
    one process on the same global batches (1e-5) after 8 steps."""
    worker = Path(__file__).with_name("lightning_ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    for devices in ("1", "2"):
        done = subprocess.run(
            [sys.executable, str(worker), method, str(tmp_path), devices],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    load = lambda name: torch.load(tmp_path / name, weights_only=False)  # noqa: E731
    one, first, second = (load(f"{method}-{n}.pt") for n in ("1-rank0", "2-rank0", "2-rank1"))
    assert first["world_size"] == 2 and one["world_size"] == 1
    assert first["step"] == second["step"] == one["step"] == 8  # 2 epochs of 256 / 64
    for key, value in first["tensors"].items():
        assert torch.equal(value, second["tensors"][key]), key
        torch.testing.assert_close(value, one["tensors"][key], rtol=1e-5, atol=1e-5)
    for key, value in first["masks"].items():
        assert torch.equal(value, second["masks"][key]), key
        assert torch.equal(value, one["masks"][key]), key

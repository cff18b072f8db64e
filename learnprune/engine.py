"""The training loop: task loss + the method's regularizer, eval, metrics, checkpoints.

Read it top to bottom: :func:`train` sets up (seeds, device, optimizer, resume), then runs
epochs of

    loss = cross_entropy(model(x), y) + method.regularizer()
    loss.backward(); optimizer.step(); method.after_step()

evaluates on the test set after every epoch, appends a line to ``metrics.jsonl`` and writes
``checkpoint.pt`` (model, method, optimizer and RNG states) atomically. The batch order of
epoch ``e`` comes from a generator seeded with ``(seed, e)``, so a run resumed from the
checkpoint of epoch ``e`` ends with the same weights, bit for bit, as one never
interrupted.

Under ``torchrun`` (or in a user's script with a process group of several processes) the
same loop runs data-parallel: each rank trains on its shard of the same global batches,
DDP averages the gradients, and only rank 0 writes (:mod:`learnprune.distributed`).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from learnprune import checkpoint, distributed
from learnprune.config import TrainConfig
from learnprune.data import Dataset
from learnprune.errors import CheckpointError, ConfigError, TrainingDivergedError, relayed
from learnprune.methods.base import PruningMethod

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"


def configure_torch() -> None:
    """Process-wide settings every CPU training entry point needs.

    * Denormals flushed to zero: without it small MLPs train about ten times slower on CPU.
    * glibc's allocator told to keep freed memory (allocations below 64 MiB from the heap,
      trimmed back to the system only above 512 MiB free): by default every tensor above
      128 KiB is a fresh ``mmap`` whose pages fault on first touch, which cost 167 page
      faults and about 8% of an SCL training step on LeNet-300-100.
    """
    torch.set_flush_denormal(True)
    _keep_freed_memory()


_MALLOC_TUNED = False


def _keep_freed_memory() -> None:
    global _MALLOC_TUNED
    if _MALLOC_TUNED or sys.platform != "linux":
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 64 << 20)
        libc.mallopt(m_trim_threshold, 512 << 20)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass
    _MALLOC_TUNED = True


def seed_everything(seed: int) -> None:
    """Seed torch's, numpy's and Python's global generators."""
    import random

    import numpy as np

    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``cuda:N`` must exist on this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device cuda was asked for but no CUDA device is available")
        count = torch.cuda.device_count()
        if (device.index or 0) >= count:
            raise ConfigError(
                f"device {name} was asked for but this machine has {count} CUDA device(s), "
                f"cuda:0 to cuda:{count - 1}"
            )
    return device


@dataclass(frozen=True)
class Schedule:
    """Steps and learning rate of a run."""

    steps_per_epoch: int
    total_steps: int
    config: TrainConfig

    @classmethod
    def of(cls, train_size: int, config: TrainConfig) -> Schedule:
        steps_per_epoch = math.ceil(train_size / config.batch_size)
        total = steps_per_epoch * config.epochs
        if config.max_steps is not None:
            total = min(total, config.max_steps)
        return cls(steps_per_epoch, total, config)

    def epoch_at(self, step: int) -> float:
        """Training progress in epochs. With ``max_steps`` the whole run is compressed into
        ``total_steps``, so a smoke run still goes through the full schedule."""
        return step / self.total_steps * self.config.epochs

    def lr(self, step: int) -> float:
        """Learning rate for ``step``: cosine to zero, step decay at milestones, or constant."""
        base = self.config.lr
        if self.config.lr_schedule == "cosine":
            progress = min(step, self.total_steps) / self.total_steps
            return base * 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.config.lr_schedule == "step":
            epoch = self.epoch_at(step)
            return base * self.config.gamma ** sum(epoch >= m for m in self.config.milestones)
        return base


def build_optimizer(method: PruningMethod, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov), Adam (weight decay added to the gradient) or AdamW
    (decoupled weight decay, ``w ← w − lr·λ_wd·w``) over the model's weights and the method's
    own tensors (in the method's :meth:`~PruningMethod.optimizer_groups`).

    With Adam a weight whose gradient is only its L2 term still moves by about ``lr`` per
    step (Adam normalises the gradient): a weight behind a closed gate decays to zero within
    a few hundred steps and its gate loses any reason to reopen. AdamW shrinks it by the
    factor ``1 − lr·λ_wd`` instead."""
    groups = [{"params": method.model_parameters(), "weight_decay": config.weight_decay}]
    groups += method.optimizer_groups()
    for group in groups:
        group.setdefault("base_lr", config.lr)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)


def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)`` in eval mode."""
    loss_sum, correct = _evaluation_sums(model, x, y, batch_size)
    return loss_sum / len(x), correct / len(x)


@torch.no_grad()
def _evaluation_sums(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> tuple[float, int]:
    """Summed cross-entropy and number of correct predictions on ``(x, y)``, in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum = 0.0
    correct = 0
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(1) == target).sum())
    model.train(was_training)
    return loss_sum, correct


def crop_flip(
    images: Tensor,
    generator: torch.Generator,
    batch_size: int | None = None,
    start: int = 0,
    stride: int = 1,
) -> Tensor:
    """Random 4-pixel-padded crop and horizontal flip (the standard CIFAR augmentation).

    The offsets and flips are drawn for a batch of ``batch_size`` images (default: all of
    ``images``), of which ``images`` are the positions ``start::stride`` — a rank's shard of
    a global batch gets the same crops as in a one-process run."""
    n, _c, h, w = images.shape
    total = n if batch_size is None else batch_size
    padded = F.pad(images, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (total,), generator=generator)[start::stride].tolist()
    dx = torch.randint(0, 9, (total,), generator=generator)[start::stride].tolist()
    flip = (torch.rand(total, generator=generator) < 0.5)[start::stride]
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    flip = flip.to(out.device)
    out[flip] = out[flip].flip(-1)
    return out


def evaluate_everywhere(
    model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000
) -> tuple[float, float]:
    """:func:`evaluate`, with the test set split over the ranks of a process group (each
    rank evaluates ``x[r::N]``; sums reduced; rank 0's BatchNorm statistics used)."""
    if not distributed.is_distributed():
        return evaluate(model, x, y, batch_size)
    distributed.broadcast_buffers(model)
    size, at = distributed.world_size(), distributed.rank()
    xs, ys = x[at::size], y[at::size]
    loss_sum, correct = _evaluation_sums(model, xs, ys, batch_size)
    sums = torch.tensor([loss_sum, correct, len(xs)], dtype=torch.float64, device=x.device)
    distributed.all_reduce_sum(sums)
    return float(sums[0] / sums[2]), float(sums[1] / sums[2])


def train(
    model: nn.Module,
    method: PruningMethod,
    data: Dataset,
    config: TrainConfig,
    *,
    out_dir: str | Path | None = None,
    resume: bool = False,
    run_info: Mapping[str, Any] | None = None,
    quiet: bool = False,
    progress: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` with ``method`` on ``data``; return the last epoch's metrics.

    Args:
        model: the model, with the method already attached.
        method: the pruning method (``Dense`` for none).
        data: in-memory data set (``config.train_subset`` takes a fixed subset of it).
        config: training settings.
        out_dir: where ``metrics.jsonl`` and ``checkpoint.pt`` go (nothing is written if
            ``None``).
        resume: continue from ``out_dir/checkpoint.pt``.
        run_info: identifies the run inside the checkpoint (model, method, data names) so a
            resume into a foreign directory is refused.
        quiet: print nothing.
        progress: show a progress bar (default: when stderr is a terminal and not quiet).
        log: where epoch lines go (default: print to stdout).

    Raises:
        ConfigError: ``method`` is attached to another model (training ``model`` would
            leave it unpruned).
        TrainingDivergedError: the loss became NaN or infinite, or the last steps of an
            epoch made the weights or the test loss so (the last checkpoint stays).
        CheckpointError: ``resume`` with a corrupt or foreign checkpoint (a run directory
            without a checkpoint yet, interrupted in its first epoch, starts over).
    """
    configure_torch()
    config.validate()
    _check_attached(method, model)
    out = Path(out_dir) if out_dir is not None else None
    info = dict(run_info or {})
    main = distributed.is_main()
    ranks = distributed.world_size()
    quiet = quiet or not main
    say = (lambda _line: None) if quiet else (log or print)
    show_bar = (not quiet) and (sys.stderr.isatty() if progress is None else progress)

    device = distributed.device_for_rank(resolve_device(config.device))
    model.to(device)
    if config.train_subset is not None:
        data = data.subset(config.train_subset, seed=config.seed)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    augment = config.augment == "crop_flip" or (
        config.augment == "auto" and x_train.shape[-1] == 32 and x_train.shape[1] == 3
    )

    schedule = Schedule.of(len(x_train), config)
    optimizer = method.build_optimizer(config) or build_optimizer(method, config)
    for group in optimizer.param_groups:
        group.setdefault("base_lr", config.lr)
    start_epoch, step, elapsed = 0, 0, 0.0
    if resume and out is None:
        raise CheckpointError("resume needs the run directory")
    if resume and not (out / CHECKPOINT).exists():
        say(f"{out} has no checkpoint yet (interrupted in its first epoch): starting over")
        if main:
            _truncate_metrics(out / METRICS, 0)
        resume = False
    if resume:
        state = checkpoint.load_checkpoint(out / CHECKPOINT, expect=_identity(info))
        _check_resume_fields(state, out / CHECKPOINT)
        _restore(state, model, method, optimizer)
        start_epoch, step, elapsed = state["epoch"], state["step"], state["elapsed"]
        if main:
            _truncate_metrics(out / METRICS, start_epoch)
        say(f"resuming {out} after epoch {start_epoch} (step {step})")
    else:
        seed_everything(config.seed)
    net = distributed.wrap(model, device)  # the model itself in one process

    # the first step whose loss was not finite, tracked on the device; read (a sync) every
    # step on CPU, every 50 steps on a GPU or across processes (there a collective op)
    check_every = 1 if device.type == "cpu" and ranks == 1 else 50
    first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
    last: dict[str, Any] = {}
    model.train()
    for epoch in range(start_epoch, config.epochs):
        if step >= schedule.total_steps:
            break
        epoch_start = time.perf_counter()
        order = torch.randperm(len(x_train), generator=_generator(config.seed, epoch))
        augment_rng = _generator(config.seed + 1, epoch)
        loss_sum = torch.zeros((), device=device)
        reg_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        bar = tqdm(
            total=schedule.steps_per_epoch,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            unit="step",
            leave=False,
            disable=not show_bar,
            dynamic_ncols=True,
        )
        for batch_start in range(0, len(x_train), config.batch_size):
            if step >= schedule.total_steps:
                break
            index = order[batch_start : batch_start + config.batch_size]
            local = distributed.shard(index).to(device)  # all of it in one process
            x, y = x_train[local], y_train[local]
            if augment:
                x = crop_flip(x, augment_rng, len(index), distributed.rank(), ranks)
            for group in optimizer.param_groups:  # every group follows the one schedule
                group["lr"] = schedule.lr(step) * group["base_lr"] / config.lr
            logits = net(x)
            # mean over the global batch once DDP has averaged the ranks' gradients
            task_sum = F.cross_entropy(logits, y, reduction="sum")
            reg = method.regularizer()
            loss = task_sum * (ranks / len(index)) + reg
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            method.before_optimizer_step()
            optimizer.step()
            method.after_step()
            step += 1
            loss_sum += task_sum.detach()
            reg_sum += reg.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            first_bad_step = torch.where(
                (first_bad_step < 0) & ~torch.isfinite(loss.detach()), step, first_bad_step
            )
            if step % check_every == 0:
                distributed.all_reduce_max(first_bad_step)  # every rank stops together
                if int(first_bad_step) >= 0:
                    bar.close()
                    raise _diverged(epoch, int(first_bad_step), out)
            if show_bar and step % 20 == 0:
                bar.set_postfix(loss=f"{float(loss_sum) / seen:.4f}", refresh=False)
            bar.update(1)
        bar.close()
        distributed.all_reduce_max(first_bad_step)
        if int(first_bad_step) >= 0:
            raise _diverged(epoch, int(first_bad_step), out)
        seen_total = torch.tensor(seen, device=device)
        distributed.all_reduce_sum(loss_sum, reg_sum, correct, seen_total)
        seen = int(seen_total)

        def evaluate_now() -> tuple[float, float]:
            return evaluate_everywhere(model, x_test, y_test, config.eval_batch_size)

        test_loss, test_accuracy = evaluate_now()
        if not (math.isfinite(test_loss) and _finite_weights(model)):
            # an update after the last loss was checked (the epoch's last step) blew up
            raise _diverged(epoch, step, out, after_step=True)
        extra = method.epoch_end(epoch + 1, evaluate_now)
        seconds = time.perf_counter() - epoch_start
        elapsed += seconds
        last = {
            "epoch": epoch + 1,
            "step": step,
            "lr": schedule.lr(step - 1),
            "train_loss": float(loss_sum) / max(seen, 1),
            "regularizer": float(reg_sum) / max(seen, 1),
            "train_accuracy": float(correct) / max(seen, 1),
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
            "sparsity": method.sparsity(),
            "seconds": seconds,
            "elapsed": elapsed,
            **extra,
        }
        say(
            f"epoch {epoch + 1:>3}/{config.epochs}  loss {last['train_loss']:.4f}  "
            f"train {last['train_accuracy']:.2%}  test {test_accuracy:.2%}  "
            f"sparsity {last['sparsity']:.2%}  lr {last['lr']:.3g}  {seconds:.1f}s"
            + (
                f"  sparse test {extra['test_accuracy_sparse']:.2%}"
                if "test_accuracy_sparse" in extra
                else ""
            )
        )
        if out is not None and main:
            _append_metrics(out / METRICS, last)
            checkpoint.save_checkpoint(
                out / CHECKPOINT,
                {
                    **_identity(info),
                    "epoch": epoch + 1,
                    "step": step,
                    "elapsed": elapsed,
                    "complete": step >= schedule.total_steps or epoch + 1 == config.epochs,
                    "model_state": model.state_dict(),
                    "method_state": method.state_dict(),
                    "optimizer_state": optimizer.state_dict(),
                    "rng": checkpoint.rng_state(),
                },
            )
        distributed.barrier()  # no rank runs ahead of the checkpoint
    if not last and resume and out is not None:
        last = _last_metrics(out / METRICS)
    last["steps"] = step
    last["elapsed"] = elapsed
    return last


def _identity(info: Mapping[str, Any]) -> dict[str, Any]:
    return {key: info[key] for key in ("model", "method", "data") if key in info}


def _generator(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


RESUME_FIELDS: dict[str, type | tuple[type, ...]] = {
    "epoch": int,
    "step": int,
    "elapsed": (int, float),
    "model_state": dict,
    "method_state": dict,
    "optimizer_state": dict,
    "rng": dict,
}
"""What resuming reads from a checkpoint, with its type."""


def _check_resume_fields(state: Mapping[str, Any], path: Path) -> None:
    """Refuse (CheckpointError) a checkpoint missing a field resuming needs, or holding
    one of the wrong type (a whole-number ``epoch`` and ``step`` >= 0, the RNG states)."""
    for name, kind in RESUME_FIELDS.items():
        if name not in state:
            raise CheckpointError(f"{path} is corrupt: it has no {name}")
        if isinstance(state[name], bool) or not isinstance(state[name], kind):
            raise CheckpointError(f"{path} is corrupt: {name} is {state[name]!r:.40}")
    if state["epoch"] < 0 or state["step"] < 0:
        raise CheckpointError(f"{path} is corrupt: epoch {state['epoch']}, step {state['step']}")
    missing = [key for key in ("torch", "numpy", "python") if key not in state["rng"]]
    if missing:
        raise CheckpointError(f"{path} is corrupt: its RNG states lack {', '.join(missing)}")


def _restore(
    state: Mapping[str, Any],
    model: nn.Module,
    method: PruningMethod,
    optimizer: torch.optim.Optimizer,
) -> None:
    try:
        model.load_state_dict(state["model_state"])
        method.load_state_dict(state["method_state"])
        optimizer.load_state_dict(state["optimizer_state"])
    except (KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"checkpoint does not fit this run: {relayed(err)}") from err
    try:
        checkpoint.set_rng_state(state["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"the checkpoint's RNG states are corrupt ({relayed(err)})") from err


def _check_attached(method: PruningMethod, model: nn.Module) -> None:
    """``method`` must act on ``model`` (its model, or a module inside ``model``, as in a
    wrapper or ``torch.compile``'s module): otherwise its gates are not in the trained
    forward pass and ``model`` would train unpruned."""
    if not any(module is method.model for module in model.modules()):
        raise ConfigError(
            f"the {method.name} method is attached to another model "
            f"({type(method.model).__name__}), not to the {type(model).__name__} given to "
            "train; build the method on the model you train"
        )


def _finite_weights(model: nn.Module) -> bool:
    """Whether every parameter of ``model`` is finite (one sync)."""
    flags = [torch.isfinite(p).all() for p in model.parameters()]
    return bool(torch.stack(flags).all()) if flags else True


def _diverged(
    epoch: int, step: int, out: Path | None, *, after_step: bool = False
) -> TrainingDivergedError:
    where = (
        f"; the last good checkpoint is {out / CHECKPOINT}"
        if out and (out / CHECKPOINT).exists()
        else ""
    )
    what = (
        f"the weights or the test loss became NaN or infinite after the last step of epoch "
        f"{epoch + 1} (step {step})"
        if after_step
        else f"the loss became NaN or infinite in epoch {epoch + 1} (step {step})"
    )
    return TrainingDivergedError(
        f"{what}{where}; lower the learning rate or the regularization strength"
    )


def _append_metrics(path: Path, row: Mapping[str, Any]) -> None:
    existing = path.read_text() if path.exists() else ""
    checkpoint.atomic_write_text(path, existing + checkpoint.json_text(dict(row)) + "\n")


def _truncate_metrics(path: Path, epochs: int) -> None:
    """Drop metric lines of epochs after ``epochs`` (written after the last checkpoint)."""
    if not path.exists():
        return
    kept = [row for row in _read_metrics(path) if row["epoch"] <= epochs]
    text = "".join(checkpoint.json_text(row) + "\n" for row in kept)
    checkpoint.atomic_write_text(path, text)


def _last_metrics(path: Path) -> dict[str, Any]:
    rows = _read_metrics(path)
    return rows[-1] if rows else {}


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl``, each with a whole-number ``epoch`` (CheckpointError)."""
    rows = checkpoint.read_json_lines(path)
    for row in rows:
        if isinstance(row.get("epoch"), bool) or not isinstance(row.get("epoch"), int):
            raise CheckpointError(f"{path} is corrupt: a row without a whole-number epoch")
    return rows

"""Multi-process data-parallel training with ``torch.distributed`` (DDP).

Started by ``torchrun --nproc_per_node N -m learnprune train ...`` (the process group is
set up from torchrun's environment: gloo on CPU, NCCL where there are GPUs), or from a
user's own DDP script that has called ``torch.distributed.init_process_group`` before
:func:`learnprune.train`. What every rank does:

* the same model, method and seed; :class:`~torch.nn.parallel.DistributedDataParallel`
  broadcasts rank 0's parameters and buffers once and averages the gradients;
* **the same global batch** as a one-process run with ``batch_size`` ``B``: every rank takes
  the same permutation, cuts the same global batch ``I`` of ``|I| ≤ B`` examples and keeps
  its shard ``I[r::N]`` (rank ``r`` of ``N``); its loss is scaled so that DDP's average
  of the ranks' gradients is the gradient of the one-process loss,

      ℓ_r = N · Σ_{i ∈ I[r::N]} CE_i / |I|  + R(θ)   ⇒   (1/N) Σ_r ∇ℓ_r = ∇(mean_{i∈I} CE_i + R)

  (``R``, the method's regularizer, depends only on parameters that are equal on every
  rank, so its gradient is the same everywhere and survives the average unchanged);
* everything a method keeps besides the gradients is computed from those equal gradients
  and equal parameters (SCL's mask variables, DiffPrune's and hard-concrete's gate
  parameters and λ controllers, GMP's schedule and magnitudes, DessiLBI's ``Γ`` and ``z``),
  so it is the same on every rank at every step; stochastic gates draw the same noise on
  every rank because every rank seeds the global generator alike;
* BatchNorm statistics are computed per shard in training (as DDP does without
  SyncBatchNorm) and rank 0's running statistics are broadcast before every evaluation;
* the test set is evaluated in shards and the sums reduced; only rank 0 prints, writes
  ``metrics.jsonl``, checkpoints and results; every rank reads the checkpoint to resume.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from learnprune import errors

T = TypeVar("T")


def is_distributed() -> bool:
    """Whether a process group of more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this process writes results (rank 0, or the only process)."""
    return rank() == 0


def local_rank() -> int:
    """This process's index on its machine (torchrun's ``LOCAL_RANK``; 0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def launched_by_torchrun() -> bool:
    """Whether the environment holds a torchrun launch of more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "MASTER_ADDR" in os.environ


@contextlib.contextmanager
def process_group_from_env(backend: str | None = None) -> Iterator[bool]:
    """Set up the process group from torchrun's environment for the ``with`` block and
    tear it down after; yields whether one was set up (nothing happens without torchrun
    or when the caller has set one up already).

    ``backend``: ``"nccl"`` where CUDA is available, ``"gloo"`` otherwise.
    """
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        yield False
        return
    if not dist.is_available():
        raise errors.ConfigError("this torch build has no torch.distributed")
    chosen = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if chosen == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(chosen)
    try:
        yield True
    finally:
        dist.destroy_process_group()


def device_for_rank(device: torch.device) -> torch.device:
    """A CUDA device without an index becomes this rank's GPU (``cuda:LOCAL_RANK``)."""
    if device.type == "cuda" and device.index is None and is_distributed():
        return torch.device("cuda", local_rank())
    return device


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel (the model itself without a process group)."""
    if not is_distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def shard(index: Tensor) -> Tensor:
    """This rank's part ``I[r::N]`` of a global batch of indices (all of it alone)."""
    size = world_size()
    return index[rank() :: size] if size > 1 else index


def all_reduce_sum(*tensors: Tensor) -> None:
    """Sum each tensor over the ranks, in place (nothing alone)."""
    if not is_distributed():
        return
    for tensor in tensors:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)


def all_reduce_max(tensor: Tensor) -> None:
    """Largest value over the ranks, in place."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)


def broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics, masks) on every rank."""
    if not is_distributed():
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def barrier() -> None:
    """Wait for every rank (nothing alone)."""
    if is_distributed():
        dist.barrier()


def on_main(action: Callable[[], T]) -> T:
    """Run ``action`` on rank 0 only and give its result to every rank. An error raised
    there is raised on every rank (a learnprune error as itself, any other as a
    RuntimeError with its message), so no rank waits for a partner that has stopped."""
    if not is_distributed():
        return action()
    payload: list[Any] = [None]
    if is_main():
        try:
            payload[0] = ("ok", action())
        except Exception as err:
            payload[0] = ("error", type(err).__name__, str(err))
            dist.broadcast_object_list(payload, src=0)
            raise
    dist.broadcast_object_list(payload, src=0)
    if payload[0][0] == "error":
        kind = getattr(errors, payload[0][1], None)
        if not (isinstance(kind, type) and issubclass(kind, errors.LearnpruneError)):
            kind = RuntimeError
        err = kind(f"rank 0: {payload[0][2]}")
        err.reported_by_rank_0 = True  # type: ignore[attr-defined]  # printed there already
        raise err
    return payload[0][1]

"""Run by tests/test_lightning.py: a Lightning fit with the learnprune callback, either
``strategy="ddp"`` on 2 CPU processes (gloo; 32 examples per rank and step) or one process
on the same global batches of 64; each process saves its method's state.

Lightning's DDP strategy starts the second process by running this script again, so it is
a script, not a test function: ``python tests/lightning_ddp_worker.py METHOD OUT DEVICES``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

import learnprune as lp
from learnprune.integrations.lightning import LearnpruneCallback, parameter_groups

OPTIONS = {"scl": {"lam": 0.01}, "diffprune": {"lam": 0.05}, "gmp": {"target": 0.8}}


class Net(L.LightningModule):
    def __init__(self, optimizer: str) -> None:
        super().__init__()
        self.model = lp.build_model("lenet300")
        self.optimizer = optimizer

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _index: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = parameter_groups(self, weight_decay=1e-4)
        if self.optimizer == "adam":
            return torch.optim.Adam(groups, lr=1e-3)
        return torch.optim.SGD(groups, lr=0.05, momentum=0.9)


def main(method: str, out: Path, devices: int) -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 1, 28, 28, generator=generator)
    y = x.flatten(1)[:, :10].argmax(1)
    # in order: rank r of 2 gets examples r::2 (Lightning's own distributed sampler would
    # shuffle), so global batch k is examples 64k..64k+63 in both set-ups
    data = torch.utils.data.TensorDataset(x, y)
    sampler = torch.utils.data.DistributedSampler(
        data, num_replicas=devices, rank=int(os.environ.get("LOCAL_RANK", "0")), shuffle=False
    )
    loader = torch.utils.data.DataLoader(data, batch_size=64 // devices, sampler=sampler)
    prune = LearnpruneCallback(method, module="model", finalize=False, **OPTIONS[method])
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        use_distributed_sampler=False,
        callbacks=[prune],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Net("adam" if method == "diffprune" else "sgd"), loader)
    assert prune.method is not None
    state = {
        "step": prune.method.step,
        "masks": prune.method.masks(),
        "tensors": {k: v.detach().clone() for k, v in prune.method.model.state_dict().items()},
        "world_size": trainer.world_size,
    }
    torch.save(state, out / f"{method}-{devices}-rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]))

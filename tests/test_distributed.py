"""DDP under torchrun (gloo, loopback): every method gives the same weights and masks on
both ranks, and matches one process on the same global batch; resume works; the CLI's
``torchrun -m learnprune train`` writes once, from rank 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

WORKER = Path(__file__).with_name("distributed_worker.py")
CASES = (
    "scl",
    "scl-coupled",
    "dessilbi",
    "diffprune",
    "diffprune-stochastic",
    "hardconcrete",
    "gmp",
    "magnitude",
)


def _environment() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _torchrun(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=300, env=_environment(), cwd=cwd
    )


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The worker's results: one process, and both ranks of two."""
    out = tmp_path_factory.mktemp("ddp")
    single = subprocess.run(
        [sys.executable, str(WORKER), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=_environment(),
    )
    assert single.returncode == 0, single.stderr[-3000:]
    double = _torchrun(str(WORKER), str(out))
    assert double.returncode == 0, double.stderr[-3000:]
    load = lambda name: torch.load(out / name, weights_only=False)  # noqa: E731
    return {
        "one": load("rank0-of-1.pt"),
        "rank0": load("rank0-of-2.pt"),
        "rank1": load("rank1-of-2.pt"),
        "out": out,
    }


def _flat(state: Any) -> dict[str, torch.Tensor]:
    """Every tensor of a nested result, by path."""
    found: dict[str, torch.Tensor] = {}

    def walk(value: Any, path: str) -> None:
        if isinstance(value, torch.Tensor):
            found[path] = value
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{path}/{key}")
        elif isinstance(value, (list, tuple)):
            for key, item in enumerate(value):
                walk(item, f"{path}/{key}")

    walk(state, "")
    return found


@pytest.mark.parametrize("case", CASES)
def test_both_ranks_hold_the_same_state_and_match_one_process(
    ranks: dict[str, Any], case: str
) -> None:
    one, first, second = ranks["one"][case], ranks["rank0"][case], ranks["rank1"][case]
    assert first["step"] == second["step"] == one["step"] == 8  # 2 epochs of 4 global batches
    # each rank trained on half of every global batch and evaluated half of the test set
    assert one["seen"]["train"] == 2 * 256
    assert first["seen"]["train"] == second["seen"]["train"] == 256
    assert first["seen"]["test"] + second["seen"]["test"] == one["seen"]["test"]
    a, b, reference = _flat(first), _flat(second), _flat(one)
    assert a.keys() == b.keys() == reference.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{case}: ranks differ at {key}"
    for key in a:
        if a[key].dtype == torch.bool or not a[key].is_floating_point():
            assert torch.equal(a[key], reference[key]), f"{case}: masks differ at {key}"
        else:
            assert torch.allclose(a[key], reference[key], rtol=1e-5, atol=1e-5), (
                f"{case}: 2 processes and 1 differ at {key} by "
                f"{(a[key] - reference[key]).abs().max():.2e}"
            )
    masks = first["masks"]
    if case.startswith(("gmp", "magnitude")):  # the schedule reached its target
        kept = sum(int(m.sum()) for k, m in masks.items() if k.endswith("weight"))
        total = sum(m.numel() for k, m in masks.items() if k.endswith("weight"))
        assert abs(1 - kept / total - 0.8) < 0.01
    if case == "dessilbi":  # Γ is sparse and the same everywhere (checked above)
        gammas = [s["gamma"] for s in first["optimizer"].values() if "gamma" in s]
        assert gammas and any(int((g == 0).sum()) > 0 for g in gammas)


def test_resume_under_torchrun_continues_exactly(ranks: dict[str, Any]) -> None:
    for rank in ("rank0", "rank1"):
        straight = _flat(ranks[rank]["resume"]["straight"])
        resumed = _flat(ranks[rank]["resume"]["resumed"])
        assert straight.keys() == resumed.keys()
        for key, value in straight.items():
            assert torch.equal(value, resumed[key]), f"{rank}: resume differs at {key}"
    runs = ranks["out"] / "runs-2"
    assert (runs / "stopped" / "checkpoint.pt").is_file()
    lines = (runs / "stopped" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]  # written once, by rank 0


@pytest.mark.data
def test_torchrun_cli_trains_on_mnist_and_writes_once(tmp_path: Path) -> None:
    """Real data (fetched by `make data`), 2 ranks of 1,000 examples per step."""
    out = tmp_path / "run"
    done = _torchrun(
        "-m", "learnprune", "train", "--model", "lenet300", "--data", "mnist",
        "--method", "scl", "--epochs", "1", "--train-subset", "2000", "--batch-size", "100",
        "--out", str(out), "--no-progress",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("epoch   1/1") == 1  # one rank prints
    final = json.loads((out / "final.json").read_text())
    assert final["environment"]["processes"] == 2
    assert final["steps"] == 20 and final["test_accuracy"] > 0.6  # chance: 0.1
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.pt", "config.json", "final.json", "metrics.jsonl", "model.pt",
    ]  # fmt: skip
    again = _torchrun(
        "-m", "learnprune", "train", "--model", "lenet300", "--data", "mnist",
        "--out", str(out), "--no-progress",
    )  # fmt: skip
    # torchrun exits 1 for a failed worker and prints its own report (with the agent's
    # traceback); the workers exit 2 with learnprune's one message, printed by rank 0
    assert again.returncode == 1
    assert "exitcode  : 2" in again.stderr  # (torchrun may stop the second worker first)
    assert again.stderr.count("learnprune: error:") == 1
    assert again.stderr.count("already holds files") == 1
    assert json.loads((out / "final.json").read_text()) == final  # nothing lost

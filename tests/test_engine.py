"""Tests for the training engine and a whole run through the Python API.

Most tests train LeNet-300-100 for a few epochs on a small synthetic data set (class
prototypes plus noise: learnable, but not instantly) so they take well under a second each;
``test_final_json_of_a_real_mnist_run`` trains on a 2000-example subset of the real MNIST
(fetched by ``make data`` into ~/.cache/learnprune/mnist).
"""

from __future__ import annotations

import importlib
import itertools
import json
import math
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from learnprune import checkpoint, engine
from learnprune.checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint
from learnprune.config import RunConfig, TrainConfig
from learnprune.data import Dataset, load_dataset
from learnprune.engine import Schedule
from learnprune.errors import CheckpointError, ConfigError, TrainingDivergedError
from learnprune.methods import Magnitude
from learnprune.models import build_model
from learnprune.runner import run

run_module = importlib.import_module("learnprune.runner")

TIMING_KEYS = {"seconds", "elapsed"}
BATCH = 64
N_TRAIN, N_TEST = 512, 128
STEPS_PER_EPOCH = math.ceil(N_TRAIN / BATCH)  # 8


pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic_dataset(seed: int = 0) -> Dataset:
    """512 training and 128 test 1x28x28 images: a fixed prototype per class plus noise."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(10, 1, 28, 28, generator=generator)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, 10, (n,), generator=generator)
        images = prototypes[labels] + 6.0 * torch.randn(n, 1, 28, 28, generator=generator)
        return images, labels

    x_train, y_train = split(N_TRAIN)
    x_test, y_test = split(N_TEST)
    return Dataset("mnist", x_train, y_train, x_test, y_test, num_classes=10)


@pytest.fixture(scope="module")
def synthetic() -> Dataset:
    return synthetic_dataset()


def make_config(method: str = "gmp", epochs: int = 3, **train: Any) -> RunConfig:
    options: dict[str, Any] = (
        {"target": 0.9, "begin_epoch": 0, "end_epoch": 2, "frequency": 5} if method == "gmp" else {}
    )
    if method == "dessilbi":  # the path to the end of epoch 2, its exact finish, fine-tuning
        options = {"target": 0.9, "end_epoch": 2, "nu": 1.0, "lam": 0.05}
    return RunConfig(
        model="lenet300",
        data="mnist",
        method=method,
        method_options=options,
        train=TrainConfig(epochs=epochs, batch_size=BATCH, **train),
    )


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_timing(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in TIMING_KEYS} for row in rows]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"tensors differ: {different}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, synthetic):
    """``uninterrupted(method)``: the directory of a 3-epoch run never interrupted (cached)."""
    cache: dict[str, Path] = {}

    def get(method: str) -> Path:
        if method not in cache:
            out = tmp_path_factory.mktemp(f"uninterrupted-{method}") / "run"
            run(make_config(method), out, quiet=True, data=synthetic)
            cache[method] = out
        return cache[method]

    return get


# ------------------------------------------------------------------------------------------
# Resume
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "interrupt"),
    [
        ("gmp", "evaluate"),
        ("gmp", "save_checkpoint"),
        ("dense", "evaluate"),
        ("dessilbi", "save_checkpoint"),
    ],
)
def test_resume_is_bit_exact(tmp_path, monkeypatch, synthetic, uninterrupted, method, interrupt):
    """Interrupted in epoch 2 (in the evaluation, or while writing the checkpoint after
    epoch 2's metrics line), then resumed: same weights, bit for bit, and the same metrics,
    one line per epoch."""
    dir_a = uninterrupted(method)
    dir_b = tmp_path / "b"
    owner = engine if interrupt == "evaluate" else checkpoint
    original = getattr(owner, interrupt)
    calls = []

    def interrupting(*args, **kwargs):
        calls.append(None)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, interrupt, interrupting)
    with pytest.raises(KeyboardInterrupt):
        run(make_config(method), dir_b, quiet=True, data=synthetic)
    monkeypatch.undo()

    state = load_checkpoint(dir_b / "checkpoint.pt")
    assert (state["epoch"], state["step"]) == (1, STEPS_PER_EPOCH)
    assert not (dir_b / "final.json").exists()
    assert not (dir_b / "model.pt").exists()
    written = [row["epoch"] for row in read_metrics(dir_b)]
    # Interrupted while saving epoch 2's checkpoint, epoch 2's metrics line is already there.
    assert written == ([1] if interrupt == "evaluate" else [1, 2])

    result = run(make_config(method), dir_b, resume=True, quiet=True, data=synthetic)

    assert_same_weights(weights(dir_a / "model.pt"), weights(dir_b / "model.pt"))
    metrics_a, metrics_b = read_metrics(dir_a), read_metrics(dir_b)
    assert [row["epoch"] for row in metrics_b] == [1, 2, 3]
    assert without_timing(metrics_a) == without_timing(metrics_b)
    final_a = json.loads((dir_a / "final.json").read_text())
    assert result["test_accuracy"] == final_a["test_accuracy"]
    assert result["sparsity"] == final_a["sparsity"]
    assert result["steps"] == final_a["steps"] == 3 * STEPS_PER_EPOCH
    if method == "dessilbi":  # resumed in the path phase, finished exactly after it
        assert final_a["budget"]["end_step"] == 2 * STEPS_PER_EPOCH
        assert result["sparsity"] == pytest.approx(0.9, abs=1e-5)


def test_resume_checkpoint_of_a_complete_run_only_finalizes(tmp_path, synthetic, uninterrupted):
    """A run stopped after its last checkpoint but before final.json: resuming trains no
    further and writes the same model.pt and final numbers."""
    dir_a = uninterrupted("gmp")
    dir_b = tmp_path / "b"
    dir_b.mkdir()
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt"):
        shutil.copy(dir_a / name, dir_b / name)
    result = run(make_config("gmp"), dir_b, resume=True, quiet=True, data=synthetic)
    assert_same_weights(weights(dir_a / "model.pt"), weights(dir_b / "model.pt"))
    assert [row["epoch"] for row in read_metrics(dir_b)] == [1, 2, 3]
    final_a = json.loads((dir_a / "final.json").read_text())
    assert result["test_accuracy"] == final_a["test_accuracy"]
    assert result["steps"] == 3 * STEPS_PER_EPOCH


# ------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------


def test_checkpoint_holds_the_full_training_state(uninterrupted):
    path = uninterrupted("gmp") / "checkpoint.pt"
    state = load_checkpoint(path, expect={"model": "lenet300", "method": "gmp", "data": "mnist"})
    for key in ("model_state", "method_state", "optimizer_state", "rng", "epoch", "step"):
        assert key in state, key
    assert state["epoch"] == 3
    assert state["step"] == 3 * STEPS_PER_EPOCH
    assert state["complete"] is True
    assert state["method_state"]["method"] == "gmp"
    assert state["method_state"]["step"] == state["step"]
    assert state["method_state"]["extra"]["current_target"] == pytest.approx(0.9)
    assert {"torch", "numpy", "python"} <= set(state["rng"])
    assert state["optimizer_state"]["state"], "momentum buffers must be saved"
    assert all(isinstance(t, torch.Tensor) for t in state["model_state"].values())
    assert {"fc1.bias", "fc2.bias", "fc3.bias"} <= set(state["model_state"])
    masks = [gate["keep_mask"] for gate in state["method_state"]["gates"].values()]
    assert sorted(state["method_state"]["gates"]) == ["fc1.weight", "fc2.weight", "fc3.weight"]
    removed = sum(int((mask == 0).sum()) for mask in masks) / sum(mask.numel() for mask in masks)
    assert removed == pytest.approx(0.9, abs=1e-3)


def test_checkpoint_of_another_run_is_refused(uninterrupted):
    path = uninterrupted("gmp") / "checkpoint.pt"
    with pytest.raises(CheckpointError, match="model") as info:
        load_checkpoint(path, expect={"model": "other"})
    assert str(path) in str(info.value)


def test_truncated_checkpoint_is_refused_with_its_path(tmp_path, uninterrupted):
    whole = (uninterrupted("gmp") / "checkpoint.pt").read_bytes()
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_random_bytes_are_refused_with_the_path(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_a_plain_torch_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"model_state": {"w": torch.zeros(2)}, "epoch": 1, "step": 3}, path)
    with pytest.raises(CheckpointError, match="not a learnprune checkpoint") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_missing_checkpoint_and_other_version_are_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(path)
    save_checkpoint(path, {"epoch": 1})
    assert load_checkpoint(path)["epoch"] == 1
    torch.save({"format": checkpoint.FORMAT, "version": checkpoint.VERSION + 1}, path)
    with pytest.raises(CheckpointError, match="version"):
        load_checkpoint(path)


def test_atomic_write_replaces_the_file(tmp_path):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old content")
    atomic_write_bytes(target, b"new content")
    assert target.read_bytes() == b"new content"
    assert list(tmp_path.iterdir()) == [target]


def test_failed_atomic_write_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint.pt"
    target.write_bytes(b"the previous checkpoint")

    def failing_replace(source, destination):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("learnprune.files.os.replace", failing_replace)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(target, b"x" * 100_000)
    assert target.read_bytes() == b"the previous checkpoint"
    assert list(tmp_path.iterdir()) == [target]


# ------------------------------------------------------------------------------------------
# Divergence
# ------------------------------------------------------------------------------------------


def test_huge_learning_rate_raises_diverged_in_epoch_1(tmp_path, synthetic):
    out = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match="epoch 1"):
        run(make_config("gmp", lr=1e6), out, quiet=True, data=synthetic)
    assert not (out / "checkpoint.pt").exists()
    assert not (out / "final.json").exists()
    assert not (out / "model.pt").exists()


@pytest.mark.parametrize("first_nan_step", [STEPS_PER_EPOCH + 1, STEPS_PER_EPOCH + 2])
def test_nan_in_epoch_2_keeps_epoch_1_checkpoint(tmp_path, monkeypatch, synthetic, first_nan_step):
    """The model's training output turns NaN from a step of epoch 2 on (step 10 is also a
    GMP pruning step): TrainingDivergedError naming epoch 2 and the last good checkpoint,
    which stays loadable; no final.json."""
    original_build = run_module.build

    def build_with_nan(config, data):
        model, method = original_build(config, data)
        forwards = []

        def poison(module, inputs, output):
            if module.training:
                forwards.append(None)
                if len(forwards) >= first_nan_step:
                    return output * float("nan")
            return None

        model.register_forward_hook(poison)
        return model, method

    monkeypatch.setattr(run_module, "build", build_with_nan)
    out = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match="epoch 2") as info:
        run(make_config("gmp"), out, quiet=True, data=synthetic)
    message = str(info.value)
    assert f"step {first_nan_step}" in message
    assert str(out / "checkpoint.pt") in message
    state = load_checkpoint(out / "checkpoint.pt", expect={"model": "lenet300"})
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model_state"].values())
    assert [row["epoch"] for row in read_metrics(out)] == [1]
    assert not (out / "final.json").exists()
    assert not (out / "model.pt").exists()


def test_blow_up_on_the_very_last_step_is_divergence_not_a_result(tmp_path, monkeypatch, synthetic):
    """The last optimizer step of the run makes a weight infinite: its loss was finite (it
    came before the step), yet the model is broken. TrainingDivergedError naming the last
    epoch; no final.json (which held ``Infinity``, not JSON), no model.pt, and the epoch-2
    checkpoint stays."""
    original_build = run_module.build
    last_step = 3 * STEPS_PER_EPOCH

    def build_blowing_up_last(config, data):
        model, method = original_build(config, data)
        after_step = method.after_step

        def blow_up_after_the_last_step():
            after_step()
            if method.step == last_step:  # counted by the method's own after_step
                with torch.no_grad():
                    model.fc1.weight.fill_(float("inf"))

        method.after_step = blow_up_after_the_last_step
        return model, method

    monkeypatch.setattr(run_module, "build", build_blowing_up_last)
    out = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match=f"last step of epoch 3 \\(step {last_step}\\)"):
        run(make_config("dense"), out, quiet=True, data=synthetic)
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 2
    assert [row["epoch"] for row in read_metrics(out)] == [1, 2]
    assert not (out / "final.json").exists()
    assert not (out / "model.pt").exists()


def test_train_refuses_a_method_attached_to_another_model(synthetic):
    pruned, other = build_model("lenet300"), build_model("lenet300")
    method = Magnitude(pruned, target=0.5)
    before = [p.clone() for p in other.parameters()]
    with pytest.raises(ConfigError, match="attached to another model"):
        engine.train(other, method, synthetic, TrainConfig(epochs=1, max_steps=1), quiet=True)
    assert all(torch.equal(a, b) for a, b in zip(before, other.parameters(), strict=True))
    wrapper = torch.nn.Sequential(pruned)  # the method's model inside the trained one
    engine.train(wrapper, method, synthetic, TrainConfig(epochs=1, max_steps=1), quiet=True)


# ------------------------------------------------------------------------------------------
# Run directories
# ------------------------------------------------------------------------------------------


def test_run_refuses_a_directory_that_holds_a_file(tmp_path, synthetic):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    with pytest.raises(ConfigError, match="already holds files"):
        run(make_config("dense", epochs=1), out, quiet=True, data=synthetic)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "my notes"


def test_run_into_an_empty_existing_directory_works(tmp_path, synthetic):
    out = tmp_path / "run"
    out.mkdir()
    result = run(make_config("dense", epochs=1), out, quiet=True, data=synthetic)
    assert (out / "final.json").is_file()
    assert result["run_dir"] == str(out)


def test_resume_of_a_finished_run_is_refused(tmp_path, synthetic, uninterrupted):
    out = tmp_path / "run"
    shutil.copytree(uninterrupted("gmp"), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(CheckpointError, match="already complete"):
        run(make_config("gmp"), out, resume=True, quiet=True, data=synthetic)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_resume_of_a_directory_without_config_is_refused(tmp_path, synthetic):
    out = tmp_path / "run"
    out.mkdir()
    with pytest.raises(CheckpointError, match="not a learnprune run directory"):
        run(make_config("gmp"), out, resume=True, quiet=True, data=synthetic)
    assert list(out.iterdir()) == []


# ------------------------------------------------------------------------------------------
# Schedule
# ------------------------------------------------------------------------------------------


def test_cosine_schedule():
    config = TrainConfig(epochs=4, batch_size=100, lr=0.1, lr_schedule="cosine")
    schedule = Schedule.of(1000, config)
    assert (schedule.steps_per_epoch, schedule.total_steps) == (10, 40)
    assert schedule.lr(0) == pytest.approx(0.1)
    assert schedule.lr(20) == pytest.approx(0.05)
    assert schedule.lr(40) == pytest.approx(0.0, abs=1e-12)
    rates = [schedule.lr(step) for step in range(41)]
    assert all(a > b for a, b in itertools.pairwise(rates))


def test_step_schedule():
    config = TrainConfig(
        epochs=3, batch_size=100, lr=0.1, lr_schedule="step", milestones=[1, 2], gamma=0.1
    )
    schedule = Schedule.of(950, config)  # 10 steps per epoch, the last one short
    assert schedule.steps_per_epoch == 10
    for step in range(30):
        expected = 0.1 * 0.1 ** (step // 10)
        assert schedule.lr(step) == pytest.approx(expected), step


def test_constant_schedule():
    schedule = Schedule.of(1000, TrainConfig(epochs=2, lr=0.3, lr_schedule="constant"))
    assert {schedule.lr(step) for step in range(20)} == {0.3}


def test_max_steps_caps_total_steps():
    assert Schedule.of(1000, TrainConfig(epochs=4, batch_size=100, max_steps=25)).total_steps == 25
    assert Schedule.of(1000, TrainConfig(epochs=4, batch_size=100, max_steps=99)).total_steps == 40


def test_run_stops_after_max_steps(tmp_path, synthetic):
    out = tmp_path / "run"
    result = run(make_config("dense", epochs=3, max_steps=5), out, quiet=True, data=synthetic)
    assert result["steps"] == 5
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 5
    assert [row["step"] for row in read_metrics(out)] == [5]


def test_max_steps_compresses_the_whole_schedule(tmp_path, synthetic):
    """A smoke run with --max-steps goes through the full lr and pruning schedules."""
    schedule = Schedule.of(N_TRAIN, TrainConfig(epochs=3, batch_size=BATCH, max_steps=6))
    assert schedule.lr(0) == pytest.approx(0.1)
    assert schedule.lr(3) == pytest.approx(0.05)  # half of the capped run: half the cosine
    assert schedule.lr(6) == pytest.approx(0.0, abs=1e-12)
    assert schedule.epoch_at(4) == pytest.approx(2.0)
    out = tmp_path / "run"
    # gmp reaches its target at end_epoch 2 of 3, i.e. step 4 of the 6
    result = run(make_config("gmp", epochs=3, max_steps=6), out, quiet=True, data=synthetic)
    assert result["sparsity"] == pytest.approx(0.9, abs=1e-3)


def test_engine_sets_the_scheduled_learning_rate(tmp_path, synthetic):
    """The lr of each epoch's metrics line is the step schedule's lr of its last step."""
    out = tmp_path / "run"
    config = make_config(
        "dense", epochs=3, lr=0.05, lr_schedule="step", milestones=[1, 2], gamma=0.1
    )
    run(config, out, quiet=True, data=synthetic)
    rates = [row["lr"] for row in read_metrics(out)]
    assert rates == pytest.approx([0.05, 0.005, 0.0005])


# ------------------------------------------------------------------------------------------
# train_subset
# ------------------------------------------------------------------------------------------


def test_train_subset_is_deterministic(synthetic):
    first, again = synthetic.subset(100, seed=3), synthetic.subset(100, seed=3)
    assert torch.equal(first.x_train, again.x_train)
    assert torch.equal(first.y_train, again.y_train)
    other = synthetic.subset(100, seed=4)
    assert not torch.equal(first.x_train, other.x_train)
    assert len(first.x_train) == 100
    assert first.x_test is synthetic.x_test


def test_run_with_train_subset_is_reproducible(tmp_path, synthetic):
    results = [
        run(
            make_config("dense", epochs=1, train_subset=200),
            tmp_path / name,
            quiet=True,
            data=synthetic,
        )
        for name in ("a", "b")
    ]
    assert results[0]["steps"] == math.ceil(200 / BATCH)
    assert_same_weights(weights(tmp_path / "a" / "model.pt"), weights(tmp_path / "b" / "model.pt"))


# ------------------------------------------------------------------------------------------
# A real MNIST run
# ------------------------------------------------------------------------------------------


def test_final_json_of_a_real_mnist_run(tmp_path):
    out = tmp_path / "run"
    config = RunConfig(
        model="lenet300",
        data="mnist",
        method="gmp",
        method_options={"target": 0.9},
        train=TrainConfig(epochs=2, train_subset=2000),
    )
    result = run(config, out, quiet=True)
    final = json.loads((out / "final.json").read_text())
    for key in (
        "method",
        "model",
        "data",
        "epochs",
        "test_accuracy",
        "sparsity",
        "params",
        "nonzero_params",
        "flops",
        "effective_flops",
        "seconds",
        "sparsity_scope",
        "layers",
    ):
        assert key in final, key
    assert (final["method"], final["model"], final["data"], final["epochs"]) == (
        "gmp",
        "lenet300",
        "mnist",
        2,
    )
    assert final["steps"] == 2 * 20
    assert abs(final["sparsity"] - 0.9) <= 0.001
    assert final["params"] == 266610
    assert final["flops"] == 2 * (784 * 300 + 300 * 100 + 100 * 10) == 532400
    assert [layer["name"] for layer in final["layers"]] == ["fc1", "fc2", "fc3"]
    nonzero_weights = sum(layer["nonzero_weights"] for layer in final["layers"])
    assert final["nonzero_weights"] == nonzero_weights
    assert final["effective_flops"] == 2 * nonzero_weights
    assert final["test_accuracy"] > 0.8
    assert final["seconds"] > 0
    assert result["test_accuracy"] == final["test_accuracy"]

    state = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    model = build_model("lenet300")
    model.load_state_dict(state, strict=True)
    weight_nonzero = sum(
        int(torch.count_nonzero(state[f"{n}.weight"])) for n in ("fc1", "fc2", "fc3")
    )
    assert weight_nonzero == nonzero_weights
    assert final["nonzero_params"] == sum(int(torch.count_nonzero(t)) for t in state.values())
    data = load_dataset("mnist")
    assert len(data.x_test) == 10000
    _loss, accuracy = engine.evaluate(model, data.x_test, data.y_test)
    assert accuracy == final["test_accuracy"]

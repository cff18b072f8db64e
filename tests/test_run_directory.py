"""Run directories under concurrent runs, kills and corruption (issue 12, points 3.1, 3.2,
3.4 and 3.6): one run at a time per directory, every state a kill leaves resumable or
restartable, a changed checkpoint or model refused, strict JSON, the umask honoured.

Runs through the Python API train LeNet-300-100 for an epoch on a small synthetic data set
(well under a second); the command-line ones use the real MNIST with a 200-example subset.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import call_cli

from learnprune import checkpoint, run_directory, runner
from learnprune.checkpoint import atomic_write_bytes, json_text, load_checkpoint, save_torch
from learnprune.config import RunConfig, TrainConfig
from learnprune.data import Dataset
from learnprune.errors import CheckpointError, ConfigError, TrainingDivergedError
from learnprune.growing import GrowConfig, grow_run
from learnprune.run_directory import LOCK_FILE, claim, claim_new
from learnprune.runner import run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def synthetic() -> Dataset:
    """256 training and 64 test 1x28x28 images: a prototype per class plus noise."""
    generator = torch.Generator().manual_seed(0)
    prototypes = torch.randn(10, 1, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (320,), generator=generator)
    images = prototypes[labels] + 2.0 * torch.randn(320, 1, 28, 28, generator=generator)
    return Dataset("mnist", images[:256], labels[:256], images[256:], labels[256:], 10)


def config_of(method: str = "dense", epochs: int = 1) -> RunConfig:
    options = {"nu": 1.0, "lam": 0.05} if method == "dessilbi" else {}
    return RunConfig(
        model="lenet300",
        data="mnist",
        method=method,
        method_options=options,
        train=TrainConfig(epochs=epochs, batch_size=64, lr=0.05),
    )


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("learnprune: error:"), err
    return lines[0]


def train_argv(out: Path) -> list[str]:
    return [
        "train", "--model", "lenet300", "--data", "mnist", "--method", "dense", "--epochs",
        "1", "--train-subset", "200", "--out", str(out), "--no-progress", "--quiet",
    ]  # fmt: skip


def flip_middle_bytes(path: Path, count: int = 8) -> None:
    """Invert ``count`` bytes in the middle of ``path``; its size stays."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ------------------------------------------------------------------------------------------
# 3.1 One run at a time per directory
# ------------------------------------------------------------------------------------------


def test_a_run_into_a_directory_another_process_holds_stops_in_one_line(tmp_path, synthetic):
    """A second ``train --out X`` while another process holds X: exit 2, one line, nothing
    written. That process killed with SIGKILL: its lock file is left but blocks nothing."""
    out = tmp_path / "run"
    out.mkdir()
    # the holder takes the lock as run_directory.claim does (without importing torch: fast)
    holds_the_lock = (
        "import fcntl, os, sys, time; "
        "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o666); "
        "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); os.write(fd, b'%d' % os.getpid()); "
        "print('claimed', flush=True); time.sleep(120)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", holds_the_lock, str(out / LOCK_FILE)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "claimed"
        code, _stdout, err = call_cli(*train_argv(out))
        assert code == 2
        line = one_error_line(err)
        assert f"another learnprune run (process {holder.pid}) is writing into {out}" in line
        assert names(out) == [LOCK_FILE]
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert names(out) == [LOCK_FILE]  # what a kill -9 leaves
    run(config_of(), out, quiet=True, data=synthetic)
    assert {"config.json", "final.json", "model.pt"} <= set(names(out))
    assert LOCK_FILE not in names(out)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_resume_while_the_run_is_held_is_refused(tmp_path, synthetic):
    out = tmp_path / "run"
    (out).mkdir()
    checkpoint.atomic_write_json(out / "config.json", config_of().as_dict())
    held = claim(out)
    try:
        with pytest.raises(ConfigError, match="another learnprune run"):
            run(config_of(), out, resume=True, quiet=True, data=synthetic)
        with pytest.raises(ConfigError, match="another learnprune run"):
            run(config_of(), out, quiet=True, data=synthetic)
    finally:
        held.release()
    assert names(out) == ["config.json"]


def test_two_default_runs_in_the_same_second_get_their_own_directories(
    tmp_path, monkeypatch, synthetic
):
    class SameSecond(_dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 12, 1, 9, 0, 0)

    monkeypatch.setattr(runner._dt, "datetime", SameSecond)
    monkeypatch.chdir(tmp_path)
    first = run(config_of(), quiet=True, data=synthetic)
    second = run(config_of(), quiet=True, data=synthetic)
    base = "runs/lenet300-dense-20261201-090000"
    assert (first["run_dir"], second["run_dir"]) == (base, f"{base}-2")
    for result in (first, second):
        assert len((tmp_path / result["run_dir"] / "metrics.jsonl").read_text().splitlines()) == 1


def test_claim_new_takes_the_next_free_suffix_while_the_first_is_held(tmp_path):
    first = claim_new(tmp_path / "runs" / "name")
    second = claim_new(tmp_path / "runs" / "name")
    try:
        assert (first.path.name, second.path.name) == ("name", "name-2")
    finally:
        second.release()
        first.release()
    assert names(tmp_path) == []  # both empty: removed, and the runs/ the first created


def test_a_run_that_fails_before_writing_removes_the_directories_it_created(tmp_path):
    out = tmp_path / "a" / "b" / "run"
    code, _stdout, err = call_cli(*train_argv(out)[:-1], "--train-subset", "70000")
    assert code == 2 and "60000" in one_error_line(err)
    assert names(tmp_path) == []
    empty = tmp_path / "mine"
    empty.mkdir()  # the user's own empty directory stays
    code, _stdout, _err = call_cli(*train_argv(empty)[:-1], "--train-subset", "70000")
    assert code == 2 and names(empty) == []


# ------------------------------------------------------------------------------------------
# 3.4 Every state a kill can leave: resumable or restartable
# ------------------------------------------------------------------------------------------


def test_killed_while_writing_the_first_config_the_directory_can_be_started_again(
    tmp_path, synthetic
):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".config.json.3f9a0c1d2e4b.tmp").write_text('{"model": "lenet3')  # cut short
    (out / LOCK_FILE).write_text("12345\n")  # the killed process's lock file
    with pytest.raises(CheckpointError, match=f"start it again with --out {out}"):
        run(config_of(), out, resume=True, quiet=True, data=synthetic)
    result = run(config_of(), out, quiet=True, data=synthetic)
    assert result["run_dir"] == str(out)
    assert not [name for name in names(out) if name.endswith(".tmp") or name == LOCK_FILE]
    assert json.loads((out / "config.json").read_text())["model"] == "lenet300"


def test_a_users_own_file_still_blocks_a_new_run(tmp_path, synthetic):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".notes.tmp").write_text("mine")  # not the temporary file of a run file
    with pytest.raises(ConfigError, match="already holds files"):
        run(config_of(), out, quiet=True, data=synthetic)
    assert names(out) == [".notes.tmp"]


def test_resume_removes_the_temporary_file_of_a_killed_checkpoint_write(tmp_path, synthetic):
    out = tmp_path / "run"
    run(config_of(epochs=2), out, quiet=True, data=synthetic)
    for done in ("final.json", "model.pt"):
        (out / done).unlink()
    (out / ".checkpoint.pt.0123456789ab.tmp").write_bytes(b"half a checkpoint")
    result = run(config_of(epochs=2), out, resume=True, quiet=True, data=synthetic)
    assert result["epochs"] == 2
    assert not [name for name in names(out) if name.endswith(".tmp")]


@pytest.fixture(scope="module")
def dessilbi_run(tmp_path_factory, synthetic) -> Path:
    out = tmp_path_factory.mktemp("dessilbi") / "run"
    run(config_of("dessilbi"), out, quiet=True, data=synthetic)
    return out


@pytest.mark.parametrize("killed", ["after config.json", "after the first checkpoint"])
def test_dessilbi_killed_before_init_pt_resumes_with_the_same_init_pt(
    tmp_path, synthetic, dessilbi_run, killed
):
    """``init.pt`` (the start of lottery tickets) missing on resume is written again: the
    same starting weights, bit for bit, as the uninterrupted run's."""
    out = tmp_path / "run"
    out.mkdir()
    kept = ["config.json"] if killed == "after config.json" else ["config.json", "checkpoint.pt"]
    for name in kept:
        shutil.copy(dessilbi_run / name, out / name)
    run(config_of("dessilbi"), out, resume=True, quiet=True, data=synthetic)
    written = torch.load(out / "init.pt", weights_only=True)
    original = torch.load(dessilbi_run / "init.pt", weights_only=True)
    assert written.keys() == original.keys()
    assert all(torch.equal(written[k], original[k]) for k in original)


def test_a_ticket_from_a_run_without_init_pt_says_how_to_get_it(tmp_path, synthetic, dessilbi_run):
    """Before, ``learnprune ticket`` said only "no weights file at .../init.pt"."""
    out = tmp_path / "run"
    shutil.copytree(dessilbi_run, out, ignore=shutil.ignore_patterns("init.pt"))
    code, _stdout, err = call_cli("ticket", str(out), "--epoch", "1", "--out", str(tmp_path / "t"))
    assert code == 2
    assert "the run is finished, so --resume cannot write it: train the run again" in (
        one_error_line(err)
    )
    for done in ("final.json", "model.pt"):  # killed before it finished: resume writes init.pt
        (out / done).unlink()
    code, _stdout, err = call_cli("ticket", str(out), "--epoch", "1", "--out", str(tmp_path / "t"))
    assert code == 2
    assert f"run `learnprune train --resume {out}`, which writes it" in one_error_line(err)
    assert not (tmp_path / "t").exists()
    run(config_of("dessilbi"), out, resume=True, quiet=True, data=synthetic)
    assert (out / "init.pt").is_file()


# ------------------------------------------------------------------------------------------
# 3.2 A checkpoint or model changed after it was written is refused
# ------------------------------------------------------------------------------------------


def test_same_size_corruption_of_the_checkpoint_is_refused_on_resume(tmp_path, synthetic):
    out = tmp_path / "run"
    run(config_of(epochs=2), out, quiet=True, data=synthetic)
    for done in ("final.json", "model.pt"):
        (out / done).unlink()
    size = (out / "checkpoint.pt").stat().st_size
    flip_middle_bytes(out / "checkpoint.pt")
    assert (out / "checkpoint.pt").stat().st_size == size
    before = {name: (out / name).read_bytes() for name in names(out)}
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt is corrupt: Bad CRC-32") as info:
        run(config_of(epochs=2), out, resume=True, quiet=True, data=synthetic)
    assert "\n" not in str(info.value)
    assert {name: (out / name).read_bytes() for name in names(out)} == before


def test_same_size_corruption_of_model_pt_is_refused_by_eval(tmp_path, synthetic):
    out = tmp_path / "run"
    run(config_of(), out, quiet=True, data=synthetic)
    flip_middle_bytes(out / "model.pt")
    code, stdout, err = call_cli("eval", str(out))
    assert code == 2 and stdout == ""
    assert f"{out / 'model.pt'} is corrupt" in one_error_line(err)


def test_checksums_are_written_even_where_torch_was_told_not_to(tmp_path):
    path = tmp_path / "model.pt"
    torch.serialization.set_crc32_options(False)
    try:
        save_torch(path, {"w": torch.arange(4096.0)})
    finally:
        torch.serialization.set_crc32_options(True)
    assert checkpoint.load_state_dict_file(path)["w"][4095] == 4095.0
    flip_middle_bytes(path, count=1)
    with pytest.raises(CheckpointError, match="corrupt"):
        checkpoint.load_state_dict_file(path)


def test_files_without_checksums_still_load(tmp_path):
    """torch's legacy format carries no checksum: nothing to verify, loaded as before."""
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(checkpoint.load_state_dict_file(path)["w"], torch.ones(3))


def test_an_intact_checkpoint_passes_the_check(tmp_path):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save_checkpoint(path, {"epoch": 3, "model_state": {"w": torch.ones(2)}})
    checkpoint.verify_checksums(path)
    assert load_checkpoint(path)["epoch"] == 3


# ------------------------------------------------------------------------------------------
# 3.6 Strict JSON, the umask, grow cleans up
# ------------------------------------------------------------------------------------------


def test_json_writes_non_finite_numbers_as_null_with_the_reason():
    value: dict[str, Any] = {
        "test_loss": math.inf,
        "speed": {"timings": [1.5, float("nan")], "threads": 1},
        "ratio": np.float64(-np.inf),
        "loss": torch.tensor(2.0),
    }
    assert json.loads(json_text(value)) == {
        "test_loss": None,
        "speed": {"timings": [1.5, None], "threads": 1, "non_finite": {"timings[1]": "nan"}},
        "ratio": None,
        "loss": 2.0,
        "non_finite": {"test_loss": "inf", "ratio": "-inf"},
    }
    with pytest.raises(ValueError, match="non-finite"):
        json_text([1.0, math.inf])


def test_a_finalized_model_with_a_non_finite_loss_writes_no_results(
    tmp_path, monkeypatch, synthetic
):
    original_build = runner.build

    def build_breaking_finalize(config, data):
        model, method = original_build(config, data)
        finalize = method.finalize

        def finalize_then_break() -> None:
            finalize()
            with torch.no_grad():
                model.fc1.weight.fill_(float("nan"))

        method.finalize = finalize_then_break
        return model, method

    monkeypatch.setattr(runner, "build", build_breaking_finalize)
    out = tmp_path / "run"
    with pytest.raises(TrainingDivergedError, match="finalized model's test loss is nan"):
        run(config_of(), out, quiet=True, data=synthetic)
    assert not (out / "final.json").exists() and not (out / "model.pt").exists()


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_honour_the_umask(tmp_path, umask, mode):
    before = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "config.json", b"{}")
        save_torch(tmp_path / "model.pt", {"w": torch.zeros(1)})
    finally:
        os.umask(before)
    for name in ("config.json", "model.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode


def test_run_files_are_not_private_under_the_usual_umask(tmp_path, synthetic):
    before = os.umask(0o022)
    try:
        run(config_of(), tmp_path / "run", quiet=True, data=synthetic)
    finally:
        os.umask(before)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "run").iterdir()}
    assert modes and set(modes.values()) == {0o644}, modes


def tiny_grow_data() -> Dataset:
    torch.manual_seed(0)
    x, y = torch.randn(48, 1, 32, 32), torch.randint(0, 3, (48,))
    return Dataset("mnist", x[:32], y[:32], x[32:], y[32:], num_classes=3)


def test_grow_that_fails_removes_the_directory_it_created(tmp_path, monkeypatch):
    grow_config = GrowConfig(start_width=4, local_epochs=1, max_rounds=1, finetune_epochs=0)
    out = tmp_path / "a" / "grown"
    with pytest.raises(ConfigError, match="growing needs one of"):
        grow_run("lenet5", tiny_grow_data(), "mnist", TrainConfig(), grow_config, out)
    assert names(tmp_path) == []

    def failing_train(*args: Any, **kwargs: Any) -> None:
        raise ConfigError("refused in the first round")

    monkeypatch.setattr("learnprune.growing.train", failing_train)
    with pytest.raises(ConfigError, match="first round"):
        grow_run("resnet20", tiny_grow_data(), "mnist", TrainConfig(), grow_config, out)
    assert names(tmp_path) == []


def test_grow_into_a_held_directory_is_refused(tmp_path):
    held = claim(tmp_path / "grown")
    try:
        with pytest.raises(ConfigError, match="another learnprune run"):
            grow_run(
                "resnet20", tiny_grow_data(), "mnist", TrainConfig(), GrowConfig(),
                tmp_path / "grown",
            )  # fmt: skip
    finally:
        held.release()
    assert names(tmp_path) == []


def test_release_leaves_a_directory_that_holds_results(tmp_path):
    held = run_directory.claim(tmp_path / "run")
    (tmp_path / "run" / "final.json").write_text("{}")
    held.release()
    held.release()  # twice is harmless
    assert names(tmp_path / "run") == ["final.json"]


def test_non_finite_numbers_written_as_null_are_read_back_as_themselves(tmp_path) -> None:
    """final.json of a run that pruned everything has compression = inf: written as valid
    JSON (null plus a note), read back as inf by every reader (report, compare)."""
    value = {"compression": math.inf, "x": [1.0, math.nan, [-math.inf]], "ok": None}
    path = tmp_path / "final.json"
    checkpoint.atomic_write_json(path, value)
    json.loads(path.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    back = checkpoint.read_json(path)
    assert back["compression"] == math.inf and back["x"][2] == [-math.inf]
    assert math.isnan(back["x"][1]) and back["ok"] is None and "non_finite" not in back

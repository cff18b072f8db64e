"""Tests for the ``learnprune`` command line.

Most tests call :func:`learnprune.cli.main` in-process; the ones about what a user sees from
the real command (no traceback, Ctrl-C and resume) run ``python -m learnprune`` as a
subprocess. Training runs use the real MNIST (``make data``) from the default location, with
small training subsets.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import call_cli

from learnprune import engine
from learnprune.checkpoint import load_checkpoint
from learnprune.config import RunConfig, TrainConfig

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "recipes" / "lenet300-gmp.toml"
ERROR_PREFIX = "learnprune: error:"
# Subprocesses use one thread: faster on a loaded 2-core machine, and runs compared bit for
# bit must use the same thread count.
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")


call = call_cli


def command(*argv: str, env: dict[str, str] | None = None, timeout: float = 120):
    return subprocess.run(
        [sys.executable, "-m", "learnprune", *argv],
        capture_output=True,
        text=True,
        env=env or SUBPROCESS_ENV,
        timeout=timeout,
        cwd=REPO,
    )


def assert_one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert lines[0].startswith(ERROR_PREFIX), lines[0]
    assert "Traceback" not in err
    assert lines[0] != ERROR_PREFIX
    return lines[0]


def train_args(out: Path, *extra: str, method: str = "gmp", target: str | None = "0.9"):
    args = ["train", "--model", "lenet300", "--data", "mnist", "--method", method]
    if target is not None:
        args += ["--target", target]
    return [
        *args,
        "--epochs",
        "1",
        "--train-subset",
        "200",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(path_a: Path, path_b: Path) -> None:
    a = torch.load(path_a, map_location="cpu", weights_only=True)
    b = torch.load(path_b, map_location="cpu", weights_only=True)
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"tensors differ: {different}"


# ------------------------------------------------------------------------------------------
# Bad input: exit 2, one line, no traceback, no run directory
# ------------------------------------------------------------------------------------------

BAD_TRAIN_INPUTS = {
    "unknown method": (dict(method="bogus", target=None), (), "unknown method 'bogus'"),
    "unknown model": (dict(), ("--model", "bogus"), "unknown model 'bogus'"),
    "unknown data": (dict(), ("--data", "bogus"), "unknown data set 'bogus'"),
    "negative lr": (dict(), ("--lr", "-0.1"), "lr must be > 0"),
    "nan lr": (dict(), ("--lr", "nan"), "lr must be finite"),
    "target 1": (dict(target="1.0"), (), "target must lie in [0, 1)"),
    "negative target": (dict(target="-0.1"), (), "target must lie in [0, 1)"),
    "zero epochs": (dict(), ("--epochs", "0"), "epochs must be >= 1"),
    "unknown train key": (dict(), ("--set", "train.foo=1"), "unknown [train] key foo"),
    "unknown method option": (dict(), ("--set", "method.bogus=1"), "has no option bogus"),
    "unknown groups": (dict(), ("--groups", "nonsense"), "'nonsense'"),
    "everything excluded": (dict(method="magnitude"), ("--exclude", "*"), "nothing to prune"),
    "dense with target": (dict(method="dense"), (), "dense prunes nothing"),
    "unknown flag": (dict(), ("--bogus-flag",), "unrecognized arguments: --bogus-flag"),
}


@pytest.mark.parametrize("case", list(BAD_TRAIN_INPUTS))
def test_bad_input_exits_2_with_one_line(tmp_path, case):
    options, extra, expected = BAD_TRAIN_INPUTS[case]
    out = tmp_path / "run"
    code, stdout, err = call(*train_args(out, *extra, **options))
    assert code == 2
    line = assert_one_error_line(err)
    assert expected in line
    assert stdout == ""
    assert not out.exists()


def test_invalid_toml_recipe(tmp_path):
    recipe = tmp_path / "broken.toml"
    recipe.write_text('model = "lenet300"\n[train\nepochs = 2\n')
    out = tmp_path / "run"
    code, _stdout, err = call("train", "--recipe", str(recipe), "--out", str(out))
    assert code == 2
    line = assert_one_error_line(err)
    assert str(recipe) in line and "not valid" in line
    assert not out.exists()


def test_missing_recipe(tmp_path):
    out = tmp_path / "run"
    missing = tmp_path / "nowhere" / "recipe.toml"
    code, _stdout, err = call("train", "--recipe", str(missing), "--out", str(out))
    assert code == 2
    line = assert_one_error_line(err)
    assert str(missing) in line and "does not exist" in line
    assert not out.exists()


def test_missing_data_says_how_to_fetch_it(tmp_path, monkeypatch):
    empty = tmp_path / "data"
    empty.mkdir()
    monkeypatch.setenv("LEARNPRUNE_DATA", str(empty))
    out = tmp_path / "run"
    code, _stdout, err = call(*train_args(out))
    assert code == 2
    line = assert_one_error_line(err)
    assert "learnprune data fetch mnist" in line
    assert not out.exists()
    assert list(empty.iterdir()) == []


def test_argparse_type_error_has_the_common_prefix(tmp_path):
    out = tmp_path / "run"
    code, _stdout, err = call(*train_args(out, "--epochs", "two"))
    assert code == 2
    assert "invalid int value" in assert_one_error_line(err)
    assert not out.exists()


def test_train_subset_larger_than_the_data_creates_no_run_directory(tmp_path):
    out = tmp_path / "run"
    code, _stdout, err = call(*train_args(out, "--train-subset", "70000"))
    assert code == 2
    assert "60000" in assert_one_error_line(err)
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_cuda_creates_no_run_directory(tmp_path):
    out = tmp_path / "run"
    code, _stdout, err = call(*train_args(out, "--device", "cuda"))
    assert code == 2
    assert "CUDA" in assert_one_error_line(err)
    assert not out.exists()


def test_unreachable_target_is_refused_before_training(tmp_path):
    out = tmp_path / "run"
    code, _stdout, err = call(*train_args(out, "--exclude", "fc1"))
    assert code == 2
    assert "lower the target" in assert_one_error_line(err)
    assert not out.exists()


@pytest.mark.parametrize(
    "override",
    ["train.milestones=5", "train=1", "data_options=1", "model=1"],
)
def test_set_with_a_value_of_the_wrong_type(tmp_path, override):
    out = tmp_path / "run"
    code, _stdout, err = call(*train_args(out, "--set", override))
    assert code == 2
    assert_one_error_line(err)
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("train", "--model", "lenet300", "--data", "mnist", "--bogus-flag"), "unrecognized"),
        (("train", "--recipe", "tests/no-such-recipe.toml"), "does not exist"),
    ],
)
def test_real_command_prints_no_traceback(tmp_path, argv, expected):
    result = command(*argv, "--out", str(tmp_path / "run"))
    assert result.returncode == 2
    assert expected in assert_one_error_line(result.stderr)
    assert result.stdout == ""
    assert not (tmp_path / "run").exists()


def test_real_command_missing_data(tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    result = command(
        *train_args(tmp_path / "run"), env={**SUBPROCESS_ENV, "LEARNPRUNE_DATA": str(empty)}
    )
    assert result.returncode == 2
    assert "learnprune data fetch mnist" in assert_one_error_line(result.stderr)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------
# Real runs on MNIST (shared by several tests)
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def e2e_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "e2e"
    code, stdout, err = call(
        "train", "--model", "lenet300", "--data", "mnist", "--method", "gmp", "--target", "0.9",
        "--epochs", "1", "--train-subset", "2000", "--out", str(out), "--no-progress",
    )  # fmt: skip
    return code, stdout, err, out


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "recipe"
    code, stdout, err = call(
        "train", "--recipe", str(RECIPE), "--epochs", "1", "--train-subset", "1000",
        "--set", "method.end_epoch=1", "--set", "method.begin_epoch=0", "--out", str(out),
        "--no-progress",
    )  # fmt: skip
    return code, stdout, err, out


def test_train_end_to_end(e2e_run):
    code, stdout, err, out = e2e_run
    assert code == 0, err
    assert "Traceback" not in err
    for name in ("fc1", "fc2", "fc3", "sparsity"):
        assert name in stdout
    assert {p.name for p in out.iterdir()} == {
        "config.json", "metrics.jsonl", "checkpoint.pt", "model.pt", "final.json"
    }  # fmt: skip
    rows = read_metrics(out)
    assert len(rows) == 1 and rows[0]["epoch"] == 1
    config = json.loads((out / "config.json").read_text())
    assert (config["model"], config["data"], config["method"]) == ("lenet300", "mnist", "gmp")
    assert config["method_options"]["target"] == 0.9
    assert config["train"]["train_subset"] == 2000
    final = json.loads((out / "final.json").read_text())
    assert f"{final['test_accuracy']:.2%}" in stdout
    assert abs(final["sparsity"] - 0.9) <= 0.001
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1


def test_report_of_one_run(e2e_run):
    out = e2e_run[3]
    code, stdout, err = call("report", str(out))
    assert code == 0, err
    final = json.loads((out / "final.json").read_text())
    for name in ("fc1", "fc2", "fc3", "sparsity", f"{final['test_accuracy']:.2%}"):
        assert name in stdout


def test_report_of_two_runs_is_a_markdown_table(e2e_run, recipe_run):
    first, second = e2e_run[3], recipe_run[3]
    code, stdout, err = call("report", str(first), str(second))
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0].startswith("| run | method | model |")
    assert re.fullmatch(r"\|(---\|)+", lines[1])
    rows = [line for line in lines[2:] if line.startswith("|")]
    assert [row.split("|")[1].strip() for row in rows] == [first.name, second.name]
    for row, run_dir in zip(rows, (first, second), strict=True):
        final = json.loads((run_dir / "final.json").read_text())
        assert "| gmp | lenet300 |" in row
        assert f"{final['test_error']:.2%}" in row
        assert f"{final['sparsity']:.2%}" in row


def test_report_of_an_unfinished_run(tmp_path, e2e_run):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for name in ("config.json", "checkpoint.pt"):
        shutil.copy(e2e_run[3] / name, unfinished / name)
    code, _stdout, err = call("report", str(unfinished))
    assert code == 2
    assert "--resume" in assert_one_error_line(err)


def test_eval_prints_the_accuracy_of_final_json(e2e_run):
    out = e2e_run[3]
    code, stdout, err = call("eval", str(out))
    assert code == 0, err
    final = json.loads((out / "final.json").read_text())
    match = re.search(r"accuracy (\d+\.\d\d)%", stdout)
    assert match, stdout
    assert match.group(1) == f"{final['test_accuracy'] * 100:.2f}"
    assert "fc1" in stdout and "sparsity" in stdout


def test_eval_of_a_directory_that_is_not_a_run(tmp_path):
    code, _stdout, err = call("eval", str(tmp_path))
    assert code == 2
    assert "not a learnprune run directory" in assert_one_error_line(err)


def test_recipe_with_overrides(recipe_run):
    code, stdout, err, out = recipe_run
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["epochs"] == 1
    assert config["train"]["train_subset"] == 1000
    assert config["method_options"]["end_epoch"] == 1
    assert config["method_options"]["begin_epoch"] == 0
    # the rest comes from the recipe
    assert config["method"] == "gmp"
    assert config["method_options"]["target"] == 0.95
    assert config["train"]["lr"] == 0.05
    final = json.loads((out / "final.json").read_text())
    assert abs(final["sparsity"] - 0.95) <= 0.001
    assert len(read_metrics(out)) == 1
    assert "fc1" in stdout


def test_out_directory_with_an_earlier_run_is_left_alone(tmp_path, e2e_run):
    earlier = tmp_path / "earlier"
    shutil.copytree(e2e_run[3], earlier)
    before = snapshot(earlier)
    code, _stdout, err = call(*train_args(earlier))
    assert code == 2
    assert "already holds files" in assert_one_error_line(err)
    assert snapshot(earlier) == before


# ------------------------------------------------------------------------------------------
# --resume errors
# ------------------------------------------------------------------------------------------


def unfinished_copy(source: Path, target: Path) -> Path:
    target.mkdir()
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt"):
        shutil.copy(source / name, target / name)
    return target


def test_resume_with_a_corrupt_checkpoint(tmp_path, e2e_run):
    run_dir = unfinished_copy(e2e_run[3], tmp_path / "run")
    (run_dir / "checkpoint.pt").write_bytes(b"\x00garbage" * 512)
    before = snapshot(run_dir)
    code, _stdout, err = call("train", "--resume", str(run_dir), "--no-progress")
    assert code == 2
    line = assert_one_error_line(err)
    assert str(run_dir / "checkpoint.pt") in line and "corrupt" in line
    assert snapshot(run_dir) == before


def test_resume_with_a_checkpoint_of_another_model(tmp_path, e2e_run):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = RunConfig(
        model="lenet5-caffe",
        data="mnist",
        method="gmp",
        method_options={"target": 0.9},
        train=TrainConfig(epochs=1, train_subset=200),
    )
    (run_dir / "config.json").write_text(json.dumps(config.as_dict()))
    shutil.copy(e2e_run[3] / "checkpoint.pt", run_dir / "checkpoint.pt")
    before = snapshot(run_dir)
    code, _stdout, err = call("train", "--resume", str(run_dir), "--no-progress")
    assert code == 2
    line = assert_one_error_line(err)
    assert "lenet300" in line and "lenet5-caffe" in line
    assert snapshot(run_dir) == before


def test_resume_refuses_a_model_flag(tmp_path, e2e_run):
    run_dir = unfinished_copy(e2e_run[3], tmp_path / "run")
    before = snapshot(run_dir)
    code, _stdout, err = call("train", "--resume", str(run_dir), "--model", "lenet300")
    assert code == 2
    assert "drop --model" in assert_one_error_line(err)
    assert snapshot(run_dir) == before


def test_resume_of_a_finished_run(e2e_run):
    out = e2e_run[3]
    before = snapshot(out)
    code, _stdout, err = call("train", "--resume", str(out))
    assert code == 2
    assert "already complete" in assert_one_error_line(err)
    assert snapshot(out) == before


def test_interrupt_in_the_first_epoch_can_be_resumed(tmp_path, monkeypatch):
    out = tmp_path / "run"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "evaluate", interrupted)
    code, _stdout, err = call(*train_args(out))
    assert code == 130
    assert f"--resume {out}" in err
    monkeypatch.undo()
    code, _stdout, err = call("train", "--resume", str(out), "--no-progress")
    assert code == 0, err
    assert (out / "final.json").is_file()


# ------------------------------------------------------------------------------------------
# Ctrl-C and --resume through the real command
# ------------------------------------------------------------------------------------------


def test_sigint_then_resume_gives_the_uninterrupted_weights(tmp_path):
    interrupted, uninterrupted = tmp_path / "interrupted", tmp_path / "uninterrupted"

    def train(out: Path) -> list[str]:
        return [
            sys.executable, "-m", "learnprune", "train", "--model", "lenet300", "--data",
            "mnist", "--method", "gmp", "--target", "0.9", "--epochs", "4", "--train-subset",
            "5000", "--out", str(out), "--no-progress",
        ]  # fmt: skip

    reference = subprocess.Popen(
        train(uninterrupted), env=SUBPROCESS_ENV, cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    process = subprocess.Popen(
        train(interrupted), env=SUBPROCESS_ENV, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (interrupted / "checkpoint.pt").exists():
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.005)
        process.send_signal(signal.SIGINT)
        _stdout, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert f"learnprune train --resume {interrupted}" in err
    assert not (interrupted / "final.json").exists()
    assert load_checkpoint(interrupted / "checkpoint.pt")["epoch"] < 4

    resumed = command("train", "--resume", str(interrupted), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {interrupted}" in resumed.stdout
    assert reference.wait(timeout=120) == 0, reference.stderr.read()
    reference.stderr.close()

    assert_same_weights(interrupted / "model.pt", uninterrupted / "model.pt")
    rows_a, rows_b = read_metrics(interrupted), read_metrics(uninterrupted)
    assert [row["epoch"] for row in rows_a] == [1, 2, 3, 4]
    timing = {"seconds", "elapsed"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in rows_a] == [
        {k: v for k, v in r.items() if k not in timing} for r in rows_b
    ]


# ------------------------------------------------------------------------------------------
# list, data fetch
# ------------------------------------------------------------------------------------------


def test_list():
    code, stdout, err = call("list")
    assert code == 0, err
    lines = {line.split(":")[0]: line for line in stdout.splitlines()}
    assert "lenet300" in lines["models"]
    assert "gmp" in lines["methods"] and "magnitude" in lines["methods"]
    assert "mnist" in lines["data"]
    assert "lenet300-gmp" in lines["recipes"].replace(",", " ").split()  # a name for --recipe


def test_fetch_cifar10_explains_the_download(tmp_path, monkeypatch):
    monkeypatch.setenv("LEARNPRUNE_DATA", str(tmp_path))
    code, stdout, err = call("data", "fetch", "cifar10")
    assert code == 2
    line = assert_one_error_line(err)
    assert "CIFAR-10" in line and "download" in line and "cifar-10-python.tar.gz" in line
    assert stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_fetch_of_an_unknown_data_set(tmp_path, monkeypatch):
    monkeypatch.setenv("LEARNPRUNE_DATA", str(tmp_path))
    code, _stdout, err = call("data", "fetch", "imagenet")
    assert code == 2
    assert "imagenet" in assert_one_error_line(err)

"""`learnprune compare`: a sweep of methods and strengths on one recipe, its table, CSV and
HTML report, resuming an interrupted sweep, and bad input in one line."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import call_cli

from learnprune.compare import method_recipe, parse_strengths
from learnprune.errors import ConfigError

RECIPE = """
model = "lenet300"
data = "mnist"
[train]
epochs = 1
batch_size = 50
lr = 0.05
train_subset = 400
"""


pytestmark = pytest.mark.usefixtures("one_thread")


call = call_cli


def test_sweep_writes_table_csv_and_report_and_resumes(tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(RECIPE)
    out = tmp_path / "sweep"
    argv = ["compare", "--recipe", str(recipe), "--methods", "gmp,scl,dessilbi"]
    argv += ["--targets", "0.5,0.8", "--strengths", "scl=lam:0.01", "--path-epochs", "1"]
    argv += ["--out", str(out), "--no-progress"]
    code, stdout, err = call(*argv)
    assert code == 0, err
    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["method"], r["strength"]) for r in rows] == [
        ("gmp", "target 0.5"),
        ("gmp", "target 0.8"),
        ("scl", "lam 0.01"),
        ("dessilbi", "path epoch 1"),
    ]
    gmp = {r["strength"]: float(r["sparsity"]) for r in rows if r["method"] == "gmp"}
    assert gmp["target 0.5"] == pytest.approx(0.5) and gmp["target 0.8"] == pytest.approx(0.8)
    assert (out / "report.html").read_text().count("<img") == 3
    assert "| gmp | target 0.8 |" in stdout

    first = out / "runs" / "gmp-target0.5" / "final.json"
    stamp = first.stat().st_mtime_ns
    interrupted = out / "runs" / "scl-lam0.01"
    for child in interrupted.iterdir():  # as if stopped before its first epoch ended
        child.unlink()
    (interrupted / "config.json").write_text(
        (out / "runs" / "gmp-target0.5" / "config.json").read_text()
    )
    code, _stdout, err = call(*argv)
    assert code == 0, err
    assert first.stat().st_mtime_ns == stamp  # finished runs are not run again
    assert (interrupted / "final.json").is_file()


def test_method_recipes_take_the_sweeps_epochs_and_scale_their_schedule() -> None:
    base = {"model": "lenet300", "data": "mnist", "train": {"epochs": 10, "train_subset": 99}}
    gmp = method_recipe(base, "gmp")  # recipes/lenet300-gmp.toml: 20 epochs, end_epoch 15
    assert gmp["train"]["epochs"] == 10 and gmp["train"]["train_subset"] == 99
    assert gmp["method"]["end_epoch"] == pytest.approx(7.5)
    assert gmp["train"]["lr"] == 0.05  # the method recipe's own optimizer settings stay
    unknown = method_recipe({**base, "model": "resnet20", "data": "cifar10"}, "gmp")
    assert unknown["method"] == {"name": "gmp"} and unknown["train"]["epochs"] == 10


def test_bad_strengths_and_methods_are_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        parse_strengths(["scl"])
    with pytest.raises(ConfigError):
        parse_strengths(["scl=lam:x"])
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(RECIPE)
    for extra in (
        ["--methods", "nosuch"],
        ["--strengths", "scl=lam:"],
        ["--targets", "a"],
        ["--methods", "scl", "--strengths", "scl=lam:0.001,-1"],  # refused by SCL itself
    ):
        code, _out, err = call(
            "compare", "--recipe", str(recipe), "--out", str(tmp_path / "x"), *extra
        )
        assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()

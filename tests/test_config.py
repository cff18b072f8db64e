"""Recipes: every shipped recipe is valid and builds; TOML, YAML, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from learnprune.config import (
    RECIPES_DIR,
    RunConfig,
    apply_overrides,
    parse_override,
    read_recipe,
)
from learnprune.data import Dataset
from learnprune.errors import ConfigError
from learnprune.runner import build

RECIPES = sorted(RECIPES_DIR.glob("*.toml"))


def _fake_data(shape: tuple[int, ...] = (1, 28, 28)) -> Dataset:
    x = torch.zeros(200, *shape)
    y = torch.arange(200) % 10
    return Dataset("mnist", x, y, x[:20], y[:20], num_classes=10)


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_every_shipped_recipe_validates_and_builds(recipe: Path) -> None:
    config = RunConfig.from_dict(read_recipe(recipe)).validate()
    assert config.description, "each recipe says what it is"
    _model, method = build(config, _fake_data())
    assert method.name == config.method
    if method.has_masks:
        assert method.masks()


def test_method_given_as_name_or_table() -> None:
    plain = RunConfig.from_dict({"model": "lenet300", "data": "mnist", "method": "gmp"})
    table = RunConfig.from_dict(
        {"model": "lenet300", "data": "mnist", "method": {"name": "gmp", "target": 0.9}}
    )
    assert plain.method == table.method == "gmp"
    assert table.method_options == {"target": 0.9}
    with pytest.raises(ConfigError, match="name"):
        RunConfig.from_dict({"model": "lenet300", "data": "mnist", "method": {"target": 0.9}})


def test_overrides_write_into_tables_and_parse_values() -> None:
    raw = {"model": "lenet300", "data": "mnist", "method": "gmp", "train": {"epochs": 20}}
    overrides = {
        tuple(parse_override("train.lr=0.05")[0]): parse_override("train.lr=0.05")[1],
        ("method", "target"): 0.9,
        ("train", "epochs"): None,  # not given on the command line: the recipe's value stays
    }
    result = apply_overrides(raw, overrides)
    assert result["train"] == {"epochs": 20, "lr": 0.05}
    assert result["method"] == {"name": "gmp", "target": 0.9}
    assert raw["method"] == "gmp"  # the original is untouched
    assert parse_override("train.milestones=[10, 20]") == (["train", "milestones"], [10, 20])
    assert parse_override("method.groups=coupled") == (["method", "groups"], "coupled")
    assert parse_override("train.nesterov=true") == (["train", "nesterov"], True)
    with pytest.raises(ConfigError):
        parse_override("no-equals-sign")


def test_yaml_recipe(tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "model: lenet300\ndata: mnist\nmethod:\n  name: magnitude\n  target: 0.8\n"
        "train:\n  epochs: 2\n"
    )
    config = RunConfig.from_dict(read_recipe(recipe)).validate()
    assert (config.method, config.method_options, config.train.epochs) == (
        "magnitude",
        {"target": 0.8},
        2,
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"data": "mnist"}, "needs a model"),
        ({"model": "lenet300", "data": "mnist", "train": {"epochz": 3}}, "unknown \\[train\\]"),
        ({"model": "lenet300", "data": "mnist", "colour": "blue"}, "unknown recipe key"),
        ({"model": "lenet300", "data": "mnist", "train": 3}, "table"),
        ({"model": "lenet300", "data": "mnist", "method": 3}, "method"),
    ],
)
def test_malformed_recipes(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict(raw).validate()


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"lr": -1.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 2.5}, "batch_size"),
        ({"momentum": 1.0}, "momentum"),
        ({"optimizer": "lion"}, "optimizer"),
        ({"milestones": 5}, "milestones"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_bad_training_numbers(train: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_dict({"model": "lenet300", "data": "mnist", "train": train}).validate()

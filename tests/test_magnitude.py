"""One-shot magnitude pruning and GMP: against torch.nn.utils.prune and hand schedules."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from learnprune.accounting import count
from learnprune.errors import ConfigError
from learnprune.methods import GMP, Magnitude
from learnprune.methods.base import TrainingContext
from learnprune.models import build_model


def _model(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(name)


@pytest.mark.parametrize(("name", "target"), [("lenet300", 0.9), ("lenet5-caffe", 0.95)])
def test_one_shot_element_masks_equal_torch_global_unstructured(name: str, target: float) -> None:
    model = _model(name)
    reference = copy.deepcopy(model)
    method = Magnitude(model, target=target)
    layers = [(m, "weight") for m in reference.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=target)
    masks = method.masks()
    names = [n for n, m in reference.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for layer_name, (module, _) in zip(names, layers, strict=True):
        assert torch.equal(masks[f"{layer_name}.weight"], module.weight_mask.bool())
    x = torch.randn(3, *model.input_shape)
    assert torch.equal(model(x), reference(x))


def test_layer_scope_prunes_each_layer_to_the_target() -> None:
    model = _model("lenet300")
    Magnitude(model, target=0.8, scope="layer")
    for layer in count(model).layers:
        assert layer.weights - layer.nonzero_weights == round(0.8 * layer.weights)


def test_out_channel_pruning_drops_whole_rows_with_their_bias() -> None:
    model = _model("lenet300")
    method = Magnitude(model, target=0.5, groups="out_channel")
    masks = method.masks()
    rows = masks["fc1.weight"]
    assert torch.equal(rows.all(1), rows.any(1))  # each row all kept or all dropped
    assert torch.equal(masks["fc1.bias"], rows.all(1))
    assert "fc3.weight" not in masks  # the classes stay
    # the fewest rows that reach the target: one fc1 row (784 weights) fewer would miss it
    assert 0.5 <= method.sparsity() < 0.5 + 784 / 266_200


def test_structured_pruning_never_empties_a_layer() -> None:
    model = _model("lenet300")
    method = Magnitude(model, target=0.99, groups="out_channel", scope="layer")
    masks = method.masks()
    assert int(masks["fc1.weight"].all(1).sum()) >= 1
    assert int(masks["fc2.weight"].all(1).sum()) >= 1


def test_coupled_pruning_removes_channels_everywhere_they_go() -> None:
    model = _model("resnet20")
    model.eval()
    method = Magnitude(model, target=0.3, groups="coupled", scope="layer")
    masks = method.masks()
    stem_rows = masks["stem.conv.weight"].flatten(1).any(1)
    dropped = (~stem_rows).nonzero().flatten()
    assert len(dropped) > 0
    for channel in dropped.tolist():
        assert not masks["stem.bn.weight"][channel] and not masks["stem.bn.bias"][channel]
        assert not masks["layer1.0.conv2.weight"][channel].any()
        assert not masks["layer1.0.conv1.weight"][:, channel].any()
    assert method.sparsity() >= 0.3


def test_n_of_m_keeps_n_of_every_m() -> None:
    model = _model("lenet300")
    method = Magnitude(model, groups="2:4")
    mask = method.masks()["fc1.weight"].reshape(300, -1, 4)
    assert (mask.sum(-1) == 2).all()
    weight = dict(model.named_parameters())["fc1.parametrizations.weight.original"]
    blocks = weight.detach().abs().reshape(300, -1, 4)
    kept_min = torch.where(mask, blocks, torch.inf).amin(-1)
    dropped_max = torch.where(~mask, blocks, -torch.inf).amax(-1)
    assert (kept_min >= dropped_max).all()
    with pytest.raises(ConfigError, match="n:m"):
        Magnitude(_model("lenet300"), target=0.5, groups="2:4")


def test_prune_at_a_later_step() -> None:
    model = _model("lenet300")
    method = Magnitude(model, target=0.9, prune_at=3)
    assert method.sparsity() == 0.0
    method.after_step()
    method.after_step()
    assert method.sparsity() == 0.0
    method.after_step()
    assert abs(method.sparsity() - 0.9) < 1e-6


def test_gmp_cubic_schedule_by_hand() -> None:
    method = GMP(_model("lenet300"), target=0.9, begin_step=10, end_step=110, frequency=10)
    assert method.schedule(0) == 0.0
    assert method.schedule(10) == 0.0
    # t = 60 is half way: 0.9 + (0 - 0.9) * (1 - 0.5)^3 = 0.7875
    assert abs(method.schedule(60) - 0.7875) < 1e-12
    assert method.schedule(110) == pytest.approx(0.9)
    assert method.schedule(500) == pytest.approx(0.9)


def test_gmp_prunes_on_its_schedule_and_pruned_weights_stay_pruned() -> None:
    model = _model("lenet300")
    method = GMP(model, target=0.9, begin_step=0, end_step=40, frequency=10)
    previous = {k: v.clone() for k, v in method.masks().items()}
    seen = []
    for step in range(1, 51):
        # perturb weights so magnitudes change between pruning events
        with torch.no_grad():
            for p in method.model_parameters():
                p.add_(torch.randn_like(p) * 0.01)
        method.after_step()
        masks = method.masks()
        for name, mask in masks.items():
            assert not (mask & ~previous[name]).any(), "a pruned weight came back"
        previous = {k: v.clone() for k, v in masks.items()}
        seen.append(round(method.sparsity(), 4))
        if step % 10:
            assert seen[-1] == (seen[-2] if len(seen) > 1 else 0.0)
    assert seen[9] == pytest.approx(method.schedule(10), abs=1e-4)
    assert seen[39] == pytest.approx(0.9, abs=1e-4)
    assert seen[-1] == pytest.approx(0.9, abs=1e-4)


def test_method_state_round_trip_resumes_the_schedule() -> None:
    model = _model("lenet300")
    method = GMP(model, target=0.8, begin_step=0, end_step=20, frequency=5)
    for _ in range(7):
        method.after_step()
    twin_model = _model("lenet300", seed=1)
    twin = GMP(twin_model, target=0.8, begin_step=0, end_step=20, frequency=5)
    twin_model.load_state_dict(model.state_dict())
    twin.load_state_dict(method.state_dict())
    assert twin.step == 7
    for _ in range(13):
        method.after_step()
        twin.after_step()
    for name, mask in method.masks().items():
        assert torch.equal(mask, twin.masks()[name])


def test_bad_hyper_parameters_are_config_errors() -> None:
    for kwargs in (
        {"target": 1.0},
        {"target": -0.1},
        {"target": float("nan")},
        {"target": None},
        {"target": 0.5, "scope": "planet"},
        {"target": 0.5, "score": "l7"},
    ):
        with pytest.raises(ConfigError):
            Magnitude(_model("lenet300"), **kwargs)
    with pytest.raises(ConfigError, match="end_step"):
        GMP(_model("lenet300"), target=0.5, begin_step=10, end_step=5)
    with pytest.raises(ConfigError, match="initial"):
        GMP(_model("lenet300"), target=0.5, end_step=5, initial=0.6)
    with pytest.raises(ConfigError, match="only"):
        Magnitude(_model("lenet300"), target=0.999, exclude=["fc1"])


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"begin_epoch": 6, "end_epoch": 4}, r"begin_epoch 6 is after end_epoch 4;"),
        ({"begin_epoch": 8}, r"begin_epoch 8 is after end_epoch 7\.5 \(the default"),
        ({}, r"gmp needs a target sparsity"),
    ],
)
def test_gmp_recipe_options_in_epochs_are_checked(options: dict, expected: str) -> None:
    context = TrainingContext(epochs=10, steps_per_epoch=5, total_steps=50)
    model = _model("lenet300")
    target = {} if not options else {"target": 0.5}
    with pytest.raises(ConfigError, match=expected):
        GMP.from_options(model, {**target, **options}, context)
    assert not any(hasattr(m, "parametrizations") for m in model.modules())  # left untouched
    method = GMP.from_options(model, {"target": 0.5, "begin_epoch": 4, "end_epoch": 4}, context)
    assert (method.begin_step, method.end_step) == (20, 21)  # equal epochs: prune once


def test_finalize_leaves_a_plain_model_with_the_zeros() -> None:
    model = _model("lenet300")
    method = Magnitude(model, target=0.95)
    x = torch.randn(2, 1, 28, 28)
    before = model(x)
    plain = method.finalize()
    assert list(plain.state_dict()) == list(build_model("lenet300").state_dict())
    assert torch.equal(plain(x), before)
    assert abs(count(plain).sparsity - 0.95) < 1e-6


@pytest.mark.parametrize("groups", ["out_channel", "coupled"])
def test_gmp_at_channel_granularity_reaches_its_target(groups: str) -> None:
    model = _model("lenet5-caffe")
    method = GMP(model, target=0.6, groups=groups, begin_step=0, end_step=20, frequency=5)
    for _ in range(20):
        method.after_step()
    assert 0.6 <= method.sparsity() < 0.65
    masks = method.masks()
    filters = masks["conv2.weight"].flatten(1)
    assert torch.equal(filters.all(1), filters.any(1))  # whole filters only
    if groups == "coupled":
        dropped = (~filters.any(1)).nonzero().flatten()
        # a dropped conv2 filter takes fc1's 16 inputs of that map with it (50 maps x 4x4)
        fc1_columns = masks["fc1.weight"].reshape(500, 50, 16)
        assert not fc1_columns[:, dropped].any()

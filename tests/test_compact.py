"""Compaction: dropped channel groups physically removed, outputs unchanged."""

from __future__ import annotations

import copy
import json
from collections import OrderedDict

import pytest
import torch
from torch import Tensor, nn

from learnprune.accounting import count
from learnprune.compact import (
    CompactResult,
    GroupDecision,
    apply_masks,
    compact,
    random_structured_masks,
)
from learnprune.errors import ConfigError, UnsupportedModelError
from learnprune.groups import GroupSet, build_groups, scatter_values
from learnprune.masking import FixedMask, attach
from learnprune.methods import Magnitude
from learnprune.models import build_model

REFERENCE_MODELS = {
    "lenet300": (1, 28, 28),
    "lenet5-caffe": (1, 28, 28),
    "lenet5": (1, 28, 28),
    "vgg16": (3, 32, 32),
    "resnet20": (3, 32, 32),
    "resnet56": (3, 32, 32),
}


pytestmark = pytest.mark.usefixtures("one_thread")


# --- helpers -------------------------------------------------------------------------------------


def randomize_norms(model: nn.Module, seed: int = 1) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine entries, as after training, so that a
    channel left with a shift would show in the outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(0.3 * torch.randn(size, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(size, generator=generator))
                module.weight.copy_(1 + 0.2 * torch.randn(size, generator=generator))
                module.bias.copy_(0.2 * torch.randn(size, generator=generator))
    return model


def outputs(model: nn.Module, shape: tuple[int, ...], batch: int = 8) -> Tensor:
    """The model's eval-mode outputs on a fixed random batch (seed 123, not the probe's)."""
    was_training = model.training
    model.eval()
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        out = model(x)
    model.train(was_training)
    return out


def assert_same_outputs(small: nn.Module, big: nn.Module, shape: tuple[int, ...]) -> None:
    torch.testing.assert_close(outputs(small, shape), outputs(big, shape), rtol=0, atol=1e-5)


def mlp(bias: float | None = None) -> nn.Sequential:
    """The hand-checkable 4-3-2 MLP: fc1 (4 -> 3), ReLU, fc2 (3 -> 2), the classifier."""
    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict([("fc1", nn.Linear(4, 3)), ("relu", nn.ReLU()), ("fc2", nn.Linear(3, 2))])
    )
    if bias is not None:
        with torch.no_grad():
            model.fc1.bias.fill_(bias)
    return model


def keep_all(model: nn.Module, *names: str) -> dict[str, Tensor]:
    params = dict(model.named_parameters())
    return {name: torch.ones_like(params[name], dtype=torch.bool) for name in names}


def group_set_of(model: nn.Module, shape: tuple[int, ...], param: str) -> GroupSet:
    """The coupled group set in which ``param`` produces the channel."""
    was_training = model.training
    plan = build_groups(model.eval(), "coupled", input_shape=shape)  # eval: BN stats stay
    model.train(was_training)
    for group_set in plan.sets:
        if any(p.param == param and p.role == "out" for p in group_set.slices):
            return group_set
    raise AssertionError(f"no coupled group set writes {param}")


def group_masks(group_set: GroupSet, keep: Tensor) -> dict[str, Tensor]:
    """Keep-masks of every member of a coupled group set for a per-channel ``keep``."""
    masks: dict[str, Tensor] = {}
    for piece in group_set.slices:
        part = scatter_values(keep, piece.dim, piece.index, piece.shape).expand(piece.shape)
        masks[piece.param] = part & masks.get(piece.param, torch.ones(piece.shape, dtype=bool))
    return masks


def decision_with(result: CompactResult, writer: str) -> GroupDecision:
    """The decision on the group in which ``writer`` produces the channels."""
    (decision,) = [group for group in result.groups if writer in group.writers]
    return decision


# --- every reference model -----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(REFERENCE_MODELS))
def test_reference_model_compacts_to_a_smaller_model_with_the_same_outputs(name: str) -> None:
    shape = REFERENCE_MODELS[name]
    torch.manual_seed(0)
    model = randomize_norms(build_model(name))
    masks = random_structured_masks(model, shape, drop=0.5, seed=0)
    apply_masks(model, masks)  # the "finalized" model: zeros stored in the weights
    snapshot = copy.deepcopy(model.state_dict())

    result = compact(model, masks, shape)

    assert_same_outputs(result.model, model, shape)
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-5
    assert result.after.params < result.before.params == count(model, shape).params
    assert result.after.params == count(result.model, shape).params
    assert result.after.flops < result.before.flops
    # every coupled group lost exactly the channels the masks dropped (round(0.5 G))
    assert result.groups
    for group in result.groups:
        assert len(group.removed) == min(round(0.5 * group.channels), group.channels - 1)
        assert group.zero_weight_kept == 0
    # the classifier keeps its classes; the caller's model is untouched
    classifier = result.layers[-1]
    assert classifier.out_after == classifier.out_before == 10
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshot[key]), key
    # the report describes the compact model's real shapes
    modules = dict(result.model.named_modules())
    for layer in result.layers:
        weight = modules[layer.name].weight
        assert weight.shape[0] == layer.out_after and weight.shape[1] == layer.in_after
    assert result.architecture_after != result.architecture_before


def test_lenet5_caffe_by_hand_layers_params_flops_and_architecture() -> None:
    model = build_model("lenet5-caffe")
    masks = keep_all(model, *(n for n, _ in model.named_parameters()))
    # conv1: drop maps 0-4; conv2: drop maps 0-9 (and fc1's 16 inputs of each); fc1: 100 units
    masks["conv1.weight"][:5] = False
    masks["conv1.bias"][:5] = False
    masks["conv2.weight"][:, :5] = False
    masks["conv2.weight"][:10] = False
    masks["conv2.bias"][:10] = False
    masks["fc1.weight"][:, : 10 * 16] = False
    masks["fc1.weight"][:100] = False
    masks["fc1.bias"][:100] = False
    masks["fc2.weight"][:, :100] = False

    result = compact(model, masks, (1, 28, 28))

    assert result.architecture_before == "20-50-800-500"
    assert result.architecture_after == "15-40-640-400"
    layers = {layer.name: layer for layer in result.layers}
    assert (layers["conv1"].out_after, layers["conv1"].params_after) == (15, 15 * 25 + 15)
    assert (layers["conv2"].in_after, layers["conv2"].out_after) == (15, 40)
    assert layers["conv2"].params_after == 40 * 15 * 25 + 40
    assert (layers["fc1"].in_after, layers["fc1"].out_after) == (640, 400)
    assert (layers["fc2"].in_after, layers["fc2"].out_after) == (400, 10)
    # FLOPs: 2 per multiply-add; conv1 has 24x24 output positions, conv2 8x8
    assert layers["conv1"].flops_after == 2 * 15 * 25 * 24 * 24
    assert layers["conv2"].flops_after == 2 * 40 * 15 * 25 * 8 * 8
    assert layers["fc1"].flops_after == 2 * 640 * 400
    assert result.after.params == 390 + 15_040 + 640 * 400 + 400 + 400 * 10 + 10
    assert result.after.flops == sum(layer.flops_after for layer in result.layers)
    assert result.removed_channels == 5 + 10 + 100
    assert_same_outputs(result.model, apply_masks(copy.deepcopy(model), masks), (1, 28, 28))
    table = result.table()
    assert "architecture 20-50-800-500 -> 15-40-640-400" in table
    assert "fc2" in table and "115 channels removed" in table
    assert json.loads(json.dumps(result.as_dict()))["architecture_after"] == "15-40-640-400"


# --- residual coupling ---------------------------------------------------------------------------


def test_resnet_channel_dropped_in_one_residual_conv_stays_and_in_all_of_them_goes() -> None:
    shape = (3, 32, 32)
    torch.manual_seed(0)
    model = randomize_norms(build_model("resnet20"))
    stage = group_set_of(model, shape, "layer1.1.conv2.weight")
    writers = {p.module for p in stage.slices if p.role == "out" and p.attr == "weight"}
    assert {"stem.conv", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"} <= writers
    channel = 5

    # dropped in layer1.1.conv2 (and its BN) only: the other writers still fill channel 5
    only_one = keep_all(model, "layer1.1.conv2.weight", "layer1.1.bn2.weight", "layer1.1.bn2.bias")
    for mask in only_one.values():
        mask[channel] = False
    model.train()  # compact must leave the caller's mode and BN statistics alone
    running_mean = model.stem.bn.running_mean.clone()
    result = compact(model, only_one, shape)
    assert model.training and torch.equal(model.stem.bn.running_mean, running_mean)
    assert result.model.training
    assert result.model.layer1[1].conv2.out_channels == 16
    assert decision_with(result, "layer1.1.conv2").removed == ()
    assert result.after.params == result.before.params
    assert_same_outputs(result.model, apply_masks(copy.deepcopy(model), only_one), shape)

    # dropped in every member of the stage's group: removed everywhere
    keep = torch.ones(stage.num_groups, dtype=torch.bool)
    keep[channel] = False
    everywhere = group_masks(stage, keep)
    masked = apply_masks(copy.deepcopy(model), everywhere)
    result = compact(masked, everywhere, shape)
    small = result.model
    assert decision_with(result, "layer1.1.conv2").removed == (channel,)
    assert small.stem.conv.out_channels == small.stem.bn.num_features == 15
    for block in small.layer1:
        assert block.conv2.out_channels == block.bn2.num_features == 15
        assert block.conv1.in_channels == 15 and block.conv1.out_channels == 16
    assert small.layer2[0].conv1.in_channels == small.layer2[0].shortcut.conv.in_channels == 15
    kept = [k for k in range(16) if k != channel]
    torch.testing.assert_close(
        small.layer1[0].conv1.weight, masked.layer1[0].conv1.weight[:, kept], rtol=0, atol=0
    )
    torch.testing.assert_close(
        small.stem.bn.running_mean, masked.stem.bn.running_mean[kept], rtol=0, atol=0
    )
    assert_same_outputs(small, masked, shape)


# --- hand-built MLPs -----------------------------------------------------------------------------


def test_mlp_fully_masked_hidden_unit_is_removed_with_exactly_the_remaining_weights() -> None:
    model = mlp()
    masks = keep_all(model, "fc1.weight", "fc1.bias", "fc2.weight")
    masks["fc1.weight"][1] = False
    masks["fc1.bias"][1] = False
    masks["fc2.weight"][:, 1] = False
    masked = apply_masks(copy.deepcopy(model), masks)

    result = compact(model, masks, (4,))

    small = result.model
    assert (small.fc1.in_features, small.fc1.out_features) == (4, 2)
    assert (small.fc2.in_features, small.fc2.out_features) == (2, 2)
    assert torch.equal(small.fc1.weight, model.fc1.weight[[0, 2]])
    assert torch.equal(small.fc1.bias, model.fc1.bias[[0, 2]])
    assert torch.equal(small.fc2.weight, model.fc2.weight[:, [0, 2]])
    assert torch.equal(small.fc2.bias, model.fc2.bias)
    assert result.architecture_before == "4-3" and result.architecture_after == "4-2"
    assert result.skipped == {"fc2": "outputs are model outputs (the classes), never removed"}
    assert_same_outputs(small, masked, (4,))


def test_classifier_outputs_are_never_removed() -> None:
    model = mlp()
    masks = keep_all(model, "fc2.weight", "fc2.bias")
    masks["fc2.weight"][0] = False
    masks["fc2.bias"][0] = False
    result = compact(model, masks, (4,))
    assert result.model.fc2.out_features == 2
    assert_same_outputs(result.model, apply_masks(copy.deepcopy(model), masks), (4,))

    lenet = build_model("lenet300")
    masks = keep_all(lenet, "fc3.weight", "fc3.bias")
    masks["fc3.weight"][3] = False
    masks["fc3.bias"][3] = False
    assert compact(lenet, masks, (1, 28, 28)).model.fc3.out_features == 10


def test_every_layer_keeps_at_least_one_channel() -> None:
    model = mlp()
    masks = keep_all(model, "fc1.weight", "fc1.bias")
    masks["fc1.weight"][:] = False
    masks["fc1.bias"][:] = False
    result = compact(model, masks, (4,))
    assert (result.model.fc1.out_features, result.model.fc2.in_features) == (1, 1)
    assert_same_outputs(result.model, apply_masks(copy.deepcopy(model), masks), (4,))


def test_unit_no_layer_reads_is_removed_with_its_producer() -> None:
    # only fc2's input column 1 is dropped: fc1's unit 1 is computed but never used
    model = mlp()
    masks = keep_all(model, "fc2.weight")
    masks["fc2.weight"][:, 1] = False
    result = compact(model, masks, (4,))
    assert result.model.fc1.out_features == 2
    assert torch.equal(result.model.fc1.weight, model.fc1.weight[[0, 2]])
    assert_same_outputs(result.model, apply_masks(copy.deepcopy(model), masks), (4,))


def test_conv_map_is_unread_only_when_all_its_flattened_positions_are() -> None:
    # conv2's map 7 feeds fc1 through 16 flattened inputs (4x4 positions), 112 ... 127
    model = build_model("lenet5-caffe")
    masks = keep_all(model, "fc1.weight")
    masks["fc1.weight"][:, 7 * 16 + 1 : 8 * 16] = False  # 15 of the 16 unread
    result = compact(model, masks, (1, 28, 28))
    assert result.model.conv2.out_channels == 50
    assert_same_outputs(result.model, apply_masks(copy.deepcopy(model), masks), (1, 28, 28))

    masks["fc1.weight"][:, 7 * 16] = False  # all 16: map 7 is computed for nothing
    result = compact(model, masks, (1, 28, 28))
    assert (result.model.conv2.out_channels, result.model.fc1.in_features) == (49, 784)
    assert decision_with(result, "conv2").removed == (7,)
    assert_same_outputs(result.model, apply_masks(copy.deepcopy(model), masks), (1, 28, 28))


def test_input_pixels_are_data_and_never_removed() -> None:
    model = build_model("lenet300")
    masks = keep_all(model, "fc1.weight")
    masks["fc1.weight"][:, :100] = False  # 100 pixels nobody reads
    result = compact(model, masks, (1, 28, 28))
    assert result.model.fc1.in_features == 784
    assert result.after.params == result.before.params


def test_masks_none_uses_the_zeros_stored_in_the_weights() -> None:
    model = mlp()
    with torch.no_grad():
        model.fc1.weight[2] = 0
        model.fc1.bias[2] = 0
    result = compact(model, None, (4,))
    assert result.model.fc1.out_features == 2


# --- constant channels: zero weights, non-zero shift ---------------------------------------------


def test_a_runs_compact_summary_records_what_stays_instead_of_warning(recwarn) -> None:
    from learnprune.compact import UncutStructureWarning
    from learnprune.runner import compact_summary

    model = mlp(bias=0.5)
    with torch.no_grad():
        model.fc1.weight[1] = 0  # a constant channel: relu(0.5) feeds fc2
    summary, small = compact_summary(model, (4,))
    assert small is not None and small.fc1.out_features == 3  # kept: it is not zero
    assert not [w for w in recwarn if issubclass(w.category, UncutStructureWarning)]
    assert len(summary["left_uncut"]) == 1 and "constant channels" in summary["left_uncut"][0]
    with pytest.warns(UncutStructureWarning, match="constant channels"):
        compact(model, None, (4,))  # called directly, compact says it aloud


def test_zero_weights_with_a_nonzero_bias_are_kept_as_a_constant_channel() -> None:
    model = mlp(bias=0.5)  # relu(0 · x + 0.5) = 0.5 feeds fc2: removing it would shift fc2
    masks = keep_all(model, "fc1.weight")
    masks["fc1.weight"][1] = False
    result = compact(model, masks, (4,))
    assert result.model.fc1.out_features == 3
    assert decision_with(result, "fc1").zero_weight_kept == 1
    assert "1 channels with all-zero weights kept" in result.table()
    assert_same_outputs(result.model, apply_masks(copy.deepcopy(model), masks), (4,))

    masks = keep_all(model, "fc1.weight", "fc1.bias")
    masks["fc1.weight"][1] = False
    masks["fc1.bias"][1] = False  # now the unit is provably zero
    result = compact(model, masks, (4,))
    assert result.model.fc1.out_features == 2
    assert decision_with(result, "fc1").zero_weight_kept == 0


def test_conv_rows_zero_but_batchnorm_shift_kept_until_the_shift_is_masked_too() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(
            [
                ("conv1", nn.Conv2d(3, 6, 3, padding=1, bias=False)),
                ("bn1", nn.BatchNorm2d(6)),
                ("relu1", nn.ReLU()),
                ("conv2", nn.Conv2d(6, 4, 3, padding=1)),
                ("relu2", nn.ReLU()),
                ("pool", nn.AdaptiveAvgPool2d(1)),
                ("flatten", nn.Flatten()),
                ("fc", nn.Linear(4, 3)),
            ]
        )
    )
    randomize_norms(model)
    shape = (3, 8, 8)
    # out_channel-style masks: conv1 filters 1 and 2 dropped, BN left alone -> constant maps
    masks = keep_all(model, "conv1.weight", "bn1.weight", "bn1.bias")
    masks["conv1.weight"][[1, 2]] = False
    result = compact(model, masks, shape)
    assert result.model.conv1.out_channels == 6
    assert decision_with(result, "conv1").zero_weight_kept == 2
    assert_same_outputs(result.model, apply_masks(copy.deepcopy(model), masks), shape)

    # coupled-style: filter 1's BN entries dropped too -> provably zero, removed
    masks["bn1.weight"][1] = False
    masks["bn1.bias"][1] = False
    result = compact(model, masks, shape)
    assert result.model.conv1.out_channels == result.model.bn1.num_features == 5
    assert result.model.conv2.in_channels == 5
    assert decision_with(result, "conv1").removed == (1,)
    assert_same_outputs(result.model, apply_masks(copy.deepcopy(model), masks), shape)


def test_activation_with_nonzero_value_at_zero_keeps_a_zero_unit() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict([("fc1", nn.Linear(4, 3)), ("act", nn.Sigmoid()), ("fc2", nn.Linear(3, 2))])
    )
    masks = keep_all(model, "fc1.weight", "fc1.bias")
    masks["fc1.weight"][1] = False
    masks["fc1.bias"][1] = False  # writes 0, but fc2 reads sigmoid(0) = 0.5
    result = compact(model, masks, (4,))
    assert result.model.fc1.out_features == 3
    assert_same_outputs(result.model, apply_masks(copy.deepcopy(model), masks), (4,))


# --- refusals ------------------------------------------------------------------------------------


class _TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 3)
        self.fc2 = nn.Linear(3, 2)


class _Detached(_TwoLayers):
    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(x)).detach())


class _NoGrad(_TwoLayers):
    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.fc2(torch.relu(self.fc1(x)))


class _NotATensor(_TwoLayers):
    def forward(self, x: Tensor) -> object:
        return {"logits": self.fc2(self.fc1(x)).tolist()}


class _MeanCentered(_TwoLayers):
    """Subtracts the mean over the hidden units: removing a unit changes every other one,
    which the dependency graph does not see."""

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.fc1(x)
        return self.fc2(hidden - hidden.mean(dim=1, keepdim=True))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (_Detached(), "cannot trace the model: fc1 missing"),
        (_NoGrad(), "cannot trace the model: fc1 missing"),
        (_NotATensor(), "returns no tensor"),
        (build_model("resnet20", shortcut="A"), "shortcut='B'"),
    ],
    ids=["detach", "no_grad", "not-a-tensor", "resnet-shortcut-A"],
)
def test_models_the_graph_cannot_trace_are_refused_in_one_line(
    model: nn.Module, message: str
) -> None:
    shape = getattr(model, "input_shape", (4,))
    with pytest.raises(UnsupportedModelError, match=message) as error:
        compact(model, None, shape)
    assert "\n" not in str(error.value)


def test_the_check_catches_an_op_the_graph_does_not_see() -> None:
    torch.manual_seed(0)
    model = _MeanCentered()
    masks = keep_all(model, "fc2.weight")
    masks["fc2.weight"][:, 1] = False
    with pytest.raises(UnsupportedModelError, match="outputs differ") as error:
        compact(model, masks, (4,))
    assert "\n" not in str(error.value)
    unchecked = compact(model, masks, (4,), check=False)
    assert unchecked.max_abs_diff is None and unchecked.model.fc1.out_features == 2
    masked = apply_masks(copy.deepcopy(model), masks)
    assert not torch.allclose(outputs(unchecked.model, (4,)), outputs(masked, (4,)))


def test_bad_masks_and_unfinalized_models_are_refused() -> None:
    model = mlp()
    with pytest.raises(ConfigError, match="no parameter"):
        compact(model, {"fc9.weight": torch.ones(3, 4, dtype=torch.bool)}, (4,))
    with pytest.raises(ConfigError, match="shape"):
        compact(model, {"fc1.weight": torch.ones(4, 3, dtype=torch.bool)}, (4,))
    with pytest.raises(ConfigError, match="input_shape"):
        compact(model, None)
    attach(model, build_groups(model, "out_channel", input_shape=(4,)), FixedMask)
    with pytest.raises(ConfigError, match="finalize"):
        compact(model, None, (4,))


def test_random_structured_masks_are_seeded_and_leave_the_model_alone() -> None:
    model = build_model("resnet20").train()
    state = copy.deepcopy(model.state_dict())
    first = random_structured_masks(model, (3, 32, 32), drop=0.25, seed=3)
    again = random_structured_masks(model, (3, 32, 32), drop=0.25, seed=3)
    other = random_structured_masks(model, (3, 32, 32), drop=0.25, seed=4)
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)
    # 25 % of the 16 stem channels: 4 filters, with their BN entries
    assert int((~first["stem.conv.weight"].flatten(1).all(1)).sum()) == 4
    assert int((~first["stem.bn.bias"]).sum()) == 4
    with pytest.raises(ConfigError, match="drop"):
        random_structured_masks(model, (3, 32, 32), drop=1.5)


# --- concat and a real method --------------------------------------------------------------------


class _Branches(nn.Module):
    """Two conv branches concatenated into one BatchNorm, read by a 1x1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 5, 3, padding=1)
        self.bn = nn.BatchNorm2d(9)
        self.c = nn.Conv2d(9, 6, 1)
        self.fc = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        hidden = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
        return self.fc(self.c(hidden).mean((2, 3)))


def test_concat_positions_follow_their_branch() -> None:
    torch.manual_seed(0)
    model = randomize_norms(_Branches())
    shape = (3, 8, 8)
    masks = keep_all(model, "a.weight", "a.bias", "b.weight", "b.bias", "bn.weight", "bn.bias")
    for name in ("a.weight", "a.bias"):
        masks[name][1] = False  # a's map 1 is concat position 1
    for name in ("b.weight", "b.bias"):
        masks[name][2] = False  # b's map 2 is concat position 4 + 2 = 6
    for name in ("bn.weight", "bn.bias"):
        masks[name][[1, 6]] = False
    masks["b.weight"][3] = False  # zero filter, bias and BN shift left: a constant, kept
    masked = apply_masks(copy.deepcopy(model), masks)

    result = compact(model, masks, shape)

    small = result.model
    assert (small.a.out_channels, small.b.out_channels) == (3, 4)
    assert small.bn.num_features == small.c.in_channels == 7
    assert decision_with(result, "b").zero_weight_kept == 1
    kept = [0, 2, 3, 4, 5, 7, 8]
    assert torch.equal(small.bn.running_mean, masked.bn.running_mean[kept])
    assert torch.equal(small.c.weight, masked.c.weight[:, kept])
    assert_same_outputs(small, masked, shape)


def test_masks_of_a_method_read_before_finalize() -> None:
    shape = (3, 32, 32)
    for groups, shrinks in (("coupled", True), ("out_channel", False)):
        torch.manual_seed(0)
        model = randomize_norms(build_model("resnet20"))
        method = Magnitude(model, 0.5, groups=groups, input_shape=shape)
        masks = method.masks()
        method.finalize()
        result = compact(model, masks, shape)
        assert_same_outputs(result.model, model, shape)
        assert (result.after.params < result.before.params) is shrinks
        # out_channel masks leave the BatchNorm shifts: those channels are constants, kept
        assert (sum(g.zero_weight_kept for g in result.groups) > 0) is not shrinks

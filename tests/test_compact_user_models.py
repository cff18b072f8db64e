"""Models nobody here wrote: token ids into an embedding and an LSTM, a conv stem under a
transformer layer, a ConvNeXt-like block with a raw layer scale. Groups and compaction run on
the user's real example inputs; every kind of dropped structure is cut in one pass, or named
loudly; Torch-Pruning stays quiet about parameters it is told about."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import Tensor, nn

from learnprune.compact import UncutStructureWarning, apply_masks, compact
from learnprune.groups import build_groups
from learnprune.inspection import UncoveredParametersWarning, prunability_report
from learnprune.methods import SCL, DiffPrune, HardConcrete, Magnitude

pytestmark = pytest.mark.usefixtures("one_thread")


def keep_all(model: nn.Module) -> dict[str, Tensor]:
    return {name: torch.ones_like(p, dtype=torch.bool) for name, p in model.named_parameters()}


def masked_outputs(model: nn.Module, masks: dict[str, Tensor], *inputs: Tensor) -> Tensor:
    masked = apply_masks(copy.deepcopy(model), masks).eval()
    with torch.no_grad():
        return masked(*inputs)


# --------------------------------------------------------------------------------------------
# token ids: Embedding -> LSTM -> Linear -> Linear
# --------------------------------------------------------------------------------------------


class TokenLSTM(nn.Module):
    """Token ids (integers) -> Embedding(50, 16) -> LSTM(16, 32) -> last step -> fc1 (32 -> 24)
    -> ReLU -> fc2 (24 -> 4), the classifier."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(50, 16)
        self.lstm = nn.LSTM(16, 32, batch_first=True)
        self.fc1 = nn.Linear(32, 24)
        self.fc2 = nn.Linear(24, 4)

    def forward(self, ids: Tensor) -> Tensor:
        hidden, _ = self.lstm(self.embed(ids))
        return self.fc2(torch.relu(self.fc1(hidden[:, -1])))


TOKEN_IDS = torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(1))


def test_coupled_groups_of_a_token_model_trace_the_real_integer_inputs() -> None:
    model = TokenLSTM()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UncoveredParametersWarning)  # the LSTM, named below
        plan = build_groups(model, "coupled", example_inputs=TOKEN_IDS)
    assert [s.name for s in plan.sets] == ["coupled:fc1"]
    (group_set,) = plan.sets
    assert group_set.num_groups == 24
    assert {(p.param, p.role) for p in group_set.slices} == {
        ("fc1.weight", "out"),
        ("fc1.bias", "out"),
        ("fc2.weight", "in"),
    }
    assert "recurrent" in plan.skipped["lstm"]
    assert "classifier" in plan.skipped["fc2.weight"]

    report = prunability_report(model, "coupled", example_inputs=TOKEN_IDS)
    assert report.traced and report.row("fc1").status == "pruned"
    assert report.row("lstm").status == "skipped"


def test_compaction_of_a_token_model_runs_on_its_integer_inputs() -> None:
    model = TokenLSTM()
    masks = keep_all(model)
    for name in ("fc1.weight", "fc1.bias"):
        masks[name][5:] = False  # 19 of fc1's 24 units dropped
    masks["fc2.weight"][:, 5:] = False
    result = compact(model, masks, example_inputs=TOKEN_IDS)
    assert result.model.fc1.out_features == 5
    assert result.model.fc2.in_features == 5
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-6
    with torch.no_grad():
        expected = masked_outputs(model, masks, TOKEN_IDS)
        torch.testing.assert_close(result.model.eval()(TOKEN_IDS), expected, rtol=0, atol=1e-6)
    # FLOPs counted on the token ids: fc1 shrinks from 2*32*24 to 2*32*5 per example
    flops = {layer.name: (layer.flops_before, layer.flops_after) for layer in result.layers}
    assert flops["fc1"] == (2 * 32 * 24, 2 * 32 * 5)


@pytest.mark.parametrize(
    ("method", "options"),
    [(SCL, {}), (HardConcrete, {}), (DiffPrune, {}), (Magnitude, {"target": 0.5})],
)
def test_methods_take_the_real_example_inputs_for_coupled_groups(
    method: type, options: dict[str, float]
) -> None:
    model = TokenLSTM()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UncoveredParametersWarning)
        pruner = method(model, groups="coupled", example_inputs=TOKEN_IDS, **options)
    assert [s.name for s in pruner.plan.sets] == ["coupled:fc1"]
    assert model(TOKEN_IDS).shape == (2, 4)  # the gated model runs on its token ids


@pytest.mark.parametrize("wrap", ["tensor", "tuple", "dict"])
def test_compact_takes_example_inputs_as_a_tensor_a_tuple_or_keyword_arguments(wrap: str) -> None:
    model = TokenLSTM()
    masks = keep_all(model)
    masks["fc2.weight"][:, 3:] = False  # nothing reads fc1's units 3..23
    inputs = {"tensor": TOKEN_IDS, "tuple": (TOKEN_IDS,), "dict": {"ids": TOKEN_IDS}}[wrap]
    result = compact(model, masks, example_inputs=inputs)
    assert (result.model.fc1.out_features, result.model.fc2.in_features) == (3, 3)
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-6


# --------------------------------------------------------------------------------------------
# a conv stem under a transformer layer: heads, neurons and channels in one pass
# --------------------------------------------------------------------------------------------


class ConvStemTransformer(nn.Module):
    """c1 (3 -> 16) -> BN -> ReLU -> c2 (16 -> 8, stride 2) -> the 4x4 positions as tokens ->
    ``nn.TransformerEncoderLayer`` (d_model 8, 2 heads, 32 neurons) -> mean -> head (8 -> 4)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 8, 3, stride=2, padding=1)
        self.encoder = nn.TransformerEncoderLayer(8, 2, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 4)
        with torch.no_grad():  # statistics as after training: a kept BN shift would show
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.5, 0.5)

    def forward(self, x: Tensor) -> Tensor:
        x = self.c2(torch.relu(self.bn(self.c1(x))))
        return self.head(self.encoder(x.flatten(2).transpose(1, 2)).mean(1))


STEM_SHAPE = (3, 8, 8)
STEM_BATCH = torch.randn(5, *STEM_SHAPE, generator=torch.Generator().manual_seed(2))


def stem_masks(model: nn.Module) -> dict[str, Tensor]:
    """15 of c1's 16 filters dropped with their BN entries and c2's input maps, as coupled
    groups drop them; 27 of the 32 MLP neurons dropped."""
    masks = keep_all(model)
    for name in ("c1.weight", "c1.bias", "bn.weight", "bn.bias"):
        masks[name][1:] = False
    masks["c2.weight"][:, 1:] = False
    for name in ("encoder.linear1.weight", "encoder.linear1.bias"):
        masks[name][5:] = False
    masks["encoder.linear2.weight"][:, 5:] = False
    return masks


def test_conv_channels_heads_and_neurons_of_one_model_are_cut_in_one_pass() -> None:
    model = ConvStemTransformer()
    masks = stem_masks(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UncutStructureWarning)  # everything dropped is cut
        result = compact(model, masks, STEM_SHAPE)
    small = result.model
    assert (small.c1.out_channels, small.bn.num_features, small.c2.in_channels) == (1, 1, 1)
    assert (small.encoder.linear1.out_features, small.encoder.linear2.in_features) == (5, 5)
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-5
    with torch.no_grad():
        torch.testing.assert_close(
            small.eval()(STEM_BATCH), masked_outputs(model, masks, STEM_BATCH), rtol=0, atol=1e-5
        )
    changes = {layer.name: layer for layer in result.layers}
    assert (changes["c1"].out_before, changes["c1"].out_after) == (16, 1)
    assert (changes["encoder.linear1"].out_before, changes["encoder.linear1"].out_after) == (32, 5)
    assert result.removed_channels == 15 + 27
    assert result.after.params < result.before.params


def test_dropped_structures_compaction_cannot_cut_are_named_loudly() -> None:
    model = ConvStemTransformer()
    masks = stem_masks(model)
    masks["c2.weight"][5:] = False  # 3 of c2's 8 outputs: the residual stream, through LayerNorm
    masks["c2.bias"][5:] = False
    masks["encoder.self_attn.out_proj.weight"][:, 4:] = False  # head 1 of 2 of the packed MHA
    with pytest.warns(UncutStructureWarning) as caught:
        result = compact(model, masks, STEM_SHAPE)
    message = str(caught[0].message)
    assert "c2: 3 of 8 outputs" in message and "LayerNorm" in message
    assert "1 of 2 heads" in message and "MultiheadAttention" in message
    assert "1 of 2 heads" in result.skipped["heads:encoder.self_attn"]
    assert any("c2: 3 of 8 outputs" in why for why in result.skipped.values())
    assert result.model.c2.out_channels == 8  # left, as said
    assert result.model.c1.out_channels == 1  # what can be cut still is
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-5


class DetachedStem(ConvStemTransformer):
    """The stem's output detached: Torch-Pruning's autograd trace cannot see c1."""

    def forward(self, x: Tensor) -> Tensor:
        x = self.c2(torch.relu(self.bn(self.c1(x))).detach())
        return self.head(self.encoder(x.flatten(2).transpose(1, 2)).mean(1))


def test_channels_left_by_an_untraceable_stem_are_named_and_the_blocks_still_cut() -> None:
    model = DetachedStem()
    masks = stem_masks(model)
    with pytest.warns(UncutStructureWarning, match="c1: 15 of 16 outputs"):
        result = compact(model, masks, STEM_SHAPE)
    assert "missing from its graph" in result.skipped["channels"]
    assert result.model.c1.out_channels == 16  # left, as said
    assert result.model.encoder.linear1.out_features == 5  # the transformer pass still cuts
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-5


# --------------------------------------------------------------------------------------------
# raw layer-scale parameters: ConvNeXt's gamma
# --------------------------------------------------------------------------------------------


class ConvNeXtBlock(nn.Module):
    """depthwise 7x7 -> LayerNorm -> pw1 (8 -> 32) -> GELU -> pw2 (32 -> 8) -> x gamma, plus
    the residual (ConvNeXt's block, layer scale ``gamma`` a raw ``(8,)`` parameter)."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pw1 = nn.Linear(dim, 4 * dim)
        self.pw2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, dim))

    def forward(self, x: Tensor) -> Tensor:
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(nn.functional.gelu(self.pw1(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class TinyConvNeXt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 2, stride=2)
        self.block = ConvNeXtBlock()
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.block(self.stem(x)).mean((2, 3)))


class ScaledConvs(nn.Module):
    """conv1 (3 -> 8) -> x scale, a raw (1, 8, 1, 1) parameter -> ReLU -> conv2 (8 -> 4) ->
    mean -> head: the scale sits in conv1's coupled group."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.scale = nn.Parameter(torch.linspace(0.5, 2.0, 8).view(1, 8, 1, 1))
        self.conv2 = nn.Conv2d(8, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv2(torch.relu(self.conv1(x) * self.scale))
        return self.head(x.mean((2, 3)))


def test_coupled_groups_on_a_convnext_block_leave_torch_pruning_quiet(capfd) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = build_groups(TinyConvNeXt(), "coupled", input_shape=(3, 16, 16))
    out, err = capfd.readouterr()
    messages = [str(w.message) for w in caught] + [out, err]
    assert not any("Unwrapped parameters" in text for text in messages)
    # the residual stream (stem, dw, pw2, gamma) meets the LayerNorm: left whole, said why
    assert "LayerNorm" in plan.skipped["coupled:stem"]
    assert [s.name for s in plan.sets] == ["coupled:block.pw1"]


def test_a_convnext_block_with_dropped_hidden_units_compacts_with_matching_outputs() -> None:
    model = TinyConvNeXt()
    masks = keep_all(model)
    for name in ("block.pw1.weight", "block.pw1.bias"):
        masks[name][::2] = False  # 16 of the 32 hidden units
    masks["block.pw2.weight"][:, ::2] = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither Torch-Pruning nor learnprune has to warn
        result = compact(model, masks, (3, 16, 16))
    assert (result.model.block.pw1.out_features, result.model.block.pw2.in_features) == (16, 16)
    assert result.model.block.gamma.shape == (8,)
    batch = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = masked_outputs(model, masks, batch)
        torch.testing.assert_close(result.model.eval()(batch), expected, rtol=0, atol=1e-5)


def test_a_layer_scale_in_a_coupled_group_is_masked_and_sliced_with_its_channel() -> None:
    model = ScaledConvs()
    sets = {s.name: s for s in build_groups(model, "coupled", input_shape=(3, 6, 6)).sets}
    assert set(sets) == {"coupled:conv1", "coupled:conv2"}
    group_set = sets["coupled:conv1"]
    (scale_piece,) = [p for p in group_set.slices if p.param == "scale"]
    assert (scale_piece.dim, scale_piece.role, scale_piece.shape) == (1, "out", (1, 8, 1, 1))
    dropped = [1, 4, 6]
    masks = keep_all(model)
    for piece in group_set.slices:
        index = [slice(None)] * len(piece.shape)
        index[piece.dim] = dropped
        masks[piece.param][tuple(index)] = False
    assert masks["scale"].flatten().tolist() == [k not in dropped for k in range(8)]
    result = compact(model, masks, (3, 6, 6))
    kept = [k for k in range(8) if k not in dropped]
    assert result.model.conv1.out_channels == 5 and result.model.conv2.in_channels == 5
    torch.testing.assert_close(result.model.scale, model.scale[:, kept], rtol=0, atol=0)
    batch = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = masked_outputs(model, masks, batch)
        torch.testing.assert_close(result.model.eval()(batch), expected, rtol=0, atol=1e-5)


def test_a_raw_parameter_without_one_clear_channel_axis_leaves_its_group_whole() -> None:
    class PositionTable(nn.Module):  # conv1 -> + a learned (1, 8, 6, 6) table -> conv2
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.table = nn.Parameter(torch.randn(1, 8, 6, 6))
            self.conv2 = nn.Conv2d(8, 4, 3, padding=1)
            self.head = nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.conv2(self.conv1(x) + self.table).mean((2, 3)))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = build_groups(PositionTable(), "coupled", input_shape=(3, 6, 6))
    assert not any("Unwrapped parameters" in str(w.message) for w in caught)
    assert "raw nn.Parameter" in plan.skipped["coupled:conv1"]
    assert [s.name for s in plan.sets] == ["coupled:conv2"]

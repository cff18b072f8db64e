"""Group sets: gather/scatter on tiny tensors by hand, every kind, coupled channel groups."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from learnprune.errors import ConfigError
from learnprune.groups import (
    GroupSet,
    TensorSlices,
    build_groups,
    custom_group_set,
    gather,
    output_layer,
    parse_kind,
    scatter,
)
from learnprune.models import build_model

W = torch.arange(6.0).reshape(2, 3)  # [[0, 1, 2], [3, 4, 5]]


def test_element_gather_and_scatter_are_the_identity_on_the_flat_tensor() -> None:
    piece = TensorSlices("fc", "weight", (2, 3))
    assert torch.equal(gather(W, piece, 6), torch.arange(6.0))
    assert torch.equal(scatter(torch.arange(6.0), piece), W)


def test_out_channel_gather_sums_rows_and_scatter_broadcasts_one_value_per_row() -> None:
    piece = TensorSlices("fc", "weight", (2, 3), dim=0)
    assert torch.equal(gather(W, piece, 2), torch.tensor([3.0, 12.0]))
    spread = scatter(torch.tensor([10.0, 20.0]), piece)
    assert torch.equal(spread.expand(2, 3), torch.tensor([[10.0] * 3, [20.0] * 3]))


def test_in_channel_gather_sums_columns() -> None:
    piece = TensorSlices("fc", "weight", (2, 3), dim=1)
    assert torch.equal(gather(W, piece, 3), torch.tensor([3.0, 5.0, 7.0]))
    spread = scatter(torch.tensor([1.0, 0.0, 2.0]), piece).expand(2, 3)
    assert torch.equal(spread, torch.tensor([[1.0, 0.0, 2.0], [1.0, 0.0, 2.0]]))


def test_index_maps_positions_to_groups_and_minus_one_means_untouched() -> None:
    # columns 0 and 2 belong to group 1 and 0 of the set; column 1 to no group.
    piece = TensorSlices("fc", "weight", (2, 3), dim=1, index=torch.tensor([1, -1, 0]))
    assert torch.equal(gather(W, piece, 2), torch.tensor([7.0, 3.0]))
    spread = scatter(torch.tensor([0.0, 5.0]), piece).expand(2, 3)
    assert torch.equal(spread, torch.tensor([[5.0, 1.0, 0.0], [5.0, 1.0, 0.0]]))


def test_custom_group_set_blocks() -> None:
    model = nn.Sequential(nn.Linear(2, 4))
    index = torch.tensor([[0, 0], [0, 0], [1, 1], [-1, 1]])
    group_set = custom_group_set("blocks", model, {"0.weight": index})
    assert group_set.num_groups == 2
    assert torch.equal(group_set.sizes(), torch.tensor([4.0, 3.0]))
    values = torch.tensor([0.0, 1.0])
    expected = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    assert torch.equal(scatter(values, group_set.slices[0]), expected)
    with pytest.raises(ConfigError, match="shape"):
        custom_group_set("bad", model, {"0.weight": torch.zeros(3, 3, dtype=torch.long)})
    with pytest.raises(ConfigError, match="no parameter"):
        custom_group_set("bad", model, {"nope.weight": index})


def test_group_set_gather_adds_members_and_can_skip_non_weights() -> None:
    group_set = GroupSet(
        "fc",
        "out_channel",
        2,
        (TensorSlices("fc", "weight", (2, 3), 0), TensorSlices("fc", "bias", (2,), 0)),
    )
    tensors = {"fc.weight": W, "fc.bias": torch.tensor([100.0, 200.0])}
    assert torch.equal(group_set.gather(tensors), torch.tensor([103.0, 212.0]))
    assert torch.equal(group_set.gather(tensors, weights_only=True), torch.tensor([3.0, 12.0]))
    assert torch.equal(group_set.sizes(), torch.tensor([3.0, 3.0]))
    assert torch.equal(group_set.sizes(weights_only=False), torch.tensor([4.0, 4.0]))


def test_parse_kind() -> None:
    assert parse_kind("element") == ("element", None)
    assert parse_kind("2:4") == ("n:m", (2, 4))
    assert parse_kind("channel") == ("out_channel", None)
    for bad in ("nonsense", "4:2", "0:4", "n:m"):
        with pytest.raises(ConfigError):
            parse_kind(bad)


def test_element_groups_cover_every_conv_and_linear_weight() -> None:
    plan = build_groups(build_model("lenet5-caffe"), "element")
    assert plan.params == ["conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]
    assert [s.num_groups for s in plan.sets] == [500, 25000, 400000, 5000]


def test_exclude_by_pattern_and_nothing_to_prune() -> None:
    model = build_model("lenet300")
    plan = build_groups(model, "element", exclude=["fc3"])
    assert plan.params == ["fc1.weight", "fc2.weight"]
    assert plan.skipped == {"fc3.weight": "excluded by pattern"}
    with pytest.raises(ConfigError, match="nothing to prune"):
        build_groups(model, "element", exclude=["*"])
    with pytest.raises(ConfigError, match="nothing to prune"):
        build_groups(nn.Sequential(nn.ReLU()), "element")


def test_out_channel_groups_take_bias_and_skip_the_classifier() -> None:
    model = build_model("lenet300")
    plan = build_groups(model, "out_channel")
    assert [s.name for s in plan.sets] == ["fc1.weight", "fc2.weight"]
    assert plan.sets[0].params == ["fc1.weight", "fc1.bias"]
    assert "classifier" in plan.skipped["fc3.weight"]
    assert output_layer(model, (1, 28, 28)) == "fc3"


def test_in_channel_and_n_of_m_groups() -> None:
    plan = build_groups(build_model("lenet300"), "in_channel")
    assert [s.num_groups for s in plan.sets] == [784, 300, 100]
    plan = build_groups(build_model("lenet5-caffe"), "2:4")
    # conv1 has 1*5*5 = 25 weights per filter, not a multiple of 4
    assert "conv1.weight" in plan.skipped
    assert all(s.n_of_m == (2, 4) for s in plan.sets)


def _members(group_set: GroupSet) -> set[tuple[str, str, int | None, str]]:
    return {(p.module, p.attr, p.dim, p.role) for p in group_set.slices}


def test_coupled_groups_tie_residual_channels_together() -> None:
    model = build_model("resnet20")
    plan = build_groups(model, "coupled")
    stage1 = next(s for s in plan.sets if ("stem.conv", "weight", 0, "out") in _members(s))
    members = _members(stage1)
    assert stage1.num_groups == 16
    # every block of stage 1 adds into the stem's channels: their second conv and BN follow
    for block in range(3):
        assert (f"layer1.{block}.conv2", "weight", 0, "out") in members
        assert (f"layer1.{block}.bn2", "weight", 0, "out") in members
        assert (f"layer1.{block}.conv1", "weight", 1, "in") in members
    assert ("stem.bn", "bias", 0, "out") in members
    assert ("layer2.0.shortcut.conv", "weight", 1, "in") in members
    # the classifier's inputs follow the last stage; its outputs are never cut
    stage3 = next(s for s in plan.sets if ("fc", "weight", 1, "in") in _members(s))
    assert stage3.num_groups == 64
    assert not any(p.module == "fc" and p.role == "out" for s in plan.sets for p in s.slices)
    # one set for the stem/stage-1 channels, one per block's inner channels, one per
    # later stage
    assert len(plan.sets) == 1 + 9 + 2


class _Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 2, 1)
        self.b = nn.Conv2d(3, 3, 1)
        self.head = nn.Conv2d(5, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(torch.cat([self.a(x), self.b(x)], dim=1))
        return self.fc(y.mean((2, 3)))


def test_coupled_groups_map_concat_offsets() -> None:
    plan = build_groups(_Concat(), "coupled", input_shape=(3, 4, 4))
    by_root = {s.name: s for s in plan.sets}
    group_b = by_root["coupled:b"]
    head_in = next(p for p in group_b.slices if p.module == "head")
    # b's three channels are the head's input channels 2, 3, 4; 0 and 1 belong to a
    assert head_in.index.tolist() == [-1, -1, 0, 1, 2]
    group_a = by_root["coupled:a"]
    head_in_a = next(p for p in group_a.slices if p.module == "head")
    assert head_in_a.index.tolist() == [0, 1, -1, -1, -1]


def test_coupled_groups_need_an_input_shape() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="input_shape"):
        build_groups(model, "coupled")
    plan = build_groups(model, "coupled", input_shape=(4,))
    assert [s.name for s in plan.sets] == ["coupled:0"]


def test_probing_forward_passes_leave_the_model_mode_and_bn_statistics_alone() -> None:
    from learnprune.accounting import count
    from learnprune.groups import build_groups
    from learnprune.models import build_model

    model = build_model("resnet20")
    model.train()
    model.layer1[0].eval()  # a mixed mode survives too
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    build_groups(model, "coupled", input_shape=(3, 32, 32))
    build_groups(model, "out_channel", input_shape=(3, 32, 32))
    count(model, (3, 32, 32))
    assert model.training and model.layer1[1].training and not model.layer1[0].training
    after = {k: v for k, v in model.state_dict().items() if "running" in k}
    assert all(torch.equal(before[k], after[k]) for k in before)

"""Growing with DessiLBI: widening rules, weight copying, a tiny end-to-end growth."""

from __future__ import annotations

import pytest
import torch

from learnprune.config import TrainConfig
from learnprune.data import Dataset
from learnprune.errors import ConfigError
from learnprune.growing import GrowConfig, copy_into, grow, initial_widths, layer_members
from learnprune.models import build_model


def test_copy_into_keeps_old_filters_in_the_leading_block() -> None:
    old = build_model("resnet20", in_channels=1, widths=(4, 4, 4))
    new = build_model("resnet20", in_channels=1, widths=(6, 4, 8))
    fresh = {k: v.clone() for k, v in new.state_dict().items()}
    copy_into(old, new)
    old_conv = old.state_dict()["layer1.0.conv1.weight"]
    new_conv = new.state_dict()["layer1.0.conv1.weight"]
    assert torch.equal(new_conv[:4, :4], old_conv)
    assert torch.equal(new_conv[4:], fresh["layer1.0.conv1.weight"][4:])  # new filters: fresh
    assert torch.equal(new.state_dict()["fc.weight"][:, :4], old.state_dict()["fc.weight"])


def test_growable_layers() -> None:
    assert initial_widths("vgg16", 16) == [16] * 13
    assert initial_widths("resnet56", 8) == [8, 8, 8]
    with pytest.raises(ConfigError):
        initial_widths("lenet300", 16)
    resnet = build_model("resnet20", widths=(4, 4, 4))
    stages = layer_members(resnet, "resnet20")
    assert "stem.conv.weight" in stages[0] and "layer2.0.shortcut.conv.weight" in stages[1]
    assert sum(len(s) for s in stages) == 1 + 6 * 3 + 2
    assert len(layer_members(build_model("vgg16", widths=[4] * 13), "vgg16")) == 13


def test_tiny_growth_widens_layers_whose_filters_are_all_selected() -> None:
    torch.manual_seed(0)
    x = torch.randn(96, 1, 32, 32)
    y = torch.randint(0, 3, (96,))
    data = Dataset("fashion-mnist", x[:64], y[:64], x[64:], y[64:], num_classes=3)
    config = GrowConfig(
        start_width=4, tau=0.5, local_epochs=1, max_rounds=2, finetune_epochs=0, nu=1.0, lam=1e-4
    )
    model, config = grow("resnet20", data, TrainConfig(batch_size=16, lr=0.05), config, quiet=True)
    first, second = config.history
    assert first["widths"] == [4, 4, 4]
    assert all(share >= 0.5 for share in first["selected_share"])  # tiny λ: all selected
    assert first["grown_to"] == [8, 8, 8] == second["widths"]  # max(4 + 4, ⌈1.1 · 4⌉)
    assert model.fc.in_features == 8
    with pytest.raises(ConfigError):
        GrowConfig(tau=0.0).validate()

"""Parameter and FLOP counts against hand computation."""

from __future__ import annotations

import torch
from torch import nn

from learnprune.accounting import SPARSITY_SCOPE, count, format_table
from learnprune.groups import build_groups
from learnprune.masking import FixedMask, attach, finalize
from learnprune.models import build_model


def _two_layer() -> nn.Module:
    # conv 1->2, 3x3 on 1x6x6 gives 2x4x4; flatten 32 -> linear 3
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3))


def test_two_layer_net_by_hand() -> None:
    counts = count(_two_layer(), (1, 6, 6))
    # params: conv 2*1*3*3 + 2 = 20, linear 32*3 + 3 = 99
    assert counts.params == 119
    assert counts.weights == 18 + 96
    # conv: 18 weights x 16 output positions, 2 FLOPs each; linear: 96 weights x 1 position
    assert counts.flops == 2 * 18 * 16 + 2 * 96 == 768
    assert [layer.flops for layer in counts.layers] == [576, 192]
    assert counts.effective_flops == counts.flops
    assert counts.sparsity == 0.0 and counts.compression == 1.0


def test_effective_flops_charge_only_kept_weights() -> None:
    model = _two_layer()
    gates = attach(model, build_groups(model, "element"), FixedMask)
    conv_keep = torch.zeros(18, dtype=torch.bool)
    conv_keep[:5] = True  # 5 of 18 conv weights kept
    linear_keep = torch.ones(96, dtype=torch.bool)
    linear_keep[:48] = False  # half the linear weights dropped
    gates["0.weight"].set(conv_keep)
    gates["3.weight"].set(linear_keep)
    counts = count(model, (1, 6, 6))
    assert counts.nonzero_weights == 5 + 48
    assert counts.effective_flops == 2 * 5 * 16 + 2 * 48
    assert counts.flops == 768
    assert counts.params == 119  # the gates' buffers are not parameters
    assert counts.nonzero_params == 5 + 48 + int((model[0].bias != 0).sum()) + 3
    assert abs(counts.sparsity - (1 - 53 / 114)) < 1e-12
    assert abs(counts.compression - 114 / 53) < 1e-12
    baked = count(finalize(model), (1, 6, 6))
    assert baked.as_dict() == counts.as_dict()


def test_reference_models_match_flop_counter_layer_by_layer() -> None:
    model = build_model("lenet5-caffe")
    counts = count(model)
    # conv1: 20*25 weights x 24*24 positions; conv2: 50*500 x 8*8; fc1 400000; fc2 5000
    expected = [2 * 500 * 576, 2 * 25000 * 64, 2 * 400000, 2 * 5000]
    assert [layer.flops for layer in counts.layers] == expected
    assert counts.flops == sum(expected)


def test_resnet_flops_include_every_conv_and_the_shortcuts() -> None:
    counts = count(build_model("resnet20"))
    assert counts.flops == sum(layer.flops for layer in counts.layers)
    assert counts.params == 272_474


def test_table_states_what_sparsity_counts() -> None:
    text = format_table(count(build_model("lenet300")))
    assert "fc1" in text and "fc3" in text
    assert SPARSITY_SCOPE in text
    row = count(build_model("lenet300")).as_dict()
    assert row["sparsity_scope"] == SPARSITY_SCOPE
    assert {"params", "nonzero_params", "flops", "effective_flops", "sparsity"} <= set(row)


def test_kept_units_per_layer_in_the_usual_notation() -> None:
    model = build_model("lenet5-caffe")
    with torch.no_grad():
        model.conv1.weight[:5] = 0  # 15 of 20 maps left
        model.conv2.weight[:10] = 0  # 40 of 50
        model.fc1.weight[:, :300] = 0  # 500 of 800 inputs
        model.fc2.weight[:, 400:] = 0  # 400 of 500 inputs
    counts = count(model)
    assert counts.architecture == "15-40-500-400"
    assert [layer.kept_out for layer in counts.layers] == [15, 40, 500, 10]
    assert counts.as_dict()["architecture"] == "15-40-500-400"
    assert "15-40-500-400" in format_table(counts)


def test_training_flops_per_example_by_hand() -> None:
    from learnprune.accounting import training_flops_per_example

    model = _two_layer()
    # forward: conv 2*18*16 = 576, linear 2*96 = 192 (as above); backward: linear weight
    # gradient 2*96 = 192 and input gradient 2*32*3 = 192, conv weight gradient
    # 2*18*16 = 576 and no input gradient (the example needs none)
    assert training_flops_per_example(model, (1, 6, 6)) == 768 + 192 + 192 + 576 == 1728
    assert all(p.grad is None for p in model.parameters())  # the model's .grad untouched
    mlp = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    # forward 2*(12 + 6); backward: fc2 weight 2*6 and input 2*6, fc1 weight 2*12
    assert training_flops_per_example(mlp, (4,)) == 36 + 12 + 12 + 24 == 84
    mlp[0].weight.requires_grad_(False)  # a frozen layer costs no weight gradient
    mlp[0].bias.requires_grad_(False)
    assert training_flops_per_example(mlp, (4,)) == 36 + 12 == 48

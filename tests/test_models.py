"""Tests for learnprune.models: registry, parameter counts, shapes, names, traceability."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
from torch import nn

from learnprune.errors import ConfigError
from learnprune.models import (
    CifarResNet,
    ModelSpec,
    PadShortcut,
    build_model,
    list_models,
    model_input_shape,
)

ALL_MODELS = [
    "lenet300",
    "lenet5-caffe",
    "lenet5",
    "vgg16",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- hand arithmetic for the expected parameter counts ----------------------------------------


def conv(k: int, cin: int, cout: int, bias: bool = False) -> int:
    return k * k * cin * cout + (cout if bias else 0)


def bn(c: int) -> int:
    return 2 * c  # weight + bias (running stats are buffers)


def linear(fin: int, fout: int) -> int:
    return fin * fout + fout


def vgg16_params(num_classes: int = 10, cin: int = 3) -> int:
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    total, c = 0, cin
    for w in widths:
        total += conv(3, c, w) + bn(w)  # conv has no bias, BN follows
        c = w
    return total + linear(512, num_classes)


def resnet_params(depth: int, shortcut: str, num_classes: int = 10, cin: int = 3) -> int:
    n = (depth - 2) // 6
    total = conv(3, cin, 16) + bn(16)  # stem
    c = 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += conv(3, c, width) + bn(width) + conv(3, width, width) + bn(width)
            if c != width and shortcut == "B":
                total += conv(1, c, width) + bn(width)  # 1x1 projection
            c = width
    return total + linear(64, num_classes)


def test_hand_formulas_sanity() -> None:
    # Spelled-out sums, independent of the helpers' loops.
    assert vgg16_params() == (
        (27 * 64 + 9 * 64 * 64)
        + (9 * 64 * 128 + 9 * 128 * 128)
        + (9 * 128 * 256 + 2 * 9 * 256 * 256)
        + (9 * 256 * 512 + 2 * 9 * 512 * 512)
        + 3 * 9 * 512 * 512
        + 2 * (2 * 64 + 2 * 128 + 3 * 256 + 6 * 512)
        + (512 * 10 + 10)
    )
    stem, fc = 27 * 16 + 32, 64 * 10 + 10
    stage1 = 3 * (2 * 9 * 16 * 16 + 4 * 16)
    stage2 = (9 * 16 * 32 + 9 * 32 * 32 + 4 * 32) + 2 * (2 * 9 * 32 * 32 + 4 * 32)
    stage3 = (9 * 32 * 64 + 9 * 64 * 64 + 4 * 64) + 2 * (2 * 9 * 64 * 64 + 4 * 64)
    projections = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
    assert resnet_params(20, "A") == stem + stage1 + stage2 + stage3 + fc
    assert resnet_params(20, "B") == stem + stage1 + stage2 + stage3 + fc + projections


# --- parameter counts ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("lenet300", 266_610),
        ("lenet5-caffe", 431_080),
        ("lenet5", 61_706),
        ("lenet300", 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10),
        ("lenet5-caffe", 25 * 20 + 20 + 25 * 20 * 50 + 50 + 800 * 500 + 500 + 500 * 10 + 10),
        ("lenet5", 25 * 6 + 6 + 25 * 6 * 16 + 16 + 25 * 16 * 120 + 120 + 120 * 84 + 84 + 850),
    ],
)
def test_lenet_param_counts(name: str, expected: int) -> None:
    assert n_params(build_model(name)) == expected


def test_vgg16_param_count() -> None:
    assert vgg16_params() == 14_724_042
    assert n_params(build_model("vgg16")) == vgg16_params()
    assert n_params(build_model("vgg16", num_classes=100, in_channels=1)) == vgg16_params(100, 1)


@pytest.mark.parametrize("depth", [20, 56])
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_resnet_param_counts_by_formula(depth: int, shortcut: str) -> None:
    model = build_model(f"resnet{depth}", shortcut=shortcut)
    assert n_params(model) == resnet_params(depth, shortcut)


@pytest.mark.parametrize(
    ("depth", "expected_a"),
    # Literature values for option A (He et al. 2016 CIFAR ResNets, 10 classes).
    [(20, 269_722), (32, 464_154), (44, 658_586), (56, 853_018), (110, 1_727_962)],
)
def test_resnet_literature_counts(depth: int, expected_a: int) -> None:
    assert resnet_params(depth, "A") == expected_a
    assert n_params(build_model(f"resnet{depth}", shortcut="A")) == expected_a
    # Option B adds the two 1x1 projections: 16*32 + 2*32 + 32*64 + 2*64 = 2,752.
    assert n_params(build_model(f"resnet{depth}")) == expected_a + 2_752


def test_resnet_param_count_other_head_and_input() -> None:
    model = build_model("resnet20", num_classes=100, in_channels=1)
    assert n_params(model) == resnet_params(20, "B", num_classes=100, cin=1)


# --- forward shapes -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_default_input(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name).eval()
    shape = model_input_shape(name)
    assert model.input_shape == shape
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("vgg16", {}), ("resnet20", {"shortcut": "A"}), ("resnet20", {"shortcut": "B"})],
)
def test_forward_one_channel_hundred_classes(name: str, kwargs: dict[str, str]) -> None:
    model = build_model(name, num_classes=100, in_channels=1, **kwargs).eval()
    assert model.input_shape == (1, 32, 32) == model_input_shape(name, in_channels=1)
    with torch.no_grad():
        out = model(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 100)


@pytest.mark.parametrize(("name", "cin"), [("lenet300", 3), ("lenet5", 3), ("lenet5-caffe", 2)])
def test_lenet_other_in_channels(name: str, cin: int) -> None:
    model = build_model(name, in_channels=cin)
    assert model.input_shape == (cin, 28, 28)
    assert model(torch.randn(2, cin, 28, 28)).shape == (2, 10)


def test_lenet300_first_layer_from_in_channels() -> None:
    assert build_model("lenet300", in_channels=3).fc1.in_features == 3 * 28 * 28


def test_option_a_shortcut_pads_and_subsamples() -> None:
    x = torch.randn(2, 16, 8, 8)
    y = PadShortcut(16, 32, stride=2)(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert y[:, :8].abs().sum() == 0 and y[:, 24:].abs().sum() == 0


# --- registry -------------------------------------------------------------------------------


def test_list_models() -> None:
    assert list_models() == ALL_MODELS


def test_names_case_insensitive_and_aliases() -> None:
    assert isinstance(build_model("ResNet20"), CifarResNet)
    assert n_params(build_model("LeNet-300-100")) == 266_610
    assert n_params(build_model("lenet5caffe")) == 431_080
    assert model_input_shape("VGG16") == (3, 32, 32)
    assert model_input_shape("lenet-300-100") == (1, 28, 28)


def test_registry_specs() -> None:
    from learnprune.models import _REGISTRY

    for name, spec in _REGISTRY.items():
        assert isinstance(spec, ModelSpec)
        assert spec.name == name
        assert len(spec.input_shape) == 3
        assert spec.description


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(ConfigError) as exc:
        build_model("resnet18")
    for name in ALL_MODELS:
        assert name in str(exc.value)
    with pytest.raises(ConfigError, match="resnet20"):
        model_input_shape("alexnet")


@pytest.mark.parametrize("num_classes", [1, 0, -3, 2.0, "10", True, None])
def test_bad_num_classes(num_classes: object) -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        build_model("lenet300", num_classes=num_classes)  # type: ignore[arg-type]


@pytest.mark.parametrize("in_channels", [0, -1, 1.5, "3"])
def test_bad_in_channels(in_channels: object) -> None:
    with pytest.raises(ConfigError, match="in_channels"):
        build_model("resnet20", in_channels=in_channels)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="in_channels"):
        model_input_shape("resnet20", in_channels=in_channels)  # type: ignore[arg-type]


def test_bad_options() -> None:
    with pytest.raises(ConfigError, match="shortcut"):
        build_model("resnet20", shortcut="C")
    with pytest.raises(ConfigError, match="shortcut"):
        build_model("lenet300", shortcut="A")
    with pytest.raises(ConfigError, match="depth"):
        CifarResNet(depth=21)
    # A lower-case option value is accepted.
    assert n_params(build_model("resnet20", shortcut="a")) == 269_722


def test_config_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        build_model("nope")


# --- readable names -------------------------------------------------------------------------


def test_parameter_names_lenets() -> None:
    names = [n for n, _ in build_model("lenet300").named_parameters()]
    assert names == [f"fc{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")]
    names = [n for n, _ in build_model("lenet5-caffe").named_parameters()]
    assert names == [
        f"{m}.{p}" for m in ("conv1", "conv2", "fc1", "fc2") for p in ("weight", "bias")
    ]
    names = [n for n, _ in build_model("lenet5").named_parameters()]
    assert names == [
        f"{m}.{p}" for m in ("conv1", "conv2", "conv3", "fc1", "fc2") for p in ("weight", "bias")
    ]


def test_parameter_names_vgg16() -> None:
    names = [n for n, _ in build_model("vgg16").named_parameters()]
    assert names[:3] == ["features.conv1_1.weight", "features.bn1_1.weight", "features.bn1_1.bias"]
    assert "features.conv5_3.weight" in names
    assert names[-2:] == ["classifier.weight", "classifier.bias"]
    assert all(not n.split(".")[1].isdigit() for n in names if n.startswith("features."))


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_parameter_names_resnet20(shortcut: str) -> None:
    model = build_model("resnet20", shortcut=shortcut)
    names = [n for n, _ in model.named_parameters()]
    assert names[:3] == ["stem.conv.weight", "stem.bn.weight", "stem.bn.bias"]
    assert "layer1.0.conv1.weight" in names
    assert "layer1.0.bn1.weight" in names
    assert "layer3.2.conv2.weight" in names
    assert names[-2:] == ["fc.weight", "fc.bias"]
    has_projection = "layer2.0.shortcut.conv.weight" in names
    assert has_projection == (shortcut == "B")
    assert ("layer3.0.shortcut.bn.weight" in names) == (shortcut == "B")
    assert not any(n.startswith("layer1.0.shortcut") for n in names)  # identity there


def test_resnet_init() -> None:
    torch.manual_seed(0)
    model = build_model("resnet56")
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            assert m.bias is None
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    # kaiming fan_out: std = sqrt(2 / (k*k*cout))
    w = model.layer3[1].conv1.weight
    assert abs(w.std().item() - (2 / (9 * 64)) ** 0.5) < 0.005


# --- Torch-Pruning can trace the models -----------------------------------------------------


def _dependency_graph(model: nn.Module) -> tp.DependencyGraph:
    example = torch.randn(1, *model.input_shape)
    return tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)


def test_torch_pruning_traces_vgg16() -> None:
    model = build_model("vgg16").eval()
    dg = _dependency_graph(model)
    conv = model.features.conv3_1
    group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=[0])
    modules = {dep.target.module for dep, _ in group}
    assert model.features.bn3_1 in modules
    assert model.features.conv3_2 in modules


def test_torch_pruning_traces_resnet20_residual_coupling() -> None:
    model = build_model("resnet20", shortcut="B").eval()
    dg = _dependency_graph(model)
    group = dg.get_pruning_group(model.layer1[0].conv2, tp.prune_conv_out_channels, idxs=[0])
    modules = {dep.target.module for dep, _ in group}
    # The stage-1 residual stream couples every block's conv2 with the stem's output.
    assert model.stem.conv in modules
    assert model.layer1[2].conv2 in modules
    assert model.layer2[0].shortcut.conv in modules  # consumer of the stream
    # Stage 2 starts a new stream thanks to the projection.
    assert model.layer2[0].conv2 not in modules

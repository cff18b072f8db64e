"""The model zoo: LeNets for MNIST / Fashion-MNIST, VGG-16 and ResNets for CIFAR.

Every model is built the same way, through one registry::

    >>> from learnprune.models import build_model, list_models, model_input_shape
    >>> model = build_model("resnet20", num_classes=10)              # shortcut "B"
    >>> model = build_model("resnet56", num_classes=100, shortcut="A")
    >>> model = build_model("vgg16", in_channels=1)                    # 1x32x32 input
    >>> model_input_shape("lenet5")
    (1, 28, 28)

All builders take the same arguments, ``num_classes`` and ``in_channels``, plus the
model-specific keyword options listed in their docstring (only the ResNets have one:
``shortcut``). Names are case-insensitive; ``lenet-300-100`` is an alias of ``lenet300`` and
``lenet5caffe`` of ``lenet5-caffe``.

Every model returns logits (no softmax), uses ReLU activations (separate, not in-place,
modules, so forward hooks see each layer's true output), has readable parameter names
(``fc1.weight``, ``layer1.0.conv1.weight``, ``classifier.bias``, ...) and carries the
``(C, H, W)`` input it expects as its ``input_shape`` attribute.

Parameter counts with 10 classes and the default input channels:

============  ============  =================================================
name          parameters    architecture
============  ============  =================================================
lenet300         266,610    MLP 784-300-100-10
lenet5-caffe     431,080    conv20-conv50-fc500-fc10 (Caffe / L0 LeNet-5)
lenet5            61,706    conv6-conv16-conv120-fc84-fc10 (DessiLBI LeNet-5)
vgg16         14,724,042    CIFAR VGG-16-BN, one Linear(512, C) head
resnet20         272,474    6n+2, n=3; shortcut "A": 269,722
resnet32         466,906    6n+2, n=5; shortcut "A": 464,154
resnet44         661,338    6n+2, n=7; shortcut "A": 658,586
resnet56         855,770    6n+2, n=9; shortcut "A": 853,018
resnet110      1,730,714    6n+2, n=18; shortcut "A": 1,727,962
============  ============  =================================================
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from learnprune.errors import ConfigError

__all__ = [
    "VGG16_CFG",
    "BasicBlock",
    "CifarResNet",
    "CifarVGG",
    "LeNet5",
    "LeNet5Caffe",
    "LeNet300",
    "ModelSpec",
    "PadShortcut",
    "build_model",
    "list_models",
    "model_input_shape",
]

#: VGG-16 configuration: output channels of each 3x3 conv, ``"M"`` for a 2x2 max-pool.
VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M",
    128, 128, "M",
    256, 256, 256, "M",
    512, 512, 512, "M",
    512, 512, 512, "M",
)  # fmt: skip

_SHORTCUTS = ("A", "B")


# --------------------------------------------------------------------------------------------
# LeNets (PyTorch default initialisation)
# --------------------------------------------------------------------------------------------


class LeNet300(nn.Sequential):
    """LeNet-300-100: a fully connected network for 28x28 images.

    ``flatten -> fc1: Linear(C*28*28, 300) -> relu1 -> fc2: Linear(300, 100) -> relu2 ->
    fc3: Linear(100, num_classes)``.

    With one input channel and 10 classes it has exactly 266,610 parameters
    (235,500 + 30,100 + 1,010). PyTorch default initialisation.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__(
            OrderedDict(
                [
                    ("flatten", nn.Flatten()),
                    ("fc1", nn.Linear(in_channels * 28 * 28, 300)),
                    ("relu1", nn.ReLU()),
                    ("fc2", nn.Linear(300, 100)),
                    ("relu2", nn.ReLU()),
                    ("fc3", nn.Linear(100, num_classes)),
                ]
            )
        )
        self.input_shape: tuple[int, int, int] = (in_channels, 28, 28)


class LeNet5Caffe(nn.Sequential):
    """The Caffe LeNet-5 (20-50-500) used for MNIST pruning, e.g. by L0 regularisation.

    ``conv1: Conv2d(C, 20, 5) -> relu1 -> pool1: MaxPool2d(2) -> conv2: Conv2d(20, 50, 5) ->
    relu2 -> pool2: MaxPool2d(2) -> flatten -> fc1: Linear(800, 500) -> relu3 ->
    fc2: Linear(500, num_classes)``; input ``C x 28 x 28``.

    The original Caffe prototxt has no non-linearity after the convolutions; the ReLUs after
    ``conv1`` and ``conv2`` follow the L0 reference code (AMLab-Amsterdam/L0_regularization),
    which is what the published pruning results were obtained with.

    With one input channel and 10 classes it has exactly 431,080 parameters
    (520 + 25,050 + 400,500 + 5,010). PyTorch default initialisation.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(in_channels, 20, kernel_size=5)),
                    ("relu1", nn.ReLU()),
                    ("pool1", nn.MaxPool2d(2)),
                    ("conv2", nn.Conv2d(20, 50, kernel_size=5)),
                    ("relu2", nn.ReLU()),
                    ("pool2", nn.MaxPool2d(2)),
                    ("flatten", nn.Flatten()),
                    ("fc1", nn.Linear(50 * 4 * 4, 500)),
                    ("relu3", nn.ReLU()),
                    ("fc2", nn.Linear(500, num_classes)),
                ]
            )
        )
        self.input_shape: tuple[int, int, int] = (in_channels, 28, 28)


class LeNet5(nn.Sequential):
    """The LeNet-5 of the DessiLBI code, for 28x28 images.

    ``conv1: Conv2d(C, 6, 5, padding=2) -> relu1 -> pool1: MaxPool2d(2) ->
    conv2: Conv2d(6, 16, 5) -> relu2 -> pool2: MaxPool2d(2) -> conv3: Conv2d(16, 120, 5) ->
    relu3 -> flatten -> fc1: Linear(120, 84) -> relu4 -> fc2: Linear(84, num_classes)``.
    Feature maps: 28x28 -> 28x28 -> 14x14 -> 10x10 -> 5x5 -> 1x1.

    With one input channel and 10 classes it has exactly 61,706 parameters
    (156 + 2,416 + 48,120 + 10,164 + 850). PyTorch default initialisation.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(in_channels, 6, kernel_size=5, padding=2)),
                    ("relu1", nn.ReLU()),
                    ("pool1", nn.MaxPool2d(2)),
                    ("conv2", nn.Conv2d(6, 16, kernel_size=5)),
                    ("relu2", nn.ReLU()),
                    ("pool2", nn.MaxPool2d(2)),
                    ("conv3", nn.Conv2d(16, 120, kernel_size=5)),
                    ("relu3", nn.ReLU()),
                    ("flatten", nn.Flatten()),
                    ("fc1", nn.Linear(120, 84)),
                    ("relu4", nn.ReLU()),
                    ("fc2", nn.Linear(84, num_classes)),
                ]
            )
        )
        self.input_shape: tuple[int, int, int] = (in_channels, 28, 28)


# --------------------------------------------------------------------------------------------
# CIFAR VGG
# --------------------------------------------------------------------------------------------


def _init_conv_bn(module: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) conv weights, zero conv biases, BN weight 1 / bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class CifarVGG(nn.Module):
    """VGG with BatchNorm for 32x32 images and a single linear classifier.

    The CIFAR VGG of network slimming / "Rethinking the value of network pruning", as used by
    the DessiLBI lottery-ticket code: every number ``v`` in ``cfg`` is
    ``Conv2d(c, v, 3, padding=1, bias=False) -> BatchNorm2d(v) -> ReLU``, every ``"M"`` a
    ``MaxPool2d(2)``; then ``flatten -> classifier: Linear(512, num_classes)``. With
    :data:`VGG16_CFG` the five pools bring 32x32 down to 1x1.

    The convolutions have no bias because the BatchNorm that follows each of them has its own
    shift (as in the network-slimming code); a conv bias would be redundant.

    Module names: ``features.conv{stage}_{i}``, ``features.bn{stage}_{i}``,
    ``features.relu{stage}_{i}``, ``features.pool{stage}`` and ``classifier``.

    VGG-16 with three input channels and 10 classes has 14,724,042 parameters: 14,710,464 in
    the 13 convolutions, 8,448 in the BatchNorms and 5,130 in the classifier.

    Initialisation: Kaiming-normal (``fan_out``, ReLU) convolutions, BatchNorm weight 1 and
    bias 0, classifier weight N(0, 0.01) and bias 0.
    """

    def __init__(
        self,
        cfg: Sequence[int | str] = VGG16_CFG,
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_channels
        stage, index = 1, 0
        for v in cfg:
            if v == "M":
                layers[f"pool{stage}"] = nn.MaxPool2d(kernel_size=2, stride=2)
                stage, index = stage + 1, 0
                continue
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"VGG cfg entries must be positive ints or 'M', got {v!r}")
            index += 1
            layers[f"conv{stage}_{index}"] = nn.Conv2d(
                channels, v, kernel_size=3, padding=1, bias=False
            )
            layers[f"bn{stage}_{index}"] = nn.BatchNorm2d(v)
            layers[f"relu{stage}_{index}"] = nn.ReLU()
            channels = v
        self.features = nn.Sequential(layers)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels, num_classes)
        self.input_shape: tuple[int, int, int] = (in_channels, 32, 32)

        _init_conv_bn(self)
        nn.init.normal_(self.classifier.weight, 0.0, 0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits for a batch of ``N x C x 32 x 32`` images."""
        return self.classifier(self.flatten(self.features(x)))


# --------------------------------------------------------------------------------------------
# CIFAR ResNets (He et al. 2016, section 4.2)
# --------------------------------------------------------------------------------------------


class PadShortcut(nn.Module):
    """Parameter-free "option A" shortcut: subsample spatially, zero-pad the channels.

    ``x[:, :, ::stride, ::stride]`` followed by ``(out_channels - in_channels)`` zero channels,
    split evenly before and after the existing ones (as in the usual CIFAR implementations).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ConfigError(
                f"a padding shortcut cannot reduce channels ({in_channels} -> {out_channels})"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.pad_before = (out_channels - in_channels) // 2
        self.pad_after = out_channels - in_channels - self.pad_before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Subsample and zero-pad ``x``."""
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad_before or self.pad_after:
            x = F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))
        return x

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class BasicBlock(nn.Module):
    """The two-conv residual block of the CIFAR ResNets.

    ``conv1: Conv3x3(cin, cout, stride) -> bn1 -> relu1 -> conv2: Conv3x3(cout, cout) -> bn2``,
    plus ``shortcut(x)``, then ``relu2``. Convolutions have no bias.

    ``shortcut`` is ``nn.Identity`` when the shape is unchanged; otherwise option ``"B"`` is a
    ``Sequential(conv: Conv1x1(cin, cout, stride, bias=False), bn: BatchNorm2d(cout))``
    projection and option ``"A"`` a parameter-free :class:`PadShortcut`.

    Parameters: ``9*cin*cout + 9*cout*cout + 4*cout``, plus ``cin*cout + 2*cout`` for a
    ``"B"`` projection.
    """

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, shortcut: str = "B"
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(
            in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False
        )
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(
            out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False
        )
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        elif shortcut == "B":
            self.shortcut = nn.Sequential(
                OrderedDict(
                    [
                        (
                            "conv",
                            nn.Conv2d(
                                in_channels,
                                out_channels,
                                kernel_size=1,
                                stride=stride,
                                bias=False,
                            ),
                        ),
                        ("bn", nn.BatchNorm2d(out_channels)),
                    ]
                )
            )
        elif shortcut == "A":
            self.shortcut = PadShortcut(in_channels, out_channels, stride)
        else:
            raise ConfigError(f"shortcut must be one of {list(_SHORTCUTS)}, got {shortcut!r}")
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block."""
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """The CIFAR ResNet of He et al. (2016), depth ``6n + 2``.

    ``stem: Sequential(conv: Conv3x3(C, 16, bias=False), bn, relu)``, then ``layer1``,
    ``layer2``, ``layer3``: ``n`` :class:`BasicBlock` each with 16, 32 and 64 channels (the
    first block of ``layer2`` and ``layer3`` has stride 2), then ``pool: AdaptiveAvgPool2d(1)
    -> flatten -> fc: Linear(64, num_classes)``. Input ``C x 32 x 32``.

    ``shortcut="B"`` (default) projects with a 1x1 conv + BN where the shape changes, so a
    dependency graph (Torch-Pruning) can trace and prune the residual channel coupling;
    ``shortcut="A"`` is the paper's parameter-free CIFAR option (subsample + zero-pad), which
    adds no parameters; Torch-Pruning does build a graph for it, but it treats the zero-padding
    as an element-wise op and wrongly couples the channels of all three stages, so prune
    channels only with option "B".

    Parameters with three input channels and 10 classes: ``464 (stem) + n * 4,672 (layer1)
    + 13,952 + (n-1) * 18,560 (layer2) + 55,552 + (n-1) * 73,984 (layer3) + 650 (fc)``, plus
    2,752 for the two "B" projections: ResNet-20 269,722 (A) / 272,474 (B), ResNet-56
    853,018 (A) / 855,770 (B).

    Initialisation: Kaiming-normal (``fan_out``, ReLU) convolutions, BatchNorm weight 1 and
    bias 0, PyTorch default for ``fc``.
    """

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_channels: int = 3,
        shortcut: str = "B",
        widths: Sequence[int] = (16, 32, 64),
    ) -> None:
        super().__init__()
        if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
            raise ConfigError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth!r}")
        shortcut = _check_shortcut(shortcut)
        widths = _check_widths(widths, 3, "ResNet stage")
        n = (depth - 2) // 6
        self.depth = depth
        self.shortcut_option = shortcut
        self.widths = widths
        first, second, third = widths
        self.stem = nn.Sequential(
            OrderedDict(
                [
                    ("conv", nn.Conv2d(in_channels, first, kernel_size=3, padding=1, bias=False)),
                    ("bn", nn.BatchNorm2d(first)),
                    ("relu", nn.ReLU()),
                ]
            )
        )
        self.layer1 = self._make_stage(first, first, n, stride=1, shortcut=shortcut)
        self.layer2 = self._make_stage(first, second, n, stride=2, shortcut=shortcut)
        self.layer3 = self._make_stage(second, third, n, stride=2, shortcut=shortcut)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(third, num_classes)
        self.input_shape: tuple[int, int, int] = (in_channels, 32, 32)
        _init_conv_bn(self)

    @staticmethod
    def _make_stage(
        in_channels: int, out_channels: int, blocks: int, stride: int, shortcut: str
    ) -> nn.Sequential:
        layers = [BasicBlock(in_channels, out_channels, stride, shortcut)]
        layers += [BasicBlock(out_channels, out_channels, 1, shortcut) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits for a batch of ``N x C x 32 x 32`` images."""
        x = self.stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def _check_widths(widths: object, count: int, what: str) -> tuple[int, ...]:
    if (
        not isinstance(widths, (list, tuple))
        or len(widths) != count
        or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths)
    ):
        raise ConfigError(f"{what} widths must be {count} positive ints, got {widths!r}")
    return tuple(widths)


def _check_shortcut(shortcut: object) -> str:
    if isinstance(shortcut, str) and shortcut.upper() in _SHORTCUTS:
        return shortcut.upper()
    raise ConfigError(f"shortcut must be one of {list(_SHORTCUTS)}, got {shortcut!r}")


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """One registered model.

    ``builder(num_classes=..., in_channels=..., **options)`` returns the model;
    ``input_shape`` is the ``(C, H, W)`` input it expects with its default ``in_channels``.
    """

    name: str
    builder: Callable[..., nn.Module]
    input_shape: tuple[int, int, int]
    description: str


def _lenet300(num_classes: int, in_channels: int) -> nn.Module:
    return LeNet300(num_classes=num_classes, in_channels=in_channels)


def _lenet5_caffe(num_classes: int, in_channels: int) -> nn.Module:
    return LeNet5Caffe(num_classes=num_classes, in_channels=in_channels)


def _lenet5(num_classes: int, in_channels: int) -> nn.Module:
    return LeNet5(num_classes=num_classes, in_channels=in_channels)


def _vgg16(num_classes: int, in_channels: int, widths: Sequence[int] | None = None) -> nn.Module:
    """``widths``: the 13 conv widths (default 64, 64, 128, ..., 512)."""
    cfg: list[int | str] = list(VGG16_CFG)
    if widths is not None:
        convs = [i for i, v in enumerate(cfg) if v != "M"]
        for i, width in zip(convs, _check_widths(widths, len(convs), "VGG-16 conv"), strict=True):
            cfg[i] = width
    return CifarVGG(cfg, num_classes=num_classes, in_channels=in_channels)


def _resnet_builder(depth: int) -> Callable[..., nn.Module]:
    def build(
        num_classes: int,
        in_channels: int,
        shortcut: str = "B",
        widths: Sequence[int] = (16, 32, 64),
    ) -> nn.Module:
        return CifarResNet(
            depth,
            num_classes=num_classes,
            in_channels=in_channels,
            shortcut=shortcut,
            widths=widths,
        )

    build.__name__ = f"_resnet{depth}"
    return build


_REGISTRY: dict[str, ModelSpec] = {}
_ALIASES: dict[str, str] = {"lenet-300-100": "lenet300", "lenet5caffe": "lenet5-caffe"}


def _register(spec: ModelSpec) -> None:
    _REGISTRY[spec.name] = spec


_register(ModelSpec("lenet300", _lenet300, (1, 28, 28), "LeNet-300-100 MLP, 266,610 params"))
_register(
    ModelSpec("lenet5-caffe", _lenet5_caffe, (1, 28, 28), "Caffe LeNet-5 20-50-500, 431,080 params")
)
_register(ModelSpec("lenet5", _lenet5, (1, 28, 28), "DessiLBI LeNet-5 6-16-120-84, 61,706 params"))
_register(ModelSpec("vgg16", _vgg16, (3, 32, 32), "CIFAR VGG-16-BN, 14,724,042 params"))
# depth -> parameter count with shortcut "B", 3 input channels, 10 classes
_RESNET_DEPTHS = {20: "272,474", 32: "466,906", 44: "661,338", 56: "855,770", 110: "1,730,714"}
for _depth, _params in _RESNET_DEPTHS.items():
    _register(
        ModelSpec(
            f"resnet{_depth}",
            _resnet_builder(_depth),
            (3, 32, 32),
            f"CIFAR ResNet-{_depth} (He et al. 2016), {_params} params with shortcut B",
        )
    )
del _depth, _params


def list_models() -> list[str]:
    """Return the canonical names of all registered models, in registration order."""
    return list(_REGISTRY)


def _resolve(name: str) -> ModelSpec:
    if not isinstance(name, str):
        raise ConfigError(f"model name must be a string, got {name!r}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _REGISTRY[key]


def _check_in_channels(in_channels: object) -> None:
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ConfigError(f"in_channels must be an int >= 1, got {in_channels!r}")


def model_input_shape(name: str, in_channels: int | None = None) -> tuple[int, int, int]:
    """Return the ``(C, H, W)`` input the named model expects.

    ``C`` is ``in_channels`` when given, else the model's default.
    """
    spec = _resolve(name)
    if in_channels is None:
        return spec.input_shape
    _check_in_channels(in_channels)
    return (in_channels, spec.input_shape[1], spec.input_shape[2])


def build_model(
    name: str, num_classes: int = 10, in_channels: int | None = None, **kwargs: object
) -> nn.Module:
    """Build a registered model (see :func:`list_models`).

    Args:
        name: model name, case-insensitive (aliases: ``lenet-300-100``, ``lenet5caffe``).
        num_classes: number of output logits, an int >= 2.
        in_channels: input channels; ``None`` for the model's default (1 for the LeNets,
            3 for VGG and the ResNets).
        **kwargs: model-specific options; the ResNets take ``shortcut="B"`` (1x1 conv + BN
            projection, default) or ``"A"`` (parameter-free subsample + zero-pad).

    Raises:
        ConfigError: unknown name, invalid ``num_classes`` / ``in_channels``, or an option the
            model does not take or whose value is invalid.
    """
    spec = _resolve(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if in_channels is None:
        in_channels = spec.input_shape[0]
    _check_in_channels(in_channels)

    params = inspect.signature(spec.builder).parameters
    options = [p for p in params if p not in ("num_classes", "in_channels")]
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        accepted = ", ".join(options) if options else "none"
        raise ConfigError(
            f"model {spec.name!r} does not take option(s) {', '.join(unknown)}; "
            f"accepted options: {accepted}"
        )
    return spec.builder(num_classes=num_classes, in_channels=in_channels, **kwargs)

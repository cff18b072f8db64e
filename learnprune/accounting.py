"""Counting parameters and FLOPs, dense and under masks.

Definitions (printed with every result, see :data:`DEFINITIONS`):

* **params** — every parameter of the model (weights, biases, norm layers), as the forward
  pass sees it, a tied tensor (GPT-2's ``lm_head.weight`` = ``transformer.wte.weight``)
  once; the gates' own variables (mask variables, gate logits) are not counted.
* **nonzero_params** — those of them that are not exactly zero.
* **sparsity** — over the *weights of every Conv and Linear layer* (biases and norm layers
  excluded, excluded-from-pruning layers included): ``1 − nonzero_weights / weights``.
  **compression** is ``weights / nonzero_weights``, the figure papers such as Sparse VD
  quote.
* **flops** — floating-point operations of one forward pass of one example as counted by
  ``torch.utils.flop_counter.FlopCounterMode``: 2 per multiply-accumulate of every matmul
  and convolution (element-wise ops, pooling, norms and activations are not counted).
* **effective_flops** — the same with each Conv/Linear layer charged only for its kept
  weights: ``2 · nnz(W) · P`` where ``P`` is the number of output positions of the layer
  (``N·H_out·W_out`` for a conv, the rows of the input for a Linear).
* **training FLOPs** (:func:`training_flops_per_example`) — the same counter over one
  example's forward *and* backward pass (the gradients of every trainable parameter, none
  for the input), dense as the training step computes it: about 3× the forward FLOPs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from learnprune.errors import ConfigError
from learnprune.groups import (
    call_model,
    evaluation_mode,
    example_input,
    first_example,
    is_linear_layer,
    is_prunable_layer,
    weight_axes,
)
from learnprune.masking import effective_parameters, raw_tensor

SPARSITY_SCOPE = "weights of every Conv/Linear layer (biases and norm layers not counted)"
DEFINITIONS = (
    f"sparsity and compression over the {SPARSITY_SCOPE}; params = all parameters; "
    "FLOPs = FlopCounterMode count of one example's forward pass (2 per multiply-add); "
    "effective FLOPs charge each Conv/Linear only for its nonzero weights"
)


@dataclass
class LayerCount:
    """One Conv/Linear layer's share of the counts."""

    name: str
    kind: str
    shape: tuple[int, ...]
    weights: int
    nonzero_weights: int
    flops: int
    effective_flops: int
    kept_out: int = 0
    kept_in: int = 0

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero_weights / self.weights if self.weights else 0.0

    @property
    def units(self) -> int:
        """The layer's width in the usual notation of structured pruning results
        (``20-25-45-462`` for LeNet-5-Caffe): kept output maps of a conv, kept input units
        of a Linear layer (``Conv1D`` included)."""
        return self.kept_out if is_conv_kind(self.kind) else self.kept_in


@dataclass
class Counts:
    """Parameters and FLOPs of a model; see the module docstring for the definitions."""

    params: int
    nonzero_params: int
    weights: int
    nonzero_weights: int
    flops: int
    effective_flops: int
    layers: list[LayerCount] = field(default_factory=list)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero_weights / self.weights if self.weights else 0.0

    @property
    def compression(self) -> float:
        return self.weights / self.nonzero_weights if self.nonzero_weights else float("inf")

    @property
    def architecture(self) -> str:
        """Kept units per layer, ``"20-25-45-462"`` style (see :attr:`LayerCount.units`)."""
        return "-".join(str(layer.units) for layer in self.layers)

    def __getitem__(self, key: str) -> object:
        return getattr(self, key)

    def as_dict(self) -> dict[str, object]:
        """Plain numbers for ``final.json``, layers as a list of dicts."""
        out = {k: v for k, v in asdict(self).items() if k != "layers"}
        out["sparsity"] = self.sparsity
        out["compression"] = self.compression
        out["sparsity_scope"] = SPARSITY_SCOPE
        out["architecture"] = self.architecture
        out["layers"] = [
            dict(asdict(layer), sparsity=layer.sparsity, units=layer.units) for layer in self.layers
        ]
        return out


def is_conv_kind(kind: str) -> bool:
    """Whether a layer's kind (class name) is a convolution: ``Conv1d/2d/3d``, not
    transformers' ``Conv1D``, a Linear layer with its weight stored transposed."""
    return kind.startswith("Conv") and kind != "Conv1D"


def prunable_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Conv/Linear modules of the model (not the parametrization internals), each weight
    tensor once: of two layers sharing one weight (tied) only the first is given."""
    seen: set[int] = set()
    for name, module in model.named_modules():
        if is_prunable_layer(module) and "parametrizations" not in name.split("."):
            try:
                key = id(raw_tensor(module, "weight"))
            except AttributeError:  # a foreign parametrization with several originals
                key = id(module)
            if key not in seen:
                seen.add(key)
                yield name, module


@torch.no_grad()
def count(
    model: nn.Module, input_shape: Sequence[int] | None = None, example_inputs: Any = None
) -> Counts:
    """Parameters, nonzero parameters, sparsity, FLOPs and effective FLOPs of ``model``.

    Works on a plain model, on one carrying learnprune gates (it counts the gated weights)
    and on a finalized or compacted one.

    Args:
        model: the model.
        input_shape: one example's shape, e.g. ``(1, 28, 28)``; defaults to
            ``model.input_shape``. Without it (and without ``example_inputs``) FLOPs are
            reported as 0.
        example_inputs: the model's real inputs (a tensor, tuple or dict: token ids for a
            text model); FLOPs are counted on their first example.
    """
    params = nonzero_params = 0
    for _name, tensor in effective_parameters(model):
        params += tensor.numel()
        nonzero_params += int(torch.count_nonzero(tensor))

    shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
    positions: dict[str, int] = {}
    total_flops = 0
    if example_inputs is not None or shape is not None:
        positions, total_flops = trace_layers(model, shape, example_inputs)

    layers = []
    for name, module in prunable_modules(model):
        weight: Tensor = module.weight
        nonzero = int(torch.count_nonzero(weight))
        layer_positions = positions.get(name, 0)
        alive = (weight.detach() != 0).movedim(weight_axes(module)[0], 0)
        layers.append(
            LayerCount(
                name=name,
                kind=type(module).__name__.removeprefix("Parametrized"),
                shape=tuple(weight.shape),
                weights=weight.numel(),
                nonzero_weights=nonzero,
                flops=2 * weight.numel() * layer_positions,
                effective_flops=2 * nonzero * layer_positions,
                kept_out=int(alive.flatten(1).any(1).sum()),
                kept_in=int(alive.transpose(0, 1).flatten(1).any(1).sum()),
            )
        )
    saved = sum(layer.flops - layer.effective_flops for layer in layers)
    return Counts(
        params=params,
        nonzero_params=nonzero_params,
        weights=sum(layer.weights for layer in layers),
        nonzero_weights=sum(layer.nonzero_weights for layer in layers),
        flops=total_flops,
        effective_flops=total_flops - saved,
        layers=layers,
    )


@torch.no_grad()
def trace_layers(
    model: nn.Module, shape: Sequence[int] | None = None, example_inputs: Any = None
) -> tuple[dict[str, int], int]:
    """Run one example: output positions of every Conv/Linear layer, and the total FLOPs
    FlopCounterMode counts. The example is the first of the user's ``example_inputs`` (a
    tensor, tuple or dict, token ids kept as they are) when given, else a random float
    example of ``shape``."""
    if example_inputs is not None:
        one = first_example(example_inputs)
        return trace_call(model, lambda: call_model(model, one))
    if shape is None:
        raise ConfigError("counting FLOPs needs input_shape=(C, H, W) or example_inputs")
    return trace_call(model, lambda: model(example_input(model, tuple(shape))))


def trace_call(model: nn.Module, call: Callable[[], object]) -> tuple[dict[str, int], int]:
    """:func:`trace_layers` for any forward pass ``call()`` of ``model`` on one example
    (e.g. a text model's ``model(**inputs)``), run in eval mode."""
    positions: dict[str, int] = {}

    def record(name: str):
        def hook(module: nn.Module, _inputs: object, output: Tensor) -> None:
            channels = output.shape[-1] if is_linear_layer(module) else output.shape[1]
            positions[name] = positions.get(name, 0) + output.numel() // channels

        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in prunable_modules(model)]
    counter = FlopCounterMode(display=False)
    try:
        with counter, evaluation_mode(model):
            call()
    finally:
        for hook in hooks:
            hook.remove()
    return positions, int(counter.get_total_flops())


def training_flops_per_example(
    model: nn.Module, input_shape: Sequence[int] | None = None, example_inputs: Any = None
) -> int:
    """FLOPs of one training step per example: forward and backward pass of one example,
    counted by ``FlopCounterMode`` (2 per multiply-add of every matmul and convolution, the
    backward's included: per Linear/conv layer the weight gradient and, but for the first
    layer, whose input needs none, the input gradient).

    The model's own ``.grad`` are untouched (the gradients come from ``torch.autograd.grad``)
    and so are its BatchNorm statistics (eval mode). A run's training cost is this times the
    examples it trained on (``steps × batch size``); the optimizer's element-wise update is
    not counted.
    """
    shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
    if example_inputs is None and shape is None:
        raise ConfigError("counting FLOPs needs input_shape=(C, H, W) or example_inputs")
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError("the model has no trainable parameter: nothing to train")
    counter = FlopCounterMode(display=False)
    with counter, evaluation_mode(model), torch.enable_grad():
        if example_inputs is not None:
            output = call_model(model, first_example(example_inputs))
        else:
            output = model(example_input(model, tuple(shape)))
        logits = output if isinstance(output, Tensor) else output[0]
        torch.autograd.grad(logits.float().sum(), trainable, allow_unused=True)
    return int(counter.get_total_flops())


def format_table(counts: Counts | Mapping[str, Any]) -> str:
    """A per-layer table and a summary, as plain text (from :class:`Counts` or its dict)."""
    row = counts.as_dict() if isinstance(counts, Counts) else counts
    header = (
        f"{'layer':<28} {'shape':<16} {'weights':>10} {'kept':>10} {'sparsity':>9} "
        f"{'FLOPs':>11} {'eff. FLOPs':>11}"
    )
    lines = [header, "-" * len(header)]
    for layer in row["layers"]:
        lines.append(
            f"{layer['name']:<28} {'x'.join(map(str, layer['shape'])):<16} {layer['weights']:>10,} "
            f"{layer['nonzero_weights']:>10,} {layer['sparsity']:>9.2%} "
            f"{human(layer['flops']):>11} {human(layer['effective_flops']):>11}"
        )
    lines.append("-" * len(header))
    lines.append(
        f"{'total':<28} {'':<16} {row['weights']:>10,} {row['nonzero_weights']:>10,} "
        f"{row['sparsity']:>9.2%} {human(row['flops']):>11} {human(row['effective_flops']):>11}"
    )
    if "architecture" in row:
        lines.append(
            f"kept units per layer (conv: output maps, linear: inputs): {row['architecture']}"
        )
    lines.append(
        f"params {row['params']:,} (nonzero {row['nonzero_params']:,}); "
        f"compression {row['compression']:.1f}x; "
        f"FLOPs {human(row['flops'])} -> effective {human(row['effective_flops'])}"
    )
    lines.append(f"[{DEFINITIONS}]")
    return "\n".join(lines)


def human(number: float) -> str:
    """``1234567`` -> ``1.23M``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(number) >= scale:
            return f"{number / scale:.2f}{unit}"
    return f"{number:.0f}"

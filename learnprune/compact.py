"""Compaction: structured keep-masks -> a physically smaller dense model.

A finalized model still has its full shapes; the dropped channels are rows of zeros that
every forward pass multiplies through. :func:`compact` removes them for real: each channel
that nothing needs any more is cut out of its producing Conv/Linear layer, of the
BatchNorm entries and the next layers' inputs, and of every layer tied to it through a
residual add or a concat, so the result is a plain, smaller ``nn.Module`` that any runtime
runs at about the FLOPs ratio (SPEED.md §4). The cut goes through Torch-Pruning's
``DependencyGraph``, the same graph that gives learnprune's ``coupled`` groups
(:mod:`learnprune.coupling`).

When a channel may go
---------------------

Take one dependency group (a channel ``k`` of a root layer and everything tied to it).
Its members either *write* the channel (producers: Conv/Linear output rows and biases,
BatchNorm entries, depthwise convs) or *read* it (readers: the input columns of the next
Conv/Linear layers). Channel ``k`` is removed exactly when removing it cannot change the
model's outputs, i.e. when either

1. **nothing reads it**: every reader's input slice for ``k`` is zero (masked off or
   exactly zero), e.g. hidden unit ``k`` of an MLP whose column in the next layer is
   dropped (``l0_units`` / ``in_channel`` masks); or
2. **it is provably zero**: every producer writes zero, i.e. the Conv/Linear rows *and*
   biases are zero, and every BatchNorm maps a zero input to zero in train and eval mode
   (``β = 0`` and ``γ = 0`` or ``running_mean = 0``); and, as a guard against
   activations with ``f(0) ≠ 0`` (sigmoid, softplus) or ops the graph misreads, the
   readers' inputs on that channel are exactly zero on a random probe batch.

A channel whose weight rows are zero but whose bias or BatchNorm shift is not outputs a
*constant*, not zero. It is **kept** (its zeros stay zeros) rather than folded into the
next layer's bias: folding is exact only for a reader without zero padding and with no
residual path in between (a padded conv sees the constant map with zero borders), so the
exact, simple rule wins. learnprune's ``coupled`` groups mask biases and BatchNorm
``γ``/``β`` with their channel, so their dropped channels are all removed; an
``out_channel`` mask on a conv followed by BatchNorm leaves ``β``, and its channels stay
(see :attr:`GroupDecision.zero_weight_kept`).

Never removed: the classifier's outputs (:func:`learnprune.groups.output_layer`) and any
other layer output that is itself a model output; the model's input (LeNet-300's pixels
are data, not a layer's channels); the last channel of a group (every layer keeps at least
one). A raw parameter in a group (ConvNeXt's layer scale ``γ``) counts as a producer that
writes its non-zero entries, and is sliced with the channel along the axis
:func:`learnprune.coupling.unwrapped_parameters` gives it. Groups that tie in a layer
compaction does not handle (LayerNorm, GroupNorm, PReLU, grouped convs) are left whole
and listed in :attr:`CompactResult.skipped`; when the masks dropped some of their filters
or input slices, those are named there and in an :class:`UncutStructureWarning`.

Masks and the reference
-----------------------

``masks`` is ``{parameter name: bool keep-mask of its shape}`` as ``method.masks()`` gives
it. The caller's model is never touched: :func:`compact` deep-copies it, multiplies the
masks into the copy (a no-op on a finalized model, whose zeros are already stored), and
calls that copy the *masked model*; a position counts as dropped when it is zero there.
With ``check=True`` the compact model's outputs on the example inputs (or a random batch)
are compared with the masked model's, and a difference above ``atol · max(1, max |outputs|)`` raises
:class:`~learnprune.errors.UnsupportedModelError`.

Example::

    masks = method.masks()                     # read before finalize() removes the gates
    method.finalize()
    result = compact(model, masks, (3, 32, 32))
    small = result.model                       # plain nn.Module, eval-equivalent
    print(result.table())                      # per layer: channels, params, FLOPs
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize

from learnprune.accounting import Counts, count, human, is_conv_kind, trace_call
from learnprune.coupling import layer_scale_axes, unwrapped_parameters
from learnprune.errors import ConfigError, LearnpruneError, UnsupportedModelError, one_line
from learnprune.groups import (
    PRUNABLE_LAYERS,
    build_groups,
    call_model,
    describe_inputs,
    evaluation_mode,
    first_example,
    first_transposed_linear,
    is_prunable_layer,
    layer_features,
    model_input_shape,
    scatter_values,
    weight_axes,
)
from learnprune.masking import gated_tensors
from learnprune.models import PadShortcut

__all__ = [
    "CompactResult",
    "GroupDecision",
    "LayerChange",
    "UncutStructureWarning",
    "apply_masks",
    "compact",
    "count_on",
    "model_inputs",
    "random_structured_masks",
]

PROBE_BATCH = 4
"""Examples in the random batch that probes the readers' inputs and checks the outputs."""


@dataclass
class LayerChange:
    """One Conv/Linear layer before and after compaction.

    ``flops_*`` are the layer's dense FLOPs for one example as
    :func:`learnprune.accounting.count` charges them (``2 · weights · output positions``);
    ``params_*`` count the layer's weight and bias.
    """

    name: str
    kind: str
    out_before: int
    out_after: int
    in_before: int
    in_after: int
    params_before: int
    params_after: int
    flops_before: int
    flops_after: int

    @property
    def units_before(self) -> int:
        """Width in the usual notation: output maps of a conv, inputs of a Linear layer."""
        return self.out_before if is_conv_kind(self.kind) else self.in_before

    @property
    def units_after(self) -> int:
        """:attr:`units_before` of the compact layer."""
        return self.out_after if is_conv_kind(self.kind) else self.in_after


@dataclass
class GroupDecision:
    """What happened to one dependency group (a root layer's channels and their ties).

    Attributes:
        root: the root layer whose output channels index the group.
        writers: the modules that write the channels (Conv/Linear outputs, BatchNorms).
        readers: the Conv/Linear layers that read them as inputs.
        channels: channels of the group before compaction.
        removed: the removed channels, as indices of the root layer's outputs.
        zero_weight_kept: channels whose Conv/Linear weight rows are all zero (in every
            writer) but which are kept: a bias, a BatchNorm shift or an activation with
            ``f(0) ≠ 0`` makes them a non-zero constant that a reader still uses.
    """

    root: str
    writers: tuple[str, ...]
    readers: tuple[str, ...]
    channels: int
    removed: tuple[int, ...]
    zero_weight_kept: int = 0


@dataclass
class CompactResult:
    """The compact model and what compaction did.

    Attributes:
        model: the compact model, a new plain ``nn.Module`` (the caller's is untouched),
            in the caller's model's train/eval mode.
        layers: per Conv/Linear layer, channels, parameters and FLOPs before and after.
        groups: one decision per dependency group that compaction considered.
        skipped: ``{group or layer: reason}`` for what compaction left whole.
        before: :func:`~learnprune.accounting.count` of the masked model.
        after: the same for the compact model.
        max_abs_diff: the largest output difference measured by the check (``None``
            without a check).
    """

    model: nn.Module
    layers: list[LayerChange]
    groups: list[GroupDecision]
    skipped: dict[str, str]
    before: Counts
    after: Counts
    max_abs_diff: float | None = None

    @property
    def architecture_before(self) -> str:
        """Layer widths of the original model, ``"20-50-800-500"`` style."""
        return "-".join(str(layer.units_before) for layer in self.layers)

    @property
    def architecture_after(self) -> str:
        """Layer widths of the compact model (conv: output maps, Linear: inputs)."""
        return "-".join(str(layer.units_after) for layer in self.layers)

    @property
    def removed_channels(self) -> int:
        """Channels removed over all groups."""
        return sum(len(group.removed) for group in self.groups)

    def table(self) -> str:
        """A per-layer table and a summary, as plain text."""
        header = f"{'layer':<28} {'kind':<7} {'out':>11} {'in':>11} {'params':>19} {'FLOPs':>17}"
        lines = [header, "-" * len(header)]
        for layer in self.layers:
            lines.append(
                f"{layer.name:<28} {layer.kind:<7} "
                f"{f'{layer.out_before}->{layer.out_after}':>11} "
                f"{f'{layer.in_before}->{layer.in_after}':>11} "
                f"{f'{layer.params_before:,}->{layer.params_after:,}':>19} "
                f"{f'{human(layer.flops_before)}->{human(layer.flops_after)}':>17}"
            )
        lines.append("-" * len(header))
        ratio = self.before.flops / self.after.flops if self.after.flops else float("inf")
        lines.append(
            f"params {self.before.params:,} -> {self.after.params:,}; FLOPs "
            f"{human(self.before.flops)} -> {human(self.after.flops)} ({ratio:.2f}x fewer); "
            f"{self.removed_channels} channels removed"
        )
        lines.append(f"architecture {self.architecture_before} -> {self.architecture_after}")
        kept = sum(group.zero_weight_kept for group in self.groups)
        if kept:
            lines.append(
                f"{kept} channels with all-zero weights kept: a bias, BatchNorm shift or "
                "activation makes them output a non-zero constant"
            )
        lines += [f"left whole: {name}: {why}" for name, why in self.skipped.items()]
        if self.max_abs_diff is not None:
            lines.append(
                f"checked: max |compact - masked| output difference {self.max_abs_diff:.2e}"
            )
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """Plain numbers for JSON (the model itself left out)."""
        return {
            "architecture_before": self.architecture_before,
            "architecture_after": self.architecture_after,
            "removed_channels": self.removed_channels,
            "max_abs_diff": self.max_abs_diff,
            "before": self.before.as_dict(),
            "after": self.after.as_dict(),
            "layers": [
                dict(asdict(layer), units_before=layer.units_before, units_after=layer.units_after)
                for layer in self.layers
            ],
            "groups": [dict(asdict(group), removed=list(group.removed)) for group in self.groups],
            "skipped": dict(self.skipped),
        }


# --------------------------------------------------------------------------------------------
# the entry point
# --------------------------------------------------------------------------------------------


def compact(
    model: nn.Module,
    masks: Mapping[str, Tensor] | None = None,
    input_shape: Sequence[int] | None = None,
    *,
    check: bool = True,
    atol: float = 1e-5,
    example_inputs: Any = None,
) -> CompactResult:
    """Physically remove the channels, heads and neurons that ``masks`` drop as whole groups.

    See the module docstring for when a channel may go. The caller's model is not changed.
    A model with multi-head attention blocks (Hugging Face BERT/ViT-style layers,
    ``nn.MultiheadAttention``) is cut in two passes: first
    :func:`learnprune.transformer_compact.compact_transformer` removes the dropped attention
    heads and MLP neurons, then the channel path below cuts every other Conv/Linear layer's
    dropped channels (a conv stem, a pooler), the attention blocks' own layers left to the
    first pass; the result is checked once against the masked model. Whatever the masks
    dropped that no pass can cut (a group tied to a LayerNorm, the heads of an
    ``nn.MultiheadAttention``, zero filters kept as constants) is named in
    :attr:`CompactResult.skipped` and in one :class:`UncutStructureWarning`.

    Args:
        model: a plain model: a method's ``finalize()`` already run (masks baked in).
        masks: ``{parameter name: bool keep-mask of that parameter's shape}``, as
            ``method.masks()`` gives it; ``None`` uses the zeros stored in the weights.
        input_shape: one example's shape, e.g. ``(3, 32, 32)``; defaults to
            ``model.input_shape``.
        check: compare the compact model's outputs with the masked model's on the example
            inputs, or a random batch of :data:`PROBE_BATCH` examples (eval mode).
        atol: the check's tolerance: the largest output difference accepted is
            ``atol · max(1, max |masked outputs|)`` (absolute for outputs up to 1, relative
            beyond, since float32 sums over fewer channels round differently).
        example_inputs: what to run the model on instead of a random batch of
            ``input_shape``: a tensor (``model(x)``), a tuple (``model(*x)``) or a dict
            (``model(**x)``, e.g. ``{"input_ids": ..., "attention_mask": ...}``), used as
            given (integer token ids stay integers) to probe the model, trace its graph,
            count its FLOPs (first example) and check the outputs, on every path.

    Returns:
        a :class:`CompactResult` holding the compact model and the report.

    Raises:
        ConfigError: bad masks, no inputs (neither ``example_inputs`` nor an input shape),
            or the model still carries gates.
        UnsupportedModelError: the dependency graph cannot trace the model, or the compact
            model's outputs differ from the masked model's.
    """
    # transformers: heads and MLP neurons first (learnprune.transformer_compact), then the
    # channels of every other Conv/Linear layer on the result
    from learnprune.transformer_compact import compact_transformer, has_attention_blocks
    from learnprune.transformer_groups import find_attention_blocks

    if not has_attention_blocks(model):
        result, left = _compact_channels(
            model, masks, input_shape, example_inputs=example_inputs, check=check, atol=atol
        )
        _warn_left(left)
        return result
    _refuse_unsupported(model)
    inputs = model_inputs(model, example_inputs, input_shape)
    expected = _masked_outputs(model, _checked_masks(model, masks), inputs) if check else []
    heads = compact_transformer(model, masks, input_shape, example_inputs=inputs, check=False)
    blocks, refused = find_attention_blocks(heads.model)
    attention: dict[nn.Module, str] = {}  # Torch-Pruning does not see heads: hands off
    for name, layers in [*((b.name, b.layers) for b in blocks), *((n, ()) for n in refused)]:
        modules = [*heads.model.get_submodule(name).modules()]
        modules += [heads.model.get_submodule(layer) for layer in layers]
        attention.update((module, f"ties in {name}, an attention block") for module in modules)
    channels, left = _compact_channels(
        heads.model,
        None,
        input_shape,
        example_inputs=inputs,
        check=check,
        atol=atol,
        in_place=True,
        protected=attention,
    )
    left = {**_heads_left(heads), **left}
    result = _merged(heads, channels)
    if check:
        result.max_abs_diff = _check_outputs(
            result.model, inputs, expected, atol, call=call_model,
            cause="the head, neuron or channel cut is wrong",
        )
    result.model.train(model.training)
    _warn_left(left)
    return result


class UncutStructureWarning(UserWarning):
    """Compaction left in the model channels or heads that the masks dropped."""


def _compact_channels(
    model: nn.Module,
    masks: Mapping[str, Tensor] | None,
    input_shape: Sequence[int] | None,
    *,
    example_inputs: Any,
    check: bool,
    atol: float = 1e-5,
    in_place: bool = False,
    protected: Mapping[nn.Module, str] | None = None,
) -> tuple[CompactResult, dict[str, str]]:
    """The channel path (module docstring) and ``{group: what the masks dropped that it
    left, and why}``. ``in_place``: cut ``model`` itself, already masked and ours (the
    second pass after the transformer blocks); a model Torch-Pruning cannot trace is then
    returned unchanged with the reason in ``skipped`` instead of refused. ``protected``:
    modules whose groups stay whole, with the reason (the attention blocks)."""
    if not in_place:
        _refuse_unsupported(model)
    if not any(True for _ in _prunable(model)):
        holder = first_transposed_linear(model)
        if holder is not None:
            raise UnsupportedModelError(
                f"compact: outside attention and MLP blocks the channel pass cuts through "
                f"Torch-Pruning, which does not know transformers' Conv1D ({holder}); Conv1D "
                "layers are cut inside the blocks compact finds (heads, mlp_neurons groups)"
            )
        raise UnsupportedModelError("compact: the model has no Conv/Linear layer to compact")
    keep_masks = _checked_masks(model, masks)
    inputs = model_inputs(model, example_inputs, input_shape)
    if in_place:
        work = model
    else:
        try:
            work = copy.deepcopy(model)
        except Exception as err:  # a module that cannot be copied
            raise UnsupportedModelError(f"compact: cannot deep-copy the model ({err})") from err
    work.eval()
    apply_masks(work, keep_masks)

    probe = _probe(work, inputs)
    before = count_on(work, inputs)
    shapes_before = _layer_shapes(work)
    skipped: dict[str, str] = {}
    left: dict[str, str] = {}
    try:
        graph = _trace(work, first_example(inputs), probe.executed)
    except UnsupportedModelError as err:
        if not in_place:
            raise
        skipped["channels"] = f"{err}; Conv/Linear channels outside the attention blocks stay"
        graph = None
        # every layer, the attention blocks' (the heads pass cut what it could) and
        # transformers' Conv1D included: what stays zero here is dropped and left
        dropped: dict[str, str] = {}
        dropped_inputs: dict[str, str] = {}
        for name, module in work.named_modules():
            if is_prunable_layer(module) and name != probe.last_layer:
                _name_zeros(dropped, name, ~_alive_outputs(module), "outputs")
                in_axis = weight_axes(module)[1]
                read = _nonzero_along(module.weight.detach(), in_axis)
                _name_zeros(dropped_inputs, name, ~read, "inputs")
        if dropped or dropped_inputs:
            what = ", ".join([*dropped.values(), *dropped_inputs.values()])
            left["channels"] = f"the masks dropped {what}, which stay: {skipped['channels']}"
    decisions: list[GroupDecision] = []
    if graph is not None:
        names = {module: name for name, module in work.named_modules()}
        never_cut = set(probe.output_modules)
        if probe.executed:
            never_cut.add(work.get_submodule(probe.last_layer))  # the classifier
        skipped.update(
            (name, "outputs are model outputs (the classes), never removed")
            for name, module in _prunable(work)
            if module in never_cut
        )
        try:
            decisions = _cut(graph, names, probe, never_cut, skipped, left, protected or {})
        except LearnpruneError:
            raise
        except Exception as err:  # Torch-Pruning's own errors on graphs it half understands
            raise UnsupportedModelError(
                f"compact: Torch-Pruning failed to cut the model ({type(err).__name__}: "
                f"{_one_line(err)})"
            ) from err
    constant = sum(group.zero_weight_kept for group in decisions)
    if constant:
        left["constant channels"] = (
            f"the masks dropped the weights of {constant} channels, which stay: a bias, "
            "BatchNorm shift or activation makes them a non-zero constant (coupled groups "
            "mask the BatchNorm entries with their channel)"
        )

    max_abs_diff = (
        _check_outputs(work, inputs, probe.outputs, atol, call=call_model) if check else None
    )
    work.train(model.training)
    after = count_on(work, inputs)
    result = CompactResult(
        model=work,
        layers=_layer_changes(shapes_before, _layer_shapes(work), before, after),
        groups=decisions,
        skipped=skipped,
        before=before,
        after=after,
        max_abs_diff=max_abs_diff,
    )
    return result, left


def model_inputs(model: nn.Module, example_inputs: Any, input_shape: Sequence[int] | None) -> Any:
    """What compaction runs the model on: ``example_inputs`` as given (a tensor, a tuple
    or a dict of keyword arguments; integer token ids stay integers), else a random batch of
    :data:`PROBE_BATCH` examples of ``input_shape`` (or ``model.input_shape``), else a
    Hugging Face text model's ``dummy_inputs``."""
    if example_inputs is not None:
        return example_inputs
    shape = model_input_shape(model, input_shape)
    if shape is not None:
        return _random_batch(model, shape)
    dummy = getattr(model, "dummy_inputs", None)
    if isinstance(dummy, Mapping) and getattr(model, "main_input_name", None) in dummy:
        return dict(dummy)
    raise ConfigError(
        "compact needs inputs to run the model: pass input_shape=(C, H, W) or example_inputs= "
        "(a tensor, a tuple, or a dict such as {'input_ids': ..., 'attention_mask': ...})"
    )


@torch.no_grad()
def count_on(model: nn.Module, inputs: Any) -> Counts:
    """:func:`~learnprune.accounting.count` with the FLOPs of the first example of
    ``inputs`` (``count`` itself traces a random float tensor, which a model taking token
    ids cannot take)."""
    counts = count(model)
    positions, total = trace_call(model, lambda: call_model(model, first_example(inputs)))
    layers = [
        dataclasses.replace(
            layer,
            flops=2 * layer.weights * positions.get(layer.name, 0),
            effective_flops=2 * layer.nonzero_weights * positions.get(layer.name, 0),
        )
        for layer in counts.layers
    ]
    saved = sum(layer.flops - layer.effective_flops for layer in layers)
    return dataclasses.replace(counts, flops=total, effective_flops=total - saved, layers=layers)


@torch.no_grad()
def _masked_outputs(
    model: nn.Module, keep_masks: Mapping[str, Tensor], inputs: Any
) -> list[Tensor]:
    """The masked model's eval-mode outputs, ``model`` run with ``W ⊙ keep`` in place of
    each masked tensor (:func:`torch.func.functional_call`: no copy, the model unchanged)."""
    params = dict(model.named_parameters())
    masked = {
        name: params[name] * keep.to(params[name].device, params[name].dtype)
        for name, keep in keep_masks.items()
    }
    if isinstance(inputs, Mapping):
        args, kwargs = (), dict(inputs)
    else:
        args, kwargs = (tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)), {}
    try:
        with evaluation_mode(model):
            return output_tensors(torch.func.functional_call(model, masked, args, kwargs))
    except Exception as err:
        raise UnsupportedModelError(
            f"compact: the model does not run on example_inputs {describe_inputs(inputs)} "
            f"({type(err).__name__}: {_one_line(err)})"
        ) from err


def _merged(first: CompactResult, second: CompactResult) -> CompactResult:
    """One report of two passes: the layers as before the first and after the second."""
    after = {layer.name: layer for layer in second.layers}
    layers = [
        dataclasses.replace(
            layer,
            out_after=after[layer.name].out_after,
            in_after=after[layer.name].in_after,
            params_after=after[layer.name].params_after,
            flops_after=after[layer.name].flops_after,
        )
        for layer in first.layers
    ]
    return CompactResult(
        model=second.model,
        layers=layers,
        groups=[*first.groups, *(g for g in second.groups if g.removed or g.zero_weight_kept)],
        skipped={**first.skipped, **second.skipped},
        before=first.before,
        after=second.after,
    )


def _heads_left(result: CompactResult) -> dict[str, str]:
    """Heads that the masks dropped (their output-projection columns all zero) in the
    attention blocks the transformer pass left whole."""
    from learnprune.transformer_groups import find_attention_blocks

    blocks, _refused = find_attention_blocks(result.model)
    left = {}
    for block in blocks:
        key = f"heads:{block.name}"
        if key not in result.skipped:
            continue
        columns = result.model.get_submodule(block.output).weight.detach() != 0
        alive = columns.any(0).reshape(block.num_heads, block.head_dim).any(1)
        dropped = int((~alive).sum())
        if dropped:
            why = result.skipped[key]
            result.skipped[key] = (
                f"the masks dropped {dropped} of {block.num_heads} heads, which stay: {why}"
            )
            left[key] = result.skipped[key]
    return left


def _warn_left(left: Mapping[str, str]) -> None:
    """One :class:`UncutStructureWarning` naming everything dropped that stays, and why."""
    if left:
        warnings.warn(
            "learnprune: compact left structures the masks dropped (see result.skipped): "
            + "; ".join(f"{name}: {why}" for name, why in left.items()),
            UncutStructureWarning,
            stacklevel=3,
        )


# --------------------------------------------------------------------------------------------
# masks
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def apply_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> nn.Module:
    """Write the masks' zeros into the parameters in place, ``W ← W ⊙ keep``.

    Turns a dense model and ``method.masks()`` into what ``finalize()`` would give.
    Returns the same model.
    """
    params = dict(model.named_parameters())
    for name, keep in _checked_masks(model, masks).items():
        params[name].mul_(keep.to(params[name].device, params[name].dtype))
    return model


def random_structured_masks(
    model: nn.Module,
    input_shape: Sequence[int] | None,
    drop: float,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Random keep-masks that drop whole coupled channel groups (for tests and benchmarks).

    Every group set of ``build_groups(model, "coupled")`` drops ``round(drop · G)`` of its
    ``G`` channels, chosen at random (at most ``G − 1``, so every layer keeps one); each
    dropped channel takes all its slices with it (filters, biases, BatchNorm entries, the
    readers' inputs, residual partners). The model is not changed (its train/eval mode and
    BatchNorm statistics included); ``apply_masks(model, masks)`` then gives the
    "finalized" model.

    Returns:
        ``{parameter name: bool keep-mask}`` for every tensor some group set covers.
    """
    if not 0.0 <= drop <= 1.0:
        raise ConfigError(f"drop must lie in [0, 1], got {drop!r}")
    was_training = model.training
    model.eval()  # the group builder runs forward passes; keep BN statistics as they are
    try:
        plan = build_groups(model, "coupled", input_shape=input_shape)
    finally:
        model.train(was_training)
    generator = torch.Generator().manual_seed(seed)
    masks: dict[str, Tensor] = {}
    for group_set in plan.sets:
        size = group_set.num_groups
        dropped = min(round(drop * size), size - 1)
        keep = torch.ones(size, dtype=torch.bool)
        keep[torch.randperm(size, generator=generator)[:dropped]] = False
        for piece in group_set.slices:
            part = scatter_values(keep, piece.dim, piece.index, piece.shape).expand(piece.shape)
            previous = masks.get(piece.param)
            masks[piece.param] = part.clone() if previous is None else previous & part
    return masks


def _checked_masks(model: nn.Module, masks: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    """The masks as bool tensors, each checked against its parameter."""
    if masks is None:
        return {}
    params = dict(model.named_parameters())
    checked = {}
    for name, keep in masks.items():
        if name not in params:
            raise ConfigError(f"compact: mask for {name!r}, which the model has no parameter of")
        keep = torch.as_tensor(keep)
        if tuple(keep.shape) != tuple(params[name].shape):
            raise ConfigError(
                f"compact: mask for {name} has shape {tuple(keep.shape)}, "
                f"the parameter has {tuple(params[name].shape)}"
            )
        checked[name] = keep.to(torch.bool)
    return checked


# --------------------------------------------------------------------------------------------
# tracing and probing
# --------------------------------------------------------------------------------------------


def _refuse_unsupported(model: nn.Module) -> None:
    """Models compaction refuses before copying anything."""
    if any(True for _ in gated_tensors(model)):
        raise ConfigError(
            "compact: the model still carries learnprune gates; call method.finalize() first"
        )
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            raise UnsupportedModelError(
                f"compact: {name or 'the model'} has parametrized tensors, which the "
                "dependency graph cannot prune; remove the parametrizations first"
            )
        if isinstance(module, PadShortcut):
            raise UnsupportedModelError(
                f"compact: {name} is a zero-padding (option A) shortcut, which Torch-Pruning "
                "mis-traces as element-wise; build the ResNet with shortcut='B'"
            )


def _prunable(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_LAYERS):
            yield name, module


def _random_batch(model: nn.Module, shape: Sequence[int]) -> Tensor:
    """A fixed random batch (seed 0) in the model's device and floating dtype."""
    param = next(model.parameters())
    generator = torch.Generator().manual_seed(0)
    batch = torch.randn(PROBE_BATCH, *shape, generator=generator)
    return batch.to(param.device, param.dtype if param.is_floating_point() else torch.float32)


@dataclass
class _Probe:
    """What one forward pass of the masked model showed."""

    outputs: list[Tensor]
    executed: list[str]
    output_modules: list[nn.Module]
    input_scale: dict[nn.Module, Tensor] = field(default_factory=dict)
    """Per Conv/Linear layer, ``max |x|`` of each input feature over the batch."""
    last_layer: str = ""
    """The last Conv/Linear layer run: the classifier (:func:`~learnprune.groups.output_layer`)."""


@torch.no_grad()
def _probe(model: nn.Module, batch: Any) -> _Probe:
    """Run the batch: the outputs, the Conv/Linear layers run, each layer's per-feature
    input magnitudes, and the modules whose output is itself a model output."""
    input_scale: dict[nn.Module, Tensor] = {}
    executed: list[str] = []
    produced: list[tuple[nn.Module, Tensor]] = []

    def read_input(module: nn.Module, inputs: tuple[Any, ...]) -> None:
        x = inputs[0] if inputs else None
        if not isinstance(x, Tensor) or x.dim() == 0:
            return
        features = x.abs().movedim(-1 if isinstance(module, nn.Linear) else 1, 0)
        scale = features.reshape(features.shape[0], -1).amax(1).float().cpu()
        known = input_scale.get(module)
        input_scale[module] = scale if known is None else torch.maximum(known, scale)

    def record(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, _inputs: object, output: object) -> None:
            if isinstance(module, PRUNABLE_LAYERS):
                executed.append(name)
            produced.extend((module, tensor) for tensor in output_tensors(output))

        return hook

    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_LAYERS):
            hooks.append(module.register_forward_pre_hook(read_input))
        if isinstance(module, PRUNABLE_LAYERS) or any(True for _ in module.parameters(False)):
            hooks.append(module.register_forward_hook(record(name)))
    try:
        outputs = output_tensors(call_model(model, batch))
    except Exception as err:
        raise UnsupportedModelError(
            f"compact: the model does not run on inputs {describe_inputs(batch)} "
            f"({type(err).__name__}: {_one_line(err)})"
        ) from err
    finally:
        for hook in hooks:
            hook.remove()
    if not outputs:
        raise UnsupportedModelError("compact: the model's forward pass returns no tensor")
    output_modules = list(
        {id(m): m for m, tensor in produced if any(tensor is out for out in outputs)}.values()
    )
    last = executed[-1] if executed else ""
    return _Probe(outputs, list(dict.fromkeys(executed)), output_modules, input_scale, last)


def _trace(model: nn.Module, example: Any, executed: Sequence[str]) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of the model traced on ``example`` (the inputs as
    :func:`~learnprune.groups.call_model` takes them), or a one-line refusal.

    Every parameter requires grad while tracing (the graph is read from autograd), so frozen
    layers trace too; each Conv/Linear layer that runs in the forward pass must appear in
    the graph, else the model cannot be cut consistently.
    """
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            graph = tp.DependencyGraph().build_dependency(
                model,
                example_inputs=example,
                unwrapped_parameters=unwrapped_parameters(model),
                verbose=False,
            )
    except Exception as err:  # Torch-Pruning raises many kinds of errors on odd graphs
        raise UnsupportedModelError(
            f"compact: Torch-Pruning cannot trace the model's channel dependencies "
            f"({type(err).__name__}: {_one_line(err)})"
        ) from err
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
    traced = {id(module) for module in graph.module2node}
    missing = [name for name in executed if id(model.get_submodule(name)) not in traced]
    if missing:
        raise UnsupportedModelError(
            f"compact: Torch-Pruning cannot trace the model: {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''} missing from its graph (torch.no_grad, "
            ".detach() or a non-torch op in forward?)"
        )
    return graph


def output_tensors(value: object, *, strict: bool = False) -> list[Tensor]:
    """The tensors in a forward pass's output (a tensor, or tuples, lists, dicts of them).
    Other values are skipped, or with ``strict`` refused (:class:`UnsupportedModelError`)."""
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in output_tensors(item, strict=strict)]
    if isinstance(value, Mapping):
        return [t for item in value.values() for t in output_tensors(item, strict=strict)]
    if strict:
        raise UnsupportedModelError(f"cannot compare a model output of type {type(value).__name__}")
    return []


def _one_line(err: BaseException, limit: int = 160) -> str:
    return one_line(str(err), limit)


# --------------------------------------------------------------------------------------------
# deciding which channels go
# --------------------------------------------------------------------------------------------


def _cut(
    graph: tp.DependencyGraph,
    names: Mapping[nn.Module, str],
    probe: _Probe,
    never_cut: set[nn.Module],
    skipped: dict[str, str],
    left: dict[str, str],
    protected: Mapping[nn.Module, str],
) -> list[GroupDecision]:
    """Decide every dependency group on the unchanged model, then prune the removable
    channels group by group (a root's output indices stay valid: only its own group cuts
    them; Torch-Pruning re-maps concat and flatten offsets at each step). A group left
    whole goes into ``skipped``, and into ``left`` too when the masks dropped some of its
    channels (their filters are zero)."""
    decided: list[tuple[nn.Module, Callable[..., Any], GroupDecision]] = []
    with torch.no_grad():
        groups = graph.get_all_groups(
            ignored_layers=list(never_cut), root_module_types=PRUNABLE_LAYERS
        )
        for group in groups:
            root = group[0].dep.target.module
            decision, reason, dropped = _decide(graph, group, names, probe, never_cut, protected)
            key = f"group:{names.get(root, '?')}"
            if decision is None and dropped:
                reason = f"the masks dropped {dropped}, which stay: {reason}"
                left[key] = reason
            if decision is None:
                skipped[key] = reason
            else:
                decided.append((root, group[0].dep.handler, decision))
        for root, handler, decision in decided:
            if decision.removed:
                graph.get_pruning_group(root, handler, list(decision.removed)).prune()
    return [decision for _root, _handler, decision in decided]


def _decide(
    graph: tp.DependencyGraph,
    group: tp.dependency.Group,
    names: Mapping[nn.Module, str],
    probe: _Probe,
    never_cut: set[nn.Module],
    protected: Mapping[nn.Module, str],
) -> tuple[GroupDecision | None, str, str]:
    """Which channels of one dependency group are removable (module docstring, rules 1-2),
    or ``None``, the reason the group is left whole, and what of it the masks dropped
    (``"c2: 3 of 8 outputs, fc: 2 of 8 inputs"``: all-zero filters of its Conv/Linear
    writers, all-zero input slices of its readers; empty where the group holds model
    outputs, which are never cut by design)."""
    channels = len(group[0].idxs)
    writes = torch.zeros(channels, dtype=torch.bool)  # some producer writes non-zero
    rows = torch.zeros(channels, dtype=torch.bool)  # some Conv/Linear weight row is non-zero
    read = torch.zeros(channels, dtype=torch.bool)  # some reader's input slice is non-zero
    seen = torch.zeros(channels, dtype=torch.bool)  # some reader saw a non-zero input
    writers: dict[str, None] = {}
    readers: dict[str, None] = {}
    refusal = ""  # why the group stays whole: the members read on, to name what it drops
    dropped: dict[str, str] = {}
    axes = layer_scale_axes(graph)

    for item in group.items:
        dep = item.dep
        module = dep.target.module
        positions = torch.as_tensor(list(item.idxs), dtype=torch.long)
        roots = item.root_idxs if item.root_idxs is not None else item.idxs
        roots = torch.as_tensor(list(roots), dtype=torch.long)
        if isinstance(module, tp.ops._OutputOp):
            return None, "its channels reach the model's output directly", ""
        if isinstance(module, nn.Parameter) and id(module) in axes:  # a layer scale: a writer
            _or_into(writes, roots, _nonzero_along(module.detach(), axes[id(module)])[positions])
            continue
        if not isinstance(module, nn.Module):
            refusal = refusal or "ties in a raw nn.Parameter, which compaction does not handle"
            continue
        if module in protected:
            refusal = refusal or protected[module]
            continue
        if not any(True for _ in module.parameters(recurse=False)):
            continue  # element-wise ops, concat, reshape: nothing to slice here
        name = names.get(module)
        if name is None:
            refusal = refusal or f"contains an untraceable {type(module).__name__}"
            continue
        is_out = graph.is_out_channel_pruning_fn(dep.handler)
        if module in never_cut and is_out:
            return None, f"ties in the outputs of {name}, which are model outputs", ""
        if isinstance(module, PRUNABLE_LAYERS):
            conv_groups = getattr(module, "groups", 1)
            depthwise = conv_groups > 1 and conv_groups == module.in_channels
            if conv_groups > 1 and not depthwise:
                refusal = refusal or (
                    f"ties in the grouped conv {name}, which compaction does not handle"
                )
                continue
            weight = module.weight.detach()
            if is_out or depthwise:
                writers[name] = None
                row_alive = _nonzero_along(weight, 0)
                alive = _alive_outputs(module)
                _or_into(writes, roots, alive[positions])
                _or_into(rows, roots, row_alive[positions])
                _name_zeros(dropped, name, ~alive[positions], "outputs")
            else:
                readers[name] = None
                column_alive = _nonzero_along(weight, 1)[positions]
                _or_into(read, roots, column_alive)
                _name_zeros(dropped, name, ~column_alive, "inputs")
                scale = probe.input_scale.get(module)
                if scale is None or scale.numel() <= int(positions.max()):
                    seen[roots] = True  # not observed: assume it reads something
                else:
                    _or_into(seen, roots, scale[positions] != 0)
        elif isinstance(module, _BatchNorm):
            writers[name] = None
            _or_into(writes, roots, ~_maps_zero_to_zero(module)[positions])
        else:
            refusal = refusal or (
                f"ties in {name} ({type(module).__name__}), which compaction does not handle"
            )

    if refusal:
        return None, refusal, ", ".join(dropped.values())
    root_name = names.get(group[0].dep.target.module, "?")
    if not readers:
        return None, "no Conv/Linear layer reads its channels", ""
    removable = ~read | (~writes & ~seen)
    constant = ~rows & ~removable  # zero filters kept for a bias, shift or f(0) != 0
    if bool(removable.all()):
        removable[0] = False  # every layer keeps at least one channel (not a constant one)
    removed = tuple(int(k) for k in torch.nonzero(removable).flatten())
    zero_weight_kept = int(constant.sum())
    decision = GroupDecision(
        root_name, tuple(writers), tuple(readers), channels, removed, zero_weight_kept
    )
    return decision, "", ""


def _alive_outputs(layer: nn.Module) -> Tensor:
    """Per output of a Conv/Linear layer: is its weight row or its bias non-zero (bool, CPU);
    a ``Conv1D``'s outputs are its weight's columns."""
    alive = _nonzero_along(layer.weight.detach(), weight_axes(layer)[0])
    if layer.bias is not None:
        alive |= layer.bias.detach().cpu() != 0
    return alive


def _name_zeros(named: dict[str, str], layer: str, zero: Tensor, what: str) -> None:
    """Record ``"layer: 3 of 8 outputs"`` when some of a member's slices are all zero."""
    if bool(zero.any()):
        named[layer] = f"{layer}: {int(zero.sum())} of {zero.numel()} {what}"


def _or_into(flags: Tensor, roots: Tensor, values: Tensor) -> None:
    """``flags[r] |= any(values[i] for i with roots[i] == r)``; several positions map to one
    root channel (a conv's map flattened into a Linear's inputs), so plain indexed
    assignment, where the last duplicate wins, would be wrong."""
    hits = torch.zeros(flags.shape, dtype=torch.long).index_add_(0, roots, values.long())
    flags |= hits > 0


def _nonzero_along(tensor: Tensor, dim: int) -> Tensor:
    """Per position along ``dim``: does the slice hold any non-zero entry (bool, on CPU)."""
    alive = (tensor != 0).movedim(dim, 0)
    return alive.reshape(alive.shape[0], -1).any(1).cpu()


def _maps_zero_to_zero(norm: _BatchNorm) -> Tensor:
    """Per channel: does the norm map an all-zero input channel to zero, in train mode
    (batch mean 0: output ``β``) and in eval mode (output ``β − γ·μ/√(σ²+ε)``)."""
    zero = torch.ones(norm.num_features, dtype=torch.bool)
    scale_zero = torch.zeros(norm.num_features, dtype=torch.bool)
    if norm.affine:
        zero &= norm.bias.detach().cpu() == 0
        scale_zero = norm.weight.detach().cpu() == 0
    if norm.track_running_stats and norm.running_mean is not None:
        zero &= scale_zero | (norm.running_mean.detach().cpu() == 0)
    return zero


# --------------------------------------------------------------------------------------------
# check and report
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def _check_outputs(
    model: nn.Module,
    batch: Any,
    expected: Sequence[Tensor],
    atol: float,
    *,
    call: Callable[[nn.Module, Any], Any] | None = None,
    cause: str = "Torch-Pruning mis-traced a channel dependency",
) -> float:
    """Run the compact model on the probe batch (``call(model, batch)``, default
    ``model(batch)``); raise unless its outputs match the masked model's within
    ``atol · max(1, max |outputs|)``. ``cause``: the likely reason, named in the errors."""
    model.eval()
    try:
        outputs = output_tensors(call(model, batch) if call else model(batch))
    except Exception as err:
        raise UnsupportedModelError(
            f"compact: the compacted model no longer runs ({type(err).__name__}: "
            f"{_one_line(err)}); {cause}"
        ) from err
    shapes = [tuple(t.shape) for t in outputs]
    if shapes != [tuple(t.shape) for t in expected]:
        raise UnsupportedModelError(
            f"compact: the compacted model's outputs have shapes {shapes}, the masked model's "
            f"{[tuple(t.shape) for t in expected]}; {cause}"
        )
    diff = max(
        (
            float((a - b).abs().max())
            for a, b in zip(outputs, expected, strict=True)
            if a.numel()
        ),
        default=0.0,
    )
    scale = max((float(t.abs().max()) for t in expected if t.numel()), default=0.0)
    tolerance = atol * max(1.0, scale)
    if not diff <= tolerance:
        raise UnsupportedModelError(
            f"compact: the compacted model's outputs differ from the masked model's by "
            f"{diff:.3g} > {tolerance:.3g}; an op between layers mixes channels in a way the "
            "dependency graph does not see (use check=False to inspect the result)"
        )
    return diff


def _layer_shapes(model: nn.Module) -> dict[str, tuple[str, int, int, int]]:
    """``{layer: (kind, out, in, weight+bias parameters)}`` of every Conv/Linear layer."""
    shapes = {}
    for name, module in model.named_modules():
        if not is_prunable_layer(module):  # transformers' Conv1D included
            continue
        out_units, in_units = layer_features(module)
        params = sum(p.numel() for p in module.parameters(recurse=False))
        shapes[name] = (type(module).__name__, out_units, in_units, params)
    return shapes


def _layer_changes(
    before: Mapping[str, tuple[str, int, int, int]],
    after: Mapping[str, tuple[str, int, int, int]],
    counts_before: Counts,
    counts_after: Counts,
) -> list[LayerChange]:
    flops_before = {layer.name: layer.flops for layer in counts_before.layers}
    flops_after = {layer.name: layer.flops for layer in counts_after.layers}
    changes = []
    for name, (kind, out_before, in_before, params_before) in before.items():
        _kind, out_after, in_after, params_after = after[name]
        changes.append(
            LayerChange(
                name=name,
                kind=kind,
                out_before=out_before,
                out_after=out_after,
                in_before=in_before,
                in_after=in_after,
                params_before=params_before,
                params_after=params_after,
                flops_before=flops_before.get(name, 0),
                flops_after=flops_after.get(name, 0),
            )
        )
    return changes

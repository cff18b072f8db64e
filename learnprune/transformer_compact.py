"""Compaction of transformer blocks: dropped attention heads and MLP neurons removed for real.

:func:`learnprune.compact` sends a model here when it holds attention blocks
(:func:`~learnprune.transformer_groups.find_attention_blocks`): Torch-Pruning's dependency
graph does not see that a head is ``d`` consecutive Q/K/V rows reshaped into ``(H, d)``,
so the cut is done directly, block by block, on the structure that
:mod:`learnprune.transformer_groups` finds.

When a head or a neuron may go (the rules of :mod:`learnprune.compact`, per block):

* **head** ``h`` (rows ``[h·d, (h+1)·d)`` of Q, K, V, columns of the output projection
  ``W_o``): removed when nothing reads it (its ``W_o`` columns are zero), or when it is
  provably zero: its value rows *and* value biases are zero (then ``softmax(·) V_h = 0``
  whatever Q and K are) and the output projection saw exactly zero on its columns on the
  probe batch; with grouped-query attention the unit is a key/value group (a key/value
  head and the ``r`` query heads that read it, see :mod:`learnprune.transformer_groups`),
  removed when none of its query heads' ``W_o`` columns is read, or when its value rows are
  zero and its columns were seen zero;
* **neuron** ``j`` of an MLP: removed when the reader's column ``j`` is zero, or when every
  producer's row ``j`` and bias ``j`` are zero and the reader saw exactly zero on input ``j``
  on the probe batch (a guard against activations with ``f(0) ≠ 0``).

Every block keeps at least one head and one neuron. Removing heads shrinks the Q, K, V
rows and the output projection's columns and sets the attention module's
``num_attention_heads`` / ``num_heads`` / ``n_heads``, ``num_key_value_heads`` and
``all_head_size`` to the kept counts (``num_key_value_groups = H / H_kv`` is unchanged;
GPT-2's fused ``c_attn``, a ``Conv1D``, loses the head's Q, K and V columns and
``split_size`` follows); the shared ``config`` keeps the original sizes (heads now differ
per layer), so save a compact Hugging Face model with ``torch.save``, not
``save_pretrained``. Heads of ``nn.MultiheadAttention`` are masked but not removed (its
forward pass assumes ``embed_dim = H·d``); they are listed in
:attr:`CompactResult.skipped`. Other layers (embeddings, the patch conv, the pooler, the
classifier) are left as they are here;
:func:`learnprune.compact` then cuts their dropped channels in a second pass.

The model runs on ``example_inputs``: a tensor (``model(x)``), a tuple (``model(*x)``) or a
mapping (``model(**x)``, e.g. ``{"input_ids": ..., "attention_mask": ...}``); without them a
Hugging Face model's ``dummy_inputs`` (text models) or a random batch of ``input_shape``.
FLOPs are counted for the first example of the batch.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from learnprune.compact import (
    CompactResult,
    GroupDecision,
    _check_outputs,
    _checked_masks,
    _layer_changes,
    _layer_shapes,
    _one_line,
    _refuse_unsupported,
    apply_masks,
    model_inputs,
    output_tensors,
)
from learnprune.compact import count_on as _count
from learnprune.errors import UnsupportedModelError
from learnprune.groups import call_model, first_example, weight_axes
from learnprune.transformer_groups import (
    HEAD_COUNT_ATTRS,
    AttentionBlock,
    MLPBlock,
    find_attention_blocks,
    find_mlp_blocks,
    kv_group_index,
    query_group_index,
)


def has_attention_blocks(model: nn.Module) -> bool:
    """Whether the model holds a multi-head attention that :mod:`transformer_groups` finds."""
    blocks, _refused = find_attention_blocks(model)
    return bool(blocks)


def compact_transformer(
    model: nn.Module,
    masks: Mapping[str, Tensor] | None = None,
    input_shape: Sequence[int] | None = None,
    *,
    example_inputs: Any = None,
    check: bool = True,
    atol: float = 1e-5,
) -> CompactResult:
    """Remove the dropped heads and MLP neurons of every transformer block.

    Same contract as :func:`learnprune.compact` (the caller's model is untouched; the
    result's outputs are checked against the masked model's), with the model run on
    ``example_inputs`` (see the module docstring).
    """
    _refuse_unsupported(model)
    keep_masks = _checked_masks(model, masks)
    try:
        work = copy.deepcopy(model)
    except Exception as err:  # a module that cannot be copied
        raise UnsupportedModelError(f"compact: cannot deep-copy the model ({err})") from err
    work.eval()
    apply_masks(work, keep_masks)
    inputs = model_inputs(work, example_inputs, input_shape)

    attention, refused = find_attention_blocks(work)
    mlps = find_mlp_blocks(work)
    skipped = {f"heads:{name}": why for name, why in refused.items()}
    readers = [work.get_submodule(b.output) for b in attention if not b.packed]
    readers += [work.get_submodule(b.reader) for b in mlps]
    expected, input_scale = _probe(work, inputs, readers)
    before = _count(work, inputs)
    shapes_before = _layer_shapes(work)

    decisions: list[GroupDecision] = []
    with torch.no_grad():
        for block in attention:
            if block.packed:
                skipped[f"heads:{block.name}"] = (
                    "nn.MultiheadAttention assumes embed_dim = heads x head_dim: heads are "
                    "masked, not removed"
                )
                continue
            decision = _decide_heads(work, block, input_scale)
            _cut_heads(work, block, decision.removed)
            decisions.append(decision)
        for mlp in mlps:
            decision = _decide_neurons(work, mlp, input_scale)
            _cut_neurons(work, mlp, decision.removed)
            decisions.append(decision)

    max_abs_diff = (
        _check_outputs(
            work, inputs, expected, atol, call=call_model, cause="the head or neuron cut is wrong"
        )
        if check
        else None
    )
    work.train(model.training)
    after = _count(work, inputs)
    return CompactResult(
        model=work,
        layers=_layer_changes(shapes_before, _layer_shapes(work), before, after),
        groups=decisions,
        skipped=skipped,
        before=before,
        after=after,
        max_abs_diff=max_abs_diff,
    )


# --------------------------------------------------------------------------------------------
# inputs, probe, counts
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def _probe(
    model: nn.Module, inputs: Any, readers: Sequence[nn.Module]
) -> tuple[list[Tensor], dict[nn.Module, Tensor]]:
    """The model's outputs on ``inputs`` and, per reader, ``max |x|`` of each input feature."""
    input_scale: dict[nn.Module, Tensor] = {}

    def read_input(module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0] if args else None
        if isinstance(x, Tensor) and x.dim() > 0:
            scale = x.abs().reshape(-1, x.shape[-1]).amax(0).float().cpu()
            known = input_scale.get(module)
            input_scale[module] = scale if known is None else torch.maximum(known, scale)

    hooks = [reader.register_forward_pre_hook(read_input) for reader in readers]
    try:
        outputs = output_tensors(call_model(model, inputs))
    except Exception as err:
        raise UnsupportedModelError(
            f"compact: the model does not run on the example inputs ({type(err).__name__}: "
            f"{_one_line(err)})"
        ) from err
    finally:
        for hook in hooks:
            hook.remove()
    if not outputs:
        raise UnsupportedModelError("compact: the model's forward pass returns no tensor")
    return outputs, input_scale


# --------------------------------------------------------------------------------------------
# deciding and cutting
# --------------------------------------------------------------------------------------------


def _alive_outputs(layer: nn.Module) -> Tensor:
    """Per output of a Linear or ``Conv1D``: does its weight row (column) or bias hold a
    non-zero."""
    alive = (layer.weight != 0).any(weight_axes(layer)[1])
    if layer.bias is not None:
        alive |= layer.bias != 0
    return alive.cpu()


def _read_inputs(layer: nn.Module) -> Tensor:
    """Per input of a Linear or ``Conv1D``: does its weight column (row) hold a non-zero."""
    return (layer.weight != 0).any(weight_axes(layer)[0]).cpu()


def _any_per_group(flags: Tensor, index: Tensor, groups: int) -> Tensor:
    hits = torch.zeros(groups, dtype=torch.long).index_add_(0, index, flags.long())
    return hits > 0


def _removable(read: Tensor, writes: Tensor, seen: Tensor) -> tuple[int, ...]:
    """Rule of the module docstring: nothing reads it, or it is zero and was seen zero;
    the first group is kept when every group would go."""
    removable = ~read | (~writes & ~seen)
    if bool(removable.all()):
        removable[0] = False
    return tuple(int(k) for k in torch.nonzero(removable).flatten())


def _seen(
    reader: nn.Module, input_scale: Mapping[nn.Module, Tensor], index: Tensor, groups: int
) -> Tensor:
    scale = input_scale.get(reader)
    if scale is None or scale.numel() != index.numel():
        return torch.ones(groups, dtype=torch.bool)  # not observed: assume it reads something
    return _any_per_group(scale != 0, index, groups)


def _decide_heads(
    model: nn.Module, block: AttentionBlock, input_scale: Mapping[nn.Module, Tensor]
) -> GroupDecision:
    """Per key/value group (a head without grouped-query attention): the rule of the
    module docstring over its query heads' output columns and its value rows."""
    groups, index = block.num_groups, query_group_index(block)
    output = model.get_submodule(block.output)
    read = _any_per_group(_read_inputs(output), index, groups)
    value_alive = _alive_outputs(model.get_submodule(block.value))
    if block.fused:  # [Q, K, V]: the value outputs are the last H_kv·d
        value_alive = value_alive[-block.num_kv_heads * block.head_dim :]
    writes = _any_per_group(value_alive, kv_group_index(block), groups)
    seen = _seen(output, input_scale, index, groups)
    return GroupDecision(
        root=block.name,
        writers=(block.query, block.key, block.value),
        readers=(block.output,),
        channels=groups,
        removed=_removable(read, writes, seen),
    )


def _decide_neurons(
    model: nn.Module, block: MLPBlock, input_scale: Mapping[nn.Module, Tensor]
) -> GroupDecision:
    index = torch.arange(block.width)
    reader = model.get_submodule(block.reader)
    read = _read_inputs(reader)
    writes = torch.zeros(block.width, dtype=torch.bool)
    for name in block.producers:
        writes |= _alive_outputs(model.get_submodule(name))
    seen = _seen(reader, input_scale, index, block.width)
    return GroupDecision(
        root=block.producers[0],
        writers=block.producers,
        readers=(block.reader,),
        channels=block.width,
        removed=_removable(read, writes, seen),
    )


def _kept_positions(groups: int, group_size: int, removed: Sequence[int]) -> Tensor:
    dropped = set(removed)
    kept = [g for g in range(groups) if g not in dropped]
    return (torch.tensor(kept)[:, None] * group_size + torch.arange(group_size)).flatten()


def _cut_heads(model: nn.Module, block: AttentionBlock, removed: Sequence[int]) -> None:
    """Keep the other groups' Q/K/V rows and output columns; update the head counts
    (``H_kv`` shrinks with ``H``, so ``r = H / H_kv`` and ``num_key_value_groups`` stay)."""
    if not removed:
        return
    groups, rows_per_group = block.num_groups, block.query_heads_per_group * block.head_dim
    query_keep = _kept_positions(groups, rows_per_group, removed)
    kv_keep = _kept_positions(groups, block.head_dim, removed)
    if block.fused:  # [Q, K, V] outputs of one layer
        query_width, kv_width = block.num_heads * block.head_dim, groups * block.head_dim
        value_keep = query_width + kv_width + kv_keep
        fused_keep = torch.cat((query_keep, query_width + kv_keep, value_keep))
        shrink_linear(model.get_submodule(block.query), rows=fused_keep)
    else:
        shrink_linear(model.get_submodule(block.query), rows=query_keep)
        for name in (block.key, block.value):
            shrink_linear(model.get_submodule(name), rows=kv_keep)
    shrink_linear(model.get_submodule(block.output), columns=query_keep)
    attention = model.get_submodule(block.name)
    kept_kv_heads = groups - len(removed)
    kept_heads = kept_kv_heads * block.query_heads_per_group
    if block.fused:  # GPT-2 splits c_attn's outputs into Q, K, V of split_size each
        attention.split_size = kept_heads * block.head_dim
    for attr in HEAD_COUNT_ATTRS:
        if isinstance(getattr(attention, attr, None), int):
            setattr(attention, attr, kept_heads)
    if isinstance(getattr(attention, "num_key_value_heads", None), int):
        attention.num_key_value_heads = kept_kv_heads
    if isinstance(getattr(attention, "all_head_size", None), int):
        attention.all_head_size = kept_heads * block.head_dim


def _cut_neurons(model: nn.Module, block: MLPBlock, removed: Sequence[int]) -> None:
    if not removed:
        return
    keep = _kept_positions(block.width, 1, removed)
    for name in block.producers:
        shrink_linear(model.get_submodule(name), rows=keep)
    shrink_linear(model.get_submodule(block.reader), columns=keep)


def shrink_linear(
    layer: nn.Module, *, rows: Tensor | None = None, columns: Tensor | None = None
) -> None:
    """Keep only the outputs ``rows`` (weight rows and bias) and/or the inputs ``columns`` of
    a Linear layer, in place (the module object and its class stay). A ``Conv1D`` (weight
    ``(in, out)``) keeps the same outputs and inputs, its weight's columns and rows."""
    weight = layer.weight.detach()
    bias = None if layer.bias is None else layer.bias.detach()
    out_axis, in_axis = weight_axes(layer)
    if rows is not None:
        weight = weight.index_select(out_axis, rows.to(weight.device))
        bias = None if bias is None else bias[rows.to(bias.device)]
    if columns is not None:
        weight = weight.index_select(in_axis, columns.to(weight.device))
    if isinstance(layer, nn.Linear):
        layer.out_features, layer.in_features = weight.shape
    else:  # Conv1D: nf outputs, nx inputs
        layer.nx, layer.nf = weight.shape
    layer.weight = nn.Parameter(weight.clone(), requires_grad=layer.weight.requires_grad)
    if bias is not None:
        layer.bias = nn.Parameter(bias.clone(), requires_grad=layer.bias.requires_grad)


__all__ = [
    "call_model",
    "compact_transformer",
    "first_example",
    "has_attention_blocks",
    "shrink_linear",
]

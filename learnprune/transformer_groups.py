"""Attention-head and MLP-neuron groups of transformer blocks.

Two structured group kinds for transformers (``build_groups(model, kind)``):

``heads``
    one group per attention head. With ``H`` heads of ``d`` dimensions, head ``h`` owns the
    rows ``[h·d, (h+1)·d)`` of the query, key and value weights and biases (role ``"out"``)
    and the same columns of the output projection that reads the heads (role ``"in"``)::

        head h:  W_q[h·d:(h+1)·d, :], b_q[h·d:(h+1)·d], the same of W_k, b_k, W_v, b_v,
                 W_o[:, h·d:(h+1)·d]

    With grouped-query attention (Llama, Mistral, Qwen2 with ``num_key_value_heads =
    H_kv < H``) the ``H / H_kv = r`` query heads ``[g·r, (g+1)·r)`` share key/value head
    ``g``; a query head cannot go alone (every key/value head must keep ``r`` query heads),
    so the unit is the *key/value group*: one group per key/value head, owning its key and
    value rows and its ``r`` query heads' rows and output columns::

        group g:  W_k[g·d:(g+1)·d, :], W_v[g·d:(g+1)·d, :] (and biases),
                  W_q[g·r·d:(g+1)·r·d, :], W_o[:, g·r·d:(g+1)·r·d]

    (for ``H_kv = H`` this is one group per head, as above).

    For ``torch.nn.MultiheadAttention`` (``E = H·d``) the packed ``in_proj_weight`` (shape
    ``(3E, E)``) holds Q, K, V one after the other: head ``h`` owns its rows
    ``c·E + [h·d, (h+1)·d)`` for ``c = 0, 1, 2``, the same entries of ``in_proj_bias`` and
    the columns ``[h·d, (h+1)·d)`` of ``out_proj.weight``. (``in_proj_weight`` is not a
    Conv/Linear weight, so accounting and group sizes count only ``out_proj``'s columns.)
    GPT-2's ``c_attn`` (a ``Conv1D``, weight ``(E, 3E)``) computes Q, K, V in one: head
    ``h`` owns its outputs ``c·E + [h·d, (h+1)·d)``, ``c = 0, 1, 2`` (weight columns and
    bias entries), and the rows ``[h·d, (h+1)·d)`` of ``c_proj``'s weight, ``(E, E)``, its
    inputs.
``mlp_neurons``
    one group per hidden unit of a block's feed-forward network: unit ``j`` is row ``j`` (and
    bias ``j``) of every layer that produces it (``intermediate.dense``; ``fc1``; both
    ``gate_proj`` and ``up_proj`` of a gated MLP) and column ``j`` of the layer that reads it
    (``output.dense``; ``fc2``; ``down_proj``)::

        neuron j:  W_1[j, :], b_1[j], W_2[:, j]

``heads+mlp_neurons``
    both: one group set per attention block and one per MLP. (``"neuron"`` alone is an
    alias of ``out_channel``; the MLP kind is spelled ``mlp_neurons`` to keep them apart.)

Blocks are found by structure, not by class, so Hugging Face BERT/RoBERTa-style layers
(``attention.self.{query,key,value}`` read by ``attention.output.dense``; ``intermediate.dense``
read by ``output.dense``), ViT/Llama-style ones (``q_proj``/``k_proj``/``v_proj`` read by
``o_proj`` or ``out_proj``; ``mlp.fc1``/``fc2``, ``gate_proj``/``up_proj``/``down_proj``),
DistilBERT (``q_lin``...``out_lin``, ``lin1``/``lin2``), GPT-2 (``attn.c_attn``/``c_proj``,
``mlp.c_fc``/``c_proj``, transposed ``Conv1D`` layers) and PyTorch's own
``nn.TransformerEncoderLayer`` (``self_attn``, ``linear1``/``linear2``) are all covered. The head
size ``d`` is the attention module's ``head_dim`` or ``attention_head_size`` attribute
(which stays true after compaction, when a Llama layer's shared ``config`` no longer does),
else the query width over the head count read from ``num_attention_heads``, ``num_heads``
or ``n_heads``, else ``config.num_attention_heads``; ``H`` is the query width over ``d``
and ``H_kv`` the key width over ``d``. A block whose head count cannot be read, whose
key and value widths differ, or whose ``H`` is not a multiple of ``H_kv`` is left out
and listed in ``plan.skipped``. ``exclude`` patterns leave out a block when they match any
of its layers, and so does a tied tensor (:func:`learnprune.groups.tied_parameters`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from learnprune.groups import (
    GroupSet,
    TensorSlices,
    is_linear_layer,
    layer_features,
    tied_parameters,
    tied_reason,
    weight_axes,
)

HEADS = "heads"
MLP_NEURONS = "mlp_neurons"
TRANSFORMER_KINDS = (HEADS, MLP_NEURONS, f"{HEADS}+{MLP_NEURONS}")
"""Kind names :func:`learnprune.groups.build_groups` dispatches here."""

_ALIASES = {
    "head": HEADS,
    "heads": HEADS,
    "attention_heads": HEADS,
    "mlp_neuron": MLP_NEURONS,
    "mlp_neurons": MLP_NEURONS,
    "ffn_neurons": MLP_NEURONS,
}
_QKV_NAMES = (
    ("query", "key", "value"),
    ("q_proj", "k_proj", "v_proj"),
    ("q_lin", "k_lin", "v_lin"),
)
_OWN_OUTPUT_NAMES = ("o_proj", "out_proj", "out_lin")
_MLP_NAMES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("intermediate.dense",), "output.dense"),
    (("fc1",), "fc2"),
    (("lin1",), "lin2"),
    (("linear1",), "linear2"),
    (("gate_proj", "up_proj"), "down_proj"),
    (("up_proj",), "down_proj"),
    (("c_fc",), "c_proj"),
)
HEAD_COUNT_ATTRS = ("num_attention_heads", "num_heads", "n_heads")
"""Attributes an attention module may hold its head count in (compaction updates them)."""
_HEAD_DIM_ATTRS = ("head_dim", "attention_head_size")


@dataclass(frozen=True)
class AttentionBlock:
    """One multi-head attention: where its heads live.

    Attributes:
        name: the attention module (holds the head-count attributes).
        query, key, value: the Linear layers computing Q, K, V (for a packed
            ``nn.MultiheadAttention``: all three are ``name``, see ``packed``).
        output: the Linear layer whose input columns read the heads.
        num_heads: ``H``.
        head_dim: ``d``; the query width is ``H·d``.
        num_kv_heads: ``H_kv``, the key/value heads (``H`` without grouped-query
            attention); the key and value widths are ``H_kv·d``.
        packed: an ``nn.MultiheadAttention`` with one ``in_proj_weight``.
        fused: one layer (``query``, ``key`` and ``value`` all name it, GPT-2's ``c_attn``)
            whose outputs are Q, K, V one after the other, split by the module's
            ``split_size``.
    """

    name: str
    query: str
    key: str
    value: str
    output: str
    num_heads: int
    head_dim: int
    num_kv_heads: int
    packed: bool = False
    fused: bool = False

    @property
    def layers(self) -> tuple[str, ...]:
        """The member layers' names."""
        return tuple(dict.fromkeys((self.query, self.key, self.value, self.output)))

    @property
    def num_groups(self) -> int:
        """Groups of the ``heads`` kind: one per key/value head, ``H_kv``."""
        return self.num_kv_heads

    @property
    def query_heads_per_group(self) -> int:
        """``r = H / H_kv``: query heads sharing one key/value head."""
        return self.num_heads // self.num_kv_heads


@dataclass(frozen=True)
class MLPBlock:
    """One feed-forward network: ``readers(act(producers(x)))``.

    Attributes:
        name: the module holding both layers.
        producers: the Linear layers whose output rows are the hidden units (two for a
            gated MLP, whose units are ``act(gate(x)) · up(x)``).
        reader: the Linear layer whose input columns read them.
        width: number of hidden units.
    """

    name: str
    producers: tuple[str, ...]
    reader: str
    width: int

    @property
    def layers(self) -> tuple[str, ...]:
        """The member layers' names."""
        return (*self.producers, self.reader)


def parse_transformer_kind(kind: str) -> tuple[str, ...] | None:
    """``("heads",)``, ``("mlp_neurons",)`` or both for a transformer kind name (parts joined by
    ``+``, in any order; aliases ``attention_heads``, ``ffn_neurons``), ``None`` for any other."""
    parts = [p.strip().lower().replace("-", "_") for p in kind.split("+")]
    if not parts or any(p not in _ALIASES for p in parts):
        return None
    return tuple(k for k in (HEADS, MLP_NEURONS) if k in {_ALIASES[p] for p in parts})


def _join(parent: str, child: str) -> str:
    return f"{parent}.{child}" if parent else child


def _linear(model: nn.Module, name: str) -> nn.Module | None:
    """The ``nn.Linear`` or transposed Linear (``Conv1D``) named ``name``, if any."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return None
    return module if is_linear_layer(module) else None


def head_count(module: nn.Module) -> int | None:
    """The attention module's head count, from its own attributes or its config."""
    for attr in HEAD_COUNT_ATTRS:
        value = getattr(module, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(getattr(module, "config", None), "num_attention_heads", None)
    return value if isinstance(value, int) and value > 0 else None


def find_attention_blocks(model: nn.Module) -> tuple[list[AttentionBlock], dict[str, str]]:
    """Every multi-head attention of the model, and ``{module: reason}`` for those refused."""
    blocks: list[AttentionBlock] = []
    refused: dict[str, str] = {}
    for name, module in model.named_modules():
        if "parametrizations" in name.split("."):
            continue
        if isinstance(module, nn.MultiheadAttention):
            block, reason = _packed_block(name, module)
        else:
            block, reason = _split_block(model, name, module)
            if block is None and not reason:
                block, reason = _fused_block(name, module)
        if block is not None:
            blocks.append(block)
        elif reason:
            refused[name] = reason
    return blocks, refused


def _packed_block(name: str, module: nn.MultiheadAttention) -> tuple[AttentionBlock | None, str]:
    if not module._qkv_same_embed_dim:
        return None, "nn.MultiheadAttention with separate q/k/v weights (kdim/vdim) is not handled"
    if module.bias_k is not None:
        return None, "nn.MultiheadAttention with add_bias_kv is not handled"
    out = _join(name, "out_proj")
    heads = module.num_heads
    return AttentionBlock(name, name, name, name, out, heads, module.head_dim, heads, True), ""


def _split_block(
    model: nn.Module, name: str, module: nn.Module
) -> tuple[AttentionBlock | None, str]:
    for names in _QKV_NAMES:
        layers = [getattr(module, n, None) for n in names]
        if all(is_linear_layer(layer) for layer in layers):
            break
    else:
        return None, ""
    query, key, value = (_join(name, n) for n in names)
    width, kv_width, v_width = (layer_features(layer)[0] for layer in layers)
    if v_width != kv_width:
        return None, f"key width {kv_width} differs from the value width {v_width}"
    head_dim, reason = _head_dim(module, width)
    if head_dim is None:
        return None, reason
    if width % head_dim or kv_width % head_dim:
        return None, f"query width {width} or key width {kv_width} is not a multiple of {head_dim}"
    heads, kv_heads = width // head_dim, kv_width // head_dim
    if heads % kv_heads:
        return None, f"{heads} query heads do not share {kv_heads} key/value heads evenly"
    output = _output_projection(model, name, module, width)
    if output is None:
        return None, "no output projection (o_proj, out_proj, or the parent's output.dense)"
    return AttentionBlock(name, query, key, value, output, heads, head_dim, kv_heads), ""


def _fused_block(name: str, module: nn.Module) -> tuple[AttentionBlock | None, str]:
    """GPT-2 style attention: ``c_attn`` computes ``[Q, K, V]`` (``split_size`` each),
    ``c_proj`` reads the heads."""
    fused, output = getattr(module, "c_attn", None), getattr(module, "c_proj", None)
    if not (is_linear_layer(fused) and is_linear_layer(output)):
        return None, ""
    if getattr(module, "q_attn", None) is not None:
        return None, "cross-attention (queries from q_attn, keys and values from c_attn)"
    width = getattr(module, "split_size", None)
    if not isinstance(width, int) or layer_features(fused)[0] != 3 * width:
        return None, "c_attn's outputs are not Q, K, V of split_size each"
    head_dim, reason = _head_dim(module, width)
    if head_dim is None:
        return None, reason
    if width % head_dim or layer_features(output)[1] != width:
        return None, f"query width {width} is not a multiple of {head_dim} or c_proj's inputs"
    heads = width // head_dim
    fused_name, output_name = _join(name, "c_attn"), _join(name, "c_proj")
    block = AttentionBlock(
        name, fused_name, fused_name, fused_name, output_name, heads, head_dim, heads, fused=True
    )
    return block, ""


def _head_dim(module: nn.Module, query_width: int) -> tuple[int | None, str]:
    """``d``: the module's own head size attribute, else the query width over the head
    count; ``(None, why)`` when neither can be read."""
    for attr in _HEAD_DIM_ATTRS:
        value = getattr(module, attr, None)
        if isinstance(value, int) and value > 0:
            return value, ""
    heads = head_count(module)
    if heads is None:
        return None, "no head_dim / num_attention_heads / num_heads attribute or config to read"
    if query_width % heads:
        return None, f"query width {query_width} is not a multiple of {heads} heads"
    return query_width // heads, ""


def _output_projection(model: nn.Module, name: str, module: nn.Module, width: int) -> str | None:
    """The Linear reading the heads: the module's own ``o_proj``/``out_proj``/``out_lin``, or
    for BERT-style attention (``attention.self``) the sibling ``attention.output.dense``."""
    for child in _OWN_OUTPUT_NAMES:
        layer = getattr(module, child, None)
        if layer is not None and is_linear_layer(layer) and layer_features(layer)[1] == width:
            return _join(name, child)
    if name:
        candidate = _join(name.rpartition(".")[0], "output.dense")
        layer = _linear(model, candidate)
        if layer is not None and layer_features(layer)[1] == width:
            return candidate
    return None


def find_mlp_blocks(model: nn.Module) -> list[MLPBlock]:
    """Every feed-forward network of the model found by the layer names in the module
    docstring (the producers' width must equal the reader's input width)."""
    blocks = []
    for name, _module in model.named_modules():
        if "parametrizations" in name.split("."):
            continue
        for producer_names, reader_name in _MLP_NAMES:
            producers = [_linear(model, _join(name, p)) for p in producer_names]
            reader = _linear(model, _join(name, reader_name))
            if reader is None or not all(p is not None for p in producers):
                continue
            width = layer_features(reader)[1]
            if all(layer_features(p)[0] == width for p in producers):  # type: ignore[arg-type]
                blocks.append(
                    MLPBlock(
                        name,
                        tuple(_join(name, p) for p in producer_names),
                        _join(name, reader_name),
                        width,
                    )
                )
                break
    return blocks


def query_group_index(block: AttentionBlock) -> Tensor:
    """Group of every query row (and output column): ``arange(H·d) // (r·d)`` (the head,
    ``arange(H·d) // d``, without grouped-query attention)."""
    return torch.arange(block.num_heads * block.head_dim) // (
        block.query_heads_per_group * block.head_dim
    )


def kv_group_index(block: AttentionBlock) -> Tensor:
    """Group of every key and value row: ``arange(H_kv·d) // d``."""
    return torch.arange(block.num_kv_heads * block.head_dim) // block.head_dim


def fused_qkv_index(block: AttentionBlock) -> Tensor:
    """Group of every output of a fused Q/K/V layer (``[Q, K, V]`` one after the other)."""
    kv = kv_group_index(block)
    return torch.cat((query_group_index(block), kv, kv))


def head_group_set(model: nn.Module, block: AttentionBlock) -> GroupSet:
    """The ``heads`` group set of one attention block (see the module docstring)."""
    index = query_group_index(block)
    pieces: list[TensorSlices] = []
    if block.packed:
        mha = model.get_submodule(block.name)
        packed_index = index.repeat(3)  # Q, K, V rows one after the other
        pieces.append(
            TensorSlices(
                block.name, "in_proj_weight", tuple(mha.in_proj_weight.shape), 0, packed_index
            )
        )
        if mha.in_proj_bias is not None:
            pieces.append(
                TensorSlices(
                    block.name, "in_proj_bias", tuple(mha.in_proj_bias.shape), 0, packed_index
                )
            )
    elif block.fused:
        fused_index = fused_qkv_index(block)
        pieces.extend(_rows(model.get_submodule(block.query), block.query, fused_index))
    else:
        pieces.extend(_rows(model.get_submodule(block.query), block.query, index))
        for layer_name in (block.key, block.value):
            pieces.extend(_rows(model.get_submodule(layer_name), layer_name, kv_group_index(block)))
    pieces.append(_columns(model.get_submodule(block.output), block.output, index))
    return GroupSet(f"{HEADS}:{block.name}", HEADS, block.num_groups, tuple(pieces))


def neuron_group_set(model: nn.Module, block: MLPBlock) -> GroupSet:
    """The ``mlp_neurons`` group set of one feed-forward network."""
    pieces: list[TensorSlices] = []
    for layer_name in block.producers:
        pieces.extend(_rows(model.get_submodule(layer_name), layer_name, None))
    pieces.append(_columns(model.get_submodule(block.reader), block.reader, None))
    return GroupSet(f"{MLP_NEURONS}:{block.name}", MLP_NEURONS, block.width, tuple(pieces))


def _rows(layer: nn.Module, name: str, index: Tensor | None) -> Iterator[TensorSlices]:
    """The layer's outputs (weight rows, columns of a ``Conv1D``, and bias) by ``index``."""
    yield TensorSlices(name, "weight", tuple(layer.weight.shape), weight_axes(layer)[0], index)
    if getattr(layer, "bias", None) is not None:
        yield TensorSlices(name, "bias", tuple(layer.bias.shape), 0, index)


def _columns(layer: nn.Module, name: str, index: Tensor | None) -> TensorSlices:
    """The layer's inputs (weight columns, rows of a ``Conv1D``) by ``index``."""
    shape = tuple(layer.weight.shape)
    return TensorSlices(name, "weight", shape, weight_axes(layer)[1], index, "in")


def _excluded(patterns: Sequence[str], layers: Sequence[str]) -> bool:
    names = [n for layer in layers for n in (layer, f"{layer}.weight")]
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names)


def transformer_group_sets(
    model: nn.Module, kinds: Sequence[str], exclude: Sequence[str] = ()
) -> tuple[list[GroupSet], dict[str, str]]:
    """The ``heads`` and/or ``mlp_neurons`` group sets of every block, and what was left out.

    Returns:
        the group sets (attention blocks first, in model order, then the MLPs) and
        ``{block: reason}`` for blocks left out.
    """
    sets: list[GroupSet] = []
    skipped: dict[str, str] = {}
    tied = tied_parameters(model)

    def add(key: str, group_set: GroupSet) -> None:
        shared = next((name for name in group_set.params if name in tied), None)
        if shared is None:
            sets.append(group_set)
        else:
            skipped[key] = f"{shared} is {tied_reason(shared, tied)}"

    if HEADS in kinds:
        blocks, refused = find_attention_blocks(model)
        skipped.update({f"heads:{name}": why for name, why in refused.items()})
        for block in blocks:
            if _excluded(exclude, (block.name, *block.layers)):
                skipped[f"heads:{block.name}"] = "excluded by pattern"
            else:
                add(f"heads:{block.name}", head_group_set(model, block))
        if not blocks and not refused:
            skipped[HEADS] = (
                "no attention block found (query/key/value or q_proj/k_proj/v_proj Linear "
                "layers, c_attn/c_proj Conv1D, nn.MultiheadAttention)"
            )
    if MLP_NEURONS in kinds:
        mlps = find_mlp_blocks(model)
        for mlp in mlps:
            if _excluded(exclude, (mlp.name, *mlp.layers)):
                skipped[f"mlp_neurons:{mlp.name}"] = "excluded by pattern"
            else:
                add(f"mlp_neurons:{mlp.name}", neuron_group_set(model, mlp))
        if not mlps:
            skipped[MLP_NEURONS] = (
                "no feed-forward block found (intermediate.dense/output.dense, fc1/fc2, "
                "lin1/lin2, linear1/linear2, up_proj/down_proj, c_fc/c_proj)"
            )
    return sets, skipped

"""Grouped-query attention (Llama with ``num_key_value_heads < num_attention_heads``): one
``heads`` group per key/value head, and its compaction, on a tiny Llama built from its
config (nothing downloaded)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

transformers = pytest.importorskip("transformers")

from learnprune.compact import apply_masks, compact  # noqa: E402
from learnprune.groups import build_groups, scatter_values  # noqa: E402
from learnprune.methods import Magnitude  # noqa: E402
from learnprune.transformer_groups import find_attention_blocks  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # uncovered embeddings, HF notices
]

HIDDEN, HEADS, KV_HEADS, INTERMEDIATE, VOCAB = 32, 4, 2, 48, 64
HEAD_DIM = HIDDEN // HEADS  # 8
REP = HEADS // KV_HEADS  # query heads per key/value head: 2


def tiny_llama(seed: int = 0) -> nn.Module:
    """LlamaForCausalLM, 2 layers, 4 query heads sharing 2 key/value heads of 8, MLP 48."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=32,
        attention_bias=True,
    )
    return transformers.LlamaForCausalLM(config).eval()


def token_ids(rows: int, seed: int) -> Tensor:
    return torch.randint(0, VOCAB, (rows, 7), generator=torch.Generator().manual_seed(seed))


def keep_masks(model: nn.Module, kind: str, dropped: dict[str, dict[int, list[int]]]) -> dict:
    """Keep-masks of ``build_groups(model, kind)``: set ``i`` of kind ``k`` drops the groups
    ``dropped[k][i]``."""
    masks: dict[str, Tensor] = {}
    seen: dict[str, int] = {}
    for group_set in build_groups(model, kind).sets:
        position = seen[group_set.kind] = seen.get(group_set.kind, -1) + 1
        keep = torch.ones(group_set.num_groups, dtype=torch.bool)
        keep[dropped.get(group_set.kind, {}).get(position, [])] = False
        for piece in group_set.slices:
            part = scatter_values(keep, piece.dim, piece.index, piece.shape).expand(piece.shape)
            masks[piece.param] = part.clone() & masks.get(piece.param, part)
    return masks


@torch.no_grad()
def logits(model: nn.Module, inputs: Any) -> Tensor:
    return (model(**inputs) if isinstance(inputs, dict) else model(inputs)).logits


def test_a_group_is_one_key_value_head_with_its_query_heads() -> None:
    model = tiny_llama()
    plan = build_groups(model, "heads")
    assert [s.num_groups for s in plan.sets] == [KV_HEADS, KV_HEADS]
    assert not [k for k in plan.skipped if k.startswith("heads")]
    masks = keep_masks(model, "heads", {"heads": {0: [1]}})  # layer 0, key/value head 1
    prefix = "model.layers.0.self_attn"
    query_rows = torch.arange(HEADS * HEAD_DIM) >= REP * HEAD_DIM  # query heads 2, 3: 16..31
    kv_rows = torch.arange(KV_HEADS * HEAD_DIM) >= HEAD_DIM  # key/value head 1: rows 8..15
    assert torch.equal(masks[f"{prefix}.q_proj.weight"].any(1), ~query_rows)
    assert torch.equal(masks[f"{prefix}.q_proj.bias"], ~query_rows)
    for name in ("k_proj", "v_proj"):
        assert masks[f"{prefix}.{name}.weight"].shape == (KV_HEADS * HEAD_DIM, HIDDEN)
        assert torch.equal(masks[f"{prefix}.{name}.weight"].all(1), ~kv_rows)
        assert torch.equal(masks[f"{prefix}.{name}.bias"], ~kv_rows)
    assert torch.equal(masks[f"{prefix}.o_proj.weight"].all(0), ~query_rows)
    assert bool(masks["model.layers.1.self_attn.q_proj.weight"].all())
    # weights per group: 16 query rows, 8 key rows, 8 value rows (x 32) and 16 output columns
    size = (REP * HEAD_DIM + 2 * HEAD_DIM) * HIDDEN + HIDDEN * REP * HEAD_DIM
    assert plan.sets[0].sizes().tolist() == [size, size]


def test_magnitude_prunes_whole_key_value_groups() -> None:
    model = tiny_llama()
    method = Magnitude(model, 0.15, "heads")  # 2 of the 4 groups of 1,536 weights
    assert all(gate.keep().sum() == 1 for gate in method.gates.values())  # 1 of 2 groups
    masks = method.masks()
    for layer in range(2):
        attention = f"model.layers.{layer}.self_attn"
        dropped_kv = ~masks[f"{attention}.k_proj.weight"].all(1)
        dropped_query = ~masks[f"{attention}.q_proj.weight"].all(1)
        assert int(dropped_kv.sum()) == HEAD_DIM and int(dropped_query.sum()) == REP * HEAD_DIM
        group = int(torch.nonzero(dropped_kv)[0]) // HEAD_DIM
        assert torch.equal(
            torch.nonzero(dropped_query).flatten() // (REP * HEAD_DIM),
            torch.full((REP * HEAD_DIM,), group),
        )
    assert torch.isfinite(logits(model, token_ids(2, 0))).all()


def test_compact_removes_key_value_groups_on_integer_token_ids() -> None:
    model = tiny_llama()
    masks = keep_masks(
        model,
        "heads+mlp_neurons",
        {"heads": {0: [0], 1: [1]}, "mlp_neurons": {0: list(range(10))}},
    )
    ids = token_ids(3, 1)
    result = compact(model, masks, example_inputs=ids)  # an integer tensor, no input_shape
    small = result.model
    for layer in small.model.layers:
        attention = layer.self_attn
        assert attention.q_proj.weight.shape == (REP * HEAD_DIM, HIDDEN)
        assert attention.k_proj.weight.shape == (HEAD_DIM, HIDDEN)
        assert attention.v_proj.bias.shape == (HEAD_DIM,)
        assert attention.o_proj.weight.shape == (HIDDEN, REP * HEAD_DIM)
        assert attention.num_key_value_groups == REP
    assert small.model.layers[0].mlp.gate_proj.out_features == INTERMEDIATE - 10
    assert small.model.layers[0].mlp.down_proj.in_features == INTERMEDIATE - 10
    assert [d.removed for d in result.groups[:2]] == [(0,), (1,)]
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-5
    assert result.after.params < result.before.params
    assert 0 < result.after.flops < result.before.flops

    masked = apply_masks(tiny_llama(), masks)
    padded = {"input_ids": token_ids(4, 2), "attention_mask": torch.ones(4, 7, dtype=torch.long)}
    padded["attention_mask"][1, :3] = 0
    assert torch.allclose(logits(small, padded), logits(masked, padded), atol=1e-5)
    # the compact model is found again with its own sizes (head_dim, not the shared config)
    blocks, refused = find_attention_blocks(small)
    assert not refused
    assert [(b.num_heads, b.num_kv_heads, b.head_dim) for b in blocks] == [(REP, 1, HEAD_DIM)] * 2


def test_compact_takes_a_dict_of_example_inputs() -> None:
    model = tiny_llama()
    masks = keep_masks(model, "heads", {"heads": {1: [0]}})
    inputs = {"input_ids": token_ids(2, 3), "attention_mask": torch.ones(2, 7, dtype=torch.long)}
    result = compact(model, masks, example_inputs=inputs)
    kv_heads = [b.num_kv_heads for b in find_attention_blocks(result.model)[0]]
    assert kv_heads == [KV_HEADS, 1]
    masked = apply_masks(tiny_llama(), masks)
    assert torch.allclose(logits(result.model, inputs), logits(masked, inputs), atol=1e-5)

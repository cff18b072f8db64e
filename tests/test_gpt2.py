"""GPT-2: transformers' ``Conv1D`` (a Linear whose weight is stored ``(in, out)``) in every
group kind and in compaction, and the tied ``lm_head.weight`` / ``transformer.wte.weight``
counted once, never masked, and reported as it is; on a tiny GPT-2 built from its config
(nothing downloaded)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402

from learnprune.accounting import count  # noqa: E402
from learnprune.compact import apply_masks, compact  # noqa: E402
from learnprune.errors import ConfigError, UnsupportedModelError  # noqa: E402
from learnprune.groups import build_groups, custom_group_set, scatter_values  # noqa: E402
from learnprune.inspection import prunability_report  # noqa: E402
from learnprune.masking import FixedMask, attach  # noqa: E402
from learnprune.methods import SCL, Magnitude  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # uncovered embeddings, HF notices
]

EMBED, HEADS, INNER, VOCAB, LAYERS = 32, 4, 48, 64, 2
HEAD_DIM = EMBED // HEADS  # 8


def tiny_gpt2(seed: int = 0) -> nn.Module:
    """GPT2LMHeadModel, 2 layers x 4 heads of 8, MLP 48, lm_head tied to wte."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=16,
        n_embd=EMBED,
        n_layer=LAYERS,
        n_head=HEADS,
        n_inner=INNER,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config).eval()


def two_conv1d() -> nn.Module:
    """Conv1D(4 -> 6), ReLU, Conv1D(6 -> 2) with weights 0..23 (``W[i, o] = 6·i + o``)."""
    model = nn.Sequential(Conv1D(6, 4), nn.ReLU(), Conv1D(2, 6))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(24.0).view(4, 6))
        model[0].bias.copy_(torch.arange(6.0))
    return model


def keep_masks(model: nn.Module, kind: str, dropped: dict[str, list[int]]) -> dict[str, Tensor]:
    masks: dict[str, Tensor] = {}
    for group_set in build_groups(model, kind).sets:
        keep = torch.ones(group_set.num_groups, dtype=torch.bool)
        keep[dropped.get(group_set.kind, [])] = False
        for piece in group_set.slices:
            part = scatter_values(keep, piece.dim, piece.index, piece.shape).expand(piece.shape)
            masks[piece.param] = part.clone() & masks.get(piece.param, part)
    return masks


@torch.no_grad()
def logits(model: nn.Module, ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    return model(ids, attention_mask=attention_mask).logits


# --- Conv1D in the layer kinds ---------------------------------------------------------------


def test_conv1d_layer_kinds_cut_its_transposed_weight() -> None:
    model = two_conv1d()
    out_channel = keep_masks(model, "out_channel", {"out_channel": [2]})
    assert set(out_channel) == {"0.weight", "0.bias"}  # "2" is the classifier
    assert torch.nonzero(~out_channel["0.weight"].all(0)).flatten().tolist() == [2]  # column 2
    assert bool(out_channel["0.weight"].any(0)[2]) is False
    assert torch.nonzero(~out_channel["0.bias"]).flatten().tolist() == [2]
    hidden = apply_masks(copy.deepcopy(model), out_channel)[0](torch.ones(1, 4))
    assert hidden[0, 2] == 0 and hidden[0, 3] == 6 * (0 + 1 + 2 + 3) + 4 * 3 + 3  # x·W[:, 3] + b

    in_channel = keep_masks(model, "in_channel", {"in_channel": [1]})
    assert [s.num_groups for s in build_groups(model, "in_channel").sets] == [4, 6]
    assert torch.nonzero(~in_channel["0.weight"].all(1)).flatten().tolist() == [1]  # row 1

    magnitude = Magnitude(model, groups="2:4")  # per output column, the 2 largest of 4 inputs
    keep = magnitude.masks()["0.weight"]
    assert torch.equal(keep, torch.tensor([[False] * 6, [False] * 6, [True] * 6, [True] * 6]))


def test_count_reads_conv1d_outputs_as_columns() -> None:
    model = two_conv1d()
    apply_masks(model, keep_masks(model, "out_channel", {"out_channel": [0, 5]}))  # columns
    with torch.no_grad():
        model[0].weight[1] = 0.0  # input 1 read by no output
    layer = count(model).layers[0]
    assert (layer.kind, layer.shape, layer.weights) == ("Conv1D", (4, 6), 24)
    assert (layer.kept_out, layer.kept_in, layer.units) == (4, 3, 3)  # a Linear's units: inputs
    assert layer.nonzero_weights == 24 - 2 * 4 - 4  # columns 0 and 5, what is left of row 1


# --- GPT-2 heads and MLP neurons --------------------------------------------------------------


def test_gpt2_heads_own_their_columns_of_the_fused_qkv() -> None:
    model = tiny_gpt2()
    plan = build_groups(model, "heads+mlp_neurons")
    assert [(s.kind, s.num_groups) for s in plan.sets] == [("heads", HEADS)] * LAYERS + [
        ("mlp_neurons", INNER)
    ] * LAYERS
    masks = keep_masks(model, "heads+mlp_neurons", {"heads": [1], "mlp_neurons": [7]})
    attention = "transformer.h.0.attn"
    dropped = torch.zeros(3 * EMBED, dtype=torch.bool)
    for part in range(3):  # head 1 of Q, K and V: outputs c·32 + 8..15
        dropped[part * EMBED + HEAD_DIM : part * EMBED + 2 * HEAD_DIM] = True
    assert masks[f"{attention}.c_attn.weight"].shape == (EMBED, 3 * EMBED)
    assert torch.equal(masks[f"{attention}.c_attn.weight"].all(0), ~dropped)
    assert torch.equal(masks[f"{attention}.c_attn.bias"], ~dropped)
    rows = masks[f"{attention}.c_proj.weight"].all(1)  # c_proj reads the heads on its rows
    assert torch.nonzero(~rows).flatten().tolist() == list(range(HEAD_DIM, 2 * HEAD_DIM))
    assert torch.nonzero(~masks["transformer.h.1.mlp.c_fc.weight"].all(0)).tolist() == [[7]]
    assert torch.nonzero(~masks["transformer.h.1.mlp.c_proj.weight"].all(1)).tolist() == [[7]]
    # weights per head: 3 x 8 columns of 32, and 8 rows of 32 of c_proj
    assert plan.sets[0].sizes().tolist() == [4 * HEAD_DIM * EMBED] * HEADS


def test_compact_gpt2_heads_and_neurons_on_token_ids() -> None:
    model = tiny_gpt2()
    masks = keep_masks(model, "heads+mlp_neurons", {"heads": [0, 3], "mlp_neurons": [1, 2, 3]})
    result = compact(model, masks, example_inputs=torch.randint(0, VOCAB, (2, 6)))
    block = result.model.transformer.h[1]
    assert block.attn.c_attn.weight.shape == (EMBED, 3 * 2 * HEAD_DIM)
    assert block.attn.c_attn.nf == 3 * 2 * HEAD_DIM and block.attn.c_proj.nx == 2 * HEAD_DIM
    assert block.attn.c_proj.weight.shape == (2 * HEAD_DIM, EMBED)
    assert (block.attn.num_heads, block.attn.split_size) == (2, 2 * HEAD_DIM)
    assert block.mlp.c_fc.weight.shape == (EMBED, INNER - 3)
    assert block.mlp.c_proj.weight.shape == (INNER - 3, EMBED)
    assert result.model.lm_head.weight is result.model.transformer.wte.weight  # still tied
    assert result.after.params < result.before.params
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-5

    ids = torch.randint(0, VOCAB, (3, 9), generator=torch.Generator().manual_seed(1))
    attention_mask = torch.ones(3, 9, dtype=torch.long)
    attention_mask[0, :4] = 0
    masked = apply_masks(tiny_gpt2(), masks)
    expected = logits(masked, ids, attention_mask)
    assert not torch.allclose(expected, logits(tiny_gpt2(), ids, attention_mask), atol=1e-3)
    assert torch.allclose(logits(result.model, ids, attention_mask), expected, atol=1e-5)


def test_gates_on_conv1d_heads_and_neurons_train() -> None:
    model = tiny_gpt2()
    method = SCL(model, "heads+mlp_neurons", lam=0.01)
    with torch.no_grad():
        method.gates["heads:transformer.h.0.attn"].mask_variable[2] = -1.0  # head 2 off
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(4))
    model.train()
    loss = model(ids, labels=ids).loss + method.regularizer()
    loss.backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in method.parameters())
    weight = model.transformer.h[0].attn.c_attn.weight  # gated: head 2 of Q, K, V is zero
    for part in range(3):
        start = part * EMBED + 2 * HEAD_DIM
        assert not weight[:, start : start + HEAD_DIM].any()
        assert weight[:, start - HEAD_DIM : start].any()


def test_coupled_groups_on_gpt2_name_the_kinds_that_work() -> None:
    with pytest.raises(UnsupportedModelError, match="use groups='heads', 'mlp_neurons'"):
        build_groups(tiny_gpt2(), "coupled", input_shape=(6,))


# --- the tied embedding and head --------------------------------------------------------------


def test_tied_embedding_and_head_are_one_tensor_left_dense_and_reported_so() -> None:
    model = tiny_gpt2()
    wte = model.transformer.wte.weight
    original = wte.detach().clone()
    unique = sum(p.numel() for p in model.parameters())
    assert count(model).params == unique  # wte.weight once, not again as lm_head.weight
    block_weights = LAYERS * (EMBED * 3 * EMBED + EMBED * EMBED + 2 * EMBED * INNER)
    assert count(model).weights == block_weights + VOCAB * EMBED  # lm_head's, once

    method = Magnitude(model, 0.5, "element")
    assert "lm_head.weight" not in method.plan.params
    assert "tied to transformer.wte.weight" in method.plan.skipped["lm_head.weight"]
    method.finalize()
    assert model.lm_head.weight is model.transformer.wte.weight  # still one tensor
    assert torch.equal(model.transformer.wte.weight, original)  # untouched, as reported
    counts = count(model)
    assert counts.weights - counts.nonzero_weights == round(0.5 * counts.weights)
    assert counts.params == unique

    report = prunability_report(tiny_gpt2(), "element")
    assert report.params == unique
    head, embedding = report.row("lm_head"), report.row("transformer.wte")
    assert (head.status, head.params) == ("skipped", 0)
    assert "tied to transformer.wte.weight" in head.reason
    assert (embedding.status, embedding.params) == ("skipped", VOCAB * EMBED)
    assert "lm_head.weight" in embedding.reason
    assert report.row("transformer.h.0.attn.c_attn").status == "pruned"


def test_a_gate_on_a_tied_tensor_is_refused() -> None:
    model = tiny_gpt2()
    index = torch.zeros(VOCAB, EMBED, dtype=torch.long)
    group_set = custom_group_set("embedding", model, {"transformer.wte.weight": index})
    plan = build_groups(model, [group_set])
    with pytest.raises(ConfigError, match=r"tied to lm_head\.weight"):
        attach(model, plan, FixedMask)


def test_compacting_conv1d_layers_outside_any_block_names_the_layer_and_what_is_cut() -> None:
    """Two Conv1D layers and no attention block: the channel pass (Torch-Pruning) cannot
    cut them, and says so instead of "no Conv/Linear layer"."""
    model = nn.Sequential(Conv1D(8, 4), nn.ReLU(), Conv1D(2, 8))
    with pytest.raises(UnsupportedModelError, match=r"Conv1D \(0\).*heads, mlp_neurons"):
        compact(model, None, (4,))

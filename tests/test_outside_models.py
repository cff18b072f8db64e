"""Models nobody here wrote, through the whole user flow of the public API (issue 12, 2):
attach a method, mask, finalize, compact on the model's own example inputs, export, load
into a model built before compaction, and get the compact model's outputs back. Tiny
models built from their configs (nothing downloaded)."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import Tensor, nn

import learnprune as lp
from learnprune.compact import UncutStructureWarning

pytest.importorskip("safetensors")

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # uncovered embeddings, HF notices
]


def tiny_gpt2(seed: int = 0) -> nn.Module:
    """GPT2LMHeadModel, 2 layers x 4 heads of 8, MLP 48, lm_head tied to wte."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=64,
        n_positions=16,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_inner=48,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config).eval()


@torch.no_grad()
def logits(model: nn.Module, ids: Tensor) -> Tensor:
    return model(ids).logits


def test_a_compacted_gpt2_loads_into_a_fresh_gpt2_with_its_heads_and_conv1d_sizes(
    tmp_path,
) -> None:
    """Compaction shrinks Conv1D layers (``nf``/``nx``) and sets ``split_size`` and
    ``num_heads``; load(model=) must give a GPT-2 built from the config those sizes."""
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    model = tiny_gpt2()
    method = lp.Magnitude(model, groups="heads", target=0.1, example_inputs=ids)
    masks = method.masks()
    method.finalize()
    result = lp.compact(model, masks, example_inputs=ids)
    attention = result.model.transformer.h[0].attn
    assert attention.split_size < 32  # a head went
    lp.export(result.model, tmp_path / "gpt2", example_inputs=ids)

    loaded = lp.load(tmp_path / "gpt2", model=tiny_gpt2(seed=1))

    for block, compacted in zip(loaded.transformer.h, result.model.transformer.h, strict=True):
        for attr in ("split_size", "num_heads"):
            assert getattr(block.attn, attr) == getattr(compacted.attn, attr)
        assert (block.attn.c_attn.nf, block.attn.c_proj.nx) == (
            compacted.attn.c_attn.nf,
            compacted.attn.c_proj.nx,
        )
    assert torch.equal(logits(loaded, ids), logits(result.model, ids))


class ScaledBlock(nn.Module):
    """A ConvNeXt-like block: its hidden channels scaled by a raw ``(1, C, 1, 1)``
    parameter that a coupled group masks and compaction slices."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 2, stride=2)
        self.up = nn.Conv2d(8, 16, 1)
        self.scale = nn.Parameter(torch.linspace(0.5, 2.0, 16).view(1, 16, 1, 1))
        self.down = nn.Conv2d(16, 8, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = x + self.down(torch.relu(self.up(x)) * self.scale)
        return self.fc(x.mean((2, 3)))


def test_a_compacted_raw_layer_scale_loads_into_the_model_built_before(tmp_path) -> None:
    torch.manual_seed(0)
    model = ScaledBlock().eval()
    x = torch.randn(2, 3, 8, 8)
    method = lp.Magnitude(model, groups="coupled", target=0.2, example_inputs=x)
    masks = method.masks()
    method.finalize()
    result = lp.compact(model, masks, example_inputs=x)
    kept = result.model.up.out_channels
    assert kept < 16 and result.model.scale.shape == (1, kept, 1, 1)
    lp.export(result.model, tmp_path / "block", example_inputs=x)

    loaded = lp.load(tmp_path / "block", model=ScaledBlock())

    assert loaded.scale.shape == (1, kept, 1, 1)
    with torch.no_grad():
        assert torch.equal(loaded(x), result.model(x))


def test_load_keeps_tied_weights_one_tensor(tmp_path) -> None:
    """``lm_head.weight`` is ``transformer.wte.weight`` in GPT-2; after load it still is
    (assigning the state dict gave each name its own copy: trained apart, counted twice)."""
    model = tiny_gpt2()
    lp.export(model, tmp_path / "gpt2")

    loaded = lp.load(tmp_path / "gpt2", model=tiny_gpt2(seed=1))

    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    assert torch.equal(loaded.lm_head.weight, model.transformer.wte.weight)
    assert lp.count(loaded).params == lp.count(model).params


def test_a_failed_onnx_export_logs_no_torch_tracebacks(tmp_path, caplog) -> None:
    """A wrong input_shape: torch.export logs the failing op's traceback at ERROR level
    (80 lines on a user's stderr); the user gets only our one-line error."""
    pytest.importorskip("onnxscript")
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    with (
        caplog.at_level(logging.DEBUG),
        pytest.raises(lp.UnsupportedModelError, match="ONNX export of Sequential failed"),
    ):
        lp.export(model, tmp_path / "onnx", input_shape=(3, 7, 7), formats=("onnx",))
    assert [r.name for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_compact_names_the_dropped_conv1d_outputs_it_cannot_cut() -> None:
    """out_channel masks on GPT-2 drop c_proj outputs, which write the residual stream and
    stay; Torch-Pruning cannot trace the model, and compaction said nothing (the Conv1D
    layers and the attention blocks' layers were left out of the check)."""
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))
    model = tiny_gpt2()
    method = lp.Magnitude(model, groups="out_channel", target=0.3, example_inputs=ids)
    masks = method.masks()
    dropped = int((~masks["transformer.h.0.mlp.c_proj.bias"]).sum())
    assert dropped > 0
    method.finalize()
    with pytest.warns(UncutStructureWarning) as caught:
        lp.compact(model, masks, example_inputs=ids)
    message = " ".join(str(w.message) for w in caught)
    assert f"transformer.h.0.mlp.c_proj: {dropped} of 32 outputs" in message

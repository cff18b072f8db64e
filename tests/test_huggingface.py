"""Transformers: attention-head and MLP-neuron groups, their compaction, and the Hugging Face
Trainer callback, on tiny randomly initialised BERT and ViT models (nothing downloaded)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

transformers = pytest.importorskip("transformers")

from learnprune.compact import apply_masks, compact  # noqa: E402
from learnprune.errors import ConfigError  # noqa: E402
from learnprune.groups import build_groups, scatter_values  # noqa: E402
from learnprune.integrations.huggingface import LearnpruneCallback  # noqa: E402
from learnprune.masking import gated_tensors  # noqa: E402
from learnprune.methods import GMP, SCL, DiffPrune, HardConcrete, Magnitude  # noqa: E402
from learnprune.methods.base import PruningMethod  # noqa: E402
from learnprune.transformer_groups import find_attention_blocks, head_group_set  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),  # uncovered embeddings, HF notices
]

LAYERS, HEADS, HIDDEN, INTERMEDIATE, VOCAB, SEQ = 2, 4, 32, 64, 100, 8
HEAD_DIM = HIDDEN // HEADS


def tiny_bert(seed: int = 0) -> nn.Module:
    """BertForSequenceClassification, 2 layers x 4 heads of 8, MLP 64, no dropout."""
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=32,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.BertForSequenceClassification(config)


def tiny_vit(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    config = transformers.ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=3,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        num_labels=3,
    )
    return transformers.ViTForImageClassification(config)


class TokenData(torch.utils.data.Dataset):
    """Random token sequences with labels, as dicts (the Trainer's format)."""

    def __init__(self, size: int = 16, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(0, VOCAB, (size, SEQ), generator=generator)
        self.attention_mask = torch.ones(size, SEQ, dtype=torch.long)
        self.attention_mask[::3, -3:] = 0  # some padding
        self.labels = torch.randint(0, 3, (size,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {
            "input_ids": self.input_ids[i],
            "attention_mask": self.attention_mask[i],
            "labels": self.labels[i],
        }


def batch_of(data: TokenData, rows: slice = slice(0, 4), labels: bool = True) -> dict[str, Tensor]:
    batch = {"input_ids": data.input_ids[rows], "attention_mask": data.attention_mask[rows]}
    if labels:
        batch["labels"] = data.labels[rows]
    return batch


def keep_masks(model: nn.Module, kind: str, dropped: dict[str, list[int]]) -> dict[str, Tensor]:
    """Keep-masks of ``build_groups(model, kind)`` dropping groups ``dropped[set kind]`` in
    every set."""
    masks: dict[str, Tensor] = {}
    for group_set in build_groups(model, kind).sets:
        keep = torch.ones(group_set.num_groups, dtype=torch.bool)
        keep[dropped.get(group_set.kind, [])] = False
        for piece in group_set.slices:
            part = scatter_values(keep, piece.dim, piece.index, piece.shape).expand(piece.shape)
            masks[piece.param] = part.clone() & masks.get(piece.param, part)
    return masks


# --- groups -----------------------------------------------------------------------------


def test_head_group_owns_its_qkv_rows_and_output_columns() -> None:
    model = tiny_bert()
    plan = build_groups(model, "heads")
    assert [s.num_groups for s in plan.sets] == [HEADS] * LAYERS
    assert {s.kind for s in plan.sets} == {"heads"}
    prefix = "bert.encoder.layer.0.attention"
    masks = keep_masks(model, "heads", {"heads": [2]})  # drop head 2: dims 16..23
    dropped = torch.zeros(HIDDEN, dtype=torch.bool)
    dropped[16:24] = True
    for layer in ("query", "key", "value"):
        weight, bias = masks[f"{prefix}.self.{layer}.weight"], masks[f"{prefix}.self.{layer}.bias"]
        assert weight.shape == (HIDDEN, HIDDEN)
        assert torch.equal(weight.all(1), ~dropped) and torch.equal(weight.any(1), ~dropped)
        assert torch.equal(bias, ~dropped)
    columns = masks[f"{prefix}.output.dense.weight"]
    assert torch.equal(columns.all(0), ~dropped) and torch.equal(columns.any(0), ~dropped)
    assert f"{prefix}.output.dense.bias" not in masks  # the output bias is no head's
    # sizes count weights: 3 projections x 8 rows x 32 + 32 rows x 8 columns
    assert plan.sets[0].sizes().tolist() == [3 * HEAD_DIM * HIDDEN + HIDDEN * HEAD_DIM] * HEADS


def test_neuron_group_is_intermediate_row_and_output_column() -> None:
    model = tiny_bert()
    plan = build_groups(model, "mlp_neurons")
    assert [s.num_groups for s in plan.sets] == [INTERMEDIATE] * LAYERS
    masks = keep_masks(model, "mlp_neurons", {"mlp_neurons": [5]})
    row = masks["bert.encoder.layer.1.intermediate.dense.weight"]
    column = masks["bert.encoder.layer.1.output.dense.weight"]
    assert row.shape == (INTERMEDIATE, HIDDEN) and column.shape == (HIDDEN, INTERMEDIATE)
    assert torch.nonzero(~row.all(1)).flatten().tolist() == [5]
    assert torch.nonzero(~column.all(0)).flatten().tolist() == [5]
    assert torch.nonzero(~masks["bert.encoder.layer.1.intermediate.dense.bias"]).tolist() == [[5]]
    both = build_groups(model, "heads+mlp_neurons")
    assert sum(s.num_groups for s in both.sets) == LAYERS * (HEADS + INTERMEDIATE)


def test_multihead_attention_heads_take_their_rows_of_each_packed_projection() -> None:
    layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True)  # E=16, H=4, d=4
    blocks, _refused = find_attention_blocks(layer)
    group_set = head_group_set(layer, blocks[0])
    in_proj = next(p for p in group_set.slices if p.attr == "in_proj_weight")
    keep = torch.ones(4, dtype=torch.bool)
    keep[1] = False  # head 1: rows 4..7 of Q, 20..23 of K, 36..39 of V
    rows = scatter_values(keep, in_proj.dim, in_proj.index, in_proj.shape).flatten()
    assert torch.nonzero(~rows).flatten().tolist() == [4, 5, 6, 7, 20, 21, 22, 23, 36, 37, 38, 39]
    out = next(p for p in group_set.slices if p.module == "self_attn.out_proj")
    assert (out.dim, out.role) == (1, "in")


def test_group_kind_names_and_refusals() -> None:
    plan = build_groups(tiny_vit(), "attention_heads+ffn_neurons")
    assert [s.kind for s in plan.sets] == ["heads"] * LAYERS + ["mlp_neurons"] * LAYERS
    assert build_groups(tiny_vit(), "heads", exclude=["*layers.0.*"]).sets[0].name == (
        "heads:vit.layers.1.attention"
    )
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    assert build_groups(mlp, "neuron").sets[0].kind == "out_channel"
    with pytest.raises(ConfigError, match="nothing to prune"):
        build_groups(mlp, "heads")


# --- every method trains head and neuron groups -----------------------------------------


METHOD_BUILDERS: dict[str, Callable[[nn.Module], PruningMethod]] = {
    "scl": lambda m: SCL(m, "heads+mlp_neurons", lam=0.01),
    "diffprune": lambda m: DiffPrune(m, "heads+mlp_neurons", lam=0.1),
    "hardconcrete": lambda m: HardConcrete(m, "heads+mlp_neurons", lam=0.1),
    "gmp": lambda m: GMP(m, 0.3, "heads+mlp_neurons", end_step=4, frequency=1),
    "magnitude": lambda m: Magnitude(m, 0.3, "heads+mlp_neurons"),
}


@pytest.mark.parametrize("name", list(METHOD_BUILDERS))
def test_every_method_runs_forward_and_backward_on_head_and_neuron_groups(name: str) -> None:
    model = tiny_bert()
    method = METHOD_BUILDERS[name](model)
    assert len(method.gates) == 2 * LAYERS
    model.train()
    batch = batch_of(TokenData())
    loss = model(**batch).loss + method.regularizer()
    loss.backward()
    method.after_step()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in method.parameters())
    masks = method.masks()
    assert masks["bert.encoder.layer.0.attention.self.query.weight"].shape == (HIDDEN, HIDDEN)
    if name in ("gmp", "magnitude"):  # structured magnitude pruning dropped whole groups
        assert method.sparsity() > 0
        keep = method.gates["mlp_neurons:bert.encoder.layer.0"].keep()
        row = masks["bert.encoder.layer.0.intermediate.dense.weight"]
        assert torch.equal(row.all(1), keep) and torch.equal(row.any(1), keep)


# --- compaction ---------------------------------------------------------------------------


@torch.no_grad()
def run(model: nn.Module, inputs: Any) -> Tensor:
    model.eval()
    if isinstance(inputs, dict):
        return model(**inputs).logits
    return model(inputs).logits


def test_compact_removes_dropped_bert_heads_and_neurons() -> None:
    model = tiny_bert()
    method = SCL(model, "heads+mlp_neurons")
    with torch.no_grad():  # force heads 1, 3 of layer 0, head 0 of layer 1 and 40 neurons off
        method.gates["heads:bert.encoder.layer.0.attention.self"].mask_variable[[1, 3]] = -1.0
        method.gates["heads:bert.encoder.layer.1.attention.self"].mask_variable[0] = -1.0
        method.gates["mlp_neurons:bert.encoder.layer.0"].mask_variable[:40] = -1.0
    masks = method.masks()
    method.finalize()
    data = TokenData()
    inputs = batch_of(data, labels=False)
    result = compact(model, masks, example_inputs=inputs)
    small = result.model

    attention = [layer.attention for layer in small.bert.encoder.layer]
    assert [a.self.num_attention_heads for a in attention] == [2, 3]
    assert [a.self.all_head_size for a in attention] == [16, 24]
    assert attention[0].self.query.weight.shape == (16, HIDDEN)
    assert attention[0].self.value.bias.shape == (16,)
    assert attention[1].output.dense.weight.shape == (HIDDEN, 24)
    layer0 = small.bert.encoder.layer[0]
    assert layer0.intermediate.dense.weight.shape == (24, HIDDEN)
    assert layer0.output.dense.in_features == 24
    assert small.bert.encoder.layer[1].intermediate.dense.out_features == INTERMEDIATE
    assert model.bert.encoder.layer[0].attention.self.num_attention_heads == HEADS  # untouched
    assert result.after.params < result.before.params
    assert 0 < result.after.flops < result.before.flops
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-5
    # other inputs (more padding) than the check's: still the masked model's outputs
    other = batch_of(data, slice(4, 12), labels=False)
    assert torch.allclose(run(small, other), run(model, other), atol=1e-5)


def test_compact_keeps_a_head_the_output_projection_still_reads() -> None:
    model = tiny_bert()
    prefix = "bert.encoder.layer.0.attention"
    masks = keep_masks(model, "heads", {"heads": [0]})
    masks[f"{prefix}.output.dense.weight"][:, 0] = True  # head 0's first column still read
    with torch.no_grad():  # and head 0's value rows are alive: it outputs something
        model.get_submodule(f"{prefix}.self.value").weight[0] += 1.0
    masks[f"{prefix}.self.value.weight"][:HEAD_DIM] = True
    masks[f"{prefix}.self.value.bias"][:HEAD_DIM] = True
    result = compact(model, masks, example_inputs=batch_of(TokenData(), labels=False))
    heads = [layer.attention.self.num_attention_heads for layer in result.model.bert.encoder.layer]
    assert heads == [4, 3]


def test_compact_vit_heads_and_neurons() -> None:
    model = tiny_vit()
    masks = keep_masks(model, "heads+mlp_neurons", {"heads": [0, 2], "mlp_neurons": [1, 2, 3]})
    result = compact(model, masks, (3, 8, 8))
    attention = result.model.vit.layers[1].attention
    assert attention.num_attention_heads == 2 and attention.q_proj.out_features == 16
    assert attention.o_proj.in_features == 16
    assert result.model.vit.layers[0].mlp.fc1.out_features == INTERMEDIATE - 3
    images = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    masked = apply_masks(tiny_vit(), masks)
    assert torch.allclose(run(result.model, images), run(masked, images), atol=1e-5)


def test_compact_multihead_attention_removes_neurons_and_reports_heads() -> None:
    torch.manual_seed(0)
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, 32, batch_first=True), 2)
    masks = keep_masks(model, "heads+mlp_neurons", {"heads": [1], "mlp_neurons": [0, 9]})
    result = compact(model, masks, example_inputs=torch.randn(3, 5, 16))
    assert result.model.layers[0].linear1.out_features == 30
    assert result.model.layers[0].self_attn.in_proj_weight.shape == (48, 16)
    assert "heads:layers.0.self_attn" in result.skipped


# --- the Trainer callback -------------------------------------------------------------------


def trainer_args(**overrides: Any) -> SimpleNamespace:
    """The TrainingArguments fields the callback reads (TrainingArguments itself needs
    accelerate)."""
    fields = {
        "learning_rate": 1e-3,
        "weight_decay": 0.0,
        "adam_beta1": 0.9,
        "adam_beta2": 0.999,
        "adam_epsilon": 1e-8,
        "gradient_accumulation_steps": 1,
        "label_smoothing_factor": 0.0,
    }
    return SimpleNamespace(**{**fields, **overrides})


def trainer_loop(
    model: nn.Module,
    callback: LearnpruneCallback,
    optimizer: torch.optim.Optimizer,
    data: TokenData,
    *,
    steps: int,
    batch_size: int = 4,
    accumulation: int = 1,
    args: SimpleNamespace | None = None,
) -> Any:
    """The event sequence of ``transformers.Trainer._inner_training_loop``: micro-batch
    losses divided by the accumulation, ``on_optimizer_step`` / ``on_step_end`` once per
    update, the log appended to ``log_history`` before ``on_log``, ``on_train_end`` last."""
    from transformers.trainer_callback import TrainerControl, TrainerState

    args = args or trainer_args(gradient_accumulation_steps=accumulation)
    state, control = TrainerState(), TrainerControl()
    events = {"model": model, "optimizer": optimizer, "lr_scheduler": None}
    callback.on_train_begin(args, state, control, **events)
    model.train()
    micro = list(range(0, len(data), batch_size))
    epoch = 0
    while state.global_step < steps:
        for k, start in enumerate(micro):
            loss = model(**batch_of(data, slice(start, start + batch_size))).loss
            (loss / accumulation).backward()
            if (k + 1) % accumulation:
                continue
            optimizer.step()
            callback.on_optimizer_step(args, state, control, **events)
            model.zero_grad()
            state.global_step += 1
            state.epoch = epoch + (k + 1) / len(micro)
            callback.on_step_end(args, state, control, **events)
            logs = {"loss": float(loss)}
            state.log_history.append({**logs, "step": state.global_step})
            callback.on_log(args, state, control, logs=logs, **events)
            if state.global_step == steps:
                break
        epoch += 1
        callback.on_epoch_end(args, state, control, **events)
    callback.on_train_end(args, state, control, **events)
    return state


def test_callback_adds_the_regularizer_to_the_training_loss_only() -> None:
    model = tiny_bert()
    callback = LearnpruneCallback.build(model, "diffprune", lam=0.5)
    batch = batch_of(TokenData())
    model.train()
    out = model(**batch)
    regularizer = callback.method.regularizer()
    assert float(regularizer) > 0
    expected = F.cross_entropy(out.logits, batch["labels"]) + regularizer
    assert torch.allclose(out.loss, expected, atol=1e-6)
    out.loss.backward()
    phi = callback.method.gates["heads:bert.encoder.layer.0.attention.self"].phi
    assert phi.grad is not None and bool((phi.grad != 0).all())
    model.eval()
    assert torch.allclose(model(**batch).loss, F.cross_entropy(out.logits, batch["labels"]))
    assert callback.regularizer_calls == 1


def test_callback_drives_diffprune_through_the_trainer_loop() -> None:
    model = tiny_bert()
    callback = LearnpruneCallback.build(model, "diffprune", lam=2.0, gate_lr=0.05)
    optimizer, scheduler = callback.optimizers(trainer_args())
    assert scheduler is None
    gate_group = next(g for g in optimizer.param_groups if g["lr"] == 0.05)
    assert {id(p) for p in gate_group["params"]} == {id(p) for p in callback.method.parameters()}
    assert gate_group["weight_decay"] == 0.0
    state = trainer_loop(model, callback, optimizer, TokenData(), steps=6, accumulation=2)

    assert callback.steps == state.global_step == 6  # once per update, not per micro-batch
    assert callback.regularizer_calls == 12  # once per micro-batch forward pass
    assert callback.method.step == 6
    history = state.log_history[-1]
    assert 0.0 <= history["sparsity"] <= 1.0 and history["lam"] == 2.0
    assert history["groups/heads"] == LAYERS * HEADS
    assert history["groups/mlp_neurons"] == LAYERS * INTERMEDIATE
    layer_keys = {k for k in history if k.startswith("sparsity/")}
    assert "sparsity/bert.encoder.layer.1.attention.output.dense" in layer_keys
    assert len(layer_keys) == LAYERS * 6  # q, k, v, attention output, intermediate, output
    # finalized at train end: masks kept, gates gone, one mask entry per head
    assert not list(gated_tensors(model))
    masks = callback.final_masks
    assert masks is not None
    per_head = masks["bert.encoder.layer.0.attention.self.query.weight"].view(HEADS, -1)
    assert torch.equal(per_head.all(1), per_head.any(1))  # each head kept or dropped whole
    # λ = 2 outweighs the task loss: the regularizer closed gates, and so fell
    assert history["kept/heads"] + history["kept/mlp_neurons"] < LAYERS * (HEADS + INTERMEDIATE)
    assert state.log_history[0]["regularizer"] > history["regularizer"]


def test_callback_after_training_compacts_to_equal_outputs() -> None:
    model = tiny_bert()
    callback = LearnpruneCallback.build(model, "scl", lam=1e-3, mask_lr=0.05)
    optimizer, _ = callback.optimizers(trainer_args())
    with torch.no_grad():  # some heads and neurons already closed, as after longer training
        callback.method.gates["heads:bert.encoder.layer.1.attention.self"].mask_variable[2] = -9
        callback.method.gates["mlp_neurons:bert.encoder.layer.1"].mask_variable[:16] = -9
    trainer_loop(model, callback, optimizer, TokenData(), steps=3)
    inputs = batch_of(TokenData(seed=1), labels=False)
    result = compact(model, callback.final_masks, example_inputs=inputs)
    layer = result.model.bert.encoder.layer[1]
    assert layer.attention.self.num_attention_heads <= 3
    assert layer.intermediate.dense.out_features <= INTERMEDIATE - 16
    assert torch.allclose(run(result.model, inputs), run(model, inputs), atol=1e-5)


def test_callback_refuses_what_would_lose_or_distort_the_regularizer() -> None:
    model = tiny_bert()
    callback = LearnpruneCallback.build(model, "diffprune", lam=0.1, gate_lr=0.05)
    decayed = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    with pytest.raises(ConfigError, match="weight decay"):
        callback.on_train_begin(trainer_args(), None, None, optimizer=decayed)
    plain = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    with pytest.raises(ConfigError, match="own learning rate"):
        callback.on_train_begin(trainer_args(), None, None, optimizer=plain)
    with pytest.raises(ConfigError, match="label_smoothing"):
        callback.on_train_begin(trainer_args(label_smoothing_factor=0.1), None, None)
    model.train()
    model(**batch_of(TokenData(), labels=False))  # no labels: no loss to add to
    with pytest.raises(ConfigError, match="never reached the loss"):
        callback.on_step_end(trainer_args(), None, None)
    with pytest.raises(ConfigError, match="built PruningMethod"):
        LearnpruneCallback("scl")  # type: ignore[arg-type]


def test_callback_records_the_dessilbi_path_each_epoch() -> None:
    model = tiny_bert()
    callback = LearnpruneCallback.build(model, "dessilbi", kappa=1.0, nu=10.0)
    optimizer, _ = callback.optimizers(trainer_args(learning_rate=0.01))
    trainer_loop(model, callback, optimizer, TokenData(size=8), steps=4)  # 2 epochs of 2
    assert len(callback.support_history) == 2
    assert callback.final_masks is not None and "sparsity" in callback.metrics()


# --- the real Trainer (needs accelerate, the hf extra) -----------------------------------------


@pytest.fixture
def quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@pytest.mark.usefixtures("quiet")
def test_real_trainer_with_scl_heads_and_neurons(tmp_path: Any) -> None:
    pytest.importorskip("accelerate")
    model = tiny_bert()
    callback = LearnpruneCallback.build(model, "scl", lam=1e-3, mask_lr=0.05)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to=[],
        max_steps=6,
        gradient_accumulation_steps=2,
        per_device_train_batch_size=4,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=TokenData(),
        callbacks=[callback],
        optimizers=callback.optimizers(args),
    )
    trainer.train()
    assert callback.steps == trainer.state.global_step == 6
    assert callback.regularizer_calls == 12
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and all("sparsity/bert.encoder.layer.0.intermediate.dense" in e for e in logged)
    assert logged[-1]["groups/heads"] == LAYERS * HEADS
    assert not list(gated_tensors(model))
    inputs = batch_of(TokenData(seed=2), labels=False)
    result = compact(model, callback.final_masks, example_inputs=inputs)
    assert torch.allclose(run(result.model, inputs), run(model, inputs), atol=1e-5)


class MethodAtTrainBegin(transformers.TrainerCallback):
    """The method's step and λ when a train begins (after the learnprune callback)."""

    def __init__(self, callback: LearnpruneCallback) -> None:
        self.callback = callback
        self.seen: tuple[int, float] | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        method = self.callback.method
        self.seen = (method.step, float(method.current_lam))


@pytest.mark.usefixtures("quiet")
def test_real_trainer_resumes_the_method_state_from_its_checkpoint(tmp_path: Any) -> None:
    pytest.importorskip("accelerate")

    def trainer_for(model: nn.Module, callback: LearnpruneCallback, steps: int) -> Any:
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path),
            use_cpu=True,
            report_to=[],
            max_steps=steps,
            per_device_train_batch_size=4,
            save_strategy="steps",
            save_steps=3,
            disable_tqdm=True,
        )
        probe = MethodAtTrainBegin(callback)
        trainer = transformers.Trainer(
            model=model,
            args=args,
            train_dataset=TokenData(),
            callbacks=[callback, probe],
            optimizers=callback.optimizers(args),
        )
        return trainer, probe

    torch.manual_seed(0)
    first = LearnpruneCallback.build(tiny_bert(), "diffprune", lam=0.5, target=0.3)
    trainer, _probe = trainer_for(first.method.model, first, steps=3)
    trainer.train()
    saved_lam = float(first.method.current_lam)  # λ after step 3, as checkpoint-3 holds it
    assert (tmp_path / "checkpoint-3" / "learnprune_method.pt").is_file()

    torch.manual_seed(1)  # another start: the state must come from the checkpoint
    second = LearnpruneCallback.build(tiny_bert(), "diffprune", lam=0.5, target=0.3)
    trainer, probe = trainer_for(second.method.model, second, steps=6)
    trainer.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
    assert probe.seen is not None and probe.seen[0] == 3
    assert probe.seen[1] == pytest.approx(saved_lam)
    assert second.method.step == 6

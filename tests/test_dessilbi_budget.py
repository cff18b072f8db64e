"""DessiLBI at a budget: the exact finish by the prune order (by hand), the fixed masks of
the fine-tuning, budget exactness in 300-step runs, and lottery tickets at a FLOPs budget."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from learnprune.cli import main
from learnprune.config import TrainConfig
from learnprune.errors import ConfigError
from learnprune.methods.dessilbi import NEVER, DessiLBIMethod, PathBudget


def _linear_method(**options) -> tuple[nn.Module, DessiLBIMethod]:
    """A 2x4 Linear weight at path epoch 2: weights 1 (epoch 1) and 7 (epoch 2) recorded
    in supp(Γ), weight 6 in it since (pending: epoch 3), the others never."""
    model = nn.Sequential(nn.Linear(4, 2, bias=False))
    method = DessiLBIMethod(model, **options)
    weight = model[0].weight
    with torch.no_grad():
        weight.copy_(torch.tensor([[0.5, -0.2, 0.9, 0.1], [0.5, 0.3, -0.4, 0.8]]))
    state = method.optimizer.state[weight]
    state["first_epoch"].copy_(torch.tensor([[NEVER, 1, NEVER, NEVER], [NEVER, NEVER, NEVER, 2]]))
    state["gamma"].copy_(torch.tensor([[0.0, -0.1, 0.0, 0.0], [0.0, 0.0, -0.2, 0.5]]))
    method.optimizer.epoch = 2
    return model, method


def test_exact_finish_keeps_the_earliest_entries_then_the_largest_weights() -> None:
    model, method = _linear_method(target=0.5, end_step=1)
    # scores |W| − e: 0.2 − 1, 0.8 − 2, 0.4 − 3 (pending), the rest |W| − 2000: the three
    # entries, then the largest never-entered weight 0.9 (magnitude alone: 0.9, 0.8, 0.5, 0.5)
    method.after_step()
    assert method.finished
    keep = [False, True, True, False, False, False, True, True]
    assert method.masks()["0.weight"].flatten().tolist() == keep
    assert method.sparsity() == 0.5
    assert method.achieved_at_finish == pytest.approx(5 / 8)  # supp(Γ): 3 of 8
    weight = model[0].weight.detach().flatten()
    assert torch.equal(weight[~torch.tensor(keep)], torch.zeros(4))
    final = method.final_metrics(lambda: (0.0, 1.0))
    assert final["finish"] == "exact" and final["budget"]["achieved_before_finish"] == 5 / 8


def test_budget_scores_rank_filters_by_entry_epoch_then_rms() -> None:
    conv_a, conv_b = nn.Conv2d(1, 2, (1, 2), bias=False), nn.Conv2d(1, 1, 1, bias=False)
    model = nn.Sequential(conv_a, conv_b)
    method = DessiLBIMethod(model)  # fan-ins 2 and 1: the rescaled group prox, by filter
    with torch.no_grad():
        conv_a.weight.copy_(torch.tensor([[[[3.0, 4.0]]], [[[0.0, 1.0]]]]))
        conv_b.weight.fill_(-0.5)
    first = method.optimizer.state[conv_a.weight]["first_epoch"]
    first.copy_(torch.tensor([[[[NEVER, 1]]], [[[NEVER, NEVER]]]]))
    scores = method.optimizer.budget_scores()
    # filter 0: ‖W‖/√2 − min epoch = 5/√2 − 1; filter 1: 1/√2 − 2000; conv_b: 0.5 − 2000
    assert scores["0.weight"].tolist() == pytest.approx(
        [5 / math.sqrt(2) - 1, 1 / math.sqrt(2) - NEVER]
    )
    assert scores["1.weight"].tolist() == pytest.approx([0.5 - NEVER])
    # with a ticket epoch 0 the entry at epoch 1 counts as never
    assert method.optimizer.budget_scores(epoch=0)["0.weight"][0] == pytest.approx(
        5 / math.sqrt(2) - NEVER
    )


def test_flops_keep_by_filter_costs_by_hand() -> None:
    """conv1 1→3 (1x1) on 3x3: 3 filters of 9 MACs; conv2 3→2 (3x3) to 1x1: 2 of 27."""
    model = nn.Sequential(nn.Conv2d(1, 3, 1, bias=False), nn.Conv2d(3, 2, 3, bias=False))
    method = DessiLBIMethod(model)
    # keep 0.67 of 81 MACs: at most 54.27 (costs are float32, so no budget right at a sum)
    budget = PathBudget(model, method.optimizer, ("flops", 0.33), input_shape=(1, 3, 3))
    assert budget.by_filter == {"0.weight": True, "1.weight": True}
    scores = {"0.weight": torch.tensor([0.3, 0.1, 0.2]), "1.weight": torch.tensor([-1.0, 0.5])}
    # the best filter of each layer first (27 + 9), then 0.2 (9) and 0.1 (9): 54
    keep = budget.exact_keep(scores)
    assert keep["0.weight"].tolist() == [True, True, True]
    assert keep["1.weight"].tolist() == [False, True]
    assert budget.achieved(keep) == pytest.approx(1 / 3)  # 27 of 81 removed
    half = PathBudget(model, method.optimizer, ("flops", 0.5), input_shape=(1, 3, 3))
    keep = half.exact_keep(scores)  # 40.5: the two protected filters (36), nothing else fits
    assert keep["0.weight"].tolist() == [True, False, False]
    assert keep["1.weight"].tolist() == [False, True]


def _train(model: nn.Module, method: DessiLBIMethod, steps: int, seed: int = 0) -> None:
    optimizer = method.optimizer
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 1, 28, 28, generator=generator)
        y = torch.randint(0, 10, (16,), generator=generator)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        method.after_step()


def test_masks_stay_fixed_and_the_path_stops_in_the_fine_tuning() -> None:
    from learnprune import build_model

    torch.manual_seed(0)
    model = build_model("lenet5-caffe")
    method = DessiLBIMethod(
        model, nu=1.0, lam=0.05, target={"flops": 0.3}, end_step=3, input_shape=(1, 28, 28)
    )
    method.build_optimizer(TrainConfig(lr=0.05))
    _train(model, method, 3)
    assert method.finished
    masks = method.masks()
    state = {n: {k: v.clone() for k, v in method.optimizer.state[p].items() if k in ("z", "gamma")}
             for n, p in method.optimizer.coupled()}  # fmt: skip
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(model, method, 3, seed=1)
    assert all(torch.equal(masks[k], v) for k, v in method.masks().items())
    for name, param in method.optimizer.coupled():
        assert torch.equal(param.detach()[~masks[name]], torch.zeros(int((~masks[name]).sum())))
        assert not torch.equal(param.detach(), before[name])  # the kept weights train
        for key, value in state[name].items():
            assert torch.equal(method.optimizer.state[param][key], value)
    kept = 1.0 - method.path_budget.achieved(
        {n: m.reshape(len(m), -1).any(1) if method.path_budget.by_filter[n] else m.flatten()
         for n, m in masks.items()}
    )  # fmt: skip
    assert kept <= 0.3 and kept == pytest.approx(0.3, rel=0.02)


def test_resume_after_the_finish_keeps_the_fixed_masks_bit_exact() -> None:
    from learnprune import build_model

    def build() -> tuple[nn.Module, DessiLBIMethod]:
        torch.manual_seed(0)
        model = build_model("lenet300")
        method = DessiLBIMethod(model, nu=1.0, lam=0.05, target=0.9, end_step=2)
        method.build_optimizer(TrainConfig(lr=0.05))
        return model, method

    model, method = build()
    _train(model, method, 3)
    saved = [copy.deepcopy(x.state_dict()) for x in (model, method, method.optimizer)]
    model2, method2 = build()
    for target, state in zip((model2, method2, method2.optimizer), saved, strict=True):
        target.load_state_dict(state)
    assert method2.finished and method2.optimizer.fixed
    _train(model, method, 2, seed=1)
    _train(model2, method2, 2, seed=1)
    for (name, a), b in zip(model.named_parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert all(torch.equal(method.masks()[k], v) for k, v in method2.masks().items())
    assert method2.sparsity() == pytest.approx(0.9, abs=1e-5)


def test_finish_none_keeps_the_path_and_bad_options_are_refused() -> None:
    _model, method = _linear_method(target=0.5, end_step=1, finish="none")
    method.after_step()
    assert not method.finished and "finish none" in method.describe()
    assert method.masks()["0.weight"].sum() == 3  # supp(Γ)
    with pytest.raises(ConfigError):
        _linear_method(target=1.5)
    with pytest.raises(ConfigError):
        _linear_method(target=0.5, finish="round")
    with pytest.raises(ConfigError, match="input_shape"):
        _linear_method(target={"flops": 0.5})


@pytest.fixture(scope="module")
def mnist_subset():
    """3000 MNIST training and 1000 test images (the evaluations stay cheap)."""
    from learnprune.data import Dataset, load_dataset

    full = load_dataset("mnist").subset(3000, seed=0)
    return Dataset("mnist", full.x_train, full.y_train, full.x_test[:1000], full.y_test[:1000], 10)


def _path_run(out, data, model: str, target, **train):
    from learnprune.config import RunConfig
    from learnprune.runner import run

    config = RunConfig(
        model=model,
        data="mnist",
        method="dessilbi",
        method_options={"nu": 5.0, "target": target, "end_epoch": 0.75},
        train=TrainConfig(epochs=1, max_steps=300, batch_size=10, lr=0.05, **train),
    )
    return run(config, out, quiet=True, data=data)


@pytest.mark.data
@pytest.mark.parametrize(
    ("model", "target"), [("lenet300", 0.95), ("lenet5-caffe", {"flops": 0.3})]
)
def test_300_step_run_lands_on_the_budget(tmp_path, mnist_subset, model: str, target) -> None:
    """lenet300 by single weights at a sparsity, lenet5-caffe by conv filters (the
    rescaled group prox) and single Linear weights at a FLOPs budget."""
    _path_run(tmp_path / model, mnist_subset, model, target)
    final = json.loads((tmp_path / model / "final.json").read_text())
    assert final["finish"] == "exact" and final["budget"]["end_step"] == 225
    assert "support_reached_at_epoch" in final["budget"]
    if model == "lenet300":
        assert final["sparsity"] == pytest.approx(0.95, abs=1e-3)
    else:
        kept = final["effective_flops"] / final["flops"]
        assert kept <= 0.3 and kept == pytest.approx(0.3, rel=0.02)
        assert all(layer["kept_out"] >= 1 for layer in final["layers"][:2])  # convs open
    assert final["test_accuracy"] > 0.5


def test_ticket_at_a_flops_budget_retrains_the_prune_order_from_the_init(tmp_path) -> None:
    """A short structured DessiLBI run on LeNet-5-Caffe, then its ticket at 30 % of the
    dense FLOPs (learnprune ticket --flops 0.3): exact FLOPs, the prune order's masks,
    trained from init.pt."""
    from learnprune.config import RunConfig
    from learnprune.data import Dataset
    from learnprune.methods.ticket import budget_ticket_masks
    from learnprune.models import build_model
    from learnprune.runner import run

    torch.manual_seed(0)
    prototypes = torch.randn(10, 1, 28, 28)
    labels = torch.randint(0, 10, (260,))
    images = prototypes[labels] + 0.5 * torch.randn(260, 1, 28, 28)
    data = Dataset("mnist", images[:200], labels[:200], images[200:], labels[200:], 10)
    source = tmp_path / "lbi"
    config = RunConfig(
        model="lenet5-caffe",
        data="mnist",
        method="dessilbi",
        method_options={"nu": 1.0, "lam": 0.05},
        train=TrainConfig(epochs=2, batch_size=50, lr=0.05, lr_schedule="constant"),
    )
    run(config, source, quiet=True, data=data)
    masks = budget_ticket_masks(source, build_model("lenet5-caffe"), {"flops": 0.3}, None,
                                input_shape=(1, 28, 28))  # fmt: skip
    for name in ("conv1.weight", "conv2.weight"):  # whole filters (the rescaled group prox)
        per_filter = masks[name].reshape(len(masks[name]), -1)
        assert torch.equal(per_filter.all(1), per_filter.any(1)) and per_filter.any()
    with pytest.raises(ConfigError, match="up to epoch 2"):
        budget_ticket_masks(source, build_model("lenet5-caffe"), 0.9, epoch=3)

    from learnprune.runner import initial_weights

    ticket = tmp_path / "ticket"
    config = RunConfig(
        model="lenet5-caffe",
        data="mnist",
        method="ticket",
        method_options={"source": str(source), "target": {"flops": 0.3}},
        train=TrainConfig(epochs=1, batch_size=50, lr=0.05, lr_schedule="constant"),
        init=str(initial_weights(source)),
    )
    result = run(config, ticket, quiet=True, data=data)
    kept = result["effective_flops"] / result["flops"]
    assert kept <= 0.3 and kept == pytest.approx(0.3, rel=0.02)
    final = torch.load(ticket / "model.pt", weights_only=True)
    start = torch.load(source / "init.pt", weights_only=True)
    for name, mask in masks.items():
        assert torch.all(final[name][~mask] == 0) and torch.all(final[name][mask] != 0)
    assert json.loads((ticket / "config.json").read_text())["init"].endswith("init.pt")
    assert not torch.equal(final["fc2.weight"], start["fc2.weight"] * masks["fc2.weight"])
    # the command line: a budget or an epoch is needed, and only one budget
    with contextlib.redirect_stderr(io.StringIO()):
        assert main(["ticket", str(source), "--quiet"]) == 2
        assert main(["ticket", str(source), "--target", "0.9", "--flops", "0.3", "--quiet"]) == 2

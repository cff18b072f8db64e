"""Budgets over groups that share weights (coupled channels): a weight between two kept
channels costs once, and nothing once either is dropped; the exact finish meets a FLOPs
target on the compacted model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from learnprune import build_model
from learnprune.accounting import count
from learnprune.budget import exact_keep, exact_keep_shared
from learnprune.methods import SCL, DiffPrune, HardConcrete
from learnprune.runner import compact_summary


def _mlp_method() -> SCL:
    """3 → 4 → 2 → 2 without biases, coupled: set ``coupled:0`` (the 4 hidden units: rows
    of layer 0, columns of layer 2) and ``coupled:2`` (the 2 units: rows of layer 2,
    columns of layer 4); layer 2's 8 weights are cut by both."""
    model = nn.Sequential(
        nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False), nn.ReLU(),
        nn.Linear(2, 2, bias=False),
    )  # fmt: skip
    return SCL(model, groups="coupled", target=0.5, end_step=1, input_shape=(3,))


def test_kept_cost_counts_a_shared_weight_once_by_hand() -> None:
    method = _mlp_method()
    cost = method.kept_cost
    assert cost is not None and cost.total == 24.0  # 12 + 8 + 4 weights
    keep = {"coupled:0": torch.tensor([1.0, 1, 0, 0]), "coupled:2": torch.tensor([1.0, 0])}
    # layer 0: 2 rows of 3; layer 2: the weight (0, j) for j in {0, 1}; layer 4: 1 column of 2
    assert cost(keep) == 6 + 2 + 2
    marginal = cost.marginal(keep)
    # a hidden unit adds its row (3) and its column in layer 2 where row 0 is kept (1);
    # a unit of the second set its row in layer 2 where 2 columns are kept, and 2 in layer 4
    assert marginal["coupled:0"].tolist() == [4.0, 4.0, 4.0, 4.0]
    assert marginal["coupled:2"].tolist() == [4.0, 4.0]
    # the old additive count (each group's own weights) said 16 here, of 32
    assert method.removed_share(keep) == pytest.approx(1 - 10 / 24)


def test_exact_keep_shared_by_hand() -> None:
    method = _mlp_method()
    cost = method.kept_cost
    assert cost is not None
    names = ["coupled:0", "coupled:2"]

    def by_set(keep: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(names, torch.split(keep.double(), [4, 2]), strict=True))

    scores = torch.tensor([4.0, 3, 2, 1, 0.5, 0.4])
    protected = torch.tensor([True, False, False, False, True, False])
    # order: 0 and 4 (protected), then 1, 2, 3, 5; prefixes cost 6, 10, 14, 18, ...
    for budget, kept in ((12.0, [1, 1, 0, 0, 1, 0]), (14.0, [1, 1, 1, 0, 1, 0])):
        keep = exact_keep_shared(
            scores,
            budget,
            protected,
            lambda k: cost(by_set(k)),
            lambda k: torch.cat(list(cost.marginal(by_set(k)).values())),
        )
        assert keep.int().tolist() == kept
    # protected groups that alone exceed the budget are still kept, and nothing else
    keep = exact_keep_shared(
        scores, 1.0, protected, lambda k: cost(by_set(k)), lambda k: torch.zeros(6)
    )
    assert keep.int().tolist() == [1, 0, 0, 0, 1, 0]


def test_exact_keep_shared_agrees_with_exact_keep_on_additive_costs() -> None:
    group_cost = torch.tensor([5.0, 4, 2, 1])
    scores = torch.tensor([3.0, 2.0, 1.0, 0.0])
    none = torch.zeros(4, dtype=torch.bool)
    shared = exact_keep_shared(
        scores,
        8.0,
        none,
        lambda keep: float((group_cost * keep).sum()),
        lambda keep: group_cost,
    )
    # 5 fits, 4 does not (9), then 2 and 1 fill what is left
    assert shared.tolist() == exact_keep(scores, group_cost, 8.0, none).tolist()
    assert shared.tolist() == [True, False, True, True]


def test_hardconcrete_tracks_the_expected_shared_cost() -> None:
    model = nn.Sequential(
        nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False), nn.ReLU(),
        nn.Linear(2, 2, bias=False),
    )  # fmt: skip
    method = HardConcrete(model, groups="coupled", target=0.5, end_step=10, input_shape=(3,))
    with torch.no_grad():
        for gate in method.gates.values():
            gate.log_alpha.fill_(0.5)  # every gate open with the same share p
    p = float(method.gates["coupled:0"].open_share()[0].detach())  # P(z ≠ 0) over its range
    # E[kept] = 12 p + 8 p² + 4 p of 24 weights (layer 2's weights need both gates open)
    assert method.tracked_budget() == pytest.approx(1 - (16 * p + 8 * p**2) / 24)


def test_coupled_flops_finish_holds_on_the_compacted_resnet() -> None:
    """Before the shared-weight cost, a 2x target on coupled ResNet-20 channels compacted to
    ~4x fewer FLOPs (dropping r of all channels leaves (1 − r)² of a conv's FLOPs)."""
    torch.manual_seed(0)
    model = build_model("resnet20", num_classes=10, in_channels=1)
    dense = count(model, (1, 32, 32)).flops
    method = DiffPrune(model, groups="coupled", target={"flops": 0.5}, input_shape=(1, 32, 32),
                 end_step=1)  # fmt: skip
    with torch.no_grad():
        for gate in method.gates.values():
            for param in gate.parameters():
                param.add_(torch.randn_like(param))
    method.after_step()  # the phase (one step) is over: the exact finish
    assert method.finished
    achieved = method.budget_achieved()
    method.finalize()
    summary, _small = compact_summary(model, (1, 32, 32))
    kept = summary["flops"] / dense
    assert kept == pytest.approx(0.5, rel=0.02)
    assert 1.0 - achieved == pytest.approx(kept, rel=0.01)  # the budget's measure is real


def _plain_mlp() -> nn.Sequential:
    """3 → 4 → 2 → 2 without biases (the layers ``0``, ``2``, ``4``)."""
    return nn.Sequential(
        nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False), nn.ReLU(),
        nn.Linear(2, 2, bias=False),
    )  # fmt: skip


def test_flops_cost_of_filters_counts_the_inputs_compaction_removes_by_hand() -> None:
    """Dropping an output unit also removes the next layer's column for it: the FLOPs
    budget counts the compacted model (a Linear's weights cost 1 FLOP-unit each)."""
    method = SCL(_plain_mlp(), groups="out_channel", target={"flops": 0.5}, end_step=1,
                 input_shape=(3,))  # fmt: skip
    cost = method.kept_cost
    assert cost is not None and cost.total == 24.0  # 12 + 8 + 4, the classifier included
    keep = {"0.weight": torch.tensor([1.0, 1, 0, 0]), "2.weight": torch.tensor([1.0, 0])}
    # layer 0: 2 rows of 3; layer 2: row 0 at the 2 kept columns; layer 4: column 0 (2)
    assert cost(keep) == 6 + 2 + 2
    # the additive count (each group's own weights) said 6 + 4 + 4 kept
    assert method.removed_share(keep) == pytest.approx(1 - 10 / 24)
    sparsity = SCL(_plain_mlp(), groups="out_channel", target=0.5, end_step=1, input_shape=(3,))
    assert sparsity.kept_cost is None  # a sparsity budget counts each group's own weights


def test_flops_cost_of_inputs_counts_the_units_compaction_removes_by_hand() -> None:
    """Dropping input ``j`` of a layer that alone reads unit ``j`` removes that unit's row;
    the model's own inputs stay (compaction never cuts them), so they save nothing."""
    method = SCL(_plain_mlp(), groups="in_channel", target={"flops": 0.5}, end_step=1,
                 input_shape=(3,))  # fmt: skip
    cost = method.kept_cost
    assert cost is not None and cost.total == 24.0
    keep = {
        "0.weight": torch.zeros(3),  # every pixel dropped: still computed
        "2.weight": torch.tensor([1.0, 1, 0, 0]),  # hidden units 2, 3 unread: rows go
        "4.weight": torch.tensor([1.0, 0]),  # unit 1 of layer 2 unread: its row goes
    }
    # layer 0: rows 0, 1 (6); layer 2: row 0 at columns 0, 1 (2); layer 4: column 0 (2)
    assert cost(keep) == 6 + 2 + 2


@pytest.mark.parametrize("groups", ["out_channel", "l0_units"])
@pytest.mark.parametrize("target", [0.3, 0.1])
def test_structured_flops_finish_holds_on_the_compacted_lenet5(groups: str, target: float) -> None:
    """Before, a 0.3 FLOPs target on LeNet-5-Caffe's filters compacted to 0.10 of the FLOPs:
    a dropped filter takes the next layer's input slice along, which the additive cost
    did not count."""
    torch.manual_seed(0)
    model = build_model("lenet5-caffe")
    dense = count(model, (1, 28, 28)).flops
    method = SCL(model, groups=groups, target={"flops": target}, end_step=1)
    with torch.no_grad():
        for gate in method.gates.values():
            gate.mask_variable.normal_()  # random scores
    method.after_step()  # the exact finish
    achieved = method.budget_achieved()
    method.finalize()
    summary, _small = compact_summary(model, (1, 28, 28))
    kept = summary["flops"] / dense
    assert kept == pytest.approx(target, rel=0.02)
    assert 1.0 - achieved == pytest.approx(kept, rel=0.01)  # the budget's measure is real


def test_exact_keep_shared_does_not_reopen_closed_free_groups_by_hand() -> None:
    """Groups 2 and 3 cost nothing (inputs compaction leaves in place); the finish keeps a
    free group only while its gate is still open, so a learned closed one stays closed."""
    weights = torch.tensor([2.0, 2.0, 0.0, 0.0])
    scores = torch.tensor([4.0, 3.0, 2.0, 1.0])
    none = torch.zeros(4, dtype=torch.bool)

    def cost(keep: torch.Tensor) -> float:
        return float((weights * keep.double()).sum())

    def marginal(keep: torch.Tensor) -> torch.Tensor:  # additive: a group adds its own
        return weights

    assert exact_keep_shared(scores, 2.0, none, cost, marginal).int().tolist() == [1, 0, 1, 1]
    open_now = torch.tensor([True, True, False, True])
    keep = exact_keep_shared(scores, 2.0, none, cost, marginal, open_now=open_now)
    assert keep.int().tolist() == [1, 0, 0, 1]
    # every gate closed: group 0 is reopened (the budget asks for it), the free ones not
    keep = exact_keep_shared(scores, 2.0, none, cost, marginal, open_now=none)
    assert keep.int().tolist() == [1, 0, 0, 0]

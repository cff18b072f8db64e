"""FLOPs budgets and counts on a model that takes token ids: traced on the user's real
example inputs, not on float noise of a shape (which an embedding refuses)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import learnprune as lp
from learnprune.accounting import count

VOCAB, TOKENS = 50, 7
# the embedding stays dense (no group kind prunes it): the warning says so, expected here
pytestmark = pytest.mark.filterwarnings(
    "ignore::learnprune.inspection.UncoveredParametersWarning"
)


class TokenMLP(nn.Module):
    """Embedding(50, 8) -> fc1 (8 -> 16, on each of the 7 tokens) -> ReLU -> mean over
    tokens -> fc2 (16 -> 4, once)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 8)
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.embed(ids))).mean(dim=1))


def _ids() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, TOKENS), generator=torch.Generator().manual_seed(0))


def test_count_traces_flops_on_the_token_ids() -> None:
    counts = count(TokenMLP(), example_inputs=_ids())
    # one example: fc1 runs on 7 tokens (2·8·16·7 = 1,792), fc2 once (2·16·4 = 128)
    assert counts.flops == 2 * 8 * 16 * TOKENS + 2 * 16 * 4
    assert {layer.name: layer.flops for layer in counts.layers} == {"fc1": 1792, "fc2": 128}


@pytest.mark.parametrize("method", ["scl", "diffprune", "hardconcrete"])
def test_a_flops_budget_on_a_token_model_costs_each_filter_its_positions(method) -> None:
    model = TokenMLP()
    build = {"scl": lp.SCL, "diffprune": lp.DiffPrune, "hardconcrete": lp.HardConcrete}[method]
    groups = "l0_units" if method == "hardconcrete" else "out_channel"
    options = {"n_train": 100} if method == "hardconcrete" else {}
    pruner = build(model, groups=groups, target={"flops": 0.5}, example_inputs=_ids(), **options)
    costs = pruner.budget_costs
    if method == "hardconcrete":  # l0_units: fc1's 8 inputs and fc2's 16 inputs
        # P̄ = (7·128 + 1·64) / 192 = 5: an fc1 input (16 weights) costs 16·7/5 = 22.4,
        # an fc2 input (4 weights) 4·1/5 = 0.8
        assert costs["fc1.weight"] == pytest.approx(22.4)
        assert costs["fc2.weight"] == pytest.approx(0.8)
    else:  # fc1's 16 filters (8 weights each); fc2 is the classifier
        assert list(costs) == ["fc1.weight"]
        assert costs["fc1.weight"] == pytest.approx(8 * 7 / 5)  # 11.2
    model(_ids())  # the gated model still runs on the ids


def test_a_flops_budget_with_neither_shape_nor_inputs_says_what_it_needs() -> None:
    with pytest.raises(lp.ConfigError, match=r"input_shape=.* or example_inputs"):
        lp.SCL(TokenMLP(), groups="out_channel", target={"flops": 0.5})

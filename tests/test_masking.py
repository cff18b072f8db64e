"""Gates through torch.nn.utils.parametrize: forward, gradients, state_dict, deepcopy, finalize."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from learnprune.errors import ConfigError
from learnprune.groups import build_groups
from learnprune.masking import (
    FixedMask,
    attach,
    effective_parameters,
    finalize,
    raw_tensor,
    read_masks,
)
from learnprune.methods import Magnitude
from learnprune.models import build_model


def _tiny() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))


def _fixed_masks(model: nn.Module, kind: str = "element") -> dict[str, FixedMask]:
    plan = build_groups(model, kind, input_shape=(3,))
    return attach(model, plan, FixedMask)


def test_forward_uses_the_masked_weight_and_gradients_follow_the_chain_rule() -> None:
    model = _tiny()
    dense = copy.deepcopy(model)
    gates = _fixed_masks(model)
    keep = torch.tensor([True, False, True, False, True, True])
    gates["0.weight"].set(keep)
    x = torch.tensor([[1.0, 2.0, 3.0]])
    with torch.no_grad():
        dense[0].weight.mul_(keep.view(2, 3))
    assert torch.equal(model(x), dense(x))

    # tiny hand check: W̃ = W ⊙ M, so dL/dW = dL/dW̃ ⊙ M with dL/dW̃ = g xᵀ
    model(x).sum().backward()
    raw = raw_tensor(model[0], "weight")
    hidden_grad = dense[2].weight.detach().view(2, 1) * (dense[0](x) > 0).float().view(2, 1)
    expected = hidden_grad * x * keep.view(2, 3)
    assert torch.allclose(raw.grad, expected)
    assert torch.all(raw.grad[~keep.view(2, 3)] == 0)


def test_masks_are_keyed_by_the_unmasked_names() -> None:
    model = _tiny()
    gates = _fixed_masks(model)
    gates["2.weight"].set(torch.tensor([True, False]))
    masks = read_masks(model)
    assert sorted(masks) == ["0.weight", "2.weight"]
    assert masks["2.weight"].tolist() == [[True, False]]
    assert masks["0.weight"].dtype == torch.bool and masks["0.weight"].all()


def test_state_dict_round_trips_into_a_freshly_gated_model() -> None:
    model = _tiny()
    gates = _fixed_masks(model)
    gates["0.weight"].set(torch.tensor([True, False, True, False, False, True]))
    state = model.state_dict()
    assert "0.parametrizations.weight.0.gate.keep_mask" in state
    fresh = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    _fixed_masks(fresh)
    fresh.load_state_dict(state)
    x = torch.randn(5, 3)
    assert torch.equal(fresh(x), model(x))
    assert torch.equal(read_masks(fresh)["0.weight"], read_masks(model)["0.weight"])


def test_deepcopy_copies_weights_and_masks_independently() -> None:
    model = _tiny()
    gates = _fixed_masks(model)
    gates["0.weight"].set(torch.tensor([True, False, True, False, False, True]))
    twin = copy.deepcopy(model)
    x = torch.randn(5, 3)
    assert torch.equal(twin(x), model(x))
    gates["0.weight"].set(torch.zeros(6, dtype=torch.bool))
    assert read_masks(twin)["0.weight"].sum() == 3
    assert not torch.equal(twin(x), model(x))


@pytest.mark.parametrize("finalized", ["original", "copy"])
def test_finalizing_one_of_two_deep_copies_leaves_the_other_working(finalized: str) -> None:
    model = _tiny()
    gates = _fixed_masks(model)
    gates["0.weight"].set(torch.tensor([True, False, True, False, False, True]))
    twin = copy.deepcopy(model)
    x = torch.randn(4, 3)
    expected = model(x)
    first, second = (model, twin) if finalized == "original" else (twin, model)
    finalize(first)
    assert torch.equal(second(x), expected)
    assert read_masks(second)["0.weight"].sum() == 3
    finalize(second)
    assert torch.equal(second(x), expected) and torch.equal(first(x), expected)


def test_finalize_bakes_masks_and_removes_parametrizations() -> None:
    model = _tiny()
    gates = _fixed_masks(model)
    gates["0.weight"].set(torch.tensor([True, False, True, False, False, True]))
    x = torch.randn(4, 3)
    before = model(x)
    finalize(model)
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    assert sorted(model.state_dict()) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert torch.equal(model(x), before)
    assert (model[0].weight == 0).sum() == 3
    plain = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    plain.load_state_dict(model.state_dict())
    assert torch.equal(plain(x), before)


def test_a_tensor_in_two_sets_gets_both_gates() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2))
    plan = build_groups(model, "coupled", input_shape=(3,))
    gates = attach(model, plan, FixedMask)
    gates["coupled:0"].set(torch.tensor([True, False, True]))
    masks = read_masks(model)
    # the first layer loses row 1 and its bias entry, the second layer its input column 1
    assert masks["0.weight"][1].sum() == 0 and masks["0.weight"][[0, 2]].all()
    assert masks["0.bias"].tolist() == [True, False, True]
    assert masks["2.weight"][:, 1].sum() == 0 and masks["2.weight"][:, [0, 2]].all()


def test_attaching_twice_is_refused() -> None:
    model = _tiny()
    _fixed_masks(model)
    with pytest.raises(ConfigError, match="already carries"):
        _fixed_masks(model)


def test_effective_parameters_give_gated_values_under_plain_names() -> None:
    model = build_model("lenet300")
    Magnitude(model, target=0.5)
    named = dict(effective_parameters(model))
    assert list(named) == [n for n, _ in build_model("lenet300").named_parameters()]
    total_zeros = sum(int((t == 0).sum()) for n, t in named.items() if n.endswith("weight"))
    assert total_zeros == round(0.5 * (784 * 300 + 300 * 100 + 100 * 10))


def test_stored_zeros_fast_path_is_exact_even_when_weights_change_behind_its_back() -> None:
    from learnprune.masking import store_zeros, zero_targets

    model = _tiny()
    gates = _fixed_masks(model)
    keep = torch.tensor([True, False, True, False, False, True])
    gates["0.weight"].set(keep)
    targets = zero_targets(model)
    store_zeros(targets, force=True)
    raw = raw_tensor(model[0], "weight")
    assert torch.equal(raw[~keep.view(2, 3)], torch.zeros(3))  # zeros written into W
    assert model[0].weight is raw  # fast path: W itself, no product
    # an in-place change the gates did not make: the product is computed again
    with torch.no_grad():
        torch.nn.init.normal_(raw)
    assert model[0].weight is not raw
    assert torch.equal(model[0].weight, raw * keep.view(2, 3).float())
    # loading weights whose pruned entries are not zero: still masked in the forward pass
    state = {
        k: torch.ones_like(v) if k.endswith("original") else v
        for k, v in model.state_dict().items()
    }
    model.load_state_dict(state)
    assert torch.equal(model[0].weight, keep.view(2, 3).float())
    store_zeros(targets)
    assert model[0].weight is raw_tensor(model[0], "weight")
    assert torch.equal(model[0].weight, keep.view(2, 3).float())


def test_training_with_fixed_masks_keeps_pruned_weights_at_zero() -> None:
    model = build_model("lenet300")
    method = Magnitude(model, target=0.9)
    optimizer = torch.optim.SGD(method.model_parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    x = torch.randn(32, 1, 28, 28)
    y = torch.randint(0, 10, (32,))
    masks = method.masks()
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_step()
        for name, mask in masks.items():
            module = model.get_submodule(name.rpartition(".")[0])
            assert torch.all(raw_tensor(module, "weight")[~mask] == 0)
            assert torch.all(module.weight[~mask] == 0)

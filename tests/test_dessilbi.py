"""DessiLBI: one step by hand (lasso and group prox), the five unit checks of METHODS.md
section 5, the path tools, state_dict, and the method in the engine."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from learnprune.errors import ConfigError
from learnprune.methods.dessilbi import (
    NEVER,
    DessiLBI,
    DessiLBIMethod,
    group_soft_threshold,
    soft_threshold,
)


def _linear(weight: list[list[float]]) -> nn.Linear:
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weight))
    return layer


def test_one_step_of_a_2x2_linear_weight_by_hand() -> None:
    layer = _linear([[1.0, -2.0], [0.5, 3.0]])
    opt = DessiLBI([("fc.weight", layer.weight)], lr=0.1, kappa=1.0, nu=10.0, momentum=0.0)
    state = opt.state[layer.weight]
    state["z"].copy_(torch.tensor([[1.5, -0.5], [-2.0, 0.9]]))
    state["gamma"].copy_(torch.tensor([[0.5, 0.0], [-1.0, 0.0]]))  # = soft(z, 1)
    layer.weight.grad = torch.tensor([[0.1, 0.2], [-0.3, 0.4]])
    opt.step()
    # W - Γ = [[0.5, -2], [1.5, 3]]; W ← W - 0.1 g - 0.01 (W - Γ)
    assert torch.allclose(layer.weight, torch.tensor([[0.985, -2.0], [0.515, 2.93]]))
    # z ← z + 0.01 (W_old - Γ_old)
    assert torch.allclose(state["z"], torch.tensor([[1.505, -0.52], [-1.985, 0.93]]))
    # Γ = soft(z, 1)
    assert torch.allclose(state["gamma"], torch.tensor([[0.505, 0.0], [-0.985, 0.0]]))


def test_one_step_of_a_two_filter_conv_weight_by_hand() -> None:
    conv = nn.Conv2d(1, 2, (1, 2), bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[[1.0, 1.0]]], [[[2.0, -1.0]]]]))
    opt = DessiLBI([("conv.weight", conv.weight)], lr=0.1, nu=10.0, momentum=0.0)
    state = opt.state[conv.weight]
    state["z"].copy_(torch.tensor([[[[3.0, 4.0]]], [[[0.3, 0.4]]]]))
    # group prox of z: filter 0 has ‖z‖ = 5, scale 1 - 1/5; filter 1 has ‖z‖ = 0.5 < 1
    state["gamma"].copy_(torch.tensor([[[[2.4, 3.2]]], [[[0.0, 0.0]]]]))
    conv.weight.grad = torch.zeros_like(conv.weight)
    opt.step()
    # W - Γ: filter 0 [-1.4, -2.2], filter 1 [2, -1]
    expected_w = torch.tensor([[[[1.014, 1.022]]], [[[1.98, -0.99]]]])
    assert torch.allclose(conv.weight, expected_w)
    expected_z = torch.tensor([[[[2.986, 3.978]]], [[[0.32, 0.39]]]])
    assert torch.allclose(state["z"], expected_z)
    norm = math.sqrt(2.986**2 + 3.978**2)
    expected_gamma = torch.tensor([[[[2.986, 3.978]]], [[[0.0, 0.0]]]]) * (1 - 1 / norm)
    assert torch.allclose(state["gamma"], expected_gamma)


def test_lasso_prox_on_a_conv_weight_is_element_wise() -> None:
    conv = nn.Conv2d(1, 2, (1, 2), bias=False)
    opt = DessiLBI([("conv.weight", conv.weight)], lr=0.1, nu=10.0, momentum=0.0, prox="lasso")
    opt.state[conv.weight]["z"].copy_(torch.tensor([[[[3.0, 0.5]]], [[[-1.5, 0.3]]]]))
    conv.weight.grad = torch.zeros_like(conv.weight)
    with torch.no_grad():
        conv.weight.zero_()
    opt.step()
    assert torch.allclose(
        opt.state[conv.weight]["gamma"], torch.tensor([[[[2.0, 0.0]]], [[[-0.5, 0.0]]]])
    )


def test_without_coupling_the_w_step_is_sgd_with_lr_times_kappa() -> None:
    """(i) ν → ∞: W ← W − ακ·buf, i.e. PyTorch's SGD with momentum at lr ακ."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    twin = copy.deepcopy(model)
    lbi = DessiLBI(list(model.named_parameters()), lr=0.05, kappa=2.0, nu=1e30, momentum=0.9)
    sgd = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    for _ in range(5):
        for net, opt in ((model, lbi), (twin, sgd)):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_weight_decay_enters_the_momentum_buffer_two_steps_by_hand() -> None:
    """The code adds wd·W into the buffer: buf_t = m·buf_{t−1} + g_t + wd·W_t (biases: no
    decay)."""
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 3.0]]))
        layer.bias.copy_(torch.tensor([1.0, -1.0]))
    opt = DessiLBI(
        list(nn.Sequential(layer).named_parameters()),
        lr=0.1,
        nu=10.0,
        momentum=0.9,
        weight_decay=0.01,
    )
    g = torch.tensor([[0.1, 0.2], [-0.3, 0.4]])
    for _ in range(2):
        layer.weight.grad = g.clone()
        layer.bias.grad = torch.tensor([0.5, 0.5])
        opt.step()
    # step 1: buf = g + 0.01 W0 = [[0.11, 0.18], [-0.295, 0.43]]; Γ0 = 0, so
    #   W1 = W0 − 0.1 buf − 0.01 (W0 − 0) = [[0.979, -1.998], [0.5245, 2.927]];
    #   z1 = 0.01 W0 is below the threshold 1, Γ1 = 0
    # step 2: buf = 0.9 [[0.11, 0.18], [-0.295, 0.43]] + g + 0.01 W1
    #            = [[0.099 + 0.10979, 0.162 + 0.18002], [-0.2655 - 0.294755, 0.387 + 0.42927]]
    #            = [[0.20879, 0.34202], [-0.560255, 0.81627]]
    #   W2 = 0.99 W1 − 0.1 buf
    #      = [[0.96921 - 0.020879, -1.97802 - 0.034202], [0.519255 + 0.0560255, 2.89773 - 0.081627]]
    expected = torch.tensor([[0.948331, -2.012222], [0.5752805, 2.816103]])
    assert torch.allclose(layer.weight, expected, atol=1e-6)
    # adding 0.01 W after the momentum instead (the buffer without decay) would give
    # W2[0, 0] = 0.96921 - 0.1 (1.9 · 0.1 + 0.00979) = 0.949231
    assert abs(layer.weight[0, 0].item() - 0.949231) > 5e-4
    # bias: buf 0.5, then 0.9 · 0.5 + 0.5 = 0.95; b2 = b0 − 0.05 − 0.095
    assert torch.allclose(layer.bias, torch.tensor([0.855, -1.145]))


def test_without_coupling_weight_decay_is_sgd_weight_decay_on_weights_only() -> None:
    """ν → ∞: DessiLBI with wd is torch.optim.SGD with wd on the tensors of ndim > 1 (not
    biases, not norm layers), heavy ball and Nesterov."""
    for nesterov in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
        twin = copy.deepcopy(model)
        lbi = DessiLBI(
            list(model.named_parameters()),
            lr=0.05,
            kappa=2.0,
            nu=1e30,
            momentum=0.9,
            nesterov=nesterov,
            weight_decay=0.1,
        )
        decayed = [p for p in twin.parameters() if p.ndim > 1]
        plain = [p for p in twin.parameters() if p.ndim <= 1]
        sgd = torch.optim.SGD(
            [{"params": decayed, "weight_decay": 0.1}, {"params": plain}],
            lr=0.1,
            momentum=0.9,
            nesterov=nesterov,
        )
        x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
        for _ in range(5):
            for net, opt in ((model, lbi), (twin, sgd)):
                opt.zero_grad()
                F.cross_entropy(net(x), y).backward()
                opt.step()
        for a, b in zip(model.parameters(), twin.parameters(), strict=True):
            assert torch.allclose(a, b, atol=1e-6)


def test_z_increment_uses_the_old_w_and_gamma() -> None:
    """(ii) z_{k+1} − z_k = (α/ν)(W_k − Γ_k)."""
    torch.manual_seed(0)
    layer = nn.Linear(3, 3, bias=False)
    opt = DessiLBI([("fc.weight", layer.weight)], lr=0.2, nu=4.0, momentum=0.9)
    for _ in range(3):
        old_w = layer.weight.detach().clone()
        old_gamma = opt.state[layer.weight]["gamma"].clone()
        old_z = opt.state[layer.weight]["z"].clone()
        layer.weight.grad = torch.randn(3, 3)
        opt.step()
        assert torch.allclose(opt.state[layer.weight]["z"] - old_z, 0.2 / 4.0 * (old_w - old_gamma))


def test_group_prox_zeroes_small_filters_and_shrinks_the_others() -> None:
    """(iii) ‖z_g‖ ≤ λ -> 0; otherwise (1 − λ/‖z_g‖) z_g."""
    z = torch.tensor([[[[0.6, 0.8]]], [[[6.0, 8.0]]], [[[0.0, 0.0]]]])
    out = group_soft_threshold(z, 1.0)
    assert torch.equal(out[0], torch.zeros_like(out[0]))
    assert torch.allclose(out[1], z[1] * 0.9)
    assert torch.equal(out[2], torch.zeros_like(out[2]))
    # rescaled: ‖z_g‖/√2 = 7.07 for filter 1, threshold 0.5
    rescaled = group_soft_threshold(z, 0.5, rescaled=True)
    assert torch.allclose(rescaled[1], z[1] * (1 - 0.5 / (10 / math.sqrt(2))))
    assert torch.equal(
        soft_threshold(torch.tensor([-2.0, 0.5, 1.5]), 1.0), torch.tensor([-1.0, 0.0, 0.5])
    )


def _two_fan_in_step(**options) -> tuple[torch.Tensor, torch.Tensor]:
    """Γ after one step from a preset z (W = 0, no gradient: z stays) of a conv of fan-in
    1 (one 1x1 filter) and one of fan-in 4 (one 2x2 filter)."""
    narrow, wide = nn.Conv2d(1, 1, 1, bias=False), nn.Conv2d(1, 1, 2, bias=False)
    params = [("narrow.weight", narrow.weight), ("wide.weight", wide.weight)]
    opt = DessiLBI(params, lr=0.1, nu=10.0, momentum=0.0, **options)
    for (_name, param), z in zip(params, (0.8, 0.6), strict=True):
        with torch.no_grad():
            param.zero_()
        opt.state[param]["z"].fill_(z)
        param.grad = torch.zeros_like(param)
    opt.step()
    return opt.state[narrow.weight]["gamma"], opt.state[wide.weight]["gamma"]


def test_auto_prox_lets_a_filter_of_small_fan_in_enter_the_support() -> None:
    """Fan-ins 1 and 4 (d_max = 4): "auto" thresholds ‖z_g‖ at λ √(d_g / d_max) = 0.5 and
    1; "group" at 1 for both."""
    # narrow: ‖z‖ = 0.8 > 0.5 -> Γ = (1 − 0.5/0.8) · 0.8 = 0.3; wide: ‖z‖ = 1.2 -> z/6
    narrow, wide = _two_fan_in_step()
    assert torch.allclose(narrow, torch.tensor(0.3)) and torch.allclose(wide, torch.tensor(0.1))
    # plain group prox: the narrow filter's ‖z‖ = 0.8 ≤ 1 stays out, the wide one is the same
    narrow, wide = _two_fan_in_step(prox="group")
    assert torch.equal(narrow, torch.zeros_like(narrow))
    assert torch.allclose(wide, torch.tensor(0.1))
    # an explicit conv_lam is the threshold on ‖z_g‖/√d_g: 0.7 -> narrow 0.1, wide 1.2 − 1.4 < 0
    narrow, wide = _two_fan_in_step(conv_lam=0.7)
    assert torch.allclose(narrow, torch.tensor(0.1)) and not wide.any()


def test_auto_prox_is_the_reference_group_prox_where_fan_ins_agree() -> None:
    convs = [nn.Conv2d(1, 2, 2, bias=False), nn.Conv2d(1, 3, 2, bias=False)]
    opt = DessiLBI([(f"c{i}.weight", c.weight) for i, c in enumerate(convs)], lr=0.1)
    group = opt.param_groups[0]
    assert not opt.fan_ins_differ
    assert [opt.prox_of(c.weight, group) for c in convs] == [("group", 1.0)] * 2


def _toy_path(epochs: int = 30) -> tuple[nn.Module, DessiLBI, list[int]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(256, 10)
    y = (x[:, :3].argmax(1)).long()  # only 3 of 10 inputs matter
    opt = DessiLBI(list(model.named_parameters()), lr=0.1, nu=5.0, momentum=0.9)
    supports = []
    for epoch in range(1, epochs + 1):
        for start in range(0, 256, 32):
            opt.zero_grad()
            F.cross_entropy(model(x[start : start + 32]), y[start : start + 32]).backward()
            opt.step()
        supports.append(sum(opt.record_epoch(epoch).values()))
    return model, opt, supports


def test_gamma_starts_empty_and_its_support_grows_along_the_path() -> None:
    """(iv) Γ is exactly zero for the first steps from z = 0; the support then grows."""
    torch.manual_seed(0)
    layer = nn.Linear(5, 5)
    opt = DessiLBI(list(nn.Sequential(layer).named_parameters()), lr=0.01, nu=100.0)
    for _ in range(3):
        layer.weight.grad = torch.randn(5, 5)
        layer.bias.grad = torch.randn(5)
        opt.step()
        assert torch.count_nonzero(opt.state[layer.weight]["gamma"]) == 0
    _model, _opt, supports = _toy_path()
    assert supports[0] < supports[-1]
    assert supports[-1] > 0
    increases = sum(b >= a for a, b in itertools.pairwise(supports))
    assert increases >= 0.8 * (len(supports) - 1)  # roughly monotone


def test_sparse_view_matches_the_support_and_restores_w_bit_for_bit() -> None:
    """(v) W* = W ⊙ 1[Γ ≠ 0], and W comes back exactly."""
    model, opt, _supports = _toy_path(epochs=8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = opt.masks()
    with opt.sparse_view():
        for name, param in model.named_parameters():
            if name in masks:
                assert torch.equal(param != 0, masks[name] & (before[name] != 0))
                assert torch.equal(param[masks[name]], before[name][masks[name]])
            else:
                assert torch.equal(param, before[name])
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name])


def test_first_entry_epochs_ticket_and_prune_order() -> None:
    model, opt, _supports = _toy_path(epochs=10)
    first = opt.state[model[0].weight]["first_epoch"]
    gamma = opt.state[model[0].weight]["gamma"]
    assert torch.equal(first != NEVER, first <= 10)
    assert bool(((gamma != 0) <= (first <= 10)).all())  # in the support => entered
    ticket = opt.ticket(5)
    assert torch.equal(ticket["0.weight"], first <= 5)
    assert int(ticket["0.weight"].sum()) <= int(opt.ticket(10)["0.weight"].sum())
    scores = opt.prune_order_scores()
    w = model[0].weight.detach()
    assert torch.allclose(scores["0.weight"], w.abs() - first.float())
    masks = opt.prune_by_order(50)
    kept = masks["0.weight"]
    assert abs(kept.float().mean().item() - 0.5) < 0.02
    # everything kept scores at least as much as everything dropped
    assert scores["0.weight"][kept].min() >= scores["0.weight"][~kept].max()


def test_prune_order_of_conv_filters_is_per_filter() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 4, 3, bias=False)
    opt = DessiLBI([("conv.weight", conv.weight)], lr=0.1)
    opt.state[conv.weight]["first_epoch"][:2] = 1  # filters 0 and 1 entered in epoch 1
    opt.record_epoch(2)  # Γ = 0: nothing enters; stores the order
    scores = opt.prune_order_scores()["conv.weight"]
    norms = conv.weight.detach().reshape(4, -1).norm(dim=1)
    assert torch.allclose(scores, norms - torch.tensor([1.0, 1.0, NEVER, NEVER]))
    keep = opt.prune_by_order(50)["conv.weight"]
    assert keep.shape == conv.weight.shape
    assert keep[:2].all() and not keep[2:].any()


def test_prune_by_order_keeps_linear_weights_strictly_above_a_tied_threshold() -> None:
    """Never-entered weights score |W| − 2000 in float32 (spacing 2⁻¹³ there): 0.5, 0.50001
    and 0.50002 all score −1999.5, the 50th percentile of [−1999.5 ×3, −1999.0]; the
    reference keeps a Linear weight only if its score is strictly greater."""
    layer = _linear([[0.50001, 0.5], [0.50002, 1.0]])
    opt = DessiLBI([("fc.weight", layer.weight)], lr=0.1)
    opt.record_epoch(1)  # Γ = 0: no weight has entered
    scores = opt.prune_order_scores()["fc.weight"]
    assert scores.dtype == torch.float32
    assert torch.equal(scores, torch.tensor([[-1999.5, -1999.5], [-1999.5, -1999.0]]))
    keep = opt.prune_by_order(50)["fc.weight"]
    assert torch.equal(keep, torch.tensor([[False, False], [False, True]]))  # ≥ would keep all
    assert opt.prune_by_order(0)["fc.weight"].all()


def test_prune_by_order_uses_the_float32_percentile_and_keeps_conv_filters_at_it() -> None:
    """Two one-weight filters scoring a = −1999.5 and b = a + 2⁻¹³ (adjacent float32
    values); their 50th percentile a + 2⁻¹⁴ lies halfway, and numpy's float32
    ``b − (b − a)·0.5`` rounds to even, a (1999.5·2¹³ = 16379904). A filter is kept if its
    score ≥ the threshold, so both stay; a float64 threshold would drop the first."""
    conv = nn.Conv2d(1, 2, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([0.5, 0.5 + 2**-13]).view(2, 1, 1, 1))
    opt = DessiLBI([("conv.weight", conv.weight)], lr=0.1)
    opt.record_epoch(1)
    scores = opt.prune_order_scores()["conv.weight"]
    assert scores.tolist() == [-1999.5, -1999.5 + 2**-13]
    assert opt.prune_by_order(50)["conv.weight"].all()
    # at 75 % the threshold a + 0.75·2⁻¹³ rounds to b: only the second filter stays
    keep = opt.prune_by_order(75)["conv.weight"]
    assert keep.flatten().tolist() == [False, True]


def test_prune_bias_drops_the_biases_of_the_dropped_filters() -> None:
    """Filter norms 3, 1, 2 score 3 − 2000, 1 − 2000, 2 − 2000; the median −1998 drops the
    second filter, and with ``prune_bias`` its bias too (a Linear layer's bias stays)."""
    model = nn.Sequential(nn.Conv2d(1, 3, 1), nn.Flatten(), nn.Linear(3, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([3.0, -1.0, 2.0]).view(3, 1, 1, 1))
    opt = DessiLBI(list(model.named_parameters()), lr=0.1)
    opt.record_epoch(1)
    masks = opt.prune_by_order(50, names=["0.weight"], prune_bias=True)
    assert set(masks) == {"0.weight", "0.bias", "2.weight"}
    assert masks["0.weight"].flatten().tolist() == [True, False, True]
    assert masks["0.bias"].tolist() == [True, False, True]
    assert masks["2.weight"].all()  # not named: kept whole
    assert set(opt.prune_by_order(50)) == {"0.weight", "2.weight"}  # weights only by default


def test_prune_by_order_uses_the_order_stored_at_the_last_epoch_end() -> None:
    """The reference prunes by the order of ``update_prune_order``; ``order="current"``
    recomputes it from the W of now. Stored from W = [[1, 2], [3, 4]] (Γ = 0): scores
    W − 2000, threshold percentile 50 = −1997.5; W then becomes [[4, 3], [2, 1]]."""
    layer = _linear([[1.0, 2.0], [3.0, 4.0]])
    opt = DessiLBI([("fc.weight", layer.weight)], lr=0.1)
    with pytest.raises(ConfigError, match="record_epoch"):
        opt.prune_by_order(50)  # nothing stored yet
    opt.record_epoch(1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[4.0, 3.0], [2.0, 1.0]]))
    stored = torch.tensor([[-1999.0, -1998.0], [-1997.0, -1996.0]])
    assert torch.equal(opt.prune_order_scores()["fc.weight"], stored)
    assert torch.equal(opt.prune_order_scores("current")["fc.weight"], stored.flip(0).flip(1))
    keep_stored = torch.tensor([[False, False], [True, True]])
    assert torch.equal(opt.prune_by_order(50)["fc.weight"], keep_stored)
    assert torch.equal(opt.prune_by_order(50, order="current")["fc.weight"], ~keep_stored)
    # the stored order is optimizer state: it survives state_dict / load_state_dict
    twin = _linear([[4.0, 3.0], [2.0, 1.0]])
    twin_opt = DessiLBI([("fc.weight", twin.weight)], lr=0.1)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert torch.equal(twin_opt.prune_by_order(50)["fc.weight"], keep_stored)
    with pytest.raises(ConfigError):
        opt.prune_by_order(50, order="newest")


def test_state_dict_round_trips_z_gamma_and_the_path() -> None:
    model, opt, _supports = _toy_path(epochs=4)
    state = copy.deepcopy(opt.state_dict())
    twin = copy.deepcopy(model)
    twin_opt = DessiLBI(list(twin.named_parameters()), lr=0.1, nu=5.0, momentum=0.9)
    twin_opt.load_state_dict(state)
    for (_n, p), (_m, q) in zip(opt.coupled(), twin_opt.coupled(), strict=True):
        for key in ("z", "gamma", "first_epoch", "prune_order", "momentum_buffer"):
            assert torch.equal(opt.state[p][key], twin_opt.state[q][key])
    assert twin_opt.support_history == opt.support_history and twin_opt.epoch == 4
    x = torch.randn(16, 10)
    y = torch.randint(0, 3, (16,))
    for net, optimizer in ((model, opt), (twin, twin_opt)):
        optimizer.zero_grad()
        F.cross_entropy(net(x), y).backward()
        optimizer.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def test_variants_follow_their_code() -> None:
    torch.manual_seed(0)
    w0 = torch.randn(3, 4)
    g = torch.randn(3, 4)
    for variant in ("lottery", "normalize"):
        layer = nn.Linear(4, 3, bias=False)
        with torch.no_grad():
            layer.weight.copy_(w0)
        opt = DessiLBI(
            [("fc.weight", layer.weight)],
            lr=0.1,
            kappa=2.0,
            nu=10.0,
            momentum=0.0,
            weight_decay=0.01,
            variant=variant,
        )
        layer.weight.grad = g.clone()
        opt.step()
        z = opt.state[layer.weight]["z"]
        if variant == "lottery":  # decay before momentum; W ← W − ακ(d + (W − Γ)/ν)
            d = g + 0.01 * w0
            assert torch.allclose(layer.weight, w0 - 0.2 * (d + w0 / 10.0))
            assert torch.allclose(z, 0.1 / 10.0 * w0)
        else:  # W ← W − α d − (α/ν)(W − Γ); z += α/(νκ) · p (W_old − Γ) / max(|W_new|, 1)
            d = g + 0.01 * w0
            w1 = w0 - 0.1 * d - 0.01 * w0
            assert torch.allclose(layer.weight, w1)
            assert torch.allclose(z, 0.1 / 20.0 * 0.01 * w0 / w1.abs().clamp(min=1))


def test_normalize_steps_uncoupled_tensors_by_lr_not_lr_kappa() -> None:
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([1.0, -1.0]))
    opt = DessiLBI(
        list(nn.Sequential(layer).named_parameters()),
        lr=0.1,
        kappa=2.0,
        momentum=0.0,
        variant="normalize",
    )
    layer.weight.grad = torch.zeros(2, 2)
    layer.bias.grad = torch.tensor([0.5, 0.5])
    opt.step()
    # b ← b − α g = [1 − 0.05, −1 − 0.05] (ακ would give [0.9, −1.1])
    assert torch.allclose(layer.bias, torch.tensor([0.95, -1.05]))


def _normalize_z_after_two_steps(**options) -> torch.Tensor:
    layer = _linear([[2.0, 0.5], [0.0, 0.0]])
    opt = DessiLBI(
        [("fc.weight", layer.weight)], lr=0.1, nu=10.0, momentum=0.0, variant="normalize", **options
    )
    for _ in range(2):
        layer.weight.grad = torch.zeros(2, 2)
        opt.step()
    return opt.state[layer.weight]["z"][0]


def test_normalize_lbi_momentum_two_steps_by_hand() -> None:
    """No gradient, Γ stays 0: W1 = 0.99 W0 = [1.98, 0.495], W2 = 0.99 W1 = [1.9602, 0.49005];
    increments u1 = W0 = [2, 0.5], u2 = W1; p = 0.01, s = max(|W_new|, 1), so
    z2 = (0.1 / 10) · 0.01 · (b1 / s1 + b2 / s2) with b1 = u1 and b2 per rule."""
    s1, s2 = torch.tensor([1.98, 1.0]), torch.tensor([1.9602, 1.0])
    u1, u2 = torch.tensor([2.0, 0.5]), torch.tensor([1.98, 0.495])
    cases = {
        (): u2,  # no LBI momentum
        (("lbi_momentum", 0.5),): 0.5 * u1 + u2,  # heavy ball: [2.98, 0.745]
        (("lbi_momentum", 0.5), ("lbi_momentum_rule", "released")): 0.5 * u1,  # drops u2
    }
    for options, b2 in cases.items():
        z = _normalize_z_after_two_steps(**dict(options))
        assert torch.allclose(z, 1e-4 * (u1 / s1 + b2 / s2), rtol=1e-5, atol=0), options
    # second entry by hand: 1e-4 · (0.5 + 0.745) with heavy ball
    assert _normalize_z_after_two_steps(lbi_momentum=0.5)[1].item() == pytest.approx(1.245e-4)


def test_bad_options_are_config_errors() -> None:
    layer = nn.Linear(2, 2)
    for kwargs in (
        {"lr": -1.0},
        {"lr": 0.1, "nu": 0.0},
        {"lr": 0.1, "kappa": float("nan")},
        {"lr": 0.1, "prox": "ridge"},
        {"lr": 0.1, "variant": "newest"},
        {"lr": 0.1, "momentum": 1.0},
        {"lr": 0.1, "lbi_momentum": 0.5},  # normalize only
        {"lr": 0.1, "variant": "normalize", "lbi_momentum": 1.0},
        {"lr": 0.1, "variant": "normalize", "lbi_momentum_rule": "nesterov"},
    ):
        with pytest.raises(ConfigError):
            DessiLBI(list(nn.Sequential(layer).named_parameters()), **kwargs)
    with pytest.raises(ConfigError, match="no Linear or conv"):
        DessiLBI([("bias", layer.bias)], lr=0.1)


def test_the_method_trains_through_the_engine_and_finalizes_to_w_star(tmp_path) -> None:
    from learnprune.config import RunConfig, TrainConfig
    from learnprune.data import Dataset
    from learnprune.runner import run

    torch.manual_seed(0)
    prototypes = torch.randn(10, 1, 28, 28)
    labels = torch.randint(0, 10, (600,))
    images = prototypes[labels] + 0.5 * torch.randn(600, 1, 28, 28)
    data = Dataset("mnist", images[:500], labels[:500], images[500:], labels[500:], 10)
    config = RunConfig(
        model="lenet5",
        data="mnist",
        method="dessilbi",
        method_options={"nu": 1.0, "lam": 0.05},
        train=TrainConfig(epochs=3, batch_size=50, lr=0.1, lr_schedule="constant"),
    )
    result = run(config, tmp_path / "run", quiet=True, data=data)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and "test_accuracy_sparse" in lines[-1] and "support" in lines[-1]
    assert (tmp_path / "run" / "init.pt").is_file()
    assert 0 < result["sparsity"] < 1
    assert "test_accuracy_dense_w" in result
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    weights = [v for k, v in state.items() if k.endswith("weight")]
    zeros = sum(int((w == 0).sum()) for w in weights)
    assert zeros / sum(w.numel() for w in weights) == pytest.approx(result["sparsity"])


def test_method_refuses_other_optimizers() -> None:
    from learnprune.config import TrainConfig
    from learnprune.models import build_model

    method = DessiLBIMethod(build_model("lenet5"))
    with pytest.raises(ConfigError, match="own optimizer"):
        method.build_optimizer(TrainConfig(optimizer="adam"))


def test_ticket_flow_retrains_the_early_support_from_the_starting_weights(tmp_path) -> None:
    """learnprune train --method dessilbi, then learnprune ticket RUN --epoch 1."""
    from learnprune.cli import main
    from learnprune.methods.ticket import ticket_masks

    source, ticket = tmp_path / "lbi", tmp_path / "ticket"
    common = ["--no-progress", "--quiet"]
    code = main(
        [
            "train",
            "--model",
            "lenet300",
            "--data",
            "mnist",
            "--method",
            "dessilbi",
            "--set",
            "method.nu=1.0",
            "--set",
            "method.lam=0.02",
            "--epochs",
            "2",
            "--train-subset",
            "2000",
            "--lr",
            "0.1",
            "--out",
            str(source),
            *common,
        ]
    )
    assert code == 0
    masks = ticket_masks(source, 1)
    assert set(masks) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert 0 < sum(int(m.sum()) for m in masks.values()) < 266_200
    code = main(
        ["ticket", str(source), "--epoch", "1", "--epochs", "1", "--out", str(ticket), *common]
    )
    assert code == 0
    config = __import__("json").loads((ticket / "config.json").read_text())
    assert config["method"] == "ticket" and config["init"].endswith("init.pt")
    final = torch.load(ticket / "model.pt", weights_only=True)
    for name, mask in masks.items():
        assert torch.all(final[name][~mask] == 0)
    # only conv layers: a LeNet-300-100 has none, so the ticket would be empty
    assert main(["ticket", str(source), "--epoch", "1", "--layers", "conv", *common]) == 2
    assert main(["ticket", str(source), "--epoch", "9", *common]) == 2  # beyond the path

"""Hard-concrete L0 (Louizos et al.): gate samples, the test-time gate, P(z ≠ 0) and the
penalty against hand computations for fixed log α and noise, exact zeros and ones,
initialisation, clamping, one noise draw per forward pass, and the expected L0."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from learnprune.errors import ConfigError
from learnprune.methods import HardConcrete
from learnprune.models import build_model

BETA = 2.0 / 3.0


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _set(method: HardConcrete, name: str, log_alpha: list[float], u: list[float]) -> None:
    gate = method.gates[name]
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor(log_alpha))
    gate.u = torch.tensor(u)


def test_training_gate_by_hand() -> None:
    model = nn.Sequential(nn.Linear(3, 1))
    method = HardConcrete(model, groups="in_channel")
    _set(method, "0.weight", [0.0, 1.0, -2.0], [0.3, 0.8, 0.5])
    gate = method.gates["0.weight"]
    gate.train()
    expected = []
    for log_alpha, u in ((0.0, 0.3), (1.0, 0.8), (-2.0, 0.5)):
        s = _sigmoid((math.log(u) - math.log(1 - u) + log_alpha) / BETA)
        expected.append(min(max(s * 1.2 - 0.1, 0.0), 1.0))
    assert gate().tolist() == pytest.approx(expected)
    # the third: s = σ(−3) = 0.047; 1.2 s − 0.1 < 0: an exact zero
    assert gate()[2] == 0.0


def test_test_time_gate_and_exact_ones() -> None:
    model = nn.Sequential(nn.Linear(3, 1))
    method = HardConcrete(model, groups="in_channel")
    _set(method, "0.weight", [0.0, 3.0, -3.0], [0.5, 0.5, 0.5])
    gate = method.gates["0.weight"]
    gate.eval()
    z = gate().tolist()
    assert z[0] == pytest.approx(0.5)  # σ(0)·1.2 − 0.1
    assert z[1] == 1.0 and z[2] == 0.0  # σ(3)·1.2 − 0.1 > 1, σ(−3)·1.2 − 0.1 < 0
    assert method.masks()["0.weight"].tolist() == [[True, True, False]]


def test_probability_of_a_non_zero_gate_by_hand_and_by_monte_carlo() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 1))
    method = HardConcrete(model, groups="in_channel")
    log_alpha = [-1.5, 0.0, 1.0]
    _set(method, "0.weight", log_alpha, [0.5] * 3)
    gate = method.gates["0.weight"]
    by_hand = [_sigmoid(a - BETA * math.log(0.1 / 1.1)) for a in log_alpha]
    assert gate.prob_open().tolist() == pytest.approx(by_hand)
    gate.train()
    opened = torch.zeros(3)
    draws = 20000
    for _ in range(draws):
        gate.draw()
        opened += (gate() > 0).float()
    assert torch.allclose(opened / draws, torch.tensor(by_hand), atol=0.015)


def test_penalty_by_hand_for_input_unit_gates() -> None:
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -1.0]]))
        layer.bias.copy_(torch.tensor([0.5, -2.0]))
    model = nn.Sequential(layer)
    lam, decay, n = 0.3, 0.1, 10
    method = HardConcrete(model, lam=lam, weight_decay=decay, n_train=n)
    _set(method, "0.weight", [0.0, 1.0], [0.5, 0.5])
    p = [_sigmoid(a - BETA * math.log(0.1 / 1.1)) for a in (0.0, 1.0)]
    # column g of W holds the weights of input unit g: (1, 3) and (2, −1)
    column_0 = 2 * lam + 0.5 * decay * (1.0 + 9.0)
    column_1 = 2 * lam + 0.5 * decay * (4.0 + 1.0)
    ungated_bias = 0.5 * decay * (0.25 + 4.0)
    expected = (p[0] * column_0 + p[1] * column_1 + ungated_bias) / n
    assert float(method.regularizer().detach()) == pytest.approx(expected)


def test_conv_feature_map_groups_hold_the_bias_and_share_one_noise_draw() -> None:
    torch.manual_seed(0)
    model = build_model("lenet5-caffe")
    method = HardConcrete(model)
    sets = {name: gate.num_groups for name, gate in method.gates.items()}
    assert sets == {"conv1.weight": 20, "conv2.weight": 50, "fc1.weight": 800, "fc2.weight": 500}
    model.train()
    model(torch.rand(2, 1, 28, 28))  # the pre-hook draws the noise for this pass
    w = model.conv1.parametrizations.weight.original
    b = model.conv1.parametrizations.bias.original
    z_from_weight = model.conv1.weight[:, 0, 0, 0] / w[:, 0, 0, 0]
    z_from_bias = model.conv1.bias / b
    assert torch.allclose(z_from_weight, z_from_bias, atol=1e-6, equal_nan=True)


def test_initialisation_and_clamping() -> None:
    torch.manual_seed(0)
    model = build_model("lenet300")
    method = HardConcrete(model, droprate_init=[0.2, 0.5, 0.5])
    first = method.gates["fc1.weight"].log_alpha
    assert first.mean().item() == pytest.approx(math.log(0.8 / 0.2), abs=0.01)
    assert first.std().item() == pytest.approx(0.01, rel=0.2)
    with torch.no_grad():
        first[:2] = torch.tensor([10.0, -10.0])
    method.after_step()
    assert first[:2].tolist() == pytest.approx([math.log(100.0), math.log(0.01)])


def test_penalty_closes_gates_and_the_final_model_uses_the_test_time_gate() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 1))
    method = HardConcrete(model, lam=1.0, weight_decay=0.0, n_train=50)
    x = torch.randn(256, 10)
    y = x[:, :3].sum(1, keepdim=True)  # inputs 3..9 are useless
    optimizer = torch.optim.Adam(method.model_parameters() + method.parameters(), lr=0.05)
    for _ in range(400):
        loss = F.mse_loss(model(x), y) + method.regularizer()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_step()
    keep = method.masks()["0.weight"][0]
    assert keep[:3].all() and not keep[3:].any()
    l0, _flops = method.expected_l0_and_flops()
    assert l0 == pytest.approx(float(method.gates["0.weight"].prob_open().detach().sum()) + 1)
    gate_values = method.gates["0.weight"].test_time()
    w = model[0].parametrizations.weight.original.detach().clone()
    method.finalize()
    assert torch.equal(model[0].weight, w * gate_values)


def test_per_set_options_must_match_the_sets() -> None:
    model = build_model("lenet300")
    with pytest.raises(ConfigError, match="3 group sets"):
        HardConcrete(model, lam=[1.0, 1.0])
    with pytest.raises(ConfigError):
        HardConcrete(model, droprate_init=1.5)
    with pytest.raises(ConfigError, match="droprate_init"):  # the last set's: checked first
        HardConcrete(model, droprate_init=[0.2, 0.5, 0.0])
    assert not any(hasattr(m, "parametrizations") for m in model.modules())


def test_flops_target_scales_every_lambda_and_is_measured_in_flops() -> None:
    model = build_model("lenet5-caffe")
    method = HardConcrete(model, target={"flops": 0.5}, lam_rate=0.01, controller="integral")
    assert method.budget == ("flops", pytest.approx(0.5)) and method.lam_scale == 1.0
    before = float(method.regularizer().detach())
    method.after_step()  # nothing closed yet: below the budget, every λ_l grows
    assert method.lam_scale > 1.0
    assert float(method.regularizer().detach()) > before
    with torch.no_grad():  # close 19 of the 20 conv1 maps at test time: their FLOPs go, and
        method.gates["conv1.weight"].log_alpha[1:] = -4.0  # so do conv2's inputs from them
    conv1, conv2 = 20 * 25 * 576, 50 * 20 * 25 * 64  # multiply-adds of each layer's weights
    removed = 19 / 20 * (conv1 + conv2) / (conv1 + conv2 + 500 * 800 + 10 * 500)
    assert method.budget_achieved() == pytest.approx(removed, rel=1e-5)


def test_cli_refuses_a_bad_hardconcrete_option_in_one_line(tmp_path) -> None:
    import contextlib
    import io

    from learnprune.cli import main

    err = io.StringIO()
    argv = ["train", "--model", "lenet300", "--data", "mnist", "--method", "hardconcrete"]
    argv += ["--set", "method.droprate_init=1.5", "--out", str(tmp_path / "run")]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    assert code == 2
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    assert len(lines) == 1 and "droprate_init" in lines[0] and "Traceback" not in lines[0]
    assert not (tmp_path / "run").exists()


def test_exact_finish_ranks_what_log_alpha_learned_across_sets() -> None:
    # two element sets, drop rates 0.2 and 0.5: log α starts at log 4 = 1.386 and at 0.
    # Ranked by log α itself the first set's head start would take all 5 kept places.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))
    method = HardConcrete(model, "element", droprate_init=[0.2, 0.5], target=0.5, end_step=10)
    first, second = method.plan.sets
    learned = {first.name: [0.3, -0.2, -0.1, 0.0, -0.4, -0.5], second.name: [0.2, 0.1, -0.05, 0.25]}
    with torch.no_grad():
        for name, delta in learned.items():
            gate = method.gates[name]
            gate.log_alpha.copy_(gate.init_mean + torch.tensor(delta))
    assert method.gates[first.name].init_mean == pytest.approx(math.log(4.0))
    assert method.gate_scores(method.gates[first.name]).tolist() == pytest.approx(
        learned[first.name], abs=1e-6
    )
    keep = method.exact_keep()  # 5 of 10 weights, the five largest learned changes
    assert keep[first.name].tolist() == [True, False, False, True, False, False]
    assert keep[second.name].tolist() == [True, True, False, True]


def test_exact_finish_opens_kept_gates_and_folds_their_value_into_the_weights() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    method = HardConcrete(model, "element", target=0.25, end_step=1)
    name = method.plan.sets[0].name
    with torch.no_grad():
        model[0].parametrizations.weight.original.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        method.gates[name].log_alpha.copy_(torch.tensor([0.0, 2.0, -1.0, -3.0]))
    # z̄ = clamp(1.2 σ(log α) − 0.1, 0, 1) = 0.5, 0.95696, 0.22271, 0 (closed at test time)
    z_bar = [1.2 * _sigmoid(v) - 0.1 for v in (0.0, 2.0, -1.0)] + [0.0]
    with torch.no_grad():
        method.fix_gate(method.gates[name], torch.tensor([True, False, True, True]))
    raw = model[0].parametrizations.weight.original
    # kept and open: θ ← z̄ θ; dropped: unchanged (its gate is 0); kept but closed: opened as is
    expected = [[1.0 * z_bar[0], 2.0], [3.0 * z_bar[2], 4.0]]
    assert raw.tolist() == [pytest.approx(row) for row in expected]
    gate = method.gates[name]
    assert gate.test_time().tolist() == [1.0, 0.0, 1.0, 1.0]
    model.eval()  # the kept open weights compute what they did: 1 · z̄θ
    assert model[0].weight.tolist() == [
        pytest.approx(row) for row in [[0.5, 0.0], [3 * z_bar[2], 4.0]]
    ]


def test_gate_lr_is_the_log_alpha_groups_own_rate() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    assert "base_lr" not in HardConcrete(model).optimizer_groups()[0]  # the weights' rate
    (group,) = HardConcrete(nn.Sequential(nn.Linear(2, 2)), gate_lr=0.05).optimizer_groups()
    assert group["base_lr"] == 0.05 and group["weight_decay"] == 0.0
    with pytest.raises(ConfigError):
        HardConcrete(nn.Sequential(nn.Linear(2, 2)), gate_lr=0.0)


def test_gate_lr_default_with_a_target_crosses_the_clamp_range_within_the_phase() -> None:
    def rate(**options) -> float | None:
        (group,) = HardConcrete(nn.Sequential(nn.Linear(2, 2)), **options).optimizer_groups()
        return group.get("base_lr")

    # (log 100 − log 0.01) / (250 − 50) = 9.2103 / 200 = 0.046052
    assert rate(target=0.9, begin_step=50, end_step=250) == pytest.approx(0.046052, abs=1e-6)
    assert rate(target=0.9, end_step=20000) is None  # 4.6e-4 < 1e-3: the weights' rate
    assert rate(end_step=250) is None  # no target: the reference recipe's rate
    assert rate(target=0.9, end_step=250, gate_lr=0.002) == 0.002


def test_tracked_budget_counts_a_gate_at_the_floor_as_closed() -> None:
    # P(z ≠ 0) = σ(log α + β log 11): 0.047130 at log 10⁻², 0.997982 at log 10², 0.831822
    # at 0; mapped onto [0, 1]: 0, 1 and (0.831822 − 0.047130)/0.950852 = 0.825251
    method = HardConcrete(nn.Sequential(nn.Linear(2, 2)), "element", target=0.98, end_step=10)
    gate = method.gates[method.plan.sets[0].name]
    with torch.no_grad():
        gate.log_alpha.copy_(torch.tensor([math.log(0.01), math.log(100.0), 0.0, 0.0]))
    assert gate.open_share().tolist() == pytest.approx([0.0, 1.0, 0.825251, 0.825251], abs=1e-5)
    # (1 + 0 + 2 (1 − 0.825251)) / 4; P itself would give 0.322811
    assert method.tracked_budget() == pytest.approx(0.337374, abs=1e-5)
    with torch.no_grad():
        gate.log_alpha.fill_(math.log(0.01))
    assert method.tracked_budget() == pytest.approx(1.0)  # so 0.98 is reachable (P: 0.953)

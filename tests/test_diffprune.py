"""DiffPrune: exact 0/1 gates and their gradient, deterministic vs stochastic modes, group
broadcasting onto parameters and activations, the surrogate L0, re-opening gates, budgets,
folding into the final model, resuming, and an end-to-end run on MNIST."""

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
from learnprune.errors import ConfigError
from learnprune.masking import GroupGate
from learnprune.methods import DiffPrune
from learnprune.methods.diffprune import TRANSFORMS, DiffPruneGate, approx_binary
from learnprune.models import build_model

LINEAR = TRANSFORMS["linear"]
SIGMOID = TRANSFORMS["sigmoid"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))


def _set_phi(method: DiffPrune, name: str, values: torch.Tensor | list[float]) -> None:
    with torch.no_grad():
        method.gates[name].phi.copy_(torch.as_tensor(values, dtype=torch.float32))


# --- the gate ------------------------------------------------------------------------
def test_linear_gate_takes_exact_zeros_and_ones_and_is_linear_between() -> None:
    tau = 0.5
    x = torch.tensor([-3.0, -0.5, -0.25, 0.0, 0.25, 0.5, 3.0])
    z = approx_binary(x, LINEAR, tau)
    assert z.tolist() == [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0]  # ½ + x/(2τ), clamped


def test_sigmoid_gate_has_plateaus_at_the_stretch_limits() -> None:
    tau = 1.0
    low, high = SIGMOID.band(tau)
    assert low == pytest.approx(math.log(0.1 / 1.1)) and high == pytest.approx(math.log(11.0))
    z = approx_binary(torch.tensor([low - 1e-3, 0.0, high + 1e-3]), SIGMOID, tau)
    assert z[0] == 0.0 and z[2] == 1.0
    assert z[1] == pytest.approx(0.5 * 1.2 - 0.1)


def test_gradient_is_the_slope_in_the_band_and_the_leak_outside() -> None:
    tau, leak = 0.5, 0.1
    x = torch.tensor([-2.0, 0.1, 2.0], requires_grad=True)
    approx_binary(x, LINEAR, tau, leak).sum().backward()
    assert x.grad.tolist() == pytest.approx([leak / (2 * tau), 1 / (2 * tau), leak / (2 * tau)])
    x = torch.tensor([-0.3, 0.7], requires_grad=True)  # inside the sigmoid band for τ = 1
    approx_binary(x, SIGMOID, 1.0).sum().backward()
    s = torch.sigmoid(x.detach())
    assert torch.allclose(x.grad, 1.2 * s * (1 - s))


def test_deterministic_mode_equals_eval_and_stochastic_mode_does_not() -> None:
    model = build_model("lenet300")
    method = DiffPrune(model, mode="deterministic")
    _set_phi(method, "fc1.weight", torch.linspace(-0.1, 0.1, 300 * 784))
    x = torch.rand(8, 1, 28, 28)
    model.train()
    train_out = model(x)
    model.eval()
    assert torch.equal(train_out, model(x))

    torch.manual_seed(0)
    noisy = build_model("lenet300")
    stochastic = DiffPrune(noisy, mode="stochastic")
    _set_phi(stochastic, "fc1.weight", torch.zeros(300 * 784))  # z in the band
    noisy.train()
    first, second = noisy(x), noisy(x)
    assert not torch.equal(first, second)  # a new noise draw per forward pass
    noisy.eval()
    assert torch.equal(noisy(x), noisy(x))


@pytest.mark.parametrize("transform", ["linear", "sigmoid"])
def test_stochastic_probability_of_an_open_gate_matches_monte_carlo(transform: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 1, bias=False))
    method = DiffPrune(model, mode="stochastic", transform=transform, tau=0.5, sigma=0.3)
    _set_phi(method, "0.weight", [-1.5, -0.6, 0.0, 0.4])
    gate = method.gates["0.weight"]
    gate.train()
    draws = 20000
    opened = torch.zeros(4)
    for _ in range(draws // 1000):
        noise = torch.distributions.Uniform(1e-6, 1 - 1e-6).sample((1000, 4))
        eps = torch.log(noise) - torch.log1p(-noise)
        z = approx_binary(gate.phi.detach() + 0.3 * eps, gate.transform, 0.5)
        opened += (z > 0).float().sum(0)
    low, _ = gate.transform.band(0.5)
    expected = torch.sigmoid((gate.phi.detach() - low) / 0.3)  # P(φ + σε > a)
    assert torch.allclose(gate.open_mass().detach(), expected)
    assert torch.allclose(opened / draws, expected, atol=0.015)


# --- groups: parameters and activations -------------------------------------------------
def test_closed_gates_zero_whole_rows_columns_or_elements() -> None:
    model = _tiny()
    method = DiffPrune(model, groups="out_channel", lam=0.0)
    _set_phi(method, "0.weight", [0.05, -0.05])  # second unit closed, first open
    assert torch.equal(model[0].weight[1], torch.zeros(3))
    assert model[0].bias[1] == 0.0 and model[0].bias[0] != 0.0
    method.finalize()

    model = _tiny()
    method = DiffPrune(model, groups="in_channel", lam=0.0)
    _set_phi(method, "0.weight", [-1.0, 1.0, 0.0])  # column 0 closed, column 2 at z = ½
    w = model[0].parametrizations.weight.original.detach()
    assert torch.equal(model[0].weight[:, 0], torch.zeros(2))
    assert torch.equal(model[0].weight[:, 2], 0.5 * w[:, 2])
    keep = method.masks()["0.weight"]
    assert keep.tolist() == [[False, True, True], [False, True, True]]


def test_activation_gates_multiply_output_units_and_fold_into_the_weights() -> None:
    model = _tiny()
    reference = copy.deepcopy(model)
    method = DiffPrune(model, groups="activation", lam=0.0, tau=0.5)
    assert list(method.gates) == ["0.weight"]  # the classifier's outputs are never gated
    _set_phi(method, "0.weight", [0.0, -1.0])  # unit 0 at z = ½, unit 1 closed
    x = torch.randn(5, 3)
    hidden = reference[0](x)
    gated_hidden = model[0](x)
    assert torch.allclose(gated_hidden[:, 0], 0.5 * hidden[:, 0])
    assert torch.equal(gated_hidden[:, 1], torch.zeros(5))
    masks = method.masks()
    assert masks["0.weight"].tolist() == [[True] * 3, [False] * 3]
    assert masks["0.bias"].tolist() == [True, False]
    model.eval()
    before = model(x)
    method.finalize()
    assert not model[0]._forward_hooks
    assert torch.allclose(model(x), before, atol=1e-6)
    assert torch.equal(model[0].weight[1], torch.zeros(3))


def test_stochastic_activation_gates_draw_noise_per_example() -> None:
    torch.manual_seed(0)
    model = _tiny()
    method = DiffPrune(model, groups="activation", mode="stochastic", tau=0.5, sigma=0.5)
    _set_phi(method, "0.weight", [0.0, 0.0])
    x = torch.ones(64, 3)
    model.train()
    ratio = model[0](x) / model[0].__class__.forward(model[0], x)
    assert ratio.std(0).min() > 0.05  # different gates for the examples of one batch


def test_activation_gates_refuse_normalised_models() -> None:
    model = build_model("resnet20")
    with pytest.raises(ConfigError, match="normalisation"):
        DiffPrune(model, groups="activation")
    assert not any(m._forward_hooks for m in model.modules())


# --- the surrogate L0 ---------------------------------------------------------------------
def test_surrogate_l0_counts_open_parameters_at_the_plateaus_and_falls_as_gates_close() -> None:
    model = _tiny()
    method = DiffPrune(model, groups="out_channel", lam=2.0, tau=0.5)
    assert float(method.surrogate_l0().detach()) == 6.0  # both rows of 3 weights open (z = 1)
    n = method.total_weights  # 6 + 2
    assert float(method.regularizer().detach()) == pytest.approx(2.0 * 6.0 / n)
    values = []
    for phi in (0.5, 0.25, 0.0, -0.25, -0.5):
        _set_phi(method, "0.weight", [phi, 1.0])
        values.append(float(method.surrogate_l0().detach()))
    assert values == [6.0, 5.25, 4.5, 3.75, 3.0]  # 3 + 3 · z(φ)
    assert values == sorted(values, reverse=True)


def test_penalty_gradient_by_hand() -> None:
    model = nn.Sequential(nn.Linear(2, 1, bias=False))
    method = DiffPrune(model, lam=4.0, tau=0.5, leak=0.1)
    _set_phi(method, "0.weight", [0.2, -1.0])  # first in the band, second closed
    method.regularizer().backward()
    # λ/N · ∂z/∂φ with N = 2: 2 · 1/(2τ) in the band, 2 · ℓ/(2τ) on the plateau
    assert method.gates["0.weight"].phi.grad.tolist() == pytest.approx([2.0, 0.2])


def test_a_write_to_phi_through_data_reaches_the_next_forward_pass() -> None:
    """``.data`` writes bypass φ's version counter: the forward pass still sees them."""
    layer = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[2.0, -3.0, 0.5]]))
    method = DiffPrune(nn.Sequential(layer), lam=1.0, tau=0.5)
    _set_phi(method, "0.weight", [1.0, 1.0, 1.0])  # all open: z = 1
    assert layer.weight.tolist() == [[2.0, -3.0, 0.5]]
    method.gates["0.weight"].phi.data.copy_(torch.tensor([0.25, -1.0, 1.0]))
    assert layer.weight.tolist() == [[2.0 * 0.75, 0.0, 0.5]]


def test_element_gates_take_one_node_with_the_task_and_penalty_gradients_by_hand() -> None:
    """W̃ = W ⊙ z and the penalty's Σ z in one node: ∂L/∂W = g ⊙ z and
    ∂J/∂φ = (g ⊙ W + λ/N) · ∂z/∂φ, the slope applied once to the sum."""
    layer = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[2.0, -3.0, 0.5]]))
    lam, tau, leak = 6.0, 0.5, 0.1
    method = DiffPrune(nn.Sequential(layer), lam=lam, tau=tau, leak=leak)
    _set_phi(method, "0.weight", [0.25, -1.0, 0.5])  # in the band, closed, open
    z = [0.75, 0.0, 1.0]  # ½ + φ/(2τ), clamped
    gated = layer.weight
    assert type(gated.grad_fn).__name__ == "_GatedWeightBackward"
    assert gated.tolist() == [[2.0 * 0.75, 0.0, 0.5]]
    assert float(method.surrogate_l0().detach()) == pytest.approx(sum(z))  # the pass's mass
    x = torch.tensor([[1.0, 4.0, -2.0]])
    # g = x, g ⊙ W = [2, -12, -1]; λ/N = 2
    ((gated @ x.T).sum() + method.regularizer()).backward()
    assert layer.parametrizations.weight.original.grad.tolist() == [[0.75, 0.0, -2.0]]  # g ⊙ z
    band, plateau = 1 / (2 * tau), leak / (2 * tau)  # ∂z/∂φ: 1 inside, 0.1 where z is 0 or 1
    expected = [(2.0 + 2.0) * band, (-12.0 + 2.0) * plateau, (-1.0 + 2.0) * plateau]
    assert method.gates["0.weight"].phi.grad.tolist() == pytest.approx(expected)
    method.after_step()  # z is kept for each value of φ: any change of φ is seen
    _set_phi(method, "0.weight", [-0.25, 0.5, 0.0])
    assert layer.weight.tolist() == [[2.0 * 0.25, -3.0, 0.5 * 0.5]]


@pytest.mark.parametrize("transform", ["linear", "sigmoid"])
def test_the_fused_node_gives_what_the_separate_nodes_give(transform: str, monkeypatch) -> None:
    """Bit for bit: the forward value, the penalty and both gradients of one fused node
    against ``W * approx_binary(φ)`` and ``Σ n z`` (the generic path of every gate)."""

    def run(fused: bool) -> list[torch.Tensor]:
        model = _tiny(seed=3)
        method = DiffPrune(model, lam=5.0, tau=0.5, transform=transform)
        if not fused:
            monkeypatch.setattr(DiffPruneGate, "gated", GroupGate.gated)
        _set_phi(method, "0.weight", torch.linspace(-1.5, 1.5, 6))  # closed, band, open
        x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
        out = model(x)
        penalty = method.regularizer()
        (out.pow(2).sum() + penalty).backward()
        monkeypatch.undo()
        grads = [p.grad for p in method.model_parameters() + method.parameters()]
        return [out, penalty, *grads]

    for fused, separate in zip(run(True), run(False), strict=True):
        assert torch.equal(fused, separate)


# --- training behaviour -----------------------------------------------------------------------
def _fit(model, method, x, y, steps: int, lr: float = 0.05) -> None:
    optimizer = torch.optim.Adam(method.model_parameters() + method.parameters(), lr=lr)
    for _ in range(steps):
        loss = F.mse_loss(model(x), y) + method.regularizer()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_step()


@pytest.mark.parametrize(("leak", "reopens"), [(0.1, True), (0.0, False)])
def test_a_closed_gate_reopens_only_through_the_leak(leak: float, reopens: bool) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 1.0]]))
    method = DiffPrune(model, lam=0.0, leak=leak, tau=0.1)
    _set_phi(method, "0.weight", [-0.2, 0.2])  # the needed first input starts closed
    x = torch.randn(64, 2)
    y = x @ torch.tensor([[2.0], [1.0]])
    _fit(model, method, x, y, steps=200)
    assert bool(method.masks()["0.weight"][0, 0]) is reopens


def test_phi_is_clamped_to_twice_the_band() -> None:
    model = nn.Sequential(nn.Linear(2, 1, bias=False))
    method = DiffPrune(model, lam=1.0, tau=0.1)
    _set_phi(method, "0.weight", [5.0, -5.0])
    method.after_step()
    assert method.gates["0.weight"].phi.tolist() == pytest.approx([0.2, -0.2])


def test_penalty_prunes_and_target_adapts_lambda() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 1, bias=False))
    method = DiffPrune(
        model, lam=1e-3, target=0.5, lam_rate=0.002, tau=0.5, controller="integral", finish="none"
    )
    x = torch.randn(256, 20)
    y = x @ torch.linspace(1.0, 0.05, 20).view(20, 1)  # every input matters, some little
    start = method.current_lam
    method.after_step()
    assert method.current_lam > start  # dense, below the target: λ grows
    _fit(model, method, x, y, steps=600, lr=0.02)
    assert 0.4 <= method.sparsity() <= 0.6
    kept = method.masks()["0.weight"][0]
    assert kept[:8].all() and not kept[-8:].any()  # the penalty drops the least useful


def test_finalize_folds_gate_values_and_removes_closed_groups() -> None:
    model = _tiny()
    method = DiffPrune(model, lam=0.0, tau=0.5)
    _set_phi(method, "0.weight", [0.0, 1.0, -1.0, 0.25, 0.5, -0.5])
    w = model[0].parametrizations.weight.original.detach().clone()
    x = torch.randn(4, 3)
    model.eval()
    before = model(x)
    masks = method.masks()
    method.finalize()
    z = torch.tensor([0.5, 1.0, 0.0, 0.75, 1.0, 0.0]).view(2, 3)
    assert torch.equal(model[0].weight, w * z)
    assert torch.equal(masks["0.weight"], z != 0)
    assert torch.allclose(model(x), before)


def test_state_dict_round_trip_resumes_identically() -> None:
    torch.manual_seed(0)
    x = torch.randn(32, 3)
    y = x[:, :1]

    def build():
        model = _tiny(1)
        return model, DiffPrune(model, lam=0.5, target=0.3, lam_rate=0.01, controller="integral")

    model, method = build()
    _fit(model, method, x, y, steps=20)
    saved_model, saved_method = copy.deepcopy(model.state_dict()), method.state_dict()
    _fit(model, method, x, y, steps=5, lr=0.0)  # lr 0: the next steps change only λ
    model2, method2 = build()
    model2.load_state_dict(saved_model)
    method2.load_state_dict(saved_method)
    assert method2.current_lam == saved_method["extra"]["controller"]["lam"]
    assert torch.equal(method2.gates["0.weight"].phi, method.gates["0.weight"].phi)


def test_bad_options_are_refused_before_the_model_is_touched() -> None:
    model = _tiny()
    for kwargs in ({"mode": "random"}, {"transform": "cubic"}, {"tau": 0.0}, {"lam": -1.0}):
        with pytest.raises(ConfigError):
            DiffPrune(model, **kwargs)
    assert not any(hasattr(m, "parametrizations") for m in model.modules())


def test_cli_trains_diffprune_on_mnist(tmp_path) -> None:
    out = tmp_path / "run"
    argv = ["train", "--model", "lenet300", "--data", "mnist", "--method", "diffprune"]
    argv += ["--target", "0.5", "--epochs", "1", "--train-subset", "1000", "--out", str(out)]
    argv += ["--set", "method.lam_rate=0.01", "--set", 'train.optimizer="adam"']
    argv += ["--lr", "0.01", "--batch-size", "10", "--no-progress", "--quiet"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = main(argv)
    assert code == 0
    final = json.loads((out / "final.json").read_text())
    assert final["method"] == "diffprune"
    assert final["sparsity"] > 0.05 and final["test_accuracy"] > 0.5
    state = torch.load(out / "model.pt", weights_only=True)
    assert "fc1.weight" in state and not any("parametrizations" in k for k in state)


def test_activation_gates_live_in_the_model_and_follow_it() -> None:
    model = _tiny()
    method = DiffPrune(model, groups="activation", mode="stochastic", tau=0.5)
    gate = method.gates["0.weight"]
    assert model[0].learnprune_gate is gate
    model.eval()
    assert not gate.training
    model.to(torch.float64)  # what model.to(device) does to the gate as well
    assert gate.phi.dtype == torch.float64
    assert "0.learnprune_gate.phi" in model.state_dict()
    assert all(p is not gate.phi for p in method.model_parameters())
    from learnprune.accounting import count

    assert count(model).params == sum(p.numel() for p in method.model_parameters())
    method.finalize()
    assert not hasattr(model[0], "learnprune_gate")

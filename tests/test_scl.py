"""SCL: the forward pass, the STE gradient by hand, per-feature normalisation, re-opening
masks, budgets, and resuming from a state_dict."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from learnprune.errors import ConfigError
from learnprune.masking import GroupGate, raw_tensor
from learnprune.methods import SCL
from learnprune.methods.scl import SCLMask, binary_step, normalize_per_feature
from learnprune.models import build_model


def _tiny(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))


def _set_mask_variables(method: SCL, name: str, values: torch.Tensor) -> None:
    with torch.no_grad():
        method.gates[name].mask_variable.copy_(values)


def test_forward_is_exactly_w_times_step_of_s_in_train_and_eval() -> None:
    model = _tiny()
    method = SCL(model, lam=0.0)
    s = torch.tensor([0.3, -0.2, 0.0, 1e-6, -5.0, 2.0])
    _set_mask_variables(method, "0.weight", s)
    w = raw_tensor(model[0], "weight").detach()
    expected = w * (s > 0).float().view(2, 3)  # the tie s = 0 is "off"
    for mode in (model.train, model.eval):
        mode()
        assert torch.equal(model[0].weight, expected)
    x = torch.randn(4, 3)
    reference = copy.deepcopy(model)
    method.finalize()
    assert torch.equal(model[0].weight, expected)
    assert torch.equal(model(x), reference(x))


def test_identity_ste_gradient_by_hand() -> None:
    """normalize="none": ∂J/∂S = W ⊙ ∂L/∂W̃ + λ for every element."""
    layer = nn.Linear(2, 1, bias=False)
    model = nn.Sequential(layer)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[2.0, -3.0]]))
    lam = 0.25
    method = SCL(model, lam=lam, normalize="none")
    _set_mask_variables(method, "0.weight", torch.tensor([0.5, -0.5]))  # second mask closed
    x = torch.tensor([[1.0, 4.0]])
    # forward: W̃ = [2, 0]; y = 2; L = y² / 2 = 2; ∂L/∂y = 2; ∂L/∂W̃ = ∂L/∂y · x = [2, 8]
    loss = 0.5 * model(x).pow(2).sum()
    loss.backward()
    grad_s = method.gates["0.weight"].mask_variable.grad
    assert torch.allclose(grad_s, torch.tensor([4.0, -24.0]))  # the task part, until the step
    method.before_optimizer_step()
    # W ⊙ ∂L/∂W̃ = [4, -24]; + λ each
    assert torch.allclose(grad_s, torch.tensor([4.0 + lam, -24.0 + lam]))
    # the weight gets the task gradient only where the mask is on
    assert torch.allclose(raw_tensor(layer, "weight").grad, torch.tensor([[2.0, 0.0]]))


def test_element_masks_take_one_node_with_both_gradients_by_hand() -> None:
    """W̃ = W ⊙ M in one autograd node: ∂L/∂W = g ⊙ M and ∂L/∂S = (g ⊙ W) · h(S)."""
    layer = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[2.0, -3.0, 0.5]]))
    method = SCL(nn.Sequential(layer), lam=0.0, ste="softplus", normalize="none")
    s = torch.tensor([0.5, -1.0, 2.0])
    _set_mask_variables(method, "0.weight", s)
    x = torch.tensor([[1.0, 4.0, -2.0]])
    gated = layer.weight
    assert type(gated.grad_fn).__name__ == "_MaskedWeightBackward"  # no Mul/View/Step chain
    assert gated.tolist() == [[2.0, 0.0, 0.5]]
    (gated @ x.T).sum().backward()  # L = W̃ · x: g = ∂L/∂W̃ = x
    assert raw_tensor(layer, "weight").grad.tolist() == [[1.0, 0.0, -2.0]]  # g ⊙ M
    h = torch.sigmoid(s)  # the softplus STE's proxy derivative
    expected = torch.tensor([2.0 * 1.0, -3.0 * 4.0, 0.5 * -2.0]) * h  # (g ⊙ W) · h(S)
    assert torch.allclose(method.gates["0.weight"].mask_variable.grad, expected)


@pytest.mark.parametrize("ste", ["identity", "leaky_relu"])
def test_the_fused_node_gives_what_the_separate_nodes_give(ste: str, monkeypatch) -> None:
    """Bit for bit: the forward value, ∂L/∂W and the processed ∂J/∂S of one fused node
    against ``W * binary_step(S)`` (the generic path of every gate)."""

    def run(fused: bool) -> list[Tensor]:
        model = _tiny(seed=3)
        method = SCL(model, lam=0.1, ste=ste)
        if not fused:
            monkeypatch.setattr(SCLMask, "gated", GroupGate.gated)
        _set_mask_variables(method, "0.weight", torch.linspace(-1.0, 1.5, 6))
        x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
        out = model(x)
        (out.pow(2).sum() + method.regularizer()).backward()
        method.before_optimizer_step()
        monkeypatch.undo()
        return [out, *(p.grad for p in method.model_parameters() + method.parameters())]

    for fused, separate in zip(run(True), run(False), strict=True):
        assert torch.equal(fused, separate)


def test_the_mask_follows_every_change_of_s() -> None:
    """M is computed once per value of S (forward, regularizer and budget share it), and
    again after any in-place change: an optimizer step, a copy, a loaded state."""
    model = _tiny()
    method = SCL(model, lam=1.0)
    gate = method.gates["0.weight"]
    w = raw_tensor(model[0], "weight").detach()
    assert torch.equal(model[0].weight, w)  # S = 1: all on
    assert gate.current_mask() is gate.current_mask()  # shared while S is unchanged
    assert float(method.regularizer()) == 8.0  # λ · (6 + 2) kept connections
    _set_mask_variables(method, "0.weight", torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0]))
    assert torch.equal(model[0].weight, w * torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
    assert float(method.regularizer()) == 5.0
    state = copy.deepcopy(method.state_dict())
    _set_mask_variables(method, "0.weight", torch.ones(6))
    assert float(method.regularizer()) == 8.0
    method.load_state_dict(state)
    assert float(method.regularizer()) == 5.0
    assert torch.equal(model[0].weight, w * torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))


def test_a_write_to_s_through_data_reaches_the_next_forward_pass() -> None:
    """``.data`` writes bypass S's version counter: the forward pass still sees them."""
    model = _tiny()
    method = SCL(model, lam=1.0)
    w = raw_tensor(model[0], "weight").detach()
    assert torch.equal(model[0].weight, w)
    method.gates["0.weight"].mask_variable.data.copy_(torch.tensor([1.0, -1, 1, -1, 1, -1]))
    assert torch.equal(model[0].weight, w * torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))


def test_ste_proxies_by_hand() -> None:
    s = torch.tensor([-1.0, 2.0], requires_grad=True)
    for ste, expected in [
        ("identity", [1.0, 1.0]),
        ("leaky_relu", [0.1, 1.0]),
        ("softplus", torch.sigmoid(torch.tensor([-1.0, 2.0])).tolist()),
        ("relu", [0.0, 1.0]),
    ]:
        s.grad = None
        out = binary_step(s, ste, 0.1)
        assert out.tolist() == [0.0, 1.0]
        out.sum().backward()
        assert torch.allclose(s.grad, torch.tensor(expected)), ste


@pytest.mark.parametrize("norm", ["l2", "rms", "max"])
def test_per_feature_normalisation_gives_each_feature_its_norm(norm: str) -> None:
    grad = torch.tensor([[3.0, 4.0, 0.0], [0.0, 0.0, -0.5]]).reshape(-1)
    rows = normalize_per_feature(grad, 2, norm).reshape(2, 3)
    if norm == "l2":
        assert torch.allclose(rows.norm(dim=1), torch.ones(2))
    elif norm == "rms":
        assert torch.allclose(rows.square().mean(1).sqrt(), torch.ones(2))
    else:
        assert torch.allclose(rows.abs().amax(1), torch.ones(2))
    assert torch.allclose(rows[0] / rows[0].norm(), torch.tensor([0.6, 0.8, 0.0]))


def _with_full_batch_reference(lam: float = 0.01) -> tuple[nn.Module, SCL, Tensor, Tensor]:
    """A model with SCL, a batch ``x``, and the processed mask gradient normalise(g) + λ
    that a twin computes from the whole batch at once (the reference for split batches)."""
    torch.manual_seed(0)
    model, twin = _tiny(), _tiny()
    twin.load_state_dict(model.state_dict())
    method = SCL(model, lam=lam, normalize="l2")
    reference = SCL(twin, lam=lam, normalize="l2")
    x = torch.randn(8, 3)
    F.mse_loss(twin(x), torch.zeros(8, 1)).backward()
    reference.before_optimizer_step()
    return model, method, x, reference.gates["0.weight"].mask_variable.grad.clone()


def _half_loss(model: nn.Module, half: Tensor) -> Tensor:
    """Half of the batch's mean loss: two of them sum to the full batch's."""
    return 0.5 * F.mse_loss(model(half), torch.zeros(len(half), 1))


def test_accumulated_gradient_is_processed_once_before_any_optimizer_step() -> None:
    """Two backward passes then ``optimizer.step()``: the step sees normalise(g₁ + g₂) + λ,
    computed once by the optimizer pre-hook (no explicit call)."""
    model, method, x, expected = _with_full_batch_reference()
    for half in (x[:4], x[4:]):
        _half_loss(model, half).backward()
    variable = method.gates["0.weight"].mask_variable
    optimizer = torch.optim.SGD([variable], lr=1.0)
    before = variable.detach().clone()
    optimizer.step()
    assert torch.allclose(before - variable.detach(), expected, atol=1e-6)
    assert torch.allclose(variable.grad, expected, atol=1e-6)
    optimizer.step()  # nothing new accumulated: not processed again
    assert torch.allclose(variable.grad, expected, atol=1e-6)


def test_a_step_with_a_closure_leaves_the_processing_to_the_loop() -> None:
    """Lightning's order: micro-batch 1 backward, then ``step(closure)`` whose closure runs
    micro-batch 2's backward and then ``before_optimizer_step``: the step must see
    normalise(g₁ + g₂) + λ, not a normalised g₁ processed again."""
    model, method, x, expected = _with_full_batch_reference()
    _half_loss(model, x[:4]).backward()
    variable = method.gates["0.weight"].mask_variable
    optimizer = torch.optim.SGD([variable], lr=1.0)

    def closure() -> Tensor:
        loss = _half_loss(model, x[4:])
        loss.backward()
        method.before_optimizer_step()
        return loss

    before = variable.detach().clone()
    optimizer.step(closure)
    assert torch.allclose(before - variable.detach(), expected, atol=1e-6)


def test_normalisation_applies_to_the_task_part_and_lambda_is_added_after() -> None:
    model = _tiny()
    lam = 0.01
    method = SCL(model, lam=lam, normalize="rms")
    x = torch.randn(8, 3)
    F.mse_loss(model(x), torch.zeros(8, 1)).backward()
    method.before_optimizer_step()
    grad = method.gates["0.weight"].mask_variable.grad.reshape(2, 3) - lam
    assert torch.allclose(grad.square().mean(1).sqrt(), torch.ones(2), atol=1e-5)


def _fit(
    model: nn.Module,
    method: SCL,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    lr: float,
    loss_fn=F.mse_loss,
) -> None:
    """Plain SGD on the weights and the mask variables, the method's hook after each step."""
    optimizer = torch.optim.SGD(method.model_parameters() + method.parameters(), lr=lr)
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_step()


def _toy_problem(ste: str) -> tuple[nn.Linear, SCL]:
    torch.manual_seed(0)
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(0.5)  # every connection is useful: the target is x·[1, 1, 1, 1]
    method = SCL(nn.Sequential(layer), lam=0.0, ste=ste, normalize="none")
    _set_mask_variables(method, "0.weight", torch.tensor([0.5, -0.1, -0.1, 0.5]))
    return layer, method


@pytest.mark.parametrize(
    ("ste", "reopens"),
    [("identity", True), ("leaky_relu", True), ("softplus", True), ("relu", False)],
)
def test_closed_masks_reopen_only_with_a_positive_proxy(ste: str, reopens: bool) -> None:
    layer, method = _toy_problem(ste)
    model = nn.Sequential(layer)
    x = torch.randn(64, 4)
    _fit(model, method, x, x.sum(1, keepdim=True), steps=50, lr=0.05)
    mask = method.masks()["0.weight"]
    if reopens:
        assert mask.all(), "the useful connections came back"
    else:
        assert mask.tolist() == [[True, False, False, True]]
        s = method.gates["0.weight"].mask_variable.detach()
        assert torch.allclose(s[1:3], torch.tensor([-0.1, -0.1])), "stuck: no gradient at all"


def test_lambda_closes_useless_connections() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(4, 1, bias=False)
    model = nn.Sequential(layer)
    method = SCL(model, lam=0.05, normalize="none", init=0.2)
    x = torch.randn(256, 4)
    _fit(model, method, x, 2.0 * x[:, :1], steps=300, lr=0.1)  # only the first input matters
    assert method.masks()["0.weight"].tolist() == [[True, False, False, False]]


def test_target_adapts_lambda_to_the_budget() -> None:
    torch.manual_seed(0)
    model = build_model("lenet300")
    method = SCL(
        model,
        lam=1e-3,
        target=0.9,
        lam_rate=0.01,
        init=0.05,
        normalize="rms",
        controller="integral",
    )
    x = torch.randn(64, 1, 28, 28)
    y = torch.randint(0, 10, (64,))
    start = method.current_lam
    _fit(model, method, x, y, steps=150, lr=0.05, loss_fn=F.cross_entropy)
    assert method.current_lam > start  # too dense at first: λ grew
    assert method.sparsity() > 0.5


def test_flops_budget_weights_connections_by_their_flops() -> None:
    model = build_model("lenet5-caffe")
    method = SCL(model, target={"flops": 0.3})
    costs = method.budget_costs
    # conv1 weights act on 24x24 positions, fc weights on one: the cost is in that ratio
    assert costs["conv1.weight"] / costs["fc1.weight"] == pytest.approx(576.0)
    assert method.budget == ("flops", pytest.approx(0.7))
    assert method.budget_achieved() == 0.0


def test_structured_scl_masks_whole_rows() -> None:
    torch.manual_seed(0)
    model = build_model("lenet300")
    method = SCL(model, groups="out_channel", lam=0.0)
    gate = method.gates["fc1.weight"]
    with torch.no_grad():
        gate.mask_variable[:150] = -1.0
    masks = method.masks()
    assert not masks["fc1.weight"][:150].any() and masks["fc1.weight"][150:].all()
    assert not masks["fc1.bias"][:150].any()
    x = torch.randn(2, 1, 28, 28)
    F.cross_entropy(model(x), torch.tensor([1, 2])).backward()
    assert gate.mask_variable.grad.shape == (300,)


def test_state_dict_round_trip_resumes_identically() -> None:
    def make() -> tuple[nn.Module, SCL, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = build_model("lenet300")
        method = SCL(model, lam=1e-3, target=0.8, init=0.05)
        optimizer = torch.optim.SGD(
            [{"params": method.model_parameters()}, {"params": method.parameters()}],
            lr=0.05,
            momentum=0.9,
        )
        return model, method, optimizer

    def train(model, method, optimizer, steps: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            x = torch.randn(32, 1, 28, 28, generator=generator)
            y = torch.randint(0, 10, (32,), generator=generator)
            loss = F.cross_entropy(model(x), y) + method.regularizer()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            method.after_step()

    model, method, optimizer = make()
    train(model, method, optimizer, 20, seed=1)
    saved = (
        copy.deepcopy(model.state_dict()),
        copy.deepcopy(method.state_dict()),
        copy.deepcopy(optimizer.state_dict()),
    )
    train(model, method, optimizer, 20, seed=2)

    resumed_model, resumed_method, resumed_optimizer = make()
    resumed_model.load_state_dict(saved[0])
    resumed_method.load_state_dict(saved[1])
    resumed_optimizer.load_state_dict(saved[2])
    train(resumed_model, resumed_method, resumed_optimizer, 20, seed=2)
    for key, value in model.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[key]), key
    assert resumed_method.current_lam == method.current_lam


def test_bad_options_are_refused_before_the_model_is_touched() -> None:
    model = build_model("lenet300")
    for kwargs in (
        {"ste": "sign"},
        {"normalize": "l3"},
        {"init": -1.0},
        {"lam": -1.0},
        {"lam": float("nan")},
        {"target": 1.5},
        {"target": {"flops": 0.0}},
        {"groups": "2:4"},
    ):
        with pytest.raises(ConfigError):
            SCL(model, **kwargs)
    assert list(model.state_dict()) == list(build_model("lenet300").state_dict())


def test_structured_sets_keep_their_best_group_open() -> None:
    torch.manual_seed(0)
    model = build_model("lenet300")
    method = SCL(model, groups="out_channel", lam=0.0)
    gate = method.gates["fc1.weight"]
    with torch.no_grad():
        gate.mask_variable.fill_(-1.0)
        gate.mask_variable[7] = -0.5  # the largest S: the one that stays
    masks = method.masks()
    assert masks["fc1.weight"].all(1).nonzero().flatten().tolist() == [7]
    out = model(torch.randn(4, 1, 28, 28))
    loss = F.cross_entropy(out, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert gate.mask_variable.grad.abs().sum() > 0  # the closed groups still get gradients
    unguarded = SCL(build_model("lenet300"), groups="out_channel", keep_one=False)
    with torch.no_grad():
        unguarded.gates["fc1.weight"].mask_variable.fill_(-1.0)
    assert not unguarded.masks()["fc1.weight"].any()

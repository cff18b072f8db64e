"""The budget of learned masks: schedule, controllers, exact finish, frozen masks, resume."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from learnprune import build_model
from learnprune.budget import (
    LagrangianController,
    PIController,
    TargetSchedule,
    exact_keep,
)
from learnprune.cli import main
from learnprune.errors import ConfigError
from learnprune.methods import SCL, DiffPrune, HardConcrete


def test_cubic_schedule_by_hand() -> None:
    schedule = TargetSchedule(0.9, "cubic", begin=10, end=110)
    assert schedule(0) == 0.0 and schedule(10) == 0.0  # before and at the start: b₀
    assert schedule(60) == pytest.approx(0.9 - 0.9 * 0.5**3)  # 0.7875
    assert schedule(35) == pytest.approx(0.9 - 0.9 * 0.75**3)  # 0.520312...
    assert schedule(110) == pytest.approx(0.9) and schedule(500) == pytest.approx(0.9)
    assert TargetSchedule(0.9, "linear", end=100)(25) == pytest.approx(0.225)
    assert TargetSchedule(0.9, "constant", end=100)(0) == 0.9
    assert TargetSchedule(0.9, "cubic")(0) == 0.9  # no known length: demanded at once
    with pytest.raises(ConfigError):
        TargetSchedule(0.9, "cubic", begin=5, end=5)
    with pytest.raises(ConfigError):
        TargetSchedule(0.9, "quadratic", end=5)


def test_lagrangian_multipliers_rise_with_the_gap_and_fall_past_it() -> None:
    control = LagrangianController(lam_ref=2.0, lr=0.5, quadratic_lr=1.0)
    # gap g = 0.5 - 0.3 = 0.2: λ₁ = 0.1, λ₂ = 0.04, λ = 2 (0.1 + 2 · 0.04 · 0.2) = 0.232
    assert control.update(0.3, 0.5) == pytest.approx(0.232)
    # sparser than the target, g = −0.2: λ₁ = 0, λ₂ = 0.08, λ = 2 (0 − 2 · 0.08 · 0.2)
    assert control.update(0.7, 0.5) == pytest.approx(-0.064)


def test_pi_controller_does_not_wind_up_at_its_bound() -> None:
    control = PIController(1.0, gain_i=0.1, gain_p=0.0, lam_max=10.0)
    for _ in range(1000):  # a gap it cannot close: the integral stops at log λ_max
        control.update(0.0, 0.5)
    assert control.lam == pytest.approx(10.0)
    control.update(0.6, 0.5)  # one step past the target: λ falls at once
    assert control.lam < 10.0


def test_exact_keep_by_score_with_ties_protection_and_costs() -> None:
    scores = torch.tensor([0.3, -1.0, 0.3, 2.0, 0.1])
    unit = torch.ones(5)
    none = torch.zeros(5, dtype=torch.bool)
    # top two: 2.0, then the tie 0.3/0.3 goes to the lower index
    assert exact_keep(scores, unit, 2.0, none).tolist() == [True, False, False, True, False]
    protect = torch.tensor([False, True, False, False, False])  # keep_one's group first
    assert exact_keep(scores, unit, 2.0, protect).tolist() == [False, True, False, True, False]
    # costs 5, 4, 2, 1 by score 3 > 2 > 1 > 0, budget 8: 5 fits, 4 does not, 2 and 1 do
    kept = exact_keep(torch.tensor([3.0, 2.0, 1.0, 0.0]), torch.tensor([5.0, 4, 2, 1]), 8.0,
                      torch.zeros(4, dtype=torch.bool))  # fmt: skip
    assert kept.tolist() == [True, False, True, True]


def test_scl_exact_finish_keeps_the_largest_mask_variables() -> None:
    model = nn.Sequential(nn.Linear(4, 2, bias=False))
    method = SCL(model, target=0.5, end_step=1)
    with torch.no_grad():
        method.gates["0.weight"].mask_variable.copy_(
            torch.tensor([0.5, -0.2, 0.9, 0.1, 0.5, 0.3, -0.4, 0.8])
        )
    method.after_step()  # the phase (one step) is over: finish
    assert method.finished
    # 0.9, 0.8, then the tie 0.5 (index 0) and 0.5 (index 4): four kept of eight
    assert method.masks()["0.weight"].flatten().tolist() == [
        True, False, True, False, True, False, False, True,
    ]  # fmt: skip
    assert method.sparsity() == 0.5


def test_structured_finish_keeps_one_group_per_set() -> None:
    torch.manual_seed(0)
    model = build_model("lenet300")
    method = SCL(model, groups="out_channel", target=0.999, end_step=1)
    method.after_step()
    masks = method.masks()
    for name in ("fc1.weight", "fc2.weight"):  # every set keeps its best row
        assert masks[name].any(dim=1).sum() >= 1


def test_flops_finish_within_two_percent() -> None:
    torch.manual_seed(0)
    model = build_model("lenet5-caffe")
    method = SCL(model, groups="out_channel", target={"flops": 0.3}, end_step=1)
    with torch.no_grad():
        for gate in method.gates.values():
            gate.mask_variable.normal_()
    method.after_step()
    kept = 1.0 - method.budget_achieved()
    assert kept <= 0.3 and kept == pytest.approx(0.3, rel=0.02)


def _train(model, method, steps: int, seed: int = 0, lr: float = 0.05) -> None:
    optimizer = torch.optim.SGD(method.model_parameters() + method.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 1, 28, 28, generator=generator)
        y = torch.randint(0, 10, (16,), generator=generator)
        loss = F.cross_entropy(model(x), y) + method.regularizer()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        method.before_optimizer_step()
        optimizer.step()
        method.after_step()


BUILDERS = {
    "scl": lambda m, **kw: SCL(m, lam=0.05, multiplier_lr=5.0, **kw),
    "diffprune": lambda m, **kw: DiffPrune(m, multiplier_lr=5.0, **kw),
    "hardconcrete": lambda m, **kw: HardConcrete(m, multiplier_lr=5.0, **kw),
}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_masks_and_gates_stay_fixed_after_the_finish(name: str) -> None:
    torch.manual_seed(0)
    model = build_model("lenet300")
    method = BUILDERS[name](model, target=0.9, end_step=4)
    _train(model, method, 4)
    assert method.finished and method.budget_achieved() == pytest.approx(0.9, abs=1e-3)
    masks = {k: v.clone() for k, v in method.masks().items()}
    gates = [p.detach().clone() for p in method.parameters()]
    lam = method.current_lam
    model.train()
    _train(model, method, 3, seed=1)
    assert all(torch.equal(masks[k], v) for k, v in method.masks().items())
    assert all(torch.equal(a, b) for a, b in zip(gates, method.parameters(), strict=True))
    assert method.current_lam == lam  # no more λ updates


@pytest.mark.parametrize("name", list(BUILDERS))
def test_resume_mid_phase_keeps_the_controller(name: str) -> None:
    def build():
        torch.manual_seed(0)
        model = build_model("lenet300")
        return model, BUILDERS[name](model, target=0.9, end_step=6)

    model, method = build()
    _train(model, method, 3)
    saved_model, saved = copy.deepcopy(model.state_dict()), copy.deepcopy(method.state_dict())
    model2, method2 = build()
    model2.load_state_dict(saved_model)
    method2.load_state_dict(saved)
    assert method2.controller.state_dict() == method.controller.state_dict()
    torch.manual_seed(1)  # the same gate noise (hard-concrete) for both continuations
    _train(model, method, 4, seed=1)
    torch.manual_seed(1)
    _train(model2, method2, 4, seed=1)
    assert method2.finished and method.controller.state_dict() == method2.controller.state_dict()
    assert all(torch.equal(method.masks()[k], v) for k, v in method2.masks().items())
    model3, method3 = build()  # resumed after the finish: frozen again
    method3.load_state_dict(method2.state_dict())
    assert method3.finished and all(g.frozen for g in method3.gates.values())
    _train(model3, method3, 2, seed=2)
    assert all(torch.equal(method2.masks()[k], v) for k, v in method3.masks().items())


def test_finish_none_and_describe_say_which() -> None:
    model = nn.Sequential(nn.Linear(4, 2, bias=False))
    method = SCL(model, target=0.5, end_step=3, finish="none")
    for _ in range(5):
        method.after_step()
    assert not method.finished
    assert "target sparsity 0.5 (" in method.describe() and "finish none" in method.describe()
    flops = SCL(nn.Sequential(nn.Linear(4, 2)), target={"flops": 0.3}, input_shape=(4,))
    assert "target flops 0.3 kept (" in flops.describe()  # what was asked, not 0.7 removed
    assert SCL(nn.Sequential(nn.Linear(4, 2)), target=0.5).final_metrics(None)["finish"] == (
        "exact"
    )
    with pytest.raises(ConfigError):
        SCL(nn.Sequential(nn.Linear(4, 2)), target=0.5, finish="round")


@pytest.mark.data
@pytest.mark.parametrize("name", ["scl", "diffprune", "hardconcrete"])
def test_300_step_run_lands_on_the_budget(tmp_path, name: str) -> None:
    out = tmp_path / name
    argv = ["train", "--model", "lenet300", "--data", "mnist", "--method", name]
    argv += ["--target", "0.95", "--epochs", "1", "--max-steps", "300"]
    argv += ["--train-subset", "3000", "--batch-size", "10", "--out", str(out)]
    argv += ["--no-progress", "--quiet"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(argv) == 0
    final = json.loads((out / "final.json").read_text())
    assert final["finish"] == "exact" and final["budget"]["end_step"] == 225
    assert final["sparsity"] == pytest.approx(0.95, abs=1e-3)


def test_quadratic_lr_is_the_lagrangian_eta_2_per_method() -> None:
    scl = SCL(
        nn.Sequential(nn.Linear(4, 2)), lam=2.0, target=0.5, multiplier_lr=0.5, quadratic_lr=1.0
    )
    # the hand case above through the recipe options: λ = 2 (0.1 + 2 · 0.04 · 0.2) = 0.232
    assert scl.controller.update(0.3, 0.5) == pytest.approx(0.232)
    assert SCL(nn.Sequential(nn.Linear(4, 2)), target=0.5).controller.quadratic_lr == 100.0
    diffprune = DiffPrune(nn.Sequential(nn.Linear(4, 2)), target=0.5)
    assert diffprune.controller.quadratic_lr == diffprune.controller.lr == 3.0  # η₂ = η₁
    with pytest.raises(ConfigError):
        SCL(nn.Sequential(nn.Linear(4, 2)), target=0.5, quadratic_lr=-1.0)


@pytest.mark.slow
@pytest.mark.data
def test_300_step_structured_flops_run_lands_on_the_budget_after_compaction(tmp_path) -> None:
    """A FLOPs target on filters and units holds on the compacted model (before, dropped
    filters also took the next layers' inputs, and 0.1 compacted to about 0.02)."""
    out = tmp_path / "run"
    argv = ["train", "--recipe", "lenet5caffe-diffprune-structured"]
    argv += ["--set", "method.target={flops=0.1}", "--epochs", "3", "--train-subset", "10000"]
    argv += ["--out", str(out), "--no-progress", "--quiet"]  # 3 epochs of 100 batches of 100
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(argv) == 0
    final = json.loads((out / "final.json").read_text())
    assert final["finish"] == "exact" and final["budget"]["end_step"] == 225
    kept = final["compact"]["flops"] / final["flops"]
    assert kept <= 0.1 and kept == pytest.approx(0.1, rel=0.02)

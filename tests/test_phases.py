"""The phases of a run (dense warm-up, mask learning, fine-tuning), the same for every method:
how they are given and checked, how each method maps them, that the mask stays fixed in the
warm-up (all kept) and the fine-tuning, bit-exact resume in each phase, and ``compare``'s
common dense start.

The runs train LeNet-300-100 on a tiny synthetic set (class prototypes plus noise, as in
test_engine.py): 128 examples, batch 32, 4 steps an epoch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import call_cli

from learnprune import engine
from learnprune.config import RunConfig, TrainConfig, apply_phases
from learnprune.data import Dataset
from learnprune.errors import ConfigError
from learnprune.methods import build_method
from learnprune.methods.base import TrainingContext
from learnprune.models import build_model
from learnprune.phases import Phases
from learnprune.runner import build, run

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS_PER_EPOCH = 4
OPTIONS: dict[str, dict[str, Any]] = {
    "scl": {"target": 0.8, "lam": 0.05, "multiplier_lr": 5.0},
    "diffprune": {"target": 0.8, "multiplier_lr": 5.0},
    "hardconcrete": {"target": 0.8, "multiplier_lr": 5.0},
    "gmp": {"target": 0.8, "frequency": 1},
    "magnitude": {"target": 0.8},
}
"""Every method whose mask the phases place (dense has none)."""


def tiny_data(seed: int = 0) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(10, 1, 28, 28, generator=generator)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, 10, (n,), generator=generator)
        return prototypes[labels] + 3.0 * torch.randn(n, 1, 28, 28, generator=generator), labels

    (x_train, y_train), (x_test, y_test) = split(128), split(64)
    return Dataset("mnist", x_train, y_train, x_test, y_test, num_classes=10)


@pytest.fixture(scope="module")
def data() -> Dataset:
    return tiny_data()


def config_for(method: str, phases: dict[str, float]) -> RunConfig:
    return RunConfig(
        model="lenet300",
        data="mnist",
        method=method,
        method_options=dict(OPTIONS.get(method, {})),
        train=TrainConfig(batch_size=32, lr=0.05, phases=phases),
    )


# ------------------------------------------------------------------------------------------
# Giving the phases
# ------------------------------------------------------------------------------------------


def test_phases_parse_from_a_table_a_list_or_text_and_give_the_epochs() -> None:
    phases = Phases.parse({"warmup": 1, "learn": 2.5, "finetune": 0.5})
    assert (phases.epochs, phases.learn_begin, phases.learn_end) == (4, 1, 3.5)
    assert Phases.parse("1,2.5,0.5") == Phases.parse([1, 2.5, 0.5]) == phases
    assert Phases.parse({"learn": 3}) == Phases(0, 3, 0)  # missing phases: none
    assert TrainConfig(phases={"warmup": 1, "learn": 2, "finetune": 3}).epochs == 6
    assert TrainConfig().epochs == 10  # without phases, the default stays


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1,-2,1", r"phases learn must be >= 0, got -2"),
        ("1,two,1", r"phases learn must be a number, got 'two'"),
        ("1,2", r"three numbers"),
        ({"warmup": 1, "lern": 2}, r"unknown phase lern; known: warmup, learn, finetune"),
        ("0.5,1,1", r"whole number of epochs >= 1, got 0.5 \+ 1 \+ 1 = 2.5"),
        ("0,0,0", r"whole number of epochs >= 1"),
    ],
)
def test_bad_phases_are_refused(value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Phases.parse(value)


def test_epochs_that_do_not_match_the_phases_and_both_timings_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"epochs 5 does not match the phases: 1 \+ 2 \+ 1 = 4"):
        TrainConfig(epochs=5, phases={"warmup": 1, "learn": 2, "finetune": 1}).validate()
    config = config_for("gmp", {"warmup": 1, "learn": 2, "finetune": 1})
    config.method_options["end_epoch"] = 3
    with pytest.raises(ConfigError, match=r"both train.phases and method.end_epoch are given"):
        config.validate()


def test_apply_phases_replaces_the_recipes_epochs_and_method_timing() -> None:
    raw = {"model": "lenet300", "train": {"epochs": 20, "lr": 0.1}}
    raw["method"] = {"name": "gmp", "target": 0.9, "end_epoch": 15}
    phased = apply_phases(raw, Phases(2, 12, 6))
    assert phased["train"] == {"lr": 0.1, "phases": {"warmup": 2, "learn": 12, "finetune": 6}}
    assert phased["method"] == {"name": "gmp", "target": 0.9}
    assert raw["method"]["end_epoch"] == 15  # the recipe itself is left as it was


# ------------------------------------------------------------------------------------------
# Each method's timing
# ------------------------------------------------------------------------------------------


def _built(method: str, phases: Phases, **options: Any) -> Any:
    torch.manual_seed(0)
    context = TrainingContext(
        epochs=int(phases.epochs),
        steps_per_epoch=10,
        total_steps=10 * int(phases.epochs),
        input_shape=(1, 28, 28),
        phases=phases,
        train_size=1000,
    )
    given = {**OPTIONS.get(method, {}), **options}
    return build_method(method, build_model("lenet300"), given, context)


@pytest.mark.parametrize("name", ["scl", "diffprune", "hardconcrete"])
def test_budgeted_methods_learn_in_the_learning_phase(name: str) -> None:
    method = _built(name, Phases(1, 2, 1))
    assert (method.schedule.begin, method.schedule.end) == (10, 30)
    assert method.warming_up and method.current_lam == 0.0
    assert "(dense to step 10, cubic to step 30," in method.describe()


def test_gmp_prunes_over_the_learning_phase_and_magnitude_at_its_start() -> None:
    gmp = _built("gmp", Phases(1, 2, 1))
    assert (gmp.begin_step, gmp.end_step) == (10, 30)
    magnitude = _built("magnitude", Phases(1, 2, 1))
    assert magnitude.prune_at == 10 and magnitude.sparsity() == 0.0
    assert _built("magnitude", Phases(0, 0, 3)).sparsity() == pytest.approx(0.8, abs=1e-3)
    assert _built("dense", Phases(1, 2, 1)).masks() == {}


def test_dessilbi_finishes_at_the_end_of_the_learning_phase() -> None:
    """Without phases its path runs to the last epoch; with them the exact finish comes at
    W + L (before, the default end_epoch it passed on was refused beside the phases)."""
    assert _built("dessilbi", Phases(1, 2, 1), target=0.9).end_step == 30
    with pytest.raises(ConfigError, match=r"train.phases and method.end_epoch"):
        _built("dessilbi", Phases(1, 2, 1), target=0.9, end_epoch=2)
    context = TrainingContext(epochs=4, steps_per_epoch=10, total_steps=40, input_shape=(1, 28, 28))
    method = build_method("dessilbi", build_model("lenet300"), {"target": 0.9}, context)
    assert method.end_step == 40


def test_phases_beside_a_method_timing_or_without_a_fixed_mask_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"train.phases and method.begin_epoch"):
        _built("scl", Phases(1, 2, 1), begin_epoch=1)
    with pytest.raises(ConfigError, match=r"train.phases and method.prune_epoch"):
        _built("magnitude", Phases(1, 2, 1), prune_epoch=1)
    with pytest.raises(ConfigError, match=r"fine-tuning \(finetune = 1\) needs the mask fixed"):
        _built("scl", Phases(1, 2, 1), target=None)
    with pytest.raises(ConfigError, match=r"fine-tuning .* needs the mask fixed"):
        _built("diffprune", Phases(1, 2, 1), finish="none")
    with pytest.raises(ConfigError, match=r"no mask learning \(learn = 0 epochs\)"):
        _built("hardconcrete", Phases(1, 0, 1))
    assert _built("scl", Phases(1, 2, 0), target=None).schedule is None  # no fine-tuning


# ------------------------------------------------------------------------------------------
# The mask in each phase
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(OPTIONS))
def test_warmup_keeps_every_group_and_finetuning_keeps_the_mask_fixed(data, name) -> None:
    config = config_for(name, {"warmup": 1, "learn": 1, "finetune": 1}).validate()
    model, method = build(config, data)
    start = [p.detach().clone() for p in method.parameters()]
    seen: list[tuple[int, dict[str, torch.Tensor], list[torch.Tensor]]] = []
    after_step = method.after_step

    def recording() -> None:
        after_step()
        masks = {k: v.clone() for k, v in method.masks().items()}
        seen.append((method.step, masks, [p.detach().clone() for p in method.parameters()]))

    method.after_step = recording
    engine.train(model, method, data, config.train, quiet=True, progress=False)
    warmup_end, learn_end = STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH
    assert [step for step, _m, _p in seen] == list(range(1, 3 * STEPS_PER_EPOCH + 1))
    for step, masks, params in seen:
        if step < warmup_end:  # dense: every group kept, the gates at their start values
            assert all(bool(mask.all()) for mask in masks.values()), step
            assert all(torch.equal(a, b) for a, b in zip(start, params, strict=True)), step
    _step, fixed_masks, fixed_params = seen[learn_end - 1]
    sparsity = sum(int((~m).sum()) for m in fixed_masks.values())
    assert sparsity > 0  # the learning phase pruned
    for step, masks, params in seen[learn_end - 1 :]:
        assert all(torch.equal(fixed_masks[k], v) for k, v in masks.items()), step
        assert all(torch.equal(a, b) for a, b in zip(fixed_params, params, strict=True)), step
    for name_, mask in fixed_masks.items():  # the pruned weights stay zero under the mask
        if name_.endswith("weight"):
            module = model.get_submodule(name_.rsplit(".", 1)[0])
            assert not bool((module.weight.detach()[~mask] != 0).any())


# ------------------------------------------------------------------------------------------
# Resume in each phase
# ------------------------------------------------------------------------------------------

RESUME_PHASES = {"warmup": 2, "learn": 2, "finetune": 2}
"""Checkpoints come at epoch ends: epochs 1, 3 and 5 lie in the middle of each phase."""


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in ("seconds", "elapsed")} for row in rows]


@pytest.mark.parametrize("name", list(OPTIONS))
def test_resume_in_the_middle_of_each_phase_is_bit_exact(tmp_path, monkeypatch, data, name):
    config = config_for(name, RESUME_PHASES)
    whole = tmp_path / "whole"
    run(config, whole, quiet=True, data=data)

    pieces = tmp_path / "pieces"
    original = engine.evaluate
    for stop_after, resume in ((1, False), (2, True), (2, True)):  # epochs 1, 3, 5
        calls: list[None] = []

        def interrupting(*args: Any, _stop: int = stop_after, _calls=calls, **kwargs: Any) -> Any:
            _calls.append(None)
            if len(_calls) > _stop:  # the evaluation after the checkpoint to resume from
                raise KeyboardInterrupt
            return original(*args, **kwargs)

        monkeypatch.setattr(engine, "evaluate", interrupting)
        with pytest.raises(KeyboardInterrupt):
            run(config_for(name, RESUME_PHASES), pieces, resume=resume, quiet=True, data=data)
    monkeypatch.undo()
    assert [row["epoch"] for row in _metrics(pieces)] == [1, 2, 3, 4, 5]
    run(config_for(name, RESUME_PHASES), pieces, resume=True, quiet=True, data=data)

    a, b = _weights(whole), _weights(pieces)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _metrics(whole) == _metrics(pieces)
    final = json.loads((pieces / "final.json").read_text())
    assert final["phases"] == {
        "epochs": {"warmup": 2.0, "learn": 2.0, "finetune": 2.0},
        "steps": {"warmup": 8, "learn": 8, "finetune": 8},
    }
    assert final["init"] is None


# ------------------------------------------------------------------------------------------
# The command line
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--phases=-1,2,1"], "phases warmup must be >= 0, got -1.0"),
        (["--phases", "1,x,1"], "phases learn must be a number, got 'x'"),
        (["--phases", "1,1,1", "--epochs", "4"], "epochs 4 does not match the phases"),
        (["--set", "train.phases=[1,1]"], "three numbers of epochs"),
        (
            ["--phases", "1,1,1", "--set", "method.begin_epoch=1"],
            "both train.phases and method.begin_epoch",
        ),
    ],
)
def test_bad_phases_on_the_command_line_exit_2_in_one_line(tmp_path, flags, message) -> None:
    out = tmp_path / "run"
    argv = ["train", "--model", "lenet300", "--data", "mnist", "--method", "gmp"]
    code, stdout, err = call_cli(*argv, "--target", "0.5", "--out", str(out), *flags)
    assert code == 2 and stdout == ""
    assert err.count("\n") == 1 and message in err, err
    assert not out.exists()


def test_phases_on_the_command_line_replace_the_recipes_timing(tmp_path, monkeypatch) -> None:
    """``--phases`` over ``lenet300-gmp.toml`` (20 epochs, end_epoch 15): 3 epochs, GMP
    from epoch 1 to 2; ``--set train.phases`` does the same."""
    seen: list[RunConfig] = []
    monkeypatch.setattr(
        "learnprune.cli._run_and_report", lambda args, config, *a, **k: seen.append(config) or 0
    )
    for flags in (["--phases", "1,1,1"], ["--set", "train.phases={warmup=1,learn=1,finetune=1}"]):
        code, _out, err = call_cli("train", "--recipe", "lenet300-gmp", *flags)
        assert code == 0, err
    for config in seen:
        assert config.train.epochs == 3
        assert config.train.phases == {"warmup": 1.0, "learn": 1.0, "finetune": 1.0}
        assert "end_epoch" not in config.method_options


@pytest.mark.data
def test_compare_starts_every_method_from_one_dense_model(tmp_path, monkeypatch) -> None:
    from learnprune import runner

    recipe = tmp_path / "tiny.toml"
    recipe.write_text(
        'model = "lenet300"\ndata = "mnist"\n[train]\nepochs = 1\nbatch_size = 50\n'
        "lr = 0.05\ntrain_subset = 100\n"
    )
    starts: list[tuple[str, dict[str, torch.Tensor]]] = []
    load_init = runner.load_init

    def recording(model: torch.nn.Module, source: Any) -> None:
        load_init(model, source)
        starts.append((str(source), {k: v.clone() for k, v in model.state_dict().items()}))

    monkeypatch.setattr(runner, "load_init", recording)
    no_timings = {"threads": 1, "repeats": 0, "timings": []}  # not what this test is about
    monkeypatch.setattr(runner, "speed_summary", lambda *_args: no_timings)
    out = tmp_path / "sweep"
    argv = ["compare", "--recipe", str(recipe), "--methods", "gmp,scl,magnitude"]
    argv += ["--targets", "0.5", "--phases", "1,1,1", "--dense-epochs", "1"]
    code, stdout, err = call_cli(*argv, "--out", str(out), "--no-progress")
    assert code == 0, err
    dense = torch.load(out / "dense-start" / "model.pt", weights_only=True)
    assert [source for source, _state in starts] == [str(out / "dense-start")] * 3
    for _source, state in starts:  # every method's model right after its start was loaded
        assert state.keys() == dense.keys() and all(torch.equal(state[k], dense[k]) for k in dense)
    for name in ("gmp-target0.5", "scl-target0.5", "magnitude-target0.5"):
        final = json.loads((out / "runs" / name / "final.json").read_text())
        assert final["init"]["source"] == str(out / "dense-start")
        assert final["phases"]["steps"] == {"warmup": 2, "learn": 2, "finetune": 2}
    assert "phases: warm-up 1, learn 1, fine-tune 1 epochs (2, 2, 2 steps)" in stdout


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--phases=1,-1,1"], "phases learn must be >= 0"),
        (["--phases", "1,1,1", "--epochs", "2"], "epochs 2 does not match the phases"),
        (["--init", "nowhere"], "--init nowhere: no such run directory or weights file"),
        (["--dense-epochs", "0"], "expected a whole number >= 1"),
        (
            ["--methods", "scl", "--strengths", "scl=lam:0.01", "--phases", "1,1,1"],
            "fine-tuning (finetune = 1) needs the mask fixed",
        ),
        (["--init", "a", "--dense-epochs", "1"], "not allowed with argument"),
    ],
)
def test_bad_compare_phases_and_starts_exit_2_and_write_nothing(tmp_path, flags, message):
    out = tmp_path / "sweep"
    code, _stdout, err = call_cli(
        "compare", "--recipe", "lenet300-gmp", "--methods", "gmp", "--out", str(out), *flags
    )
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not out.exists()

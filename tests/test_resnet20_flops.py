"""benchmarks/resnet20_flops.py without training: its plan, resume (finished runs are
skipped), its summary's arithmetic, and bad arguments ending in exit 2."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "resnet20_flops.py"


@pytest.fixture
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("resnet20_flops", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "resnet20_flops", module)  # its dataclasses need it
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "dessilbi_refuses_target", lambda: "")  # as if it took one
    return module


SMALL = ["--seeds", "0", "1", "--keep", "0.5", "0.25", "--dense-epochs", "1",
         "--learn-epochs", "1", "--finetune-epochs", "1"]  # fmt: skip


def test_plan_lists_every_run_per_seed_dense_first(bench, tmp_path) -> None:
    plan = bench.make_plan(bench.parse_args([*SMALL, "--out", str(tmp_path)]))
    names = [run.name for run in plan.runs]
    per_seed = ["dense-seed0"] + [
        f"{m}-keep{k}-seed0"
        for k in ("0.5", "0.25")
        for m in ("scl", "diffprune", "hardconcrete", "dessilbi", "tp-groupnorm")
    ]
    assert names[:11] == per_seed
    assert names[11:] == [n.replace("seed0", "seed1") for n in per_seed]
    assert plan.protocol.epochs == 2  # learn + fine-tune, for every pruned run
    config = bench.run_config(plan.protocol, plan.runs[1], "cpu", "dense.pt")
    assert config.method_options["target"] == {"flops": 0.5}
    assert config.method_options["end_epoch"] == 1 and config.train.epochs == 2
    assert config.init == "dense.pt" and config.train.seed == 0
    assert list(tmp_path.iterdir()) == []  # planning writes nothing


def test_dessilbi_without_a_target_is_skipped_with_its_reason(bench, tmp_path, capsys) -> None:
    bench.dessilbi_refuses_target = lambda: "the installed DessiLBI takes no target option"
    code = bench.main([*SMALL, "--methods", "dessilbi", "scl", "--plan", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "dessilbi: the installed DessiLBI takes no target option" in out
    assert "dessilbi-keep" not in out and "scl-keep0.5-seed1: to run" in out


def _final(path: Path, **fields) -> None:
    path.mkdir(parents=True)
    (path / "final.json").write_text(json.dumps(fields))


def test_finished_runs_are_skipped_and_summarised(bench, tmp_path, monkeypatch, capsys) -> None:
    import learnprune.data

    _final(tmp_path / "dense-seed0", test_accuracy=0.9, flops=100.0)
    _final(tmp_path / "scl-keep0.5-seed0", test_accuracy=0.88, compact={"flops": 50.5})
    trained = []

    def fake_run(plan, run, device, data):  # what a finished run leaves: its final.json
        trained.append(run.name)
        flops = {"diffprune": 53.0, "tp-groupnorm": 48.0}.get(run.method, 49.5)
        _final(plan.out / run.name, test_accuracy=0.86, compact={"flops": flops})
        return {"test_accuracy": 0.86}

    monkeypatch.setattr(bench, "learnprune_run", fake_run)
    monkeypatch.setattr(bench, "torch_pruning_run", fake_run)
    monkeypatch.setattr(learnprune.data, "load_dataset", lambda *a, **k: None)
    args = ["--seeds", "0", "--keep", "0.5", "--methods", "scl", "diffprune", "tp-groupnorm",
            "--dense-epochs", "1", "--learn-epochs", "1", "--finetune-epochs", "1"]  # fmt: skip
    code = bench.main([*args, "--out", str(tmp_path)])
    assert trained == ["diffprune-keep0.5-seed0", "tp-groupnorm-keep0.5-seed0"]
    assert "scl-keep0.5-seed0: done already" in capsys.readouterr().out
    assert code == 1  # DiffPrune's 53 of a 50 budget is 6% off: a learned row missed it
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["learned_rows_off_target"] == ["diffprune-keep0.5-seed0"]
    rows = {row["run"]: row for row in summary["runs"]}
    assert rows["scl-keep0.5-seed0"]["flops_ratio"] == pytest.approx(100 / 50.5)
    assert rows["scl-keep0.5-seed0"]["flops_vs_target"] == pytest.approx(0.01)
    assert rows["scl-keep0.5-seed0"]["vs_dense"] == pytest.approx(-0.02)
    assert rows["tp-groupnorm-keep0.5-seed0"]["within_tolerance"] is False  # reported only
    assert "resnet20_flops.py --seeds 0" in (tmp_path / "summary.md").read_text()
    trained.clear()
    assert bench.main([*args, "--out", str(tmp_path)]) == 1  # again: nothing left to train
    assert trained == []
    (tmp_path / "diffprune-keep0.5-seed0" / "final.json").unlink()
    # the summary of what is finished: DiffPrune's row is left, not off target
    assert bench.main([*args, "--summarise", "--out", str(tmp_path)]) == 3
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["not_finished"] == ["diffprune-keep0.5-seed0"]
    assert summary["learned_rows_off_target"] == [] and trained == []
    assert "--summarise" not in summary["command"]  # the command that trained the runs


@pytest.mark.parametrize(
    "bad",
    [
        ["--keep", "1.0"],
        ["--keep", "0"],
        ["--keep", "nan"],
        ["--keep", "0.33333", "0.333333"],
        ["--seeds", "0", "0"],
        ["--seeds", "-1"],
        ["--methods", "gmp"],
        ["--learn-epochs", "0"],
        ["--train-subset", "0"],
        ["--stop-after", "0"],
    ],
)
def test_bad_arguments_exit_2_in_one_line(bench, tmp_path, bad, capsys) -> None:
    assert bench.main([*bad, "--plan", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("resnet20_flops.py: error: ")
    assert not (tmp_path / "out").exists()


def test_unparsable_arguments_exit_2(bench) -> None:
    with pytest.raises(SystemExit) as stop:
        bench.main(["--keep", "half"])
    assert stop.value.code == 2


def test_an_out_directory_of_another_protocol_is_refused(bench, tmp_path, capsys) -> None:
    protocol = {"dense_epochs": 30, "learn_epochs": 15, "finetune_epochs": 15,
                "train_subset": None, "batch_size": 128}  # fmt: skip
    (tmp_path / "protocol.json").write_text(json.dumps(protocol))
    assert bench.main(["--plan", "--out", str(tmp_path)]) == 0  # the same protocol
    assert bench.main(["--plan", "--learn-epochs", "5", "--out", str(tmp_path)]) == 2
    assert "learn_epochs differ: learn_epochs 15" in capsys.readouterr().err
    file = tmp_path / "a-file"
    file.write_text("")
    assert bench.main(["--plan", "--out", str(file)]) == 2

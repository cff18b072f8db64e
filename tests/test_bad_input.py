"""Bad input, one test per class of mistake: exit code 2, one stderr line
``learnprune: error: ...``, no traceback, and nothing written (earlier files intact).

Most tests call :func:`learnprune.cli.main` in-process (see ``conftest.call_cli``); the few
that need a run directory share one tiny finished run (LeNet-300-100, 200 MNIST examples).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import call_cli
from torch import nn

from learnprune import checkpoint, engine, validation
from learnprune.bench import time_forms
from learnprune.config import TrainConfig
from learnprune.errors import CheckpointError, ConfigError
from learnprune.groups import build_groups
from learnprune.methods import DessiLBIMethod
from learnprune.report import read_final

ERROR_PREFIX = "learnprune: error:"

pytestmark = pytest.mark.usefixtures("one_thread")


def assert_one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert lines[0].startswith(ERROR_PREFIX) and lines[0] != ERROR_PREFIX, lines[0]
    return lines[0]


def bad(*argv: str) -> str:
    """Run the command; assert exit code 2, one error line and nothing on stdout."""
    code, stdout, err = call_cli(*argv)
    assert code == 2, (code, err)
    assert stdout == ""
    return assert_one_error_line(err)


def train_args(out, *extra: str) -> list[str]:
    return [
        "train", "--model", "lenet300", "--data", "mnist", "--method", "gmp", "--target", "0.9",
        "--epochs", "1", "--train-subset", "200", "--out", str(out), "--no-progress", "--quiet",
        *extra,
    ]  # fmt: skip


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` with its bytes."""
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished tiny run (read-only for the tests: copy it before changing anything)."""
    out = tmp_path_factory.mktemp("bad-input") / "run"
    code, _stdout, err = call_cli(*train_args(out))
    assert code == 0, err
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    """A copy of the finished run that a test may damage."""
    return Path(shutil.copytree(finished_run, tmp_path / "copy"))


# ------------------------------------------------------------------------------------------
# Numbers beyond what their consumer takes
# ------------------------------------------------------------------------------------------


def test_seed_beyond_32_bits_is_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "run"
    line = bad(*train_args(out, "--seed", str(2**32)))
    assert "seed must be <= 4294967295" in line
    assert not out.exists()
    assert TrainConfig(seed=2**32 - 1).validate().seed == 2**32 - 1
    with pytest.raises(ConfigError, match="seed"):
        TrainConfig(seed=2**64).validate()


def test_bench_repeats_must_be_positive(tmp_path):
    line = bad("bench", str(tmp_path), "--repeats", "-5")
    assert "--repeats" in line and "'-5'" in line
    with pytest.raises(ConfigError, match="repeats must be >= 1"):
        time_forms({"dense": nn.Linear(2, 2)}, (2,), batches=(1,), threads=(1,), repeats=0)
    timings = time_forms(
        {"dense": nn.Linear(2, 2)}, (2,), batches=(1,), threads=(1,), warmup=0, repeats=1
    )
    assert [t.form for t in timings] == ["dense"] and torch.get_num_threads() == 1


# ------------------------------------------------------------------------------------------
# Device names
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["cuda:abc", "cuda:-1", "cudax", "cpu:0x"])
def test_malformed_device_is_refused_before_anything_is_written(tmp_path, device):
    out = tmp_path / "run"
    assert f"got '{device}'" in bad(*train_args(out, "--device", device))
    assert not out.exists()


def test_cuda_index_beyond_the_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError, match=r"has 1 CUDA device\(s\), cuda:0 to cuda:0"):
        engine.resolve_device("cuda:1")
    assert engine.resolve_device("cuda:0") == torch.device("cuda:0")


# ------------------------------------------------------------------------------------------
# Output directories that cannot be written
# ------------------------------------------------------------------------------------------

OUTPUT_COMMANDS = {
    "train": lambda run, out: train_args(out),
    "compact": lambda run, out: ["compact", str(run), "--out", str(out)],
    "export": lambda run, out: ["export", str(run), "--out", str(out)],
    "compare": lambda run, out: ["compare", "--recipe", "lenet300-gmp.toml", "--out", str(out)],
    "data fetch": lambda run, out: ["data", "fetch", "mnist", "--root", str(out)],
}


@pytest.mark.parametrize("command", list(OUTPUT_COMMANDS))
def test_output_under_a_file_or_under_proc(tmp_path, finished_run, command):
    before = snapshot(finished_run)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    line = bad(*OUTPUT_COMMANDS[command](finished_run, a_file / "out"))
    assert f"{a_file}, which is a file, not a directory" in line
    assert a_file.read_text() == "mine"
    line = bad(*OUTPUT_COMMANDS[command](finished_run, Path("/proc/learnprune-test/out")))
    assert "/proc/learnprune-test/out: cannot create a directory there" in line
    assert snapshot(finished_run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_output_directory_check_leaves_nothing_behind(tmp_path):
    nested = tmp_path / "a" / "b" / "c"
    assert validation.output_directory("--out", nested) == nested
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()
    validation.output_directory("--out", tmp_path / "mine")
    assert list((tmp_path / "mine").iterdir()) == []
    with pytest.raises(ConfigError, match="embedded null byte"):
        validation.output_directory("--out", tmp_path / "a\x00b")
    with pytest.raises(ConfigError, match="cannot create a directory there"):
        validation.output_directory("--out", tmp_path / ("x" * 300))


# ------------------------------------------------------------------------------------------
# Files learnprune reads: recipes and a run's JSON files (encoding, syntax, content)
# ------------------------------------------------------------------------------------------


def test_recipe_that_is_not_utf8(tmp_path):
    recipe = tmp_path / "latin1.toml"
    recipe.write_bytes('model = "lenet300"\ndescription = "caf\xe9"\n'.encode("latin-1"))
    out = tmp_path / "run"
    line = bad("train", "--recipe", str(recipe), "--out", str(out))
    assert line.endswith(f"recipe {recipe} is not UTF-8 text (byte 0xe9 at offset 37)")
    assert not out.exists()


def test_malformed_yaml_is_one_line_with_file_line_and_column(tmp_path):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("model: lenet300\ndata: mnist\ntrain:\n  epochs: [1, 2\n  lr: 0.1\n")
    out = tmp_path / "run"
    line = bad("train", "--recipe", str(recipe), "--out", str(out))
    assert f"recipe {recipe}:5:5: not valid YAML: expected ',' or ']'" in line
    assert not out.exists()


RESUME = ("train", "--quiet", "--resume")


@pytest.mark.parametrize(
    ("name", "content", "argv", "expected"),
    [
        ("config.json", b'{"model": "lenet300\xff"}', ("eval",), "not UTF-8 text (byte 0xff"),
        ("config.json", b"[]", ("eval",), "expected a JSON object, got []"),
        ("final.json", b"{}", ("report",), "final.json is corrupt: no method"),
        ("final.json", b'{"method": "gmp"', ("report",), "not JSON (line 1, column 17"),
        ("metrics.jsonl", b'{"epoch": 1}\n{"oops\n', RESUME, "line 2 is corrupt"),
    ],
)
def test_corrupt_run_file(run_copy, name, content, argv, expected):
    (run_copy / name).write_bytes(content)
    if argv[0] == "train":  # an unfinished run, to resume
        (run_copy / "final.json").unlink()
    before = snapshot(run_copy)
    assert expected in bad(*argv, str(run_copy))
    assert snapshot(run_copy) == before


def test_read_final_checks_the_fields_report_uses(run_copy):
    final = run_copy / "final.json"
    result = json.loads(final.read_text())
    assert read_final(run_copy) == result
    for field, value, expected in [
        ("test_accuracy", "high", "test_accuracy is 'high'"),
        ("epochs", True, "epochs is True"),
        ("layers", [{"name": "fc1"}], "no layers[0].shape"),
        ("speed", {"timings": []}, "no speed.threads"),
    ]:
        final.write_text(json.dumps({**result, field: value}))
        with pytest.raises(CheckpointError, match=re.escape(expected)):
            read_final(run_copy)


def test_report_on_a_missing_run(tmp_path, finished_run):
    missing = tmp_path / "no-such-run"
    assert bad("report", str(missing)).endswith(f"no run directory at {missing}")
    assert bad("report", str(finished_run), str(missing)).endswith(
        f"no run directory at {missing}"
    )
    assert "not a learnprune run directory" in bad("report", str(tmp_path))


# ------------------------------------------------------------------------------------------
# A checkpoint without a field resuming needs
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda state: state.pop("rng"), "checkpoint.pt is corrupt: it has no rng"),
        (lambda state: state.pop("epoch"), "checkpoint.pt is corrupt: it has no epoch"),
        (lambda state: state.update(epoch="1"), "checkpoint.pt is corrupt: epoch is '1'"),
        (lambda state: state["rng"].pop("numpy"), "its RNG states lack numpy"),
        (lambda state: state["rng"].update(torch=1), "the checkpoint's RNG states are corrupt"),
    ],
)
def test_resume_from_a_checkpoint_missing_a_field(run_copy, change, expected):
    (run_copy / "final.json").unlink()  # unfinished: resumable
    state = torch.load(run_copy / "checkpoint.pt", weights_only=True)
    change(state)
    checkpoint.save_checkpoint(run_copy / "checkpoint.pt", state)
    before = snapshot(run_copy)
    assert expected in bad(*RESUME, str(run_copy))
    assert snapshot(run_copy) == before


# ------------------------------------------------------------------------------------------
# Options of the wrong type or out of order (checked before anything is written)
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (("--set", "method.groups=5"), "groups must be a kind name or a non-empty list"),
        (("--set", "method.exclude={fc1=1}"), "exclude must be a name pattern or a list"),
        (("--set", "method.exclude=[1]"), "exclude must be a name pattern or a list"),
        (("--set", "data_options.bogus=1"), "unknown data_options key bogus"),
        (("--set", "data_options.root=5"), "data_options root must be a path, got 5"),
        (("--set", "data_options.pad_to_32='yes'"), "pad_to_32 must be true or false"),
        (("--epochs", "4", "--set", "method.begin_epoch=3", "--set", "method.end_epoch=2"),
         "begin_epoch 3 is after end_epoch 2"),
        (("--method", "scl", "--set", "method.lam_rate='fast'"), "lam_rate must be a number"),
        (("--method", "diffprune", "--set", "method.lam_rate={a=1}"), "lam_rate must be a"),
        (("--method", "dessilbi", "--set", "method.exclude=true"), "exclude must be a name"),
    ],
)  # fmt: skip
def test_option_of_the_wrong_type_or_order(tmp_path, extra, expected):
    out = tmp_path / "run"
    if "--method" in extra:  # another method, without gmp's target
        args = [a for a in train_args(out) if a not in ("--target", "0.9")]
        args[args.index("gmp")] = extra[1]
        extra = extra[2:]
    else:
        args = train_args(out)
    assert expected in bad(*args, *extra)
    assert not out.exists()


def test_gmp_without_a_target(tmp_path):
    out = tmp_path / "run"
    args = [a for a in train_args(out) if a not in ("--target", "0.9")]
    assert "gmp needs a target sparsity" in bad(*args)
    assert not out.exists()


def test_exclude_pattern_that_matches_nothing_warns_in_one_line(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.warns(validation.UnmatchedPatternWarning, match="'fc9' matches no module"):
        plan = build_groups(model, exclude=["fc9", "0"])
    assert [s.params for s in plan.sets] == [["2.weight"]]  # "0" still excludes layer 0
    with pytest.warns(validation.UnmatchedPatternWarning, match="'fc9' matches no module"):
        DessiLBIMethod(model, exclude="fc9")
    out = tmp_path / "run"
    code, _stdout, err = call_cli(*train_args(out, "--exclude", "fc9", "--max-steps", "1"))
    assert code == 0
    assert err.splitlines() == [
        "learnprune: warning: exclude pattern 'fc9' matches no module or parameter name of the "
        "model; nothing is left dense by it"
    ]

"""What a newcomer meets first: the Makefile's two commands and .ci/run, the shipped
recipes by name, ``lp.export`` / ``lp.load``, and the built wheel in a fresh venv.

The Makefile's data targets run with stand-ins for ``learnprune`` and ``apt-get`` (small
shell scripts that log their arguments), so nothing is installed and nothing is fetched.
The wheel test (marked ``packaging``, run by ``make test-wheel``) installs for minutes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import call_cli

from learnprune.config import find_recipe, read_recipe
from learnprune.data import write_idx

REPO = Path(__file__).resolve().parent.parent

needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def make(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    """``make ARGS`` in ``cwd``, without the flags and variables of a make that runs pytest."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(cwd), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def stand_in(path: Path, body: str) -> Path:
    """An executable shell script at ``path`` that appends its arguments to ``path.log``."""
    path.write_text(f'#!/bin/sh\necho "$@" >> {path}.log\n{body}\n')
    path.chmod(0o755)
    return path


@needs_make
def test_demo_fetches_only_mnist_and_installs_no_extras(tmp_path: Path) -> None:
    planned = make("-n", "demo", f"VENV={tmp_path / 'venv'}")
    assert planned.returncode == 0, planned.stderr
    commands = planned.stdout
    assert "data fetch mnist" in commands
    assert "fashion" not in commands.lower() and "apt-get" not in commands
    assert "-e ." in commands and "[test" not in commands  # learnprune alone, no extras
    assert "train --recipe" in commands and "lenet300-scl" in commands


@needs_make
def test_test_target_installs_extras_and_both_data_sets(tmp_path: Path) -> None:
    planned = make("-n", "test", f"VENV={tmp_path / 'venv'}").stdout
    assert "-e '.[test," in planned
    assert "data fetch mnist" in planned and "data fetch fashion-mnist" in planned
    assert planned.rstrip().endswith("-m pytest -q")


def fashion_mnist_target(tmp_path: Path, learnprune: Path, apt_get: str) -> str:
    """Run ``make fashion-mnist`` (its venv taken as installed); its output."""
    venv = tmp_path / "venv"
    done = make(
        "-s",
        "-o",
        f"{venv}/.installed",
        "fashion-mnist",
        f"VENV={venv}",
        f"LEARNPRUNE={learnprune}",
        f"APT_GET={apt_get}",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@needs_make
def test_fashion_mnist_already_there_installs_nothing(tmp_path: Path) -> None:
    learnprune = stand_in(tmp_path / "learnprune", "exit 0")
    apt_get = stand_in(tmp_path / "apt-get", "exit 0")
    assert fashion_mnist_target(tmp_path, learnprune, str(apt_get)) == "fashion-mnist is ready\n"
    assert not Path(f"{apt_get}.log").exists()


@needs_make
@pytest.mark.skipif(os.geteuid() != 0, reason="the Makefile installs the package only as root")
def test_fashion_mnist_installed_from_debian_as_root(tmp_path: Path) -> None:
    installed = tmp_path / "installed"
    # Like a fresh machine: `install` fails until `update` has fetched the package lists.
    apt_get = stand_in(
        tmp_path / "apt-get",
        f'[ "$1" = update ] && touch {tmp_path}/lists && exit 0\n'
        f"[ -e {tmp_path}/lists ] && touch {installed} && exit 0\nexit 100",
    )
    learnprune = stand_in(tmp_path / "learnprune", f"[ -e {installed} ]")
    out = fashion_mnist_target(tmp_path, learnprune, str(apt_get))
    assert out.splitlines()[0] == "installing the Debian package dataset-fashion-mnist"
    assert Path(f"{apt_get}.log").read_text().splitlines() == [
        "install -y -q dataset-fashion-mnist",
        "update -q",
        "install -y -q dataset-fashion-mnist",
    ]
    fetches = Path(f"{learnprune}.log").read_text().splitlines()
    assert fetches == ["data fetch fashion-mnist"] * 2  # tried, then fetched after install


@needs_make
@pytest.mark.parametrize("apt_get", ["failing", "absent"])
def test_fashion_mnist_unavailable_says_what_to_run(tmp_path: Path, apt_get: str) -> None:
    learnprune = stand_in(tmp_path / "learnprune", "exit 2")
    command = str(stand_in(tmp_path / "apt-get", "exit 100")) if apt_get == "failing" else "none"
    out = fashion_mnist_target(tmp_path, learnprune, command).splitlines()
    assert out[-1] == (
        "Fashion-MNIST is not installed, so its tests are skipped; to run them: "
        "sudo apt-get install dataset-fashion-mnist && make test"
    )
    assert len(out) <= 2  # at most "installing ..." before it


def test_ci_runs_the_fresh_machine_demo_before_installing_anything() -> None:
    commands = [
        line.strip()
        for line in (REPO / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    demo = next(i for i, line in enumerate(commands) if line.startswith("make demo"))
    test = next(i for i, line in enumerate(commands) if line.startswith("make test"))
    assert demo < test
    assert "--max-steps" in commands[demo]
    assert not any(re.search(r"\b(apt-get|apt|pip|dpkg)\b", line) for line in commands[:demo])


# ------------------------------------------------------------------------------------------
# Recipes ship inside the package and are found by name from any directory
# ------------------------------------------------------------------------------------------


def test_list_shows_the_shipped_recipes_from_any_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = call_cli("list")
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("recipes:"))
    names = line.removeprefix("recipes:").split("(")[0].replace(",", " ").split()
    assert names == sorted(p.stem for p in (REPO / "learnprune" / "recipes").glob("*.toml"))
    assert "lenet300-scl" in names and len(names) >= 20


@pytest.mark.parametrize(
    "given", ["lenet300-scl", "lenet300-scl.toml", "recipes/lenet300-scl.toml"]
)
def test_a_recipe_by_name_from_any_directory(tmp_path: Path, monkeypatch, given: str) -> None:
    monkeypatch.chdir(tmp_path)
    shipped = REPO / "learnprune" / "recipes" / "lenet300-scl.toml"
    assert find_recipe(given) == shipped.resolve()
    assert read_recipe(given) == read_recipe(shipped)
    assert read_recipe(given)["method"]["name"] == "scl"


def test_a_file_in_the_working_directory_wins_over_a_shipped_name(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lenet300-scl.toml").write_text('model = "lenet5"\n')
    assert read_recipe("lenet300-scl.toml") == {"model": "lenet5"}
    assert read_recipe("lenet300-scl")["model"] == "lenet300"  # a bare name: the shipped one


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("lenet300-sc", "no shipped recipe 'lenet300-sc'; did you mean lenet300-scl?"),
        ("dessilbi", "did you mean lenet300-dessilbi, lenet5-dessilbi, lenet5caffe-dessilbi?"),
        ("resnet-zzz", "no shipped recipe 'resnet-zzz'; `learnprune list` shows them"),
        ("elsewhere/lenet300-scl.toml", "recipe elsewhere/lenet300-scl.toml does not exist"),
    ],
)
def test_an_unknown_recipe_is_one_line_with_close_names(
    tmp_path: Path, monkeypatch, given: str, expected: str
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = call_cli("train", "--recipe", given, "--out", str(tmp_path / "run"))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and expected in err
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------------------
# The names users try first: lp.export(model, dir) and lp.load(dir)
# ------------------------------------------------------------------------------------------

EXPORT_AND_LOAD = """
import sys, torch
if sys.argv[1] == "submodule-first":
    import learnprune.export
import learnprune as lp

torch.manual_seed(0)
model = lp.build_model("lenet300").eval()
x = torch.randn(3, 1, 28, 28)
for attempt in ("first", "after importing the submodule"):
    named = lp.export(model, f"{sys.argv[2]}/{attempt}/named", model_name="lenet300")
    plain = lp.export(model, f"{sys.argv[2]}/{attempt}/plain")
    assert torch.equal(lp.load(named)(x), model(x))
    assert torch.equal(lp.load(plain, model=lp.build_model("lenet300"))(x), model(x))
    assert lp.export is lp.export_model and lp.load is lp.load_export
    import learnprune.export
    from learnprune.export import read_metadata  # the submodule itself is still there

assert read_metadata(named)["architecture"]["model_name"] == "lenet300"
print(type(lp.export).__name__, type(sys.modules["learnprune.export"]).__name__)
"""


@pytest.mark.parametrize("order", ["package-first", "submodule-first"])
def test_lp_export_and_lp_load_whatever_was_imported_first(tmp_path: Path, order: str) -> None:
    """``lp.export(model, dir)`` and ``lp.load(dir)`` are the functions, before and after an
    ``import learnprune.export`` (which binds the package attribute on its first import)."""
    pytest.importorskip("safetensors")
    done = subprocess.run(
        [sys.executable, "-c", EXPORT_AND_LOAD, order, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["function", "module"]


# ------------------------------------------------------------------------------------------
# The built wheel in a fresh virtual environment (`make test-wheel`, about two minutes)
# ------------------------------------------------------------------------------------------


def run_checked(command: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{command}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """The wheel built from this checkout, installed in a new venv as a release would be:
    its ``bin`` directory, a working directory outside the checkout, and the environment
    (no ``PYTHONPATH``, so the checkout cannot be imported)."""
    root = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["LEARNPRUNE_DATA"] = str(root / "no-data")
    # Built from a copy of what the wheel is made of, so that no stale build/ of the checkout
    # leaks into it (and the checkout gets none).
    source = root / "source"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "learnprune", source / "learnprune", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    run_checked(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(source), "-w", str(root)],
        root,
        env,
    )
    (wheel,) = root.glob("learnprune-*.whl")
    run_checked([sys.executable, "-m", "venv", str(root / "venv")], root, env)
    bin_dir = root / "venv" / "bin"
    pip = [str(bin_dir / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # The Makefile's torch pin first (a CPU build on local disk), then the wheel and its deps.
    run_checked([*pip, os.environ.get("LEARNPRUNE_TEST_TORCH", "torch==2.13.0")], root, env)
    run_checked([*pip, str(wheel)], root, env)
    cwd = root / "elsewhere"
    cwd.mkdir()
    return bin_dir, cwd, env


@pytest.mark.packaging
def test_the_wheel_lists_and_trains_its_recipes_outside_a_checkout(installed_wheel) -> None:
    bin_dir, cwd, env = installed_wheel
    python = str(bin_dir / "python")
    names = "import learnprune as lp; print(lp.__file__, lp.export.__name__, lp.load.__name__)"
    where, *functions = run_checked([python, "-c", names], cwd, env).split()
    assert functions == ["export", "load"]  # lp.export(model, dir) and lp.load(dir)
    assert Path(where).is_relative_to(bin_dir.parent)  # the installed copy, not the checkout
    listed = run_checked([str(bin_dir / "learnprune"), "list"], cwd, env)
    assert "lenet300-scl" in listed and "lenet5caffe-diffprune" in listed

    data_dir = cwd / "tiny-mnist"
    data_dir.mkdir()
    rng = np.random.default_rng(0)
    for name, count in [("train-images-idx3-ubyte", 200), ("t10k-images-idx3-ubyte", 50)]:
        write_idx(data_dir / name, rng.integers(0, 256, (count, 28, 28), dtype=np.uint8))
        labels = name.replace("images-idx3", "labels-idx1")
        write_idx(data_dir / labels, rng.integers(0, 10, count, dtype=np.uint8))
    train = [
        str(bin_dir / "learnprune"), "train", "--recipe", "lenet300-scl", "--data-dir",
        str(data_dir), "--max-steps", "2", "--no-progress", "--quiet", "--out", "run",
    ]  # fmt: skip
    run_checked(train, cwd, env)
    final = json.loads((cwd / "run" / "final.json").read_text())
    config = json.loads((cwd / "run" / "config.json").read_text())
    assert final["steps"] == 2 and config["method"] == "scl" and config["model"] == "lenet300"
    find = "from learnprune.config import find_recipe as f; print(f('recipes/lenet300-scl.toml'))"
    shipped = run_checked([python, "-c", find], cwd, env)  # a checkout's path, outside one
    assert Path(shipped.strip()) == Path(where).parent / "recipes" / "lenet300-scl.toml"

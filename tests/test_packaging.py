"""The set-up a newcomer runs: the Makefile's two commands and .ci/run.

The Makefile's data targets run with stand-ins for ``learnprune`` and ``apt-get`` (small
shell scripts that log their arguments), so nothing is installed and nothing is fetched.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def make(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(cwd), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def stand_in(path: Path, body: str) -> Path:
    """An executable shell script at ``path`` that appends its arguments to ``path.log``."""
    path.write_text(f'#!/bin/sh\necho "$@" >> {path}.log\n{body}\n')
    path.chmod(0o755)
    return path


def test_demo_fetches_only_mnist_and_installs_no_extras(tmp_path: Path) -> None:
    planned = make("-n", "demo", f"VENV={tmp_path / 'venv'}")
    assert planned.returncode == 0, planned.stderr
    commands = planned.stdout
    assert "data fetch mnist" in commands
    assert "fashion" not in commands.lower() and "apt-get" not in commands
    assert "-e ." in commands and "[test" not in commands  # learnprune alone, no extras
    assert "train --recipe" in commands and "lenet300-scl" in commands


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


def test_fashion_mnist_already_there_installs_nothing(tmp_path: Path) -> None:
    learnprune = stand_in(tmp_path / "learnprune", "exit 0")
    apt_get = stand_in(tmp_path / "apt-get", "exit 0")
    assert fashion_mnist_target(tmp_path, learnprune, str(apt_get)) == "fashion-mnist is ready\n"
    assert not Path(f"{apt_get}.log").exists()


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

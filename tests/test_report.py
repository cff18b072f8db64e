"""The run summary says what ran: a run cut short by max_steps is not reported as its planned
epochs."""

from __future__ import annotations

import pytest
from conftest import call_cli

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.data]


def test_a_run_stopped_by_max_steps_says_so(tmp_path) -> None:
    code, out, err = call_cli(
        "train", "--model", "lenet300", "--data", "mnist", "--method", "magnitude",
        "--target", "0.5", "--epochs", "2", "--max-steps", "3", "--train-subset", "500",
        "--out", str(tmp_path / "run"), "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    assert "magnitude on lenet300 / mnist, 3 steps (max_steps; 2 epochs planned):" in out
    code, out, err = call_cli("report", str(tmp_path / "run"))
    assert code == 0, err
    assert "3 steps (max_steps; 2 epochs planned)" in out

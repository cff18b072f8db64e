"""Relayed error messages: escape sequences and control characters go, many lines become one
readable line that keeps both what failed and why, and the CLI prints every error so."""

from __future__ import annotations

import pytest
import torch
from conftest import call_cli
from torch import nn

import learnprune.cli
from learnprune.errors import CheckpointError, ConfigError, clean_text, one_line, relayed
from learnprune.runner import load_init

# what torch.onnx's TorchExportError looks like: colours, advice lines, blank lines
COLOURED = (
    "Failed to export the model. \x1b[96mThis is step 1/3\x1b[0m of exporting.\n"
    "- Modify the model code.\n"
    "\n"
    "## Exception summary\n"
    "\n"
    "<class 'RuntimeError'>: \x1b[1;31mshape\x1b[0m mismatch\r\n"
    "----\n"
)


def test_clean_text_strips_escape_sequences_and_control_characters() -> None:
    assert clean_text("\x1b[31mred\x1b[0m \x1b]8;;http://x\x07link\x1b]8;;\x07 ok") == "red link ok"
    assert clean_text("a\x00b\x08c\x7fd\x1bce\x1b(B\tf\r\ng\x1b") == "abcde\tf\ng"


def test_one_line_keeps_every_meaningful_line() -> None:
    assert one_line(COLOURED) == (
        "Failed to export the model. This is step 1/3 of exporting. | - Modify the model "
        "code. | ## Exception summary | <class 'RuntimeError'>: shape mismatch"
    )


def test_one_line_cuts_the_middle_and_keeps_head_and_tail() -> None:
    text = "first line says what\n" + "x" * 100 + "\nlast line says why"
    cut = one_line(text, limit=50)
    assert len(cut) <= 50
    assert cut.startswith("first line says what") and cut.endswith("last line says why")
    assert " ... " in cut


def test_relayed_reports_the_innermost_cause() -> None:
    try:
        try:
            raise ValueError("\x1b[31minner\x1b[0m reason\nsecond line")
        except ValueError as inner:
            raise RuntimeError(COLOURED) from inner
    except RuntimeError as outer:
        assert relayed(outer) == "ValueError: inner reason | second line"
    assert relayed(KeyError()) == "KeyError"


def test_learnprune_errors_never_carry_escape_sequences() -> None:
    assert str(ConfigError("bad \x1b[31mvalue\x1b[0m\x07")) == "bad value"


def test_cli_prints_a_relayed_multi_line_error_as_one_clean_line(monkeypatch) -> None:
    def failing(_args: object) -> int:
        raise ConfigError(f"cannot do it: {COLOURED}")

    monkeypatch.setattr(learnprune.cli, "_dispatch", failing)
    code, out, err = call_cli("list")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "\x1b" not in err and "\r" not in err
    assert err.startswith("learnprune: error: cannot do it: Failed to export the model.")
    assert err.rstrip().endswith("<class 'RuntimeError'>: shape mismatch")


def test_a_state_dict_mismatch_keeps_the_line_that_names_the_tensor(tmp_path) -> None:
    """Before, only torch's first line ("Error(s) in loading state_dict for ...:") was kept."""
    torch.save(nn.Linear(3, 2).state_dict(), tmp_path / "model.pt")
    with pytest.raises(CheckpointError) as err:
        load_init(nn.Linear(3, 4), tmp_path / "model.pt")
    message = str(err.value)
    assert "\n" not in message and "size mismatch for weight" in message

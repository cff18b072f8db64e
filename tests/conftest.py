"""Shared test helpers: one torch thread per test module, and the CLI called in-process."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

import pytest
import torch

from learnprune.cli import main


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread while a module runs: faster on a loaded 2-core machine, and runs
    compared bit for bit need the same thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def call_cli(*argv: str) -> tuple[int, str, str]:
    """``learnprune.cli.main(argv)`` with its exit code (also from SystemExit), stdout and
    stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()

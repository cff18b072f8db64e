"""Errors a user can cause.

Every error a user can provoke (bad configuration, missing data, an unsupported layer, a
corrupt checkpoint, a diverging loss) is raised as a :class:`LearnpruneError`. The command
line turns it into one line on stderr and exit code 2; the Python API lets it propagate with
the same message. Anything else escaping is a bug in learnprune.

Messages relayed from other libraries (torch.onnx, safetensors, the model's own code) may
carry terminal colour codes and run over many lines; :func:`relayed` turns such an exception
into one clean line, and a :class:`LearnpruneError`'s text never holds escape sequences or
control characters (:func:`clean_text`).
"""

from __future__ import annotations

import re

# ANSI/VT100 escape sequences: CSI ("ESC [ ... final byte": colours, cursor moves), OSC
# ("ESC ] ... BEL" or "... ESC \\": titles, hyperlinks) and the short ones ("ESC c", "ESC ( B").
_ESCAPE_SEQUENCE = re.compile(
    r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[ -/]*[0-~])"
)
# Every other C0/C1 control character but newline and tab (carriage returns become newlines).
_CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
#: How many characters :func:`relayed` keeps of a relayed message (its head and its tail).
RELAYED_LIMIT = 300


def clean_text(text: str) -> str:
    """``text`` without escape sequences and control characters (newlines and tabs stay)."""
    text = _ESCAPE_SEQUENCE.sub("", text).replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL_CHARACTER.sub("", text)


def one_line(text: str, limit: int | None = None) -> str:
    """``text`` cleaned (:func:`clean_text`) and collapsed into one line.

    Every line that holds a letter or digit is kept, its white space collapsed, and the
    lines are joined with ``" | "`` (blank and decoration-only lines such as ``-----`` go).
    Beyond ``limit`` characters the middle is cut out (``head ... tail``), so both the
    first line (what failed) and the last (usually the reason) survive.
    """
    lines = [" ".join(line.split()) for line in clean_text(text).splitlines()]
    joined = " | ".join(line for line in lines if any(c.isalnum() for c in line))
    if limit is None or len(joined) <= limit:
        return joined
    keep = max(limit - 5, 2)
    return f"{joined[: keep - keep // 2].rstrip()} ... {joined[len(joined) - keep // 2 :].lstrip()}"


def relayed(error: BaseException, limit: int = RELAYED_LIMIT) -> str:
    """``"<type>: <message>"`` of another library's exception, in one clean line.

    An exception that only wraps another one (``raise Wrapper(...) from cause``, as
    torch.onnx's ``TorchExportError`` does around torch.export's error) is reported by its
    innermost cause, which holds the reason; the wrappers' text is advice and boilerplate.
    """
    while error.__cause__ is not None:
        error = error.__cause__
    text = one_line(str(error), limit)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class LearnpruneError(Exception):
    """An error the user can fix; its message says what happened and what to do."""

    exit_code = 2

    def __str__(self) -> str:
        return clean_text(super().__str__())


class ConfigError(LearnpruneError, ValueError):
    """A hyper-parameter, name or option is invalid."""


class DataError(LearnpruneError, FileNotFoundError):
    """A data set is missing, incomplete or malformed."""


class UnsupportedModelError(LearnpruneError, TypeError):
    """A model (or a layer of it) cannot be handled the way that was asked."""


class CheckpointError(LearnpruneError):
    """A checkpoint or run directory is corrupt, foreign, or incompatible."""


class TrainingDivergedError(LearnpruneError, FloatingPointError):
    """The loss became NaN or infinite."""


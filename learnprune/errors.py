"""Errors a user can cause.

Every error a user can provoke (bad configuration, missing data, an unsupported layer, a
corrupt checkpoint, a diverging loss) is raised as a :class:`LearnpruneError`. The command
line turns it into one line on stderr and exit code 2; the Python API lets it propagate with
the same message. Anything else escaping is a bug in learnprune.
"""

from __future__ import annotations


class LearnpruneError(Exception):
    """An error the user can fix; its message says what happened and what to do."""

    exit_code = 2


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


def one_line(err: BaseException, limit: int = 160) -> str:
    """Another library's error message as one line for ours: whitespace runs (newlines
    included) collapsed to one space, cut to ``limit`` characters with ``...``."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."

"""Checks for user-supplied hyper-parameters and paths, each failing with one clear ConfigError."""

from __future__ import annotations

import fnmatch
import math
import os
import re
import warnings
from collections.abc import Iterable
from numbers import Integral, Real
from pathlib import Path

from learnprune.errors import ConfigError
from learnprune.files import probe_writable


def real(name: str, value: object) -> float:
    """``value`` as a finite float."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    return number


def positive(name: str, value: object) -> float:
    """A finite number > 0."""
    number = real(name, value)
    if number <= 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")
    return number


def non_negative(name: str, value: object) -> float:
    """A finite number >= 0."""
    number = real(name, value)
    if number < 0:
        raise ConfigError(f"{name} must be >= 0, got {value!r}")
    return number


def fraction(name: str, value: object) -> float:
    """A sparsity-like fraction in [0, 1)."""
    number = real(name, value)
    if not 0.0 <= number < 1.0:
        raise ConfigError(f"{name} must lie in [0, 1), got {value!r}")
    return number


def integer(name: str, value: object, minimum: int = 0, maximum: int | None = None) -> int:
    """A whole number in ``[minimum, maximum]`` (no upper bound when ``maximum`` is None)."""
    if isinstance(value, bool) or not isinstance(value, (Integral, Real)):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    if not isinstance(value, Integral) and (
        not math.isfinite(float(value)) or float(value) != int(value)
    ):
        raise ConfigError(f"{name} must be a whole number, got {value!r}")
    number = int(value)
    if number < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value!r}")
    if maximum is not None and number > maximum:
        raise ConfigError(f"{name} must be <= {maximum}, got {value!r}")
    return number


def choice(name: str, value: object, options: tuple[str, ...]) -> str:
    """One of ``options`` (case-insensitive)."""
    text = str(value).lower()
    if text not in options:
        raise ConfigError(f"{name} must be one of {', '.join(options)}; got {value!r}")
    return text


DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:[0-9]+)?")
"""The devices a run may ask for: ``auto`` (CUDA when available), ``cpu``, ``cuda[:N]``."""


def device(name: str, value: object) -> str:
    """A device name matching :data:`DEVICE_PATTERN` (what ``torch.device`` parses for
    these types; ``cuda:abc`` or ``cuda:-1`` are refused here rather than by torch)."""
    if not isinstance(value, str) or not DEVICE_PATTERN.fullmatch(value.strip().lower()):
        raise ConfigError(f"{name} must be auto, cpu, cuda or cuda:N, got {value!r}")
    return value.strip().lower()


def output_directory(flag: str, path: str | os.PathLike[str]) -> Path:
    """``path`` as a directory learnprune can create (or write into, when it exists).

    Checked by doing it: every missing directory on the way is created and removed again
    (the nearest existing one gets a temporary directory, removed again), so a path under
    a regular file, under ``/proc``, on a read-only or full file system, too long or with a
    NUL byte fails here, before anything slow happens, and nothing is left behind.
    """
    target = Path(path)
    shown = repr(str(target)) if "\x00" in str(target) else str(target)
    created: list[Path] = []
    try:
        missing = []
        existing = target
        while not existing.exists():
            missing.append(existing)
            existing = existing.parent
        if not existing.is_dir():
            where = "is" if existing == target else f"is under {existing}, which is"
            raise ConfigError(f"{flag} {shown} {where} a file, not a directory")
        for directory in reversed(missing):
            os.mkdir(directory)
            created.append(directory)
        if not missing:
            probe_writable(target)
    except ConfigError:
        raise
    except (OSError, ValueError) as err:  # ValueError: a NUL byte in the path
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ConfigError(f"{flag} {shown}: cannot create a directory there ({reason})") from err
    finally:
        for directory in reversed(created):
            directory.rmdir()
    return target


class UnmatchedPatternWarning(UserWarning):
    """A name pattern (``exclude``) that matches nothing in the model: likely a typo, or a
    recipe written for another model."""


def patterns(name: str, value: object) -> list[str]:
    """``fnmatch`` name patterns: one string or a list of strings."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(p, str) for p in value):
        return list(value)
    raise ConfigError(f"{name} must be a name pattern or a list of them, got {value!r:.60}")


def warn_unmatched(name: str, given: Iterable[str], names: Iterable[str]) -> list[str]:
    """Warn (:class:`UnmatchedPatternWarning`) about each pattern of ``given`` that matches
    none of ``names``; return those patterns."""
    names = list(names)
    unmatched = [p for p in given if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unmatched:
        warnings.warn(
            f"learnprune: {name} pattern{'s' if len(unmatched) > 1 else ''} "
            f"{', '.join(map(repr, unmatched))} match{'' if len(unmatched) > 1 else 'es'} no "
            "module or parameter name of the model; nothing is left dense by "
            f"{'them' if len(unmatched) > 1 else 'it'}",
            UnmatchedPatternWarning,
            stacklevel=3,
        )
    return unmatched

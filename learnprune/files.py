"""Files written atomically, with the permissions the user's umask gives.

Every file learnprune writes goes to a temporary name in the same directory first
(``.<name>.<random>.tmp``) and is then renamed over its target (``os.replace`` is atomic on
POSIX), so an interrupted write leaves either the old file or the complete new one, never a
half-written file under the final name. A process killed mid-write leaves only the
temporary file, which :func:`is_temporary_leftover` recognises so the next start can remove
it. The temporary file is created with mode ``0o666 & ~umask``, like any file the user
creates (``tempfile.mkstemp`` would make every file ``0o600`` whatever the umask).

This is the bottom layer of writing: no torch, no JSON (strict JSON is
:func:`learnprune.checkpoint.json_text`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

__all__ = [
    "atomic_write_bytes",
    "atomic_write_stream",
    "atomic_write_text",
    "is_temporary_leftover",
    "probe_writable",
    "replace_with",
    "temporary_file",
]


PROBE_PREFIX = ".learnprune-check-"
"""Name prefix of the empty file :func:`probe_writable` creates and removes at once."""


def is_temporary_leftover(name: str, targets: tuple[str, ...]) -> bool:
    """Whether ``name`` is the temporary file of an atomic write of one of ``targets``, or
    a writability probe (:func:`probe_writable`): left behind only by a process killed
    while writing it."""
    if not name.endswith(".tmp"):
        return False
    return name.startswith(PROBE_PREFIX) or any(name.startswith(f".{t}.") for t in targets)


def probe_writable(directory: Path) -> None:
    """Create and remove an empty file in ``directory`` (raises ``OSError`` where files
    cannot be created: read-only, no permission, ``/proc``). A kill in between leaves a
    file :func:`is_temporary_leftover` recognises."""
    probe = directory / f"{PROBE_PREFIX}{secrets.token_hex(6)}.tmp"
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    probe.unlink()


def _create_temporary(path: Path) -> tuple[Path, int]:
    """A new, empty ``.<name>.<random>.tmp`` beside ``path`` (mode ``0o666 & ~umask``) and
    its open write-only descriptor."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return temporary, os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:  # 48 random bits taken: draw again
            continue


@contextlib.contextmanager
def temporary_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """An empty temporary file beside ``path`` for a writer that wants a file name (the
    ONNX exporter); it is removed when the block ends unless :func:`replace_with` has moved
    it onto ``path`` by then."""
    temporary, handle = _create_temporary(Path(path))
    os.close(handle)
    try:
        yield temporary
    finally:
        temporary.unlink(missing_ok=True)


def replace_with(temporary: Path, path: str | os.PathLike[str]) -> None:
    """Flush ``temporary`` to disk and rename it over ``path``."""
    with open(temporary, "rb+") as stream:
        os.fsync(stream.fileno())
    os.replace(temporary, path)


def atomic_write_stream(
    path: str | os.PathLike[str], write_content: Callable[[IO[bytes]], None]
) -> None:
    """Write ``path`` with ``write_content(stream)`` through a temporary file and a rename
    (for contents too large to hold in memory, or written by a library into a stream)."""
    path = Path(path)
    temporary, handle = _create_temporary(path)
    try:
        with os.fdopen(handle, "wb") as stream:
            write_content(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    atomic_write_stream(path, lambda stream: stream.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file and a rename."""
    atomic_write_bytes(path, text.encode())

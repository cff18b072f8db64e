"""Claiming a run directory: one learnprune process at a time writes into it.

A run (``train``, ``grow``) claims its directory before anything slow happens and holds the
claim until it ends:

* a new directory of a default name is created exclusively (``os.mkdir``); a name already
  taken (another run started in the same second) gets the next suffix ``-2``, ``-3``, …;
* every claimed directory holds an exclusive ``flock`` on its lock file
  :data:`LOCK_FILE`, so a second run into the same directory (or a second ``--resume`` of
  it) is refused at once instead of interleaving its files with the first run's. The kernel
  drops the lock when its process dies, even by ``kill -9``: a lock file left behind by a
  killed run blocks nothing and is reused.

Why a lock and not only an exclusive ``mkdir``: an explicit ``--out`` may name an existing
empty directory, and ``--resume`` continues in an existing directory; both must exclude a
concurrent run too. Why ``flock`` and not a lock file created with ``O_EXCL``: a killed
process cannot remove its file, and a stale file would block forever (or need a guess from a
pid that may have been reused).

On release the lock file is removed, and so is every directory the claim created that is
still empty (a run that failed before writing anything leaves nothing behind).
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path

from learnprune.errors import ConfigError
from learnprune.files import is_temporary_leftover

LOCK_FILE = ".learnprune.lock"


@dataclass
class ClaimedDirectory:
    """A directory this process holds the lock of; :meth:`release` when the run ends."""

    path: Path
    created: list[Path] = field(default_factory=list)
    """The directories the claim made (``path`` and missing parents), outermost first."""
    descriptor: int | None = None

    def foreign_files(self, own: tuple[str, ...]) -> list[str]:
        """:func:`foreign_files` of the claimed directory."""
        return foreign_files(self.path, own)

    def remove_leftovers(self, own: tuple[str, ...]) -> list[str]:
        """Remove the temporary files that a process killed while writing one of ``own``
        left behind; their names."""
        removed = []
        for entry in self.path.iterdir():
            if is_temporary_leftover(entry.name, own) and entry.is_file():
                entry.unlink(missing_ok=True)
                removed.append(entry.name)
        return sorted(removed)

    def release(self) -> None:
        """Remove the lock file, drop the lock, and remove the directories the claim created
        if they are empty. Safe to call twice."""
        if self.descriptor is not None:
            (self.path / LOCK_FILE).unlink(missing_ok=True)  # while still holding the lock
            os.close(self.descriptor)
            self.descriptor = None
        for directory in reversed(self.created):
            try:
                directory.rmdir()
            except OSError:  # holds files (the run's results), or is gone
                break
        self.created = []


def foreign_files(directory: Path, own: tuple[str, ...]) -> list[str]:
    """Names in ``directory`` other than the lock file and temporary leftovers of the files
    ``own`` (learnprune's own files of this kind of directory): none means a killed run
    left nothing of itself there but what the next start removes."""
    return sorted(
        entry.name
        for entry in Path(directory).iterdir()
        if entry.name != LOCK_FILE and not is_temporary_leftover(entry.name, own)
    )


def claim(path: str | Path, *, create: bool = True) -> ClaimedDirectory:
    """Claim the directory ``path`` (created with its parents if missing and ``create``).

    Raises:
        ConfigError: ``path`` is a file, cannot be created, or another run holds it.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{path} is a file, not a directory; choose another --out")
    created = _make_directories(path) if create else []
    claimed = ClaimedDirectory(path, created)
    try:
        claimed.descriptor = _lock(path)
    except BaseException:
        claimed.release()
        raise
    return claimed


def claim_new(base: str | Path) -> ClaimedDirectory:
    """Create and claim a directory that did not exist: ``base``, or the first free of
    ``base-2``, ``base-3``, … (each tried with an exclusive ``mkdir``)."""
    base = Path(base)
    created = _make_directories(base.parent)
    candidate, suffix = base, 1
    while True:
        try:
            os.mkdir(candidate)
            break
        except FileExistsError:
            suffix += 1
            candidate = base.with_name(f"{base.name}-{suffix}")
        except OSError as err:
            ClaimedDirectory(base.parent, created).release()
            raise _cannot_create(candidate, err) from err
    claimed = ClaimedDirectory(candidate, [*created, candidate])
    try:
        claimed.descriptor = _lock(candidate)
    except BaseException:
        claimed.release()
        raise
    return claimed


def _make_directories(path: Path) -> list[Path]:
    """Create ``path`` and its missing parents; the ones created, outermost first."""
    missing = []
    for directory in (path, *path.parents):
        if directory.is_dir():
            break
        missing.append(directory)
    created: list[Path] = []
    for directory in reversed(missing):
        try:
            os.mkdir(directory)
        except FileExistsError:  # made meanwhile by someone else: not ours to remove
            continue
        except OSError as err:
            ClaimedDirectory(path, created).release()
            raise _cannot_create(path, err) from err
        created.append(directory)
    return created


def _cannot_create(path: Path, err: OSError) -> ConfigError:
    return ConfigError(f"cannot create the directory {path}: {err.strerror or err}")


def _lock(directory: Path) -> int:
    """An open descriptor of ``directory/LOCK_FILE`` holding its exclusive ``flock``.

    The lock file of a finished run is removed while its lock is held, so a descriptor
    opened just before may lock a file that is gone: the lock counts only if the name
    still leads to the locked file (same inode), else try again."""
    lock_path = directory / LOCK_FILE
    while True:
        try:
            descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise ConfigError(
                f"cannot write into the directory {directory}: {err.strerror or err}"
            ) from err
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(descriptor, 32).decode(errors="replace").strip()
            os.close(descriptor)
            raise ConfigError(
                f"another learnprune run{f' (process {holder})' if holder else ''} is "
                f"writing into {directory}; wait for it to end or choose another --out"
            ) from None
        try:
            same = os.stat(lock_path).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(descriptor, 0)
            os.write(descriptor, f"{os.getpid()}\n".encode())
            return descriptor
        os.close(descriptor)

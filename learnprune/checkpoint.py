"""Checkpoints and run-directory files, written atomically and read defensively.

Every file a run writes goes to a temporary name in the same directory first and is then
renamed over the target (``os.replace`` is atomic on POSIX), so an interrupted write never
leaves a half-written checkpoint that looks valid; a process killed mid-write leaves only
the temporary file (``.<name>.<random>.tmp``), which :func:`is_temporary_leftover`
recognises so the next start can remove it.

Checkpoints and weights are written with ``torch.save`` (a zip archive holding a CRC-32
checksum of every record) and read with ``torch.load(weights_only=True)``: they hold
tensors, numbers, strings and containers only, never pickled code. ``torch.load`` does not
check the checksums, so :func:`verify_checksums` does first: a file changed after it was
written (a flipped byte keeps its size) is refused instead of loaded as wrong weights.
"""

from __future__ import annotations

import io
import json
import os
import random
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from learnprune.errors import CheckpointError

FORMAT = "learnprune-checkpoint"
VERSION = 1


def is_temporary_leftover(name: str, targets: tuple[str, ...]) -> bool:
    """Whether ``name`` is the temporary file of an :func:`atomic_write_bytes` of one of
    ``targets`` (left behind only by a process killed while writing)."""
    return name.endswith(".tmp") and any(name.startswith(f".{target}.") for target in targets)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def save_torch(path: Path, value: Any) -> None:
    """``torch.save`` (with its CRC-32 checksums, even where a user turned them off)
    through :func:`atomic_write_bytes`."""
    buffer = io.BytesIO()
    crc32_before = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(True)
    try:
        torch.save(value, buffer)
    finally:
        torch.serialization.set_crc32_options(crc32_before)
    atomic_write_bytes(path, buffer.getvalue())


def verify_checksums(path: Path) -> None:
    """Refuse (``CheckpointError``) a ``torch.save`` file whose records do not match the
    CRC-32 checksums stored beside them in its zip archive. Files in torch's legacy format
    (not a zip) and archives written without checksums (every one stored as 0) carry none
    to check and pass."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return  # torch.load tells what it is
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
            if all(record.CRC == 0 for record in records):
                return
            for record in records:
                with archive.open(record) as stream:
                    while stream.read(1 << 22):
                        pass
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError) as err:
        raise CheckpointError(
            f"{path} is corrupt: {str(err).splitlines()[0] if str(err) else 'unreadable'} "
            "(its content no longer matches the checksums written with it)"
        ) from err


def rng_state() -> dict[str, Any]:
    """The states of torch's, numpy's and Python's global generators, as plain data."""
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "python": {
            "version": python_state[0],
            "state": list(python_state[1]),
            "gauss": python_state[2],
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, payload: Mapping[str, Any]) -> None:
    """Write a training checkpoint (``payload`` plus the format marker) atomically."""
    save_torch(path, {"format": FORMAT, "version": VERSION, **payload})


def load_checkpoint(path: Path, *, expect: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read and check a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the file.
        expect: fields that must match (e.g. ``{"model": "lenet300", "method": "gmp"}``).

    Raises:
        CheckpointError: missing, unreadable, truncated, foreign or mismatched.
    """
    payload = _load(Path(path), "checkpoint")
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a learnprune checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {payload.get('version')}; "
            f"this learnprune reads version {VERSION}"
        )
    for key, value in (expect or {}).items():
        if payload.get(key) != value:
            raise CheckpointError(
                f"{path} belongs to a run with {key}={payload.get(key)!r}, not {value!r}"
            )
    return payload


def _load(path: Path, what: str) -> Any:
    """``torch.load(weights_only=True)`` with one clear error for every way it can fail."""
    if not path.is_file():
        raise CheckpointError(f"no {what} at {path}")
    verify_checksums(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first_line = str(err).splitlines()[0] if str(err) else "unreadable"
        raise CheckpointError(
            f"{path} is corrupt or not a learnprune {what} ({type(err).__name__}: {first_line})"
        ) from err


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A plain ``state_dict`` file (``model.pt``), read with ``weights_only=True``."""
    state = _load(Path(path), "weights file")
    if isinstance(state, dict) and state.get("format") == FORMAT:
        state = state.get("model_state", {})
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state_dict of tensors")
    return state

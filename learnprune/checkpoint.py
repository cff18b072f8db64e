"""Checkpoints and run-directory files, written atomically and read defensively.

Every file a run writes goes to a temporary name in the same directory first and is then
renamed over the target (``os.replace`` is atomic on POSIX), so an interrupted write never
leaves a half-written checkpoint that looks valid. Checkpoints are read with
``torch.load(weights_only=True)``: they hold tensors, numbers, strings and containers only,
never pickled code.
"""

from __future__ import annotations

import io
import json
import os
import random
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from learnprune.errors import CheckpointError

FORMAT = "learnprune-checkpoint"
VERSION = 1


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


def read_json(path: Path) -> dict[str, Any]:
    """A run directory's JSON file (``config.json``, ``final.json``, ``bench.json``): one
    JSON object, read as UTF-8.

    Raises:
        CheckpointError: missing, unreadable, not UTF-8, not JSON, or not a JSON object.
    """
    return _json_object(_read_text(Path(path)), f"{path}")


def read_json_lines(path: Path) -> list[dict[str, Any]]:
    """``metrics.jsonl``: one JSON object per non-empty line; a missing file has none.

    Raises:
        CheckpointError: unreadable, not UTF-8, or a line that is not a JSON object.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = _read_text(path).splitlines()
    return [
        _json_object(line, f"{path} line {number}")
        for number, line in enumerate(lines, start=1)
        if line.strip()
    ]


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError as err:
        raise CheckpointError(f"no {path.name} at {path}") from err
    except OSError as err:
        raise CheckpointError(f"{path} cannot be read ({err.strerror or err})") from err
    except UnicodeDecodeError as err:
        raise CheckpointError(
            f"{path} is corrupt: not UTF-8 text (byte 0x{err.object[err.start]:02x} at "
            f"offset {err.start})"
        ) from err


def _json_object(text: str, where: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise CheckpointError(
            f"{where} is corrupt: not JSON (line {err.lineno}, column {err.colno}: {err.msg})"
        ) from err
    if not isinstance(value, dict):
        raise CheckpointError(f"{where} is corrupt: expected a JSON object, got {value!r:.40}")
    return value


def save_torch(path: Path, value: Any) -> None:
    """``torch.save`` through :func:`atomic_write_bytes`."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    atomic_write_bytes(path, buffer.getvalue())


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

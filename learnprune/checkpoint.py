"""Checkpoints and run-directory files, written atomically and read defensively.

Every file a run writes goes through :mod:`learnprune.files` (a temporary name in the same
directory, then ``os.replace``), so an interrupted write never leaves a half-written
checkpoint that looks valid, and files get the permissions ``0o666 & ~umask`` like any file
the user creates. Its :func:`atomic_write_bytes`, :func:`atomic_write_text` and
:func:`is_temporary_leftover` are importable from here too.

JSON is written strictly (no ``NaN`` or ``Infinity``, which are not JSON): a non-finite
number becomes ``null`` and the object holding it says why (:func:`json_text`).

Checkpoints and weights are written with ``torch.save`` (a zip archive holding a CRC-32
checksum of every record) and read with ``torch.load(weights_only=True)``: they hold
tensors, numbers, strings and containers only, never pickled code. ``torch.load`` does not
check the checksums, so :func:`verify_checksums` does first: a file changed after it was
written (a flipped byte keeps its size) is refused instead of loaded as wrong weights.
"""

from __future__ import annotations

import io
import json
import math
import random
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from learnprune.errors import CheckpointError, relayed

# atomic writing lives in the bottom layer; these names stay importable from here
from learnprune.files import atomic_write_bytes as atomic_write_bytes
from learnprune.files import atomic_write_text as atomic_write_text
from learnprune.files import is_temporary_leftover as is_temporary_leftover

FORMAT = "learnprune-checkpoint"
VERSION = 1
NON_FINITE = "non_finite"
"""The key under which a JSON object lists the non-finite numbers written as ``null``."""


def atomic_write_json(path: Path, value: Any) -> None:
    """``value`` as indented JSON (see :func:`json_text`), written atomically."""
    atomic_write_text(path, json_text(value, indent=2) + "\n")


def json_text(value: Any, *, indent: int | None = None) -> str:
    """``value`` as strict JSON. Each non-finite float (NaN, ±inf: not JSON) is written as
    ``null``, and the innermost object holding it gets an entry ``"non_finite": {key:
    "inf"}`` naming it and its value; one outside any object is refused (``ValueError``).
    Numpy numbers, tensors, paths and tuples become numbers, lists and strings."""
    return json.dumps(_strict_json(value, None, ""), indent=indent, allow_nan=False)


def _strict_json(value: Any, notes: dict[str, str] | None, where: str) -> Any:
    """``value`` with non-finite floats replaced by ``None`` and noted in ``notes`` under
    their place ``where`` (``None``: no object to note them in)."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        if notes is None:
            raise ValueError(f"cannot write the non-finite number {value} to JSON")
        notes[where] = str(value)
        return None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        own: dict[str, str] = {}
        result = {key: _strict_json(item, own, str(key)) for key, item in value.items()}
        if own:
            result[NON_FINITE] = {**result.get(NON_FINITE, {}), **own}
        return result
    if isinstance(value, list):
        return [_strict_json(item, notes, f"{where}[{i}]") for i, item in enumerate(value)]
    return _strict_json(_json_default(value), notes, where)


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
    return _restore_non_finite(value)


_NOTED_PLACE = re.compile(r"(?P<key>.*?)(?P<indices>(?:\[\d+\])*)")


def _restore_non_finite(value: Any) -> Any:
    """The inverse of :func:`json_text`'s notes: each ``null`` an object's ``"non_finite"``
    entry names (``"compression"``, ``"timings[2]"``) is its float again (``inf``, ``nan``)
    and the entry goes, so what was written is what is read."""
    if isinstance(value, list):
        return [_restore_non_finite(item) for item in value]
    if not isinstance(value, dict):
        return value
    restored = {key: _restore_non_finite(item) for key, item in value.items()}
    notes = restored.get(NON_FINITE)
    if not isinstance(notes, dict):
        return restored
    for place, text in notes.items():
        match = _NOTED_PLACE.fullmatch(str(place))
        indices = [int(i) for i in re.findall(r"\d+", match["indices"])] if match else []
        holder: Any = restored
        key: Any = match["key"] if match else place
        for index in indices:
            inner = holder.get(key) if isinstance(holder, dict) else holder[key]
            if not isinstance(inner, list) or index >= len(inner):
                break
            holder, key = inner, index
        else:
            try:
                number = float(text)
            except (TypeError, ValueError):
                continue
            present = key in holder if isinstance(holder, dict) else True
            if present and holder[key] is None:
                holder[key] = number
    del restored[NON_FINITE]
    return restored


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


_DOS_DIRECTORY = 0x10
"""The MS-DOS "directory" bit of a zip record's external attributes."""
_ENCRYPTED = 0x1
"""The "encrypted" bit of a zip record's general-purpose flags."""


def _foreign_marking(record: zipfile.ZipInfo) -> str:
    """What a record of a ``torch.save`` archive is marked as that no ``torch.save`` marks
    it as, outside what the CRC-32 covers: ``"a directory"`` (torch's reader then loads
    its tensor as zeros or uninitialised memory), ``"encrypted"``; ``""`` if nothing."""
    if record.is_dir() or record.external_attr & _DOS_DIRECTORY:
        return "a directory"
    if record.flag_bits & _ENCRYPTED:
        return "encrypted"
    return ""


def verify_checksums(path: Path) -> None:
    """Refuse (``CheckpointError``) a ``torch.save`` file whose records do not match the
    CRC-32 checksums stored beside them in its zip archive. Files in torch's legacy format
    (not a zip) and archives written without checksums (every one stored as 0) carry none
    to check and pass. A record marked as a directory or as encrypted (which no
    ``torch.save`` writes, and which the checksums do not cover) is refused too."""
    path = Path(path)
    try:
        # is_zipfile itself raises BadZipFile for a changed zip64 end record ("span
        # multiple disks"), so it stands inside the try
        if not zipfile.is_zipfile(path):
            return  # torch.load tells what it is
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
            if all(record.CRC == 0 for record in records):
                return
            for record in records:
                marked = _foreign_marking(record)
                if marked:
                    raise CheckpointError(
                        f"{path} is corrupt: its record {record.filename} is marked as "
                        f"{marked}, which torch.save never writes"
                    )
                with archive.open(record) as stream:
                    while stream.read(1 << 22):
                        pass
    except (
        zipfile.BadZipFile,
        EOFError,
        OSError,
        ValueError,
        NotImplementedError,
    ) as err:
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
        raise CheckpointError(
            f"{path} is corrupt or not a learnprune {what} ({relayed(err)})"
        ) from err


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A plain ``state_dict`` file (``model.pt``), read with ``weights_only=True``."""
    state = _load(Path(path), "weights file")
    if isinstance(state, dict) and state.get("format") == FORMAT:
        state = state.get("model_state", {})
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state_dict of tensors")
    return state

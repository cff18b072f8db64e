"""Run directories under concurrent runs, kills and corruption (issue 12, points 3.1, 3.2,
3.4 and 3.6): one run at a time per directory, every state a kill leaves resumable or
restartable, a changed checkpoint or model refused, strict JSON, the umask honoured.

Runs through the Python API train LeNet-300-100 for an epoch on a small synthetic data set
(well under a second); the command-line ones use the real MNIST with a 200-example subset.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import call_cli

from learnprune import checkpoint
from learnprune.checkpoint import load_checkpoint, save_torch
from learnprune.config import RunConfig, TrainConfig
from learnprune.data import Dataset
from learnprune.errors import CheckpointError
from learnprune.runner import run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def synthetic() -> Dataset:
    """256 training and 64 test 1x28x28 images: a prototype per class plus noise."""
    generator = torch.Generator().manual_seed(0)
    prototypes = torch.randn(10, 1, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (320,), generator=generator)
    images = prototypes[labels] + 2.0 * torch.randn(320, 1, 28, 28, generator=generator)
    return Dataset("mnist", images[:256], labels[:256], images[256:], labels[256:], 10)


def config_of(method: str = "dense", epochs: int = 1) -> RunConfig:
    options = {"nu": 1.0, "lam": 0.05} if method == "dessilbi" else {}
    return RunConfig(
        model="lenet300",
        data="mnist",
        method=method,
        method_options=options,
        train=TrainConfig(epochs=epochs, batch_size=64, lr=0.05),
    )


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("learnprune: error:"), err
    return lines[0]


def flip_middle_bytes(path: Path, count: int = 8) -> None:
    """Invert ``count`` bytes in the middle of ``path``; its size stays."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ------------------------------------------------------------------------------------------
# 3.2 A checkpoint or model changed after it was written is refused
# ------------------------------------------------------------------------------------------


def test_same_size_corruption_of_the_checkpoint_is_refused_on_resume(tmp_path, synthetic):
    out = tmp_path / "run"
    run(config_of(epochs=2), out, quiet=True, data=synthetic)
    for done in ("final.json", "model.pt"):
        (out / done).unlink()
    size = (out / "checkpoint.pt").stat().st_size
    flip_middle_bytes(out / "checkpoint.pt")
    assert (out / "checkpoint.pt").stat().st_size == size
    before = {name: (out / name).read_bytes() for name in names(out)}
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt is corrupt: Bad CRC-32") as info:
        run(config_of(epochs=2), out, resume=True, quiet=True, data=synthetic)
    assert "\n" not in str(info.value)
    assert {name: (out / name).read_bytes() for name in names(out)} == before


def test_same_size_corruption_of_model_pt_is_refused_by_eval(tmp_path, synthetic):
    out = tmp_path / "run"
    run(config_of(), out, quiet=True, data=synthetic)
    flip_middle_bytes(out / "model.pt")
    code, stdout, err = call_cli("eval", str(out))
    assert code == 2 and stdout == ""
    assert f"{out / 'model.pt'} is corrupt" in one_error_line(err)


def test_checksums_are_written_even_where_torch_was_told_not_to(tmp_path):
    path = tmp_path / "model.pt"
    torch.serialization.set_crc32_options(False)
    try:
        save_torch(path, {"w": torch.arange(4096.0)})
    finally:
        torch.serialization.set_crc32_options(True)
    assert checkpoint.load_state_dict_file(path)["w"][4095] == 4095.0
    flip_middle_bytes(path, count=1)
    with pytest.raises(CheckpointError, match="corrupt"):
        checkpoint.load_state_dict_file(path)


def test_files_without_checksums_still_load(tmp_path):
    """torch's legacy format carries no checksum: nothing to verify, loaded as before."""
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(checkpoint.load_state_dict_file(path)["w"], torch.ones(3))


def test_an_intact_checkpoint_passes_the_check(tmp_path):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save_checkpoint(path, {"epoch": 3, "model_state": {"w": torch.ones(2)}})
    checkpoint.verify_checksums(path)
    assert load_checkpoint(path)["epoch"] == 3

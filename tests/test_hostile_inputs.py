"""Hostile inputs found by testing from outside after the fixes for issue 12, section 3:
corruptions the checksums do not cover, and the like. Each test failed before its fix."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch
from conftest import call_cli

from learnprune import checkpoint, run_directory
from learnprune.errors import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")

CENTRAL_RECORD = b"PK\x01\x02"
"""The signature of a record in a zip archive's central directory."""
FLAGS_AT, EXTERNAL_ATTRIBUTES_AT = 8, 38
"""Offsets of the general-purpose flags and the external attributes in such a record."""


def central_record(data: bytes, name: str) -> int:
    """Where the central-directory record of the member ``name`` starts in ``data``."""
    start = data.find(CENTRAL_RECORD)
    while start >= 0:
        (name_length,) = struct.unpack("<H", data[start + 28 : start + 30])
        if data[start + 46 : start + 46 + name_length].decode() == name:
            return start
        start = data.find(CENTRAL_RECORD, start + 1)
    raise AssertionError(f"no record {name}")


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    checkpoint.save_torch(path, {"w": torch.arange(16.0), "b": torch.ones(3)})
    return path


@pytest.mark.parametrize(
    ("offset", "bits", "what"),
    [
        # torch's reader took data/0 for a directory: "w" loaded as zeros or garbage
        (EXTERNAL_ATTRIBUTES_AT, 0xFF, "a directory"),
        (EXTERNAL_ATTRIBUTES_AT, 0x10, "a directory"),
        # zipfile's "is encrypted" RuntimeError escaped as a traceback
        (FLAGS_AT, 0x01, "encrypted"),
    ],
)
def test_a_flipped_bit_the_checksums_do_not_cover_is_refused(weights, offset, bits, what):
    data = bytearray(weights.read_bytes())
    data[central_record(bytes(data), "archive/data/0") + offset] ^= bits
    weights.write_bytes(bytes(data))
    expected = rf"model\.pt is corrupt: its record archive/data/0 is marked as {what}"
    with pytest.raises(CheckpointError, match=expected):
        checkpoint.load_state_dict_file(weights)


def test_the_intact_file_still_loads(weights):
    assert torch.equal(checkpoint.load_state_dict_file(weights)["w"], torch.arange(16.0))


ZIP64_LOCATOR = b"PK\x06\x07"
"""The signature of the zip64 end-of-central-directory locator torch.save writes."""


def test_a_changed_disk_number_of_the_zip64_end_record_is_refused(weights):
    """zipfile.is_zipfile raised "zipfiles that span multiple disks" as a traceback."""
    data = bytearray(weights.read_bytes())
    data[data.rfind(ZIP64_LOCATOR) + 4] ^= 0x01  # the disk holding the zip64 end record
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.pt is corrupt: zipfiles that span"):
        checkpoint.load_state_dict_file(weights)


def test_resume_through_the_cli_of_a_run_killed_writing_its_first_config(tmp_path):
    """The CLI read config.json before claiming the directory and said only "not a
    learnprune run directory", not that the run can be started again into it."""
    out = tmp_path / "run"
    out.mkdir()
    (out / ".config.json.3f9a0c1d2e4b.tmp").write_text('{"model": "lenet3')  # cut short
    (out / run_directory.LOCK_FILE).write_text("12345\n")  # the killed process's lock file
    code, stdout, err = call_cli("train", "--resume", str(out))
    assert code == 2 and stdout == ""
    assert err.strip().splitlines() == [
        f"learnprune: error: {out} is not a learnprune run directory (no config.json); it "
        f"holds nothing of a run: start it again with --out {out}"
    ]


def test_eval_of_an_empty_directory_does_not_speak_of_restarting_a_run(tmp_path):
    code, _stdout, err = call_cli("eval", str(tmp_path))
    assert code == 2
    assert err.strip() == (
        f"learnprune: error: {tmp_path} is not a learnprune run directory (no config.json)"
    )


def test_a_writability_probe_a_kill_left_blocks_neither_a_run_nor_an_export(tmp_path) -> None:
    """`--out` of an existing directory is probed by creating and removing a file in it; a
    kill in between left the probe, which then made `train` and `export` refuse the
    directory as holding someone else's files."""
    from learnprune.export import export
    from learnprune.files import PROBE_PREFIX
    from learnprune.validation import output_directory

    out = tmp_path / "out"
    out.mkdir()
    output_directory("--out", out)
    assert list(out.iterdir()) == []  # the probe leaves nothing
    probe = out / f"{PROBE_PREFIX}0123456789ab.tmp"
    probe.write_bytes(b"")
    claimed = run_directory.claim(out)
    try:
        assert claimed.foreign_files(("config.json",)) == []
        assert claimed.remove_leftovers(("config.json",)) == [probe.name]
    finally:
        claimed.release()
    probe.write_bytes(b"")
    export(torch.nn.Linear(3, 2), out, formats=("safetensors",))
    assert not probe.exists() and (out / "model.json").is_file()


def test_output_into_a_closed_pipe_ends_quietly() -> None:
    """`learnprune list | head -1`: the reader is gone before learnprune writes; that was
    a BrokenPipeError traceback."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone
    try:
        done = subprocess.run(
            [sys.executable, "-m", "learnprune", "list"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr
    assert done.stderr == ""

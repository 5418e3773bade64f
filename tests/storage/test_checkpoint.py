"""Checkpoint files: format, verification, fallback to an older checkpoint, pruning and crash atomicity."""

from __future__ import annotations

import errno
import logging
import struct
from pathlib import Path

import pytest

from sidecar.storage import (
    CheckpointError,
    FileOps,
    StorageIOError,
    checkpoint_name,
    list_checkpoints,
    load_newest_valid_checkpoint,
    prune_checkpoints,
    read_checkpoint,
    remove_temporary_checkpoints,
    verify_checkpoint,
    write_checkpoint,
)

from .damage import flip_byte, set_byte, truncate
from .fakes import FaultyFileOps, PowerLossFileOps, SimulatedPowerLossError
from .test_framing import crc32c_reference

ROOT = bytes.fromhex("4b363db94e286120d76eb905340fdd4e54bfe9f06bf33ff6cf5ad27f511bfe95")
FILEOPS = FileOps()


def body_for(sequence: int) -> list[bytes]:
    return [f"state at {sequence}|".encode(), b"x" * (sequence % 7), b"", b"end"]


def write(directory: Path, sequence: int, **options) -> Path:
    return write_checkpoint(
        directory, options.pop("fileops", FILEOPS), sequence, ROOT, body_for(sequence), **options
    )


def test_layout_field_by_field(tmp_path: Path) -> None:
    path = write(tmp_path, 1234, created_unix=1_700_000_000.5)
    assert path == tmp_path / "checkpoint-00000000000000001234.ckpt" == tmp_path / checkpoint_name(1234)
    data = path.read_bytes()
    body = b"".join(body_for(1234))
    assert data[:8] == b"SIDECKPT" and data[8] == 1
    assert struct.unpack_from("<QQ", data, 9) == (1234, 1_700_000_000_500_000_000)
    assert data[25:57] == ROOT
    assert data[57 : 57 + len(body)] == body
    length, crc = struct.unpack_from("<QI", data, 57 + len(body))
    assert length == len(body) and len(data) == 57 + len(body) + 12
    assert crc == crc32c_reference(data[:-4])
    assert (path.stat().st_mode & 0o777) == 0o600


def test_round_trip_of_a_large_streamed_body(tmp_path: Path) -> None:
    chunks = (bytes([n % 251]) * 65_537 for n in range(100))  # ~6.5 MB, never joined by the writer
    path = write_checkpoint(tmp_path / "new" / "dir", FILEOPS, 77, ROOT, chunks)
    loaded = read_checkpoint(path, FILEOPS)
    assert loaded.sequence == 77 and loaded.genesis_validators_root == ROOT
    assert loaded.body == b"".join(bytes([n % 251]) * 65_537 for n in range(100))
    assert loaded.created_unix > 1_600_000_000
    assert ((tmp_path / "new" / "dir").stat().st_mode & 0o777) == 0o700


def test_write_validates_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        write_checkpoint(tmp_path, FILEOPS, 1, b"short", [])
    with pytest.raises(ValueError, match=">= 0"):
        write_checkpoint(tmp_path, FILEOPS, -1, ROOT, [])


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda p: flip_byte(p, 60), "checksum mismatch"),
        (lambda p: flip_byte(p, 30), "checksum mismatch"),  # inside the root
        (lambda p: flip_byte(p, p.stat().st_size - 1), "checksum mismatch"),
        (lambda p: truncate(p, p.stat().st_size - 5), "truncated or extended"),
        (lambda p: p.write_bytes(p.read_bytes() + b"junk"), "truncated or extended"),
        (lambda p: truncate(p, 40), "shorter than the 69-byte minimum"),
        (lambda p: set_byte(p, 8, 2), "unsupported checkpoint format version 2"),
        (lambda p: set_byte(p, 0, ord("X")), "bad magic"),
        (
            lambda p: p.rename(p.with_name(checkpoint_name(11))),
            "the file name says sequence 11 but the header says 10",
        ),
    ],
    ids=["body", "root", "crc", "truncated", "extended", "tiny", "version", "magic", "renamed"],
)
def test_verify_names_the_file_and_the_problem(tmp_path: Path, damage, problem: str) -> None:
    path = write(tmp_path, 10)
    assert verify_checkpoint(path) is None
    damage(path)
    damaged = list_checkpoints(tmp_path, FILEOPS)[0].path
    message = verify_checkpoint(damaged)
    assert message is not None and problem in message and damaged.name in message
    with pytest.raises(CheckpointError, match=problem):
        read_checkpoint(damaged, FILEOPS)


def test_damaged_newest_checkpoint_falls_back_to_the_older_one(tmp_path: Path) -> None:
    for sequence in (100, 200, 300):
        write(tmp_path, sequence)
    flip_byte(tmp_path / checkpoint_name(300), 70)
    set_byte(tmp_path / checkpoint_name(200), 8, 9)
    loaded, problems = load_newest_valid_checkpoint(tmp_path, FILEOPS)
    assert loaded is not None and loaded.sequence == 100 and loaded.body == b"".join(body_for(100))
    assert len(problems) == 2
    assert checkpoint_name(300) in problems[0] and "checksum mismatch" in problems[0]
    assert checkpoint_name(200) in problems[1] and "unsupported checkpoint format version 9" in problems[1]


def test_no_checkpoint_at_all(tmp_path: Path) -> None:
    assert load_newest_valid_checkpoint(tmp_path / "missing", FILEOPS) == (None, [])
    write(tmp_path, 5)
    truncate(tmp_path / checkpoint_name(5), 3)
    loaded, problems = load_newest_valid_checkpoint(tmp_path, FILEOPS)
    assert loaded is None and len(problems) == 1


def test_unreadable_checkpoint_is_skipped_on_load(tmp_path: Path) -> None:
    write(tmp_path, 1)
    write(tmp_path, 2)
    fileops = FaultyFileOps()
    fileops.fail("pread", errno.EIO, path_contains=checkpoint_name(2))
    loaded, problems = load_newest_valid_checkpoint(tmp_path, fileops)
    assert loaded is not None and loaded.sequence == 1
    assert "cannot be read" in problems[0]


def test_list_is_newest_first_and_ignores_other_files(tmp_path: Path) -> None:
    for sequence in (3, 20, 100):
        write(tmp_path, sequence)
    (tmp_path / "checkpoint-x.ckpt").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hello")
    assert [c.sequence for c in list_checkpoints(tmp_path, FILEOPS)] == [100, 20, 3]


def test_load_removes_temporary_files_left_by_a_crash(tmp_path: Path) -> None:
    write(tmp_path, 1)
    leftover = tmp_path / (checkpoint_name(2) + ".tmp")
    leftover.write_bytes(b"half a checkpoint")
    loaded, problems = load_newest_valid_checkpoint(tmp_path, FILEOPS)
    assert loaded is not None and loaded.sequence == 1 and not problems
    assert not leftover.exists()


def test_prune_keeps_the_newest_valid_ones(tmp_path: Path) -> None:
    for sequence in (10, 20, 30, 40, 50):
        write(tmp_path, sequence)
    flip_byte(tmp_path / checkpoint_name(50), 60)
    kept = prune_checkpoints(tmp_path, FILEOPS, keep=2)
    assert kept == [40, 30]
    # The damaged newest one stays for inspection; everything older than the kept ones is gone.
    assert [c.sequence for c in list_checkpoints(tmp_path, FILEOPS)] == [50, 40, 30]
    assert prune_checkpoints(tmp_path, FILEOPS, keep=5) == [40, 30]
    with pytest.raises(ValueError):
        prune_checkpoints(tmp_path, FILEOPS, keep=0)


def test_prune_raises_on_io_errors_instead_of_deleting_or_reporting_nothing(tmp_path: Path) -> None:
    for sequence in (10, 20, 30):
        write(tmp_path, sequence)
    fileops = FaultyFileOps()
    fileops.fail("pread", errno.EIO)
    with pytest.raises(StorageIOError):
        prune_checkpoints(tmp_path, fileops, keep=1)
    assert len(list_checkpoints(tmp_path, FILEOPS)) == 3


@pytest.mark.parametrize("operation", ["write", "fsync", "rename", "fsync_dir", "create_exclusive"])
def test_failed_write_leaves_no_partial_checkpoint(tmp_path: Path, operation: str) -> None:
    write(tmp_path, 1)
    fileops = FaultyFileOps()
    fileops.fail(operation, errno.ENOSPC, partial=True)
    with pytest.raises(CheckpointError, match="could not write checkpoint") as raised:
        write(tmp_path, 2, fileops=fileops)
    assert isinstance(raised.value.__cause__, StorageIOError)
    names = sorted(p.name for p in tmp_path.iterdir())
    if operation == "fsync_dir":  # renamed, but not known durable: either outcome is a complete file
        assert verify_checkpoint(tmp_path / checkpoint_name(2)) is None
        names.remove(checkpoint_name(2))
    assert names == [checkpoint_name(1)]


def operations_for_one_write(tmp_path: Path) -> int:
    live = tmp_path / "count"
    live.mkdir()
    write(live, 1)
    fileops = PowerLossFileOps(live)
    write(live, 2, fileops=fileops)
    return fileops.operations


def test_a_crash_at_any_point_leaves_the_old_set_or_the_old_set_plus_the_new_one(tmp_path: Path) -> None:
    total = operations_for_one_write(tmp_path)
    assert total >= 6
    outcomes = set()
    for crash_at in range(1, total + 2):
        live, disk = tmp_path / f"live{crash_at}", tmp_path / f"disk{crash_at}"
        live.mkdir()
        write(live, 1)
        write(live, 2)
        fileops = PowerLossFileOps(live, crash_at_operation=crash_at, crash_destination=disk)
        try:
            write(live, 3, fileops=fileops)
        except CheckpointError as error:
            assert isinstance(error.__cause__, SimulatedPowerLossError)
        if not fileops.crashed.is_set():
            fileops.crash(disk)
        loaded, problems = load_newest_valid_checkpoint(disk, FILEOPS)
        final_names = sorted(c.sequence for c in list_checkpoints(disk, FILEOPS))
        assert final_names in ([1, 2], [1, 2, 3]), crash_at
        assert problems == [], crash_at
        assert loaded is not None and loaded.sequence == final_names[-1]
        assert loaded.body == b"".join(body_for(loaded.sequence))
        assert not any(p.name.endswith(".tmp") for p in disk.iterdir())
        outcomes.add(tuple(final_names))
    assert outcomes == {(1, 2), (1, 2, 3)}


class PreadRecorder(FileOps):
    """Plain file operations that remember the size of every pread."""

    def __init__(self) -> None:
        super().__init__()
        self.pread_sizes: list[int] = []

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        self.pread_sizes.append(size)
        return super().pread(fd, size, offset)


def test_verification_streams_the_body_in_bounded_reads(tmp_path: Path) -> None:
    # A 2.5 MiB body: verifying (alone or to prune) reads it in pieces of at most 1 MiB; loading reads it whole.
    for sequence in (1, 2):
        write_checkpoint(tmp_path, FILEOPS, sequence, ROOT, [bytes(5 << 19)])
    for verify in (
        lambda fileops: verify_checkpoint(tmp_path / checkpoint_name(1), fileops),
        lambda fileops: prune_checkpoints(tmp_path, fileops, keep=2),
    ):
        recorder = PreadRecorder()
        verify(recorder)
        assert max(recorder.pread_sizes) == 1 << 20
    recorder = PreadRecorder()
    assert read_checkpoint(tmp_path / checkpoint_name(1), recorder).body == bytes(5 << 19)
    assert max(recorder.pread_sizes) == 5 << 19


def test_prune_logs_what_it_removed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for sequence in (10, 20, 30, 40, 50):
        write(tmp_path, sequence)
    with caplog.at_level(logging.INFO, logger="sidecar.storage"):
        assert prune_checkpoints(tmp_path, FILEOPS, keep=3) == [50, 40, 30]
    assert caplog.messages == ["pruned 2 checkpoints older than sequence 30"]
    with pytest.raises(ValueError, match=r"^keep must be at least 1, got 0$"):
        prune_checkpoints(tmp_path, FILEOPS, keep=0)


def test_a_temporary_file_that_cannot_be_removed_is_named_in_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fileops = FaultyFileOps()
    fileops.fail("fsync", errno.EIO)
    fileops.fail("unlink", errno.EACCES)
    with caplog.at_level(logging.WARNING, logger="sidecar.storage"), pytest.raises(CheckpointError):
        write(tmp_path, 1, fileops=fileops)
    temporary = tmp_path / (checkpoint_name(1) + ".tmp")
    assert caplog.messages == [f"could not remove temporary checkpoint {temporary}"]


class ShortReads(FileOps):
    """pread returns at most 1000 bytes, as it may; or nothing in ``vanished`` (a file cut short while read)."""

    def __init__(self, vanished: range | None = None) -> None:
        super().__init__()
        self.vanished = vanished or range(0)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        if offset in self.vanished:
            return b""
        return super().pread(fd, min(size, 1000), offset)


def test_read_values_and_short_reads(tmp_path: Path) -> None:
    # Sequence 0 is a valid checkpoint (nothing applied yet).
    body = b"".join(body_for(0)) + bytes(5000)
    path = write_checkpoint(tmp_path, FILEOPS, 0, ROOT, [body], created_unix=1_700_000_000.5)
    for fileops in (FILEOPS, ShortReads()):
        loaded = read_checkpoint(path, fileops)
        assert (loaded.path, loaded.sequence, loaded.genesis_validators_root) == (path, 0, ROOT)
        assert (loaded.created_unix, loaded.body) == (1_700_000_000.5, body)
    with pytest.raises(CheckpointError) as raised:
        read_checkpoint(path, ShortReads(vanished=range(1057, 57 + len(body))))
    assert str(raised.value) == f"{path}: ended at byte 1057 while reading the body"


def test_an_empty_body_is_a_valid_checkpoint_of_the_minimum_size(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path, FILEOPS, 3, ROOT, [])
    assert path.stat().st_size == 69
    assert read_checkpoint(path, FILEOPS).body == b""


def test_a_wrong_length_names_both_sizes(tmp_path: Path) -> None:
    path = write(tmp_path, 10)
    data = path.read_bytes()
    path.write_bytes(data[:-12] + b"extra" + data[-12:])  # 5 bytes more body than the intact trailer says
    problem = f"{path}: trailer says the body is 18 bytes but the file holds 23 (truncated or extended)"
    with pytest.raises(CheckpointError) as raised:
        read_checkpoint(path, FILEOPS)
    assert str(raised.value) == problem


def test_a_leftover_temporary_file_is_replaced_and_temporaries_removed_are_returned(tmp_path: Path) -> None:
    leftover = tmp_path / (checkpoint_name(4) + ".tmp")
    leftover.write_bytes(b"half a checkpoint")
    assert verify_checkpoint(write(tmp_path, 4)) is None and not leftover.exists()
    leftover.write_bytes(b"half a checkpoint")
    assert remove_temporary_checkpoints(tmp_path, FILEOPS) == [leftover]
    assert remove_temporary_checkpoints(tmp_path, FILEOPS) == []

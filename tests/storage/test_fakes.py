"""The test doubles must model what they claim, or every crash test built on them proves nothing."""

from __future__ import annotations

import errno
import random
from pathlib import Path

import pytest

from sidecar.storage import FileOps, StorageIOError

from .fakes import FaultyFileOps, PowerLossFileOps, SimulatedPowerLossError


def create(fileops: FileOps, path: Path, data: bytes, *, sync_file: bool, sync_dir: bool) -> None:
    fd = fileops.create_exclusive(path)
    fileops.write(fd, data)
    if sync_file:
        fileops.fsync(fd)
    fileops.close(fd)
    if sync_dir:
        fileops.fsync_dir(path.parent)


def tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def test_existing_files_are_durable(tmp_path: Path) -> None:
    live = tmp_path / "live"
    (live / "sub").mkdir(parents=True)
    (live / "sub" / "f").write_bytes(b"old")
    crashed = PowerLossFileOps(live).crash(tmp_path / "after")
    assert tree(crashed) == {"sub": None, "sub/f": b"old"}


def test_unsynced_bytes_are_dropped(tmp_path: Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    fileops = PowerLossFileOps(live)
    create(fileops, live / "f", b"durable", sync_file=True, sync_dir=True)
    fd = fileops.open_append(live / "f")
    fileops.write(fd, b" and lost")
    fileops.close(fd)
    assert (live / "f").read_bytes() == b"durable and lost"
    assert tree(fileops.crash(tmp_path / "after")) == {"f": b"durable"}


def test_fdatasync_makes_data_durable_and_truncation_needs_a_sync(tmp_path: Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    fileops = PowerLossFileOps(live)
    create(fileops, live / "f", b"0123456789", sync_file=False, sync_dir=True)
    fd = fileops.open_append(live / "f")
    fileops.fdatasync(fd)
    fileops.ftruncate(fd, 4)  # never synced: the crash restores the longer content
    fileops.close(fd)
    assert tree(fileops.crash(tmp_path / "after")) == {"f": b"0123456789"}


def test_creation_without_directory_fsync_is_undone(tmp_path: Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    fileops = PowerLossFileOps(live)
    create(fileops, live / "kept", b"k", sync_file=True, sync_dir=True)
    create(fileops, live / "lost", b"l", sync_file=True, sync_dir=False)
    fileops.mkdir(live / "lost-dir")
    assert tree(fileops.crash(tmp_path / "after")) == {"kept": b"k"}


def test_created_but_never_fsynced_file_survives_empty(tmp_path: Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    fileops = PowerLossFileOps(live)
    create(fileops, live / "f", b"data", sync_file=False, sync_dir=True)
    assert tree(fileops.crash(tmp_path / "after")) == {"f": b""}


@pytest.mark.parametrize(("sync_dir", "expected"), [(False, {"a": b"A", "gone": b"G"}), (True, {"b": b"A"})])
def test_rename_and_unlink_need_a_directory_fsync(
    tmp_path: Path, sync_dir: bool, expected: dict[str, bytes]
) -> None:
    live = tmp_path / "live"
    live.mkdir()
    (live / "a").write_bytes(b"A")
    (live / "gone").write_bytes(b"G")
    fileops = PowerLossFileOps(live)
    fileops.rename(live / "a", live / "b")
    fileops.unlink(live / "gone")
    if sync_dir:
        fileops.fsync_dir(live)
    assert tree(fileops.crash(tmp_path / "after")) == expected


def test_operations_fail_after_the_crash(tmp_path: Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    fileops = PowerLossFileOps(live)
    fileops.crash(tmp_path / "after")
    with pytest.raises(SimulatedPowerLossError) as raised:
        fileops.listdir(live)
    assert isinstance(raised.value, StorageIOError) and raised.value.errno == errno.EIO


def test_crash_at_operation(tmp_path: Path) -> None:
    live = tmp_path / "live"
    live.mkdir()
    fileops = PowerLossFileOps(live, crash_at_operation=4, crash_destination=tmp_path / "after")
    fd = fileops.create_exclusive(live / "f")  # 1
    fileops.write(fd, b"one")  # 2
    fileops.fsync(fd)  # 3
    with pytest.raises(SimulatedPowerLossError):
        fileops.fsync_dir(live)  # 4: the power goes before it runs
    fileops.close(fd)
    assert fileops.crashed.is_set() and fileops.operations == 4
    assert tree(tmp_path / "after") == {}


def test_torn_writes_keep_a_prefix_of_unsynced_appends(tmp_path: Path) -> None:
    synced, unsynced = b"s" * 300, bytes(range(1, 251)) * 5  # no zero byte in the data itself
    shapes = set()
    for seed in range(40):
        live = tmp_path / f"live{seed}"
        live.mkdir()
        fileops = PowerLossFileOps(live, torn_writes=random.Random(seed))
        create(fileops, live / "f", synced, sync_file=True, sync_dir=True)
        fd = fileops.open_append(live / "f")
        fileops.write(fd, unsynced)
        fileops.close(fd)
        content = tree(fileops.crash(tmp_path / f"after{seed}"))["f"]
        assert content is not None and content.startswith(synced)
        kept = content[len(synced) :].rstrip(b"\0")
        assert unsynced.startswith(kept)
        zeros = len(content) - len(synced) - len(kept)
        if zeros:
            # Missing sectors start on a sector boundary and the size is the full write.
            assert (len(synced) + len(kept)) % 512 == 0 and len(content) == len(synced) + len(unsynced)
        shapes.add((len(kept), zeros > 0))
    assert len({zeros for _, zeros in shapes}) == 2 and len(shapes) > 10


def test_faulty_fileops_fails_on_demand_and_heals(tmp_path: Path) -> None:
    fileops = FaultyFileOps()
    fileops.fail("create_exclusive", errno.ENOSPC, times=1)
    with pytest.raises(StorageIOError) as raised:
        fileops.create_exclusive(tmp_path / "a")
    assert raised.value.errno == errno.ENOSPC and "injected" in str(raised.value)
    fd = fileops.create_exclusive(tmp_path / "a")  # the single failure is used up
    fileops.fail("fsync", errno.EIO, path_contains="b")
    fileops.fsync(fd)  # "a" does not match
    fd_b = fileops.create_exclusive(tmp_path / "b")
    with pytest.raises(StorageIOError):
        fileops.fsync(fd_b)
    fileops.heal()
    fileops.fsync(fd_b)
    fileops.fail("write", errno.ENOSPC, partial=True)
    with pytest.raises(StorageIOError):
        fileops.write(fd_b, b"0123456789")
    assert (tmp_path / "b").read_bytes() == b"01234"
    fileops.close(fd)
    fileops.close(fd_b)
    assert fileops.calls["fsync"] == 3 and fileops.failures["fsync"] == 1
    with pytest.raises(ValueError):
        fileops.fail("no_such_operation")

"""FileOps: modes, whole writes, and OSError translated once into StorageIOError naming operation and path."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from sidecar.storage import FileOps, StorageError, StorageIOError

FILEOPS = FileOps()


def test_created_files_and_directories_are_private(tmp_path: Path) -> None:
    assert FILEOPS.makedirs(tmp_path / "a" / "b")
    assert not FILEOPS.makedirs(tmp_path / "a" / "b")
    for directory in (tmp_path / "a", tmp_path / "a" / "b"):
        assert (directory.stat().st_mode & 0o777) == 0o700
    for create in (FILEOPS.create_exclusive, FILEOPS.open_or_create):
        path = tmp_path / "a" / create.__name__
        FILEOPS.close(create(path))
        assert (path.stat().st_mode & 0o777) == 0o600


def test_write_writes_everything_and_reads_back(tmp_path: Path) -> None:
    path = tmp_path / "f"
    fd = FILEOPS.create_exclusive(path)
    data = os.urandom(3 * 1024 * 1024)
    FILEOPS.write(fd, data)
    FILEOPS.fdatasync(fd)
    FILEOPS.close(fd)
    fd = FILEOPS.open_append(path)
    FILEOPS.write(fd, memoryview(b"tail"))
    FILEOPS.pwrite(fd, b"HEAD", 0)  # O_APPEND: pwrite goes to the end on Linux as well
    FILEOPS.fsync(fd)
    assert FILEOPS.fstat_size(fd) == len(data) + 8
    FILEOPS.ftruncate(fd, 10)
    FILEOPS.close(fd)
    assert FILEOPS.stat_size(path) == 10
    fd = FILEOPS.open_read(path)
    assert FILEOPS.pread(fd, 4, 2) == data[2:6]
    assert FILEOPS.read(fd, 100) == data[:10] and FILEOPS.read(fd, 100) == b""
    FILEOPS.close(fd)


def test_os_errors_become_storage_io_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(StorageIOError) as raised:
        FILEOPS.open_read(missing)
    error = raised.value
    assert isinstance(error, StorageError)
    assert (error.operation, error.path, error.errno) == ("open_read", missing, errno.ENOENT)
    assert isinstance(error.__cause__, FileNotFoundError)
    assert str(error).startswith(f"open_read failed on {missing}:")

    FILEOPS.close(FILEOPS.create_exclusive(tmp_path / "f"))
    with pytest.raises(StorageIOError) as raised:
        FILEOPS.create_exclusive(tmp_path / "f")
    assert raised.value.errno == errno.EEXIST

    fd = FILEOPS.open_read(tmp_path / "f")
    with pytest.raises(StorageIOError) as raised:
        FILEOPS.write(fd, b"read-only descriptor")
    assert raised.value.path == tmp_path / "f" and raised.value.errno == errno.EBADF
    FILEOPS.close(fd)
    with pytest.raises(StorageIOError, match="fsync failed"):
        FILEOPS.fsync(fd)  # closed: EBADF, and no path any more
    FILEOPS.close_quietly(fd)


def test_directory_operations(tmp_path: Path) -> None:
    FILEOPS.close(FILEOPS.create_exclusive(tmp_path / "a"))
    FILEOPS.rename(tmp_path / "a", tmp_path / "b")
    FILEOPS.fsync_dir(tmp_path)
    assert FILEOPS.listdir(tmp_path) == ["b"]
    assert FILEOPS.exists(tmp_path / "b") and not FILEOPS.exists(tmp_path / "a")
    assert FILEOPS.is_dir(tmp_path) and not FILEOPS.is_dir(tmp_path / "b")
    FILEOPS.unlink(tmp_path / "b")
    with pytest.raises(StorageIOError):
        FILEOPS.fsync_dir(tmp_path / "nope")
    with pytest.raises(StorageIOError):
        FILEOPS.listdir(tmp_path / "nope")


def test_atomic_small_file_helpers(tmp_path: Path) -> None:
    path = tmp_path / "IDENTITY.json"
    assert FILEOPS.read_file_if_exists(path) is None
    FILEOPS.write_file_atomically(path, b"one")
    (tmp_path / "IDENTITY.json.tmp").write_bytes(b"left by a crash")
    FILEOPS.write_file_atomically(path, b"two")
    assert FILEOPS.read_file_if_exists(path) == b"two"
    assert sorted(os.listdir(tmp_path)) == ["IDENTITY.json"]
    assert (path.stat().st_mode & 0o777) == 0o600

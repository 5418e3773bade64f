"""The file-layer seam: every operating-system call the storage layer makes goes through :class:`FileOps`.

Contract:

* Files are created with mode 0600 and directories with mode 0700; nothing storage writes is readable by
  other users.
* File descriptors are plain ``int``; every one is opened ``O_CLOEXEC`` so a child process never inherits a
  log segment or the data-directory lock.
* :meth:`FileOps.write` and :meth:`FileOps.pwrite` write the whole buffer or raise; a short write is never
  returned to the caller.
* Every ``OSError`` is translated here, once, into :class:`StorageIOError` naming the operation and the path
  (for descriptor operations, the path the descriptor was opened with). Nothing above this module catches
  ``OSError``.
* Durability is the caller's business: ``write`` only reaches the page cache. ``fdatasync`` makes a file's
  data (and the size needed to read it back) durable; ``fsync`` also flushes the remaining metadata;
  ``fsync_dir`` makes creations, renames and unlinks inside a directory durable.

Tests inject faults and simulate power loss by subclassing :class:`FileOps` (see ``tests/storage/fakes.py``);
production code receives a ``FileOps`` instance through its constructor and never calls ``os`` directly.
Linux is the target: ``fdatasync`` falls back to ``fsync`` where the platform lacks it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Callable
from pathlib import Path

from sidecar.storage.errors import StorageIOError

__all__ = ["DIRECTORY_MODE", "FILE_MODE", "FileOps"]

FILE_MODE = 0o600
DIRECTORY_MODE = 0o700

_fdatasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)

_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC
_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
_CREATE_EXCLUSIVE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
_OPEN_OR_CREATE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_DIRECTORY", 0)


class FileOps:
    """Thin, injectable wrapper over the OS calls storage needs. Thread-safe."""

    def __init__(self) -> None:
        # Remembered only to name the file in error messages; dict operations are atomic under the GIL.
        self._paths: dict[int, Path] = {}

    def path_of(self, fd: int) -> Path | None:
        """The path ``fd`` was opened with (it may have been renamed since), or ``None`` if unknown."""
        return self._paths.get(fd)

    # -- opening and closing -------------------------------------------------------------------------------

    def open_read(self, path: Path) -> int:
        """Open an existing file for reading."""
        return self._open("open_read", path, _READ_FLAGS)

    def open_append(self, path: Path) -> int:
        """Open an existing file for appending (``O_APPEND``: every write goes to the end)."""
        return self._open("open_append", path, _APPEND_FLAGS)

    def create_exclusive(self, path: Path) -> int:
        """Create a new file (mode 0600) for writing; fails with ``EEXIST`` if the name is taken."""
        return self._open("create_exclusive", path, _CREATE_EXCLUSIVE_FLAGS)

    def open_or_create(self, path: Path) -> int:
        """Open a file for reading and writing, creating it (mode 0600) if it does not exist."""
        return self._open("open_or_create", path, _OPEN_OR_CREATE_FLAGS)

    def close(self, fd: int) -> None:
        path = self._paths.pop(fd, None)
        try:
            os.close(fd)
        except OSError as error:
            raise StorageIOError.from_os_error("close", path, error) from error

    def close_quietly(self, fd: int) -> None:
        """Close ``fd`` on an error path, where a second error would only hide the first."""
        with contextlib.suppress(StorageIOError):
            self.close(fd)

    # -- data ----------------------------------------------------------------------------------------------

    def write(self, fd: int, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data`` at the file's current offset (the end, for append descriptors)."""
        view = memoryview(data)
        try:
            while view:
                written = os.write(fd, view)
                view = view[written:]
        except OSError as error:
            raise StorageIOError.from_os_error("write", self._paths.get(fd), error) from error

    def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
        """Write all of ``data`` at ``offset`` without moving the file offset."""
        view = memoryview(data)
        try:
            while view:
                written = os.pwrite(fd, view, offset)
                view = view[written:]
                offset += written
        except OSError as error:
            raise StorageIOError.from_os_error("pwrite", self._paths.get(fd), error) from error

    def read(self, fd: int, size: int) -> bytes:
        """Read up to ``size`` bytes from the current offset; ``b""`` at end of file."""
        try:
            return os.read(fd, size)
        except OSError as error:
            raise StorageIOError.from_os_error("read", self._paths.get(fd), error) from error

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        """Read up to ``size`` bytes at ``offset``; shorter only at end of file."""
        try:
            return os.pread(fd, size, offset)
        except OSError as error:
            raise StorageIOError.from_os_error("pread", self._paths.get(fd), error) from error

    def fsync(self, fd: int) -> None:
        """Make the file's data and all its metadata durable."""
        try:
            os.fsync(fd)
        except OSError as error:
            raise StorageIOError.from_os_error("fsync", self._paths.get(fd), error) from error

    def fdatasync(self, fd: int) -> None:
        """Make the file's data durable, with the metadata needed to read it back (its size)."""
        try:
            _fdatasync(fd)
        except OSError as error:
            raise StorageIOError.from_os_error("fdatasync", self._paths.get(fd), error) from error

    def ftruncate(self, fd: int, length: int) -> None:
        try:
            os.ftruncate(fd, length)
        except OSError as error:
            raise StorageIOError.from_os_error("ftruncate", self._paths.get(fd), error) from error

    def fstat_size(self, fd: int) -> int:
        try:
            return os.fstat(fd).st_size
        except OSError as error:
            raise StorageIOError.from_os_error("fstat", self._paths.get(fd), error) from error

    def try_lock_exclusive(self, fd: int) -> bool:
        """Take a non-blocking exclusive ``flock``; ``False`` if another open file description holds it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise StorageIOError.from_os_error("flock", self._paths.get(fd), error) from error
        return True

    # -- names ---------------------------------------------------------------------------------------------

    def rename(self, source: Path, destination: Path) -> None:
        """Atomically rename ``source`` to ``destination``, replacing it; durable after ``fsync_dir``."""
        try:
            os.replace(source, destination)
        except OSError as error:
            raise StorageIOError.from_os_error("rename", source, error) from error

    def unlink(self, path: Path) -> None:
        try:
            os.unlink(path)
        except OSError as error:
            raise StorageIOError.from_os_error("unlink", path, error) from error

    def listdir(self, path: Path) -> list[str]:
        try:
            return os.listdir(path)
        except OSError as error:
            raise StorageIOError.from_os_error("listdir", path, error) from error

    def mkdir(self, path: Path) -> None:
        """Create one directory with mode 0700; durable after ``fsync_dir`` of its parent."""
        try:
            os.mkdir(path, DIRECTORY_MODE)
        except OSError as error:
            raise StorageIOError.from_os_error("mkdir", path, error) from error

    def fsync_dir(self, path: Path) -> None:
        """Make the entries of directory ``path`` (creations, renames, unlinks) durable."""
        try:
            fd = os.open(path, _DIRECTORY_FLAGS)
        except OSError as error:
            raise StorageIOError.from_os_error("fsync_dir", path, error) from error
        try:
            os.fsync(fd)
        except OSError as error:
            raise StorageIOError.from_os_error("fsync_dir", path, error) from error
        finally:
            os.close(fd)

    def stat_size(self, path: Path) -> int:
        try:
            return os.stat(path).st_size
        except OSError as error:
            raise StorageIOError.from_os_error("stat", path, error) from error

    def owner_and_mode(self, path: Path) -> tuple[int, int]:
        """The owner's uid and the permission bits (``st_mode & 0o7777``) of ``path``, symlinks followed."""
        try:
            result = os.stat(path)
        except OSError as error:
            raise StorageIOError.from_os_error("stat", path, error) from error
        return result.st_uid, stat.S_IMODE(result.st_mode)

    def exists(self, path: Path) -> bool:
        try:
            os.stat(path)
        except FileNotFoundError:
            return False
        except OSError as error:
            raise StorageIOError.from_os_error("stat", path, error) from error
        return True

    def is_dir(self, path: Path) -> bool:
        try:
            return stat.S_ISDIR(os.stat(path).st_mode)
        except FileNotFoundError:
            return False
        except OSError as error:
            raise StorageIOError.from_os_error("stat", path, error) from error

    # -- composites built only from the primitives above, so test doubles see every step --------------------

    def makedirs(self, path: Path) -> bool:
        """Create ``path`` and any missing parents (mode 0700), each made durable in its parent.

        Returns True if anything was created. An existing directory is left as it is, mode included.
        """
        if self.is_dir(path):
            return False
        parent = path.parent
        if parent != path:
            self.makedirs(parent)
        try:
            self.mkdir(path)
        except StorageIOError as error:
            # Lost a race with another creator: the directory exists, which is all that was asked.
            if error.errno != errno.EEXIST or not self.is_dir(path):
                raise
            return False
        self.fsync_dir(parent)
        return True

    def read_file_if_exists(self, path: Path) -> bytes | None:
        """The whole content of a (small) file, or ``None`` if it does not exist."""
        if not self.exists(path):
            return None
        fd = self.open_read(path)
        try:
            chunks = []
            while chunk := self.read(fd, 1024 * 1024):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            self.close(fd)

    def write_file_atomically(self, path: Path, data: bytes) -> None:
        """Replace ``path`` with ``data`` so that a crash leaves either the old or the new content.

        Writes ``<path>.tmp`` (0600), fsyncs it, renames it over ``path`` and fsyncs the directory.
        """
        temporary = path.with_name(path.name + ".tmp")
        if self.exists(temporary):
            self.unlink(temporary)  # left by a crash during an earlier attempt
        fd = self.create_exclusive(temporary)
        try:
            self.write(fd, data)
            self.fsync(fd)
        finally:
            self.close(fd)
        self.rename(temporary, path)
        self.fsync_dir(path.parent)

    def _open(self, operation: str, path: Path, flags: int) -> int:
        try:
            fd = os.open(path, flags, FILE_MODE)
        except OSError as error:
            raise StorageIOError.from_os_error(operation, path, error) from error
        self._paths[fd] = Path(path)
        return fd

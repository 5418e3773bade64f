"""Errors raised by the storage layer.

Every failure that leaves ``sidecar.storage`` is a :class:`StorageError`::

    StorageError
    ├── StorageIOError          an OSError from the operating system, translated once, in FileOps
    ├── LogCorruptionError      the decision log holds damage that must not be repaired automatically
    ├── LogUnavailableError     the decision log cannot make records durable (failed, or closed)
    ├── CheckpointError         a checkpoint cannot be written or read back
    ├── DataDirLockedError      another process holds the data directory
    └── UnsafeDataDirError      the data directory is writable by, or belongs to, another user

``OSError`` crosses into storage at exactly one place: :class:`sidecar.storage.fileio.FileOps`, whose every
method turns it into a :class:`StorageIOError` that keeps the ``errno``, the operation and the path. Code above
``FileOps`` therefore never catches ``OSError``. A :class:`LogUnavailableError` raised because the disk failed
has the underlying :class:`StorageIOError` as its ``__cause__``.
"""

from __future__ import annotations

import os
from pathlib import Path

from sidecar.errors import SidecarError

__all__ = [
    "CheckpointError",
    "DataDirLockedError",
    "LogCorruptionError",
    "LogUnavailableError",
    "StorageError",
    "StorageIOError",
    "UnsafeDataDirError",
]


class StorageError(SidecarError):
    """Base class of every error raised by ``sidecar.storage`` (a branch of the sidecar's tree in
    ``sidecar.errors``)."""


class StorageIOError(StorageError):
    """An operating-system call failed.

    ``errno`` is the OS error number (``errno.ENOSPC``, ``errno.EIO``...), ``operation`` the FileOps method
    that failed and ``path`` the file or directory it was working on, when known.
    """

    def __init__(self, operation: str, path: str | os.PathLike[str] | None, errno: int | None, strerror: str):
        self.operation = operation
        self.path = None if path is None else Path(path)
        self.errno = errno
        self.strerror = strerror
        where = f" on {self.path}" if self.path is not None else ""
        super().__init__(f"{operation} failed{where}: {strerror}")

    @classmethod
    def from_os_error(cls, operation: str, path: str | os.PathLike[str] | None, error: OSError) -> StorageIOError:
        """Translate ``error``; raise the result ``from error`` so the original stays chained."""
        return cls(operation, path, error.errno, error.strerror or str(error))


class LogCorruptionError(StorageError):
    """The decision log is damaged in a way that is not a torn tail: refuse to start.

    ``file`` is the segment (or directory) at fault and ``offset`` the byte offset in it where the damage
    starts; ``detail`` says what was found.
    """

    def __init__(self, file: str | os.PathLike[str], offset: int, detail: str):
        self.file = Path(file)
        self.offset = offset
        self.detail = detail
        super().__init__(f"decision log corrupted in {self.file} at byte offset {offset}: {detail}")


class LogUnavailableError(StorageError):
    """The decision log cannot make records durable right now.

    Raised by ``append`` while the log is failed or closed, and delivered to every durability waiter whose
    record had not been fsynced when the log failed. Its ``__cause__`` is the I/O error, when there is one.
    """


class CheckpointError(StorageError):
    """A checkpoint cannot be written, or a file that must be a valid checkpoint is not."""


class DataDirLockedError(StorageError):
    """Another process holds the data directory's lock.

    ``holder_pid`` is the pid written into the lock file by the holder, or ``None`` when it cannot be read.
    """

    def __init__(self, directory: str | os.PathLike[str], holder_pid: int | None):
        self.directory = Path(directory)
        self.holder_pid = holder_pid
        holder = f"process {holder_pid}" if holder_pid is not None else "another process"
        super().__init__(
            f"data directory {self.directory} is in use by {holder}; "
            "only one sidecar may use a data directory at a time"
        )


class UnsafeDataDirError(StorageError):
    """The data directory could be changed by someone other than the user the sidecar runs as: another user owns
    it, or its group or other users may write to it. A user who can replace or delete files in it can erase the
    history that protects the keys, so the sidecar refuses it; the message says how to fix it."""

    def __init__(self, directory: str | os.PathLike[str], problem: str, fix: str):
        self.directory = Path(directory)
        super().__init__(f"data directory {self.directory} {problem}; refusing to use it: run `{fix}`")

"""The data-directory lock: one process per data directory, for the life of that process.

``DataDirLock.acquire(DIR)`` creates ``DIR`` (mode 0700) if needed, opens ``DIR/LOCK`` (0600) and takes a
non-blocking exclusive ``flock`` on it, then writes the holder's pid into the file so that a refused second
process can say who holds the directory. The kernel releases the lock when the holder exits, however it
exits, so a stale lock after a crash is impossible; the ``LOCK`` file itself is never deleted (deleting a
lock file races with a process that has just opened it).

Before locking, ``acquire`` refuses a directory that another user owns or that its group or other users may
write to (:class:`UnsafeDataDirError`, naming the ``chmod``/``chown`` that fixes it): whoever can write to the
directory can delete or replace the decision log. Directories the sidecar creates are 0700 and pass.

The descriptor is close-on-exec, so child processes do not inherit the lock. ``flock`` locks belong to the
open file description: a second ``acquire`` in the same process is refused too.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from sidecar.storage.errors import DataDirLockedError, StorageIOError, UnsafeDataDirError
from sidecar.storage.fileio import FileOps

__all__ = ["LOCK_FILE_NAME", "DataDirLock", "check_private_directory"]

LOCK_FILE_NAME = "LOCK"


class DataDirLock:
    """An exclusive lock on a data directory, held until :meth:`release` or process exit."""

    def __init__(self, directory: Path, fd: int, fileops: FileOps):
        """Use :meth:`acquire`."""
        self.directory = directory
        self._fd: int | None = fd
        self._fileops = fileops

    @classmethod
    def acquire(cls, directory: Path, *, fileops: FileOps | None = None) -> DataDirLock:
        """Lock ``directory``; raise :class:`DataDirLockedError` (with the holder's pid) if it is in use."""
        fileops = fileops or FileOps()
        directory = Path(directory)
        fileops.makedirs(directory)
        check_private_directory(directory, fileops)
        fd = fileops.open_or_create(directory / LOCK_FILE_NAME)
        try:
            if not fileops.try_lock_exclusive(fd):
                raise DataDirLockedError(directory, _read_pid(fileops, fd))
            # The pid is informational (for the refusal message); it needs no fsync.
            fileops.ftruncate(fd, 0)
            fileops.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            fileops.close_quietly(fd)
            raise
        return cls(directory, fd, fileops)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Release the lock (closing the descriptor releases the ``flock``). Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            self._fileops.close_quietly(fd)

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def check_private_directory(directory: Path, fileops: FileOps) -> None:
    """Raise :class:`UnsafeDataDirError` unless ``directory`` belongs to this process's effective user and
    neither its group nor other users may write to it."""
    owner, mode = fileops.owner_and_mode(directory)
    user = os.geteuid()
    if owner != user:
        raise UnsafeDataDirError(
            directory,
            f"is owned by {_user_name(owner)}, not by {_user_name(user)} that the sidecar runs as",
            f"chown {_user_name(user, bare=True)} {directory}",
        )
    if mode & 0o022:
        who = (
            "its group and other users"
            if mode & 0o022 == 0o022
            else ("its group" if mode & 0o020 else "other users")
        )
        raise UnsafeDataDirError(directory, f"is writable by {who} (mode {mode:04o})", f"chmod 700 {directory}")


def _user_name(uid: int, *, bare: bool = False) -> str:
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid) if bare else f"uid {uid}"
    return name if bare else f"user {name} (uid {uid})"


def _read_pid(fileops: FileOps, fd: int) -> int | None:
    try:
        text = fileops.pread(fd, 32, 0)
    except StorageIOError:
        return None
    try:
        return int(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return None

"""Test doubles for the storage seam: power loss and injected faults, without monkeypatching ``os``.

``PowerLossFileOps`` runs every operation for real on a real directory tree and, beside it, keeps a model of
what a power cut would leave: for each file, the content as of its last fsync/fdatasync; for each directory,
the entries as of its last directory fsync. ``crash(destination)`` writes that durable state into a fresh
directory (un-synced bytes dropped, un-synced creations, renames and unlinks undone) for recovery to run on,
and makes every later operation on the double fail with EIO, as a dead machine would.

``FaultyFileOps`` wraps another ``FileOps`` and makes chosen operations fail (once, N times, or until healed),
optionally only for paths containing a substring, and counts every call (to count fsyncs).
"""

from __future__ import annotations

import errno
import os
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.storage.errors import StorageIOError
from sidecar.storage.fileio import FileOps


@dataclass(eq=False)
class _Node:
    """A file or directory as the model knows it (identity = the real inode while it is live)."""

    is_dir: bool
    durable_data: bytes = b""
    durable_entries: dict[str, _Node] = field(default_factory=dict)


class SimulatedPowerLossError(StorageIOError):
    def __init__(self, operation: str):
        super().__init__(operation, None, errno.EIO, "simulated power loss: the machine is off")


class PowerLossFileOps(FileOps):
    """Real file operations under ``root`` plus a model of their durability; see the module docstring.

    Everything under ``root`` that exists at construction is taken as durable. ``crash_at_operation=N``
    crashes automatically just before the N-th operation (counting every FileOps call), into
    ``crash_destination``. With ``torn_writes`` (a ``random.Random``), a crash keeps part of each file's
    un-synced appended bytes, as a torn write would: either the file ends early at any byte (the size was
    partly persisted), or it keeps its full size with the sectors after a 512-byte boundary reading as zeros.
    """

    def __init__(
        self,
        root: Path,
        *,
        crash_at_operation: int | None = None,
        crash_destination: Path | None = None,
        torn_writes: random.Random | None = None,
    ):
        super().__init__()
        self.root = Path(root).resolve()
        self.operations = 0
        self.crashed = threading.Event()
        self._crash_at = crash_at_operation
        self._crash_destination = crash_destination
        self._torn_writes = torn_writes
        self._model_lock = threading.RLock()
        self._live: dict[tuple[int, int], _Node] = {}
        self._root_node = self._adopt(self.root)

    # -- the model -----------------------------------------------------------------------------------------

    def _adopt(self, path: Path) -> _Node:
        """Register an existing file or directory (recursively) as fully durable."""
        info = os.lstat(path)
        if os.path.isdir(path):
            node = _Node(is_dir=True)
            node.durable_entries = {name: self._adopt(path / name) for name in os.listdir(path)}
        else:
            node = _Node(is_dir=False, durable_data=Path(path).read_bytes())
        self._live[(info.st_dev, info.st_ino)] = node
        return node

    def _node_at(self, path: Path) -> _Node:
        info = os.lstat(path)
        node = self._live.get((info.st_dev, info.st_ino))
        return node if node is not None else self._adopt(path)

    def _node_of_fd(self, fd: int) -> _Node:
        info = os.fstat(fd)
        node = self._live.get((info.st_dev, info.st_ino))
        if node is None:
            raise AssertionError(f"descriptor {fd} refers to a file the model does not know")
        return node

    def _register_new(self, fd: int, *, is_dir: bool = False) -> None:
        info = os.fstat(fd)
        self._live[(info.st_dev, info.st_ino)] = _Node(is_dir=is_dir)

    def _step(self, operation: str) -> None:
        """Called under the model lock before every operation: count it, crash when told to."""
        if self.crashed.is_set():
            raise SimulatedPowerLossError(operation)
        self.operations += 1
        if self._crash_at is not None and self.operations >= self._crash_at:
            assert self._crash_destination is not None
            self._crash_locked(self._crash_destination)
            raise SimulatedPowerLossError(operation)

    def crash(self, destination: Path) -> Path:
        """Cut the power now: write the durable state of ``root`` into ``destination``, fail everything after."""
        with self._model_lock:
            self._crash_locked(destination)
        return destination

    def _crash_locked(self, destination: Path) -> None:
        self.crashed.set()
        destination.mkdir(parents=True, exist_ok=True)
        self._materialise(self._root_node, self.root, destination)

    def _materialise(self, node: _Node, live_path: Path | None, destination: Path) -> None:
        for name, child in node.durable_entries.items():
            target = destination / name
            live_child = live_path / name if live_path is not None else None
            if child.is_dir:
                target.mkdir(mode=0o700)
                self._materialise(child, live_child, target)
            else:
                target.write_bytes(self._surviving_bytes(child, live_child))

    def _surviving_bytes(self, node: _Node, live_path: Path | None) -> bytes:
        durable = node.durable_data
        if self._torn_writes is None or live_path is None or not live_path.exists():
            return durable
        try:
            if self._node_at(live_path) is not node:
                return durable
            current = live_path.read_bytes()
        except OSError:
            return durable
        if len(current) <= len(durable) or not current.startswith(durable):
            return durable
        unsynced = current[len(durable) :]
        rng = self._torn_writes
        if rng.random() < 0.5:
            # The size reached the disk only partly: the file simply ends early, at any byte.
            return durable + unsynced[: rng.randrange(len(unsynced) + 1)]
        # The size reached the disk but some trailing sectors did not: sectors are atomic, so the missing
        # part starts at a 512-byte boundary of the file and reads back as zeros.
        start, end = len(durable), len(current)
        first_boundary = -(-start // 512) * 512
        boundaries = list(range(first_boundary, end + 1, 512)) or [end]
        written_end = max(start, min(end, rng.choice(boundaries)))
        return current[:written_end] + bytes(end - written_end)

    # -- operations ----------------------------------------------------------------------------------------

    def open_read(self, path: Path) -> int:
        with self._model_lock:
            self._step("open_read")
            return super().open_read(path)

    def open_append(self, path: Path) -> int:
        with self._model_lock:
            self._step("open_append")
            return super().open_append(path)

    def create_exclusive(self, path: Path) -> int:
        with self._model_lock:
            self._step("create_exclusive")
            fd = super().create_exclusive(path)
            self._register_new(fd)
            return fd

    def open_or_create(self, path: Path) -> int:
        with self._model_lock:
            self._step("open_or_create")
            existed = os.path.exists(path)
            fd = super().open_or_create(path)
            if not existed:
                self._register_new(fd)
            return fd

    def close(self, fd: int) -> None:
        # Closing is allowed after a crash so that test clean-up does not leak descriptors.
        with self._model_lock:
            super().close(fd)

    def write(self, fd: int, data: bytes | bytearray | memoryview) -> None:
        with self._model_lock:
            self._step("write")
            super().write(fd, data)

    def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
        with self._model_lock:
            self._step("pwrite")
            super().pwrite(fd, data, offset)

    def read(self, fd: int, size: int) -> bytes:
        with self._model_lock:
            self._step("read")
            return super().read(fd, size)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        with self._model_lock:
            self._step("pread")
            return super().pread(fd, size, offset)

    def fsync(self, fd: int) -> None:
        with self._model_lock:
            self._step("fsync")
            super().fsync(fd)
            self._capture(fd)

    def fdatasync(self, fd: int) -> None:
        with self._model_lock:
            self._step("fdatasync")
            super().fdatasync(fd)
            self._capture(fd)

    def _capture(self, fd: int) -> None:
        # Read through /proc so that write-only descriptors can be captured too.
        with open(f"/proc/self/fd/{fd}", "rb") as current:
            self._node_of_fd(fd).durable_data = current.read()

    def ftruncate(self, fd: int, length: int) -> None:
        with self._model_lock:
            self._step("ftruncate")
            super().ftruncate(fd, length)

    def fstat_size(self, fd: int) -> int:
        with self._model_lock:
            self._step("fstat_size")
            return super().fstat_size(fd)

    def try_lock_exclusive(self, fd: int) -> bool:
        with self._model_lock:
            self._step("try_lock_exclusive")
            return super().try_lock_exclusive(fd)

    def rename(self, source: Path, destination: Path) -> None:
        with self._model_lock:
            self._step("rename")
            super().rename(source, destination)

    def unlink(self, path: Path) -> None:
        with self._model_lock:
            self._step("unlink")
            super().unlink(path)

    def listdir(self, path: Path) -> list[str]:
        with self._model_lock:
            self._step("listdir")
            return super().listdir(path)

    def mkdir(self, path: Path) -> None:
        with self._model_lock:
            self._step("mkdir")
            super().mkdir(path)
            info = os.stat(path)
            self._live[(info.st_dev, info.st_ino)] = _Node(is_dir=True)

    def fsync_dir(self, path: Path) -> None:
        with self._model_lock:
            self._step("fsync_dir")
            super().fsync_dir(path)
            node = self._node_at(Path(path))
            node.durable_entries = {name: self._node_at(Path(path) / name) for name in os.listdir(path)}

    def stat_size(self, path: Path) -> int:
        with self._model_lock:
            self._step("stat_size")
            return super().stat_size(path)

    def exists(self, path: Path) -> bool:
        with self._model_lock:
            self._step("exists")
            return super().exists(path)

    def is_dir(self, path: Path) -> bool:
        with self._model_lock:
            self._step("is_dir")
            return super().is_dir(path)


@dataclass
class _Fault:
    operation: str
    errno: int
    remaining: int | None  # None: until healed
    path_contains: str | None
    partial: bool


class FaultyFileOps(FileOps):
    """Delegates to ``inner`` (a plain ``FileOps`` by default) and fails operations on demand.

    ``fail("fdatasync", errno.EIO)`` fails every fdatasync until :meth:`heal`; ``times=1`` fails once.
    ``path_contains`` restricts the fault to paths (or descriptors opened on paths) containing it.
    ``partial=True`` on ``write`` writes half the data before failing, as a disk filling up would.
    ``calls`` counts every call by operation name, faulted or not; ``calls_by_file`` by (operation, file name).
    """

    def __init__(self, inner: FileOps | None = None):
        super().__init__()
        self.inner = inner or FileOps()
        self.calls: Counter[str] = Counter()
        self.calls_by_file: Counter[tuple[str, str]] = Counter()
        self.failures: Counter[str] = Counter()
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()

    def fail(
        self,
        operation: str,
        error: int = errno.EIO,
        *,
        times: int | None = None,
        path_contains: str | None = None,
        partial: bool = False,
    ) -> None:
        if not hasattr(FileOps, operation):
            raise ValueError(f"FileOps has no operation {operation!r}")
        with self._lock:
            self._faults.append(_Fault(operation, error, times, path_contains, partial))

    def heal(self) -> None:
        with self._lock:
            self._faults.clear()

    def _check(self, operation: str, path: Path | None) -> _Fault | None:
        with self._lock:
            self.calls[operation] += 1
            if path is not None:
                self.calls_by_file[(operation, path.name)] += 1
            for fault in self._faults:
                if fault.operation != operation:
                    continue
                if fault.path_contains is not None and (path is None or fault.path_contains not in str(path)):
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                self.failures[operation] += 1
                return fault
            return None

    def _maybe_fail(self, operation: str, path: Path | None) -> None:
        fault = self._check(operation, path)
        if fault is not None:
            raise StorageIOError(operation, path, fault.errno, f"injected fault: {os.strerror(fault.errno)}")

    def path_of(self, fd: int) -> Path | None:
        return self.inner.path_of(fd)

    def open_read(self, path: Path) -> int:
        self._maybe_fail("open_read", path)
        return self.inner.open_read(path)

    def open_append(self, path: Path) -> int:
        self._maybe_fail("open_append", path)
        return self.inner.open_append(path)

    def create_exclusive(self, path: Path) -> int:
        self._maybe_fail("create_exclusive", path)
        return self.inner.create_exclusive(path)

    def open_or_create(self, path: Path) -> int:
        self._maybe_fail("open_or_create", path)
        return self.inner.open_or_create(path)

    def close(self, fd: int) -> None:
        self._maybe_fail("close", self.inner.path_of(fd))
        self.inner.close(fd)

    def write(self, fd: int, data: bytes | bytearray | memoryview) -> None:
        path = self.inner.path_of(fd)
        fault = self._check("write", path)
        if fault is not None:
            if fault.partial and len(data) > 1:
                self.inner.write(fd, memoryview(data)[: len(data) // 2])
            raise StorageIOError("write", path, fault.errno, f"injected fault: {os.strerror(fault.errno)}")
        self.inner.write(fd, data)

    def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
        self._maybe_fail("pwrite", self.inner.path_of(fd))
        self.inner.pwrite(fd, data, offset)

    def read(self, fd: int, size: int) -> bytes:
        self._maybe_fail("read", self.inner.path_of(fd))
        return self.inner.read(fd, size)

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        self._maybe_fail("pread", self.inner.path_of(fd))
        return self.inner.pread(fd, size, offset)

    def fsync(self, fd: int) -> None:
        self._maybe_fail("fsync", self.inner.path_of(fd))
        self.inner.fsync(fd)

    def fdatasync(self, fd: int) -> None:
        self._maybe_fail("fdatasync", self.inner.path_of(fd))
        self.inner.fdatasync(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        self._maybe_fail("ftruncate", self.inner.path_of(fd))
        self.inner.ftruncate(fd, length)

    def fstat_size(self, fd: int) -> int:
        self._maybe_fail("fstat_size", self.inner.path_of(fd))
        return self.inner.fstat_size(fd)

    def try_lock_exclusive(self, fd: int) -> bool:
        self._maybe_fail("try_lock_exclusive", self.inner.path_of(fd))
        return self.inner.try_lock_exclusive(fd)

    def rename(self, source: Path, destination: Path) -> None:
        self._maybe_fail("rename", source)
        self.inner.rename(source, destination)

    def unlink(self, path: Path) -> None:
        self._maybe_fail("unlink", path)
        self.inner.unlink(path)

    def listdir(self, path: Path) -> list[str]:
        self._maybe_fail("listdir", path)
        return self.inner.listdir(path)

    def mkdir(self, path: Path) -> None:
        self._maybe_fail("mkdir", path)
        self.inner.mkdir(path)

    def fsync_dir(self, path: Path) -> None:
        self._maybe_fail("fsync_dir", path)
        self.inner.fsync_dir(path)

    def stat_size(self, path: Path) -> int:
        self._maybe_fail("stat_size", path)
        return self.inner.stat_size(path)

    def exists(self, path: Path) -> bool:
        self._maybe_fail("exists", path)
        return self.inner.exists(path)

    def is_dir(self, path: Path) -> bool:
        self._maybe_fail("is_dir", path)
        return self.inner.is_dir(path)


class GatedFileOps(FileOps):
    """Real operations, but ``fdatasync`` waits while ``gate`` is clear: holds the flusher mid-commit.

    ``in_fdatasync`` is set whenever the flusher is inside ``fdatasync``; ``fdatasyncs`` counts completed calls.
    """

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.in_fdatasync = threading.Event()
        self.fdatasyncs = 0

    def fdatasync(self, fd: int) -> None:
        self.in_fdatasync.set()
        try:
            if not self.gate.wait(timeout=30):
                raise AssertionError("gate never opened")
            super().fdatasync(fd)
            self.fdatasyncs += 1
        finally:
            self.in_fdatasync.clear()

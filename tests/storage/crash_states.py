"""Every crash state of a recorded workload: a trace of file operations, and the disks a power cut may leave.

``RecordingFileOps`` performs every operation for real under ``root`` and appends it to a trace, in the order
the operations happened (one lock makes the trace a linearisation of the threads' calls): creations, writes
(with the file offset they landed at), truncations, fsync/fdatasync, renames, unlinks, directory fsyncs, and
the workload's own ``acknowledge`` markers, appended once an answer was given to a caller.

``crash_states(trace, point, rng)`` replays the first ``point`` operations into a model that knows, for every
file, its content as of its last fsync plus the writes since, and for every directory its entries as of its
last directory fsync plus the creations, renames and unlinks since. From that model it builds the disks a
power cut at that point may leave, under the strictest POSIX durability a file system may offer:

* ``dropped``: only what was synced: un-synced writes dropped, un-synced creations, renames and unlinks undone.
* ``kept``: everything reached the disk (the kill -9 case).
* ``dirs-reverted``: every write reached the disk, but no un-synced directory change did.
* ``torn-512-short`` / ``torn-4096-short``: the last operation was a write and it was cut at the first
  512-byte (or 4,096-byte) boundary of the file inside it: the file ends there.
* ``torn-512-zero`` / ``torn-4096-zero``: the same cut, but the file's new size reached the disk: the rest of
  the write reads as zeros.
* ``hole-512`` / ``hole-4096``: un-synced pages written back out of order: in each file that grew since its
  last sync, the sector (page) holding the start of the new data never reached the disk and reads as zeros,
  while the sectors after it did, so a zeroed hole precedes intact records.
* ``hole-random``: the same with one seeded random whole sector of the new data in each grown file.
* ``random``: a seeded random subset of the un-synced writes (each kept or not, applied in order over the
  synced content; a skipped write inside a later one's extension reads as zeros) and, per directory, a random
  prefix of its un-synced entry changes.

Each is a pure power-loss state: it loses or scrambles only data that was never synced. A state is a mapping
from relative path to bytes (``None`` for a directory), so identical states are recognised and run once. Each
comes as a ``CrashState`` that also says whether it is ``holed``: some file reads as zeros where the workload
wrote non-zero bytes, and bytes it wrote landed after that (a zeroed stretch before intact data). Every
``hole-*`` state is, and so may be a ``random`` one.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from sidecar.storage.fileio import FileOps

ROOT_INODE = 0
DATA_OPERATIONS = frozenset({"write", "truncate"})
BOUNDARY_OPERATIONS = frozenset(
    {"create", "mkdir", "write", "truncate", "sync", "rename", "unlink", "sync_dir"}
)  # every operation after which a crash state can differ from the one before it

Trace = list[tuple[Any, ...]]
State = dict[str, bytes | None]


class CrashState(NamedTuple):
    kind: str
    state: State
    holed: bool  # a zeroed stretch precedes intact data in some file (see the module docstring)


class RecordingFileOps(FileOps):
    """Real operations under ``root`` (empty at construction), recorded into ``trace`` (see the module doc)."""

    def __init__(self, root: Path):
        super().__init__()
        self.root = Path(root).resolve()
        assert not os.listdir(self.root), "the recorded tree must start empty"
        self.trace: Trace = []
        self._lock = threading.RLock()
        self._inodes: dict[tuple[int, int], int] = {}
        self._numbers = itertools.count(ROOT_INODE + 1)
        info = os.stat(self.root)
        self._inodes[(info.st_dev, info.st_ino)] = ROOT_INODE

    def acknowledge(self, *answer: Any) -> None:
        """Mark that ``answer`` was given to a caller: from here on, every crash state must keep it."""
        with self._lock:
            self.trace.append(("ack", answer))

    # -- identity ------------------------------------------------------------------------------------------

    def _inode_of_path(self, path: Path) -> int:
        info = os.stat(path)
        return self._inodes[(info.st_dev, info.st_ino)]

    def _inode_of_fd(self, fd: int) -> int:
        info = os.fstat(fd)
        return self._inodes[(info.st_dev, info.st_ino)]

    def _new_inode(self, info: os.stat_result) -> int:
        # A fresh number even when the operating system reuses the inode of a file unlinked earlier.
        number = next(self._numbers)
        self._inodes[(info.st_dev, info.st_ino)] = number
        return number

    def _parent_and_name(self, path: Path) -> tuple[int, str]:
        path = Path(path)
        return self._inode_of_path(path.parent), path.name

    # -- recorded operations -------------------------------------------------------------------------------

    def create_exclusive(self, path: Path) -> int:
        with self._lock:
            fd = super().create_exclusive(path)
            parent, name = self._parent_and_name(path)
            self.trace.append(("create", parent, name, self._new_inode(os.fstat(fd))))
            return fd

    def open_or_create(self, path: Path) -> int:
        with self._lock:
            existed = os.path.exists(path)
            fd = super().open_or_create(path)
            if not existed:
                parent, name = self._parent_and_name(path)
                self.trace.append(("create", parent, name, self._new_inode(os.fstat(fd))))
            return fd

    def mkdir(self, path: Path) -> None:
        with self._lock:
            super().mkdir(path)
            parent, name = self._parent_and_name(path)
            self.trace.append(("mkdir", parent, name, self._new_inode(os.stat(path))))

    def write(self, fd: int, data: bytes | bytearray | memoryview) -> None:
        with self._lock:
            super().write(fd, data)
            end = os.lseek(fd, 0, os.SEEK_CUR)  # for an O_APPEND descriptor too: the end of what was written
            self.trace.append(("write", self._inode_of_fd(fd), end - len(data), bytes(data)))

    def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
        with self._lock:
            super().pwrite(fd, data, offset)
            self.trace.append(("write", self._inode_of_fd(fd), offset, bytes(data)))

    def ftruncate(self, fd: int, length: int) -> None:
        with self._lock:
            super().ftruncate(fd, length)
            self.trace.append(("truncate", self._inode_of_fd(fd), length))

    def fsync(self, fd: int) -> None:
        with self._lock:
            super().fsync(fd)
            self.trace.append(("sync", self._inode_of_fd(fd)))

    def fdatasync(self, fd: int) -> None:
        with self._lock:
            super().fdatasync(fd)
            self.trace.append(("sync", self._inode_of_fd(fd)))

    def rename(self, source: Path, destination: Path) -> None:
        with self._lock:
            source_parent, source_name = self._parent_and_name(source)
            inode = self._inode_of_path(source)
            super().rename(source, destination)
            destination_parent, destination_name = self._parent_and_name(destination)
            self.trace.append(("rename", source_parent, source_name, destination_parent, destination_name, inode))

    def unlink(self, path: Path) -> None:
        with self._lock:
            parent, name = self._parent_and_name(path)
            super().unlink(path)
            self.trace.append(("unlink", parent, name))

    def fsync_dir(self, path: Path) -> None:
        with self._lock:
            super().fsync_dir(path)
            self.trace.append(("sync_dir", self._inode_of_path(path)))


# -- the model -----------------------------------------------------------------------------------------------


@dataclass
class _File:
    synced: bytes = b""
    live: bytearray = field(default_factory=bytearray)
    unsynced: list[tuple[Any, ...]] = field(default_factory=list)  # ("write", offset, data) / ("truncate", n)


@dataclass
class _Directory:
    synced: dict[str, int] = field(default_factory=dict)
    live: dict[str, int] = field(default_factory=dict)
    # ("add", name, inode) / ("remove", name) / ("rename", source, destination, inode): the last one is atomic
    unsynced: list[tuple[Any, ...]] = field(default_factory=list)


@dataclass
class Model:
    files: dict[int, _File] = field(default_factory=dict)
    directories: dict[int, _Directory] = field(default_factory=lambda: {ROOT_INODE: _Directory()})
    acknowledged: list[tuple[Any, ...]] = field(default_factory=list)
    last_data_operation: tuple[Any, ...] | None = None  # the newest write, if it is the trace's last boundary


def _apply_data(content: bytearray, operation: tuple[Any, ...]) -> None:
    if operation[0] == "write":
        _, offset, data = operation
        if len(content) < offset:
            content.extend(bytes(offset - len(content)))
        content[offset : offset + len(data)] = data
    else:
        del content[operation[1] :]
        # (a truncation that extends is never used by storage)


def _apply_entries(entries: dict[str, int], operation: tuple[Any, ...]) -> None:
    kind = operation[0]
    if kind == "add":
        entries[operation[1]] = operation[2]
    elif kind == "remove":
        entries.pop(operation[1], None)
    else:
        _, source, destination, inode = operation
        entries.pop(source, None)
        entries[destination] = inode


def build_model(trace: Trace, point: int) -> Model:
    """The model after the first ``point`` operations of ``trace``."""
    model = Model()
    files, directories = model.files, model.directories
    for operation in trace[:point]:
        kind = operation[0]
        model.last_data_operation = None
        if kind == "ack":
            model.acknowledged.append(operation[1])
        elif kind in ("create", "mkdir"):
            _, parent, name, inode = operation
            if kind == "create":
                files[inode] = _File()
            else:
                directories[inode] = _Directory()
            directories[parent].live[name] = inode
            directories[parent].unsynced.append(("add", name, inode))
        elif kind == "write":
            _, inode, offset, data = operation
            file = files[inode]
            data_operation = ("write", offset, data)
            _apply_data(file.live, data_operation)
            file.unsynced.append(data_operation)
            model.last_data_operation = (inode, offset, data)
        elif kind == "truncate":
            _, inode, length = operation
            files[inode].unsynced.append(("truncate", length))
            _apply_data(files[inode].live, ("truncate", length))
        elif kind == "sync":
            file = files[operation[1]]
            file.synced = bytes(file.live)
            file.unsynced = []
        elif kind == "sync_dir":
            directory = directories[operation[1]]
            directory.synced = dict(directory.live)
            directory.unsynced = []
        elif kind == "rename":
            _, source_parent, source_name, destination_parent, destination_name, inode = operation
            if source_parent == destination_parent:
                change: tuple[Any, ...] = ("rename", source_name, destination_name, inode)
                _apply_entries(directories[source_parent].live, change)
                directories[source_parent].unsynced.append(change)
            else:
                # Two directories, each made durable by its own fsync: the halves persist independently.
                for parent, change in (
                    (source_parent, ("remove", source_name)),
                    (destination_parent, ("add", destination_name, inode)),
                ):
                    _apply_entries(directories[parent].live, change)
                    directories[parent].unsynced.append(change)
        elif kind == "unlink":
            _, parent, name = operation
            change = ("remove", name)
            _apply_entries(directories[parent].live, change)
            directories[parent].unsynced.append(change)
        else:
            raise AssertionError(f"unknown operation {kind}")
    return model


def boundaries(trace: Trace) -> list[int]:
    """Crash points: before the first operation and just after every operation that changes what a disk holds."""
    return [0] + [index + 1 for index, operation in enumerate(trace) if operation[0] in BOUNDARY_OPERATIONS]


# -- crash states ---------------------------------------------------------------------------------------------


def _zeroed_before_intact(live: bytes, content: bytes) -> bool:
    """True if ``content`` reads as zero where ``live`` (what was written) is not, and later holds written,
    non-zero bytes."""
    if content == live:
        return False
    length = min(len(live), len(content))
    first = next((i for i in range(length) if content[i] == 0 and live[i] != 0), None)
    if first is None:
        return False
    return any(content[j] != 0 and content[j] == live[j] for j in range(first + 1, length))


def _materialise(model: Model, entries_of: Any, content_of: Any) -> tuple[State, bool]:
    """The state, and whether it is holed (see ``CrashState``)."""
    state: State = {}
    holed = False

    def walk(inode: int, prefix: str) -> None:
        nonlocal holed
        for name, child in sorted(entries_of(inode).items()):
            path = f"{prefix}{name}"
            if child in model.directories:
                state[path] = None
                walk(child, path + "/")
            else:
                content = content_of(child)
                state[path] = content
                holed = holed or _zeroed_before_intact(bytes(model.files[child].live), content)

    walk(ROOT_INODE, "")
    return state, holed


def _synced_entries(model: Model) -> Any:
    return lambda inode: model.directories[inode].synced


def _live_entries(model: Model) -> Any:
    return lambda inode: model.directories[inode].live


def _torn(model: Model, sector: int, *, zero_rest: bool) -> tuple[State, bool] | None:
    if model.last_data_operation is None:
        return None
    torn_inode, offset, data = model.last_data_operation
    cut = (offset // sector + 1) * sector
    if cut >= offset + len(data):
        return None  # the write fits in one sector: it landed whole or not at all

    def content(inode: int) -> bytes:
        file = model.files[inode]
        if inode != torn_inode:
            return bytes(file.live)
        before = bytearray(file.synced)
        for operation in file.unsynced[:-1]:
            _apply_data(before, operation)
        end = offset + len(data)
        kept = data[: cut - offset] + (bytes(end - cut) if zero_rest else b"")
        _apply_data(before, ("write", offset, kept))
        if not zero_rest and len(file.live) > end:
            return bytes(file.live)  # an overwrite inside the file: a cut cannot shorten it
        return bytes(before)

    return _materialise(model, _live_entries(model), content)


def _hole(model: Model, sector: int) -> tuple[State, bool] | None:
    holed = False

    def content(inode: int) -> bytes:
        nonlocal holed
        file = model.files[inode]
        live = bytearray(file.live)
        start = len(file.synced)
        hole_end = min(len(live), (start // sector + 1) * sector)
        if start < hole_end < len(live) and live[: len(file.synced)] == file.synced:
            live[start:hole_end] = bytes(hole_end - start)
            holed = True
        return bytes(live)

    materialised = _materialise(model, _live_entries(model), content)
    return materialised if holed else None


def _random_hole(model: Model, rng: random.Random) -> tuple[State, bool] | None:
    holed = False

    def content(inode: int) -> bytes:
        nonlocal holed
        file = model.files[inode]
        live = bytearray(file.live)
        first = -(-len(file.synced) // 512)
        last = len(live) // 512  # sectors wholly inside the data, after the synced part
        if first < last and live[: len(file.synced)] == file.synced:
            sector = rng.randrange(first, last) * 512
            live[sector : sector + 512] = bytes(512)
            holed = True
        return bytes(live)

    materialised = _materialise(model, _live_entries(model), content)
    return materialised if holed else None


def _random(model: Model, rng: random.Random) -> tuple[State, bool]:
    kept_entries = {}
    for inode, directory in model.directories.items():
        entries = dict(directory.synced)
        for change in directory.unsynced[: rng.randint(0, len(directory.unsynced))]:
            _apply_entries(entries, change)
        kept_entries[inode] = entries

    def content(inode: int) -> bytes:
        file = model.files[inode]
        result = bytearray(file.synced)
        for operation in file.unsynced:
            if rng.random() < 0.5:
                _apply_data(result, operation)
        if len(result) < len(file.live) and rng.random() < 0.5:
            result.extend(bytes(len(file.live) - len(result)))  # the size reached the disk, the data did not
        return bytes(result)

    return _materialise(model, kept_entries.__getitem__, content)


def crash_states(model: Model, rng: random.Random, random_draws: int = 1) -> Iterator[CrashState]:
    """The crash states of ``model``; kinds that do not apply at this point are left out. The seeded kinds
    (``hole-random``, ``random``) are drawn ``random_draws`` times."""
    synced_content = lambda inode: model.files[inode].synced  # noqa: E731
    live_content = lambda inode: bytes(model.files[inode].live)  # noqa: E731
    yield CrashState("dropped", *_materialise(model, _synced_entries(model), synced_content))
    yield CrashState("kept", *_materialise(model, _live_entries(model), live_content))
    yield CrashState("dirs-reverted", *_materialise(model, _synced_entries(model), live_content))
    for sector in (512, 4096):
        for zero_rest in (False, True):
            torn = _torn(model, sector, zero_rest=zero_rest)
            if torn is not None:
                yield CrashState(f"torn-{sector}-{'zero' if zero_rest else 'short'}", *torn)
        holed = _hole(model, sector)
        if holed is not None:
            yield CrashState(f"hole-{sector}", *holed)
    for _ in range(random_draws):
        holed = _random_hole(model, rng)
        if holed is not None:
            yield CrashState("hole-random", *holed)
        yield CrashState("random", *_random(model, rng))


def fingerprint(state: State) -> str:
    digest = hashlib.sha256()
    for path, content in sorted(state.items()):
        digest.update(path.encode() + b"\0")
        digest.update(b"D" if content is None else b"F" + hashlib.sha256(content).digest())
    return digest.hexdigest()


def write_state(state: State, destination: Path) -> None:
    destination.mkdir(parents=True, exist_ok=True)
    for path, content in sorted(state.items()):
        target = destination / path
        if content is None:
            target.mkdir(mode=0o700)
        else:
            target.write_bytes(content)
            target.chmod(0o600)

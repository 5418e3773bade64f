"""A FUSE file system that forgets, at a power cut, everything a POSIX file system is allowed to forget.

Run as its own process (``python -m tests.crash.powercut_fs BACKING MOUNTPOINT``; :class:`PowerCutMount` does it
for the tests). Everything the mounted file system shows lives in this process's memory; only what has been made
durable by the rules below is written to ``BACKING``. A **power cut is SIGKILL of this process**: its memory, and
with it every change not yet durable, is gone, exactly as a machine's page cache is at a power loss. Mounting
``BACKING`` again shows the durable state, and nothing else.

Durability model: the strictest one POSIX and Linux permit (what ext4, xfs and btrfs each promise at least)
-------------------------------------------------------------------------------------------------------------

* ``write``, ``truncate``, ``create``, ``mkdir``, ``rename``, ``unlink``, ``rmdir``, ``chmod`` change only the live
  (in-memory) state. ``close`` makes nothing durable, nor does the death of the process that wrote.
* ``fsync`` or ``fdatasync`` of a file makes its **contents and size** durable, as they are at that moment
  (``fdatasync`` is no weaker here: it must persist the size needed to read the data back). It does **not**
  make the file's name durable, not even for a file just created: the entry is the directory's business.
* ``fsync`` of a directory makes the **set of its entries** durable as it is at that moment: names created,
  renamed in or out, and unlinked since its last fsync, with each entry's mode. Nothing else: not the contents
  of the files it names, not the entries of its subdirectories, and not its own entry in its parent (a
  directory created by ``mkdir`` survives only once its parent is fsynced too).
* Each directory is made durable on its own, so a ``rename`` between two directories whose destination alone was
  fsynced leaves the file under both names after the cut (a hard link; POSIX allows it), and one whose source
  alone was fsynced leaves it under neither.
* After the cut, a file whose name survived holds exactly the contents of its last fsync, or is empty if it was
  never fsynced; a directory whose name survived holds exactly the entries of its last fsync, or none.

What it does not model, because no cut can show it more strictly than the above: torn or reordered writes
within the unsynced tail (the whole unsynced tail is dropped; the file-layer seam's simulation in
``tests/storage/fakes.py`` covers torn tails), timestamps, ownership (every file belongs to the mounting user),
hard links made by ``link`` (refused), symlinks, extended attributes, and ``flock`` (left to the kernel, which
keeps such locks per mount).

Layout of ``BACKING`` (the durable state only): ``dirs/<inode>.json`` holds a directory's durable entries
(``{name: [inode, is_directory, mode]}``; inode 1 is the root) and ``inodes/<inode>`` a file's durable contents.
Each is replaced atomically (temporary file and rename) so that killing this process never tears them.
Unreachable inodes are deleted at mount.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT_INODE = 1
REPOSITORY = Path(__file__).resolve().parents[2]
MOUNT_TIMEOUT = 20.0


# ---------------------------------------------------------------- the file system (runs in its own process)


@dataclass
class Node:
    inode: int
    is_dir: bool
    data: bytearray = field(default_factory=bytearray)  # live contents of a file
    entries: dict[str, tuple[int, int]] = field(default_factory=dict)  # live entries of a directory: inode, mode


@dataclass
class Handle:
    inode: int
    append: bool


def _replace_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def build_operations() -> Any:
    """The FUSE operations class (defined here so that importing this module needs no libfuse)."""
    import mfusepy
    from mfusepy import FuseOSError

    class PowerCutOperations(mfusepy.Operations):  # type: ignore[misc]
        use_ns = True

        def __init__(self, backing: Path) -> None:
            self.backing = backing
            (backing / "dirs").mkdir(parents=True, exist_ok=True)
            (backing / "inodes").mkdir(parents=True, exist_ok=True)
            self.nodes: dict[int, Node] = {}
            self.modes: dict[int, int] = {ROOT_INODE: 0o755}
            self.handles: dict[int, Handle] = {}
            self.next_handle = 1
            self._load()

        # -- durable state ---------------------------------------------------------------------------------

        def _load(self) -> None:
            def load(inode: int, is_dir: bool) -> None:
                if inode in self.nodes:
                    return
                node = Node(inode, is_dir)
                self.nodes[inode] = node
                if is_dir:
                    path = self.backing / "dirs" / f"{inode}.json"
                    if path.exists():
                        for name, (child, child_is_dir, mode) in json.loads(path.read_text()).items():
                            node.entries[name] = (child, mode)
                            self.modes[child] = mode
                            load(child, bool(child_is_dir))
                else:
                    path = self.backing / "inodes" / str(inode)
                    node.data = bytearray(path.read_bytes()) if path.exists() else bytearray()

            load(ROOT_INODE, True)
            known = [ROOT_INODE]
            for folder in ("dirs", "inodes"):
                for path in (self.backing / folder).iterdir():
                    number = int(path.name.split(".")[0])
                    known.append(number)
                    if number not in self.nodes or path.name.endswith(".tmp"):
                        path.unlink()
            self.next_inode = max(known) + 1

        def _persist_file(self, node: Node) -> None:
            _replace_atomically(self.backing / "inodes" / str(node.inode), bytes(node.data))

        def _persist_dir(self, node: Node) -> None:
            entries = {
                name: [inode, self.nodes[inode].is_dir, mode]
                for name, (inode, mode) in sorted(node.entries.items())
            }
            _replace_atomically(self.backing / "dirs" / f"{node.inode}.json", json.dumps(entries).encode())

        # -- lookup ----------------------------------------------------------------------------------------

        def _resolve(self, path: str) -> Node:
            node = self.nodes[ROOT_INODE]
            for part in (p for p in path.split("/") if p):
                if not node.is_dir:
                    raise FuseOSError(errno.ENOTDIR)
                entry = node.entries.get(part)
                if entry is None:
                    raise FuseOSError(errno.ENOENT)
                node = self.nodes[entry[0]]
            return node

        def _parent(self, path: str) -> tuple[Node, str]:
            head, _, name = path.rstrip("/").rpartition("/")
            parent = self._resolve(head or "/")
            if not parent.is_dir:
                raise FuseOSError(errno.ENOTDIR)
            return parent, name

        def _node(self, path: str | None, fh: int | None) -> Node:
            if fh is not None and fh in self.handles:
                return self.nodes[self.handles[fh].inode]
            if path is None:
                raise FuseOSError(errno.EBADF)
            return self._resolve(path)

        def _new_handle(self, inode: int, flags: int) -> int:
            handle = self.next_handle
            self.next_handle += 1
            self.handles[handle] = Handle(inode, bool(flags & os.O_APPEND))
            return handle

        def _add(self, path: str, is_dir: bool, mode: int) -> Node:
            parent, name = self._parent(path)
            if name in parent.entries:
                raise FuseOSError(errno.EEXIST)
            node = Node(self.next_inode, is_dir)
            self.next_inode += 1
            self.nodes[node.inode] = node
            self.modes[node.inode] = stat.S_IMODE(mode)
            parent.entries[name] = (node.inode, stat.S_IMODE(mode))
            return node

        # -- operations ------------------------------------------------------------------------------------

        def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
            node = self._node(path, fh)
            kind = stat.S_IFDIR if node.is_dir else stat.S_IFREG
            now = time.time_ns()
            return {
                "st_mode": kind | self.modes.get(node.inode, 0o600),
                "st_nlink": 2 if node.is_dir else 1,
                "st_size": 0 if node.is_dir else len(node.data),
                "st_uid": os.getuid(),
                "st_gid": os.getgid(),
                "st_atime": now,
                "st_mtime": now,
                "st_ctime": now,
            }

        def readdir(self, path: str | None, fh: int) -> list[str]:
            node = self._node(path, fh)
            return [".", "..", *node.entries]

        def mkdir(self, path: str, mode: int) -> int:
            self._add(path, True, mode)
            return 0

        def create(self, path: str, mode: int, flags: int = 0) -> int:
            node = self._add(path, False, mode)
            return self._new_handle(node.inode, flags)

        def open(self, path: str, flags: int) -> int:
            node = self._resolve(path)
            if node.is_dir:
                raise FuseOSError(errno.EISDIR)
            return self._new_handle(node.inode, flags)

        def release(self, path: str | None, fh: int) -> int:
            self.handles.pop(fh, None)
            return 0

        def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
            return bytes(self._node(path, fh).data[offset : offset + size])

        def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
            node = self._node(path, fh)
            handle = self.handles.get(fh)
            if handle is not None and handle.append:
                offset = len(node.data)
            if offset > len(node.data):
                node.data.extend(bytes(offset - len(node.data)))
            node.data[offset : offset + len(data)] = data
            return len(data)

        def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
            node = self._node(path, fh)
            if length < len(node.data):
                del node.data[length:]
            else:
                node.data.extend(bytes(length - len(node.data)))
            return 0

        def fsync(self, path: str | None, datasync: int, fh: int) -> int:
            node = self._node(path, fh)
            if not node.is_dir:
                self._persist_file(node)
            return 0

        def opendir(self, path: str) -> int:
            node = self._resolve(path)
            if not node.is_dir:
                raise FuseOSError(errno.ENOTDIR)
            return self._new_handle(node.inode, 0)

        def releasedir(self, path: str | None, fh: int) -> int:
            self.handles.pop(fh, None)
            return 0

        def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
            self._persist_dir(self._node(path, fh))
            return 0

        def rename(self, old: str, new: str) -> int:
            source_parent, source_name = self._parent(old)
            entry = source_parent.entries.get(source_name)
            if entry is None:
                raise FuseOSError(errno.ENOENT)
            target_parent, target_name = self._parent(new)
            existing = target_parent.entries.get(target_name)
            if existing is not None and self.nodes[existing[0]].entries:
                raise FuseOSError(errno.ENOTEMPTY)  # a directory replaced by a rename must be empty
            del source_parent.entries[source_name]
            target_parent.entries[target_name] = entry
            return 0

        def unlink(self, path: str) -> int:
            parent, name = self._parent(path)
            entry = parent.entries.get(name)
            if entry is None:
                raise FuseOSError(errno.ENOENT)
            if self.nodes[entry[0]].is_dir:
                raise FuseOSError(errno.EISDIR)
            del parent.entries[name]
            return 0

        def rmdir(self, path: str) -> int:
            parent, name = self._parent(path)
            node = self._resolve(path)
            if not node.is_dir:
                raise FuseOSError(errno.ENOTDIR)
            if node.entries:
                raise FuseOSError(errno.ENOTEMPTY)
            del parent.entries[name]
            return 0

        def chmod(self, path: str | None, mode: int) -> int:
            if path is None:
                raise FuseOSError(errno.EBADF)
            parent, name = self._parent(path)
            inode, _ = parent.entries[name]
            parent.entries[name] = (inode, stat.S_IMODE(mode))
            self.modes[inode] = stat.S_IMODE(mode)
            return 0

        def chown(self, path: str | None, uid: int, gid: int) -> int:
            return 0

        def utimens(self, path: str | None, times: Any = None) -> int:
            return 0

        def link(self, target: str, source: str) -> int:
            raise FuseOSError(errno.EPERM)

        def statfs(self, path: str) -> dict[str, int]:
            return {
                "f_bsize": 4096,
                "f_frsize": 4096,
                "f_blocks": 1 << 20,
                "f_bfree": 1 << 19,
                "f_bavail": 1 << 19,
            }

    return PowerCutOperations


def main(argv: list[str]) -> int:
    import mfusepy

    backing, mountpoint = Path(argv[0]), argv[1]
    operations = build_operations()(backing)
    # One thread: operations are applied in the order the kernel sends them, with no locking to get wrong. No
    # attribute or entry caching, so the kernel asks this process about every size and name (O_APPEND offsets).
    mfusepy.FUSE(
        operations,
        mountpoint,
        foreground=True,
        nothreads=True,
        hard_remove=True,
        attr_timeout=0,
        entry_timeout=0,
        negative_timeout=0,
        fsname="powercut",
    )
    return 0


# ---------------------------------------------------------------- the test side


def fuse_missing() -> str | None:
    """What this machine lacks to mount the file system, or None."""
    if not Path("/dev/fuse").exists():
        return "/dev/fuse (the FUSE kernel module)"
    if subprocess.run(["which", "fusermount3"], capture_output=True, check=False).returncode != 0:
        return "fusermount3 (Debian package fuse3; scripts/setup-system installs it)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as error:
        return f"libfuse3 or the mfusepy bindings ({error}; scripts/setup and scripts/setup-system install them)"
    return None


class PowerCutMount:
    """The file system mounted at ``mountpoint`` over ``backing``, in a child process."""

    def __init__(self, backing: Path, mountpoint: Path, log_path: Path) -> None:
        self.backing = backing
        self.mountpoint = mountpoint
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.cuts = 0

    def mount(self) -> PowerCutMount:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.crash.powercut_fs", str(self.backing), str(self.mountpoint)],
                cwd=REPOSITORY,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not os.path.ismount(self.mountpoint):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self._detach()
                raise AssertionError(
                    f"the power-cut file system did not mount at {self.mountpoint}:\n"
                    + self.log_path.read_text(errors="replace")[-4000:]
                )
            time.sleep(0.02)
        return self

    def cut_power(self) -> None:
        """SIGKILL the file system: everything not durable under the model above is lost. Then detach the dead
        mount so that the same mountpoint can be mounted again."""
        assert self.process is not None and self.process.poll() is None, "the file system is not mounted"
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.cuts += 1
        self._detach()

    def _detach(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self.process = None
        subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], capture_output=True, check=False)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._detach()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A disk that fills up at any step of an import: the import fails with a clear error and changes nothing.

Through the file-layer seam: `DiskFillsAt(n)` is the plain `FileOps` whose space runs out at the n-th operation
that needs space or makes something durable once armed (write, create, rename, fsync...): that operation and every
later one fail with ENOSPC (a full disk stays full; a write that meets the end of the space writes half its data
first). A calibration run counts the import's steps; then, for every n, an import on a copy of the same directory
meets a full disk at step n. After each, the directory is reopened with plain FileOps (the space freed): it must
hold exactly what it held before the import or exactly what the whole import leaves (see below), never a part,
and the same import must then succeed and leave exactly what the calibration run left.
"""

from __future__ import annotations

import errno
import io
import shutil
from pathlib import Path

from sidecar.errors import SidecarError
from sidecar.storage import FileOps, StorageIOError
from sidecar.store import Store, StoreOptions
from tests.service.helpers import ROOT, Entry, interchange_document
from tests.support.keys import pubkey, signing_root

KNOWN = pubkey(1)
DOCUMENT = interchange_document(
    [
        Entry(KNOWN, blocks=((7, signing_root(1)),), attestations=((3, 4, signing_root(2)),)),
        *(
            Entry(pubkey(10 + i), blocks=((i + 1, signing_root(i)),), attestations=((i, i + 1, None),))
            for i in range(20)
        ),
    ]
)
SEGMENT_BYTES = 4096  # the import's records span segments: rotations are steps too


class DiskFillsAt(FileOps):
    """Plain FileOps until armed; then the `fail_at`-th space-needing operation and all after it fail (ENOSPC)."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.armed = False
        self.steps = 0

    def _step(self, operation: str, path: Path | None) -> bool:
        """Counts a step; True when the disk is full from this step on."""
        if not self.armed:
            return False
        self.steps += 1
        return self.fail_at is not None and self.steps >= self.fail_at

    def _full(self, operation: str, path: Path | None) -> StorageIOError:
        return StorageIOError(operation, path, errno.ENOSPC, "No space left on device")

    def write(self, fd: int, data: bytes | bytearray | memoryview) -> None:
        if self._step("write", self.path_of(fd)):
            super().write(fd, memoryview(data)[: len(data) // 2])
            raise self._full("write", self.path_of(fd))
        super().write(fd, data)

    def pwrite(self, fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
        if self._step("pwrite", self.path_of(fd)):
            raise self._full("pwrite", self.path_of(fd))
        super().pwrite(fd, data, offset)

    def create_exclusive(self, path: Path) -> int:
        if self._step("create_exclusive", path):
            raise self._full("create_exclusive", path)
        return super().create_exclusive(path)

    def mkdir(self, path: Path) -> None:
        if self._step("mkdir", path):
            raise self._full("mkdir", path)
        super().mkdir(path)

    def rename(self, source: Path, destination: Path) -> None:
        if self._step("rename", destination):
            raise self._full("rename", source)
        super().rename(source, destination)

    def fsync(self, fd: int) -> None:
        if self._step("fsync", self.path_of(fd)):
            raise self._full("fsync", self.path_of(fd))
        super().fsync(fd)

    def fdatasync(self, fd: int) -> None:
        if self._step("fdatasync", self.path_of(fd)):
            raise self._full("fdatasync", self.path_of(fd))
        super().fdatasync(fd)

    def fsync_dir(self, path: Path) -> None:
        if self._step("fsync_dir", path):
            raise self._full("fsync_dir", path)
        super().fsync_dir(path)


def options(fileops: FileOps) -> StoreOptions:
    return StoreOptions(segment_bytes=SEGMENT_BYTES, fileops=fileops)


def exported(data_dir: Path) -> bytes:
    store = Store.open_or_create(data_dir, None, options(FileOps()))
    try:
        out = io.BytesIO()
        store.export_interchange(out, None)
        return out.getvalue()
    finally:
        store.close(final_checkpoint=False)


def import_with(data_dir: Path, fileops: DiskFillsAt) -> None:
    store = Store.open_or_create(data_dir, None, options(fileops))
    try:
        fileops.armed = True
        store.import_interchange(io.BytesIO(DOCUMENT))
    finally:
        fileops.armed = False
        store.close(final_checkpoint=False)


def test_a_disk_filling_at_any_step_of_an_import_changes_nothing(tmp_path: Path) -> None:
    base = tmp_path / "base"
    store = Store.open_or_create(base, ROOT, options(FileOps()))
    store.register_validators([KNOWN, pubkey(2)])
    store.close()
    before = exported(base)

    calibration = DiskFillsAt()
    shutil.copytree(base, tmp_path / "calibration")
    import_with(tmp_path / "calibration", calibration)
    after = exported(tmp_path / "calibration")
    steps = calibration.steps
    assert after != before and steps >= 3, steps

    outcomes: dict[str, int] = {}
    for fail_at in range(1, steps + 1):
        data_dir = tmp_path / f"full-at-{fail_at}"
        shutil.copytree(base, data_dir)
        try:
            import_with(data_dir, DiskFillsAt(fail_at))
        except SidecarError as error:
            # A clear error, naming the disk's complaint, never a foreign exception.
            assert "No space left on device" in str(error) or isinstance(error.__cause__, StorageIOError), error
            outcome = type(error).__name__
        else:
            outcome = "completed"  # the disk filled only after the import was durable
        state = exported(data_dir)
        # All or nothing, never a part, and a failed import leaves nothing, then or later: the log rewrites what it
        # could not make durable once it can (here at close, the space freed), and a failed import's commit is
        # retracted before that, so it cannot take effect afterwards.
        expected = after if outcome == "completed" else before
        assert state == expected, f"full at step {fail_at} of {steps} ({outcome}): the import left another state"
        landed = "left nothing" if state == before else "took effect"
        outcomes[f"{outcome}, {landed}"] = outcomes.get(f"{outcome}, {landed}", 0) + 1
        # The space freed, the same import goes through and leaves what it leaves on a healthy disk.
        import_with(data_dir, DiskFillsAt())
        assert exported(data_dir) == after, f"full at step {fail_at}: the import after the failure differs"
        shutil.rmtree(data_dir)
    print(f"an import of {steps} steps met a full disk at each: {outcomes}")
    assert sum(count for outcome, count in outcomes.items() if "left nothing" in outcome) > 0, outcomes
    # The commit is one of the steps: a disk that fills at it fails the import, which must then leave nothing.
    assert not any(outcome.endswith("took effect") and not outcome.startswith("completed") for outcome in outcomes)

"""A failing disk: waiters are told, appends are refused, and the log heals itself without losing a sequence."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sidecar.storage import (
    DecisionLog,
    FileOps,
    LogUnavailableError,
    StorageIOError,
    list_segments,
    scan_log,
    segment_name,
)

from .damage import first_of_write_flags, payload_for
from .fakes import FaultyFileOps

FILEOPS = FileOps()


class Health:
    """Collects on_health_change reports from the flusher thread."""

    def __init__(self) -> None:
        self.reports: list[bool] = []
        self._changed = threading.Condition()

    def __call__(self, healthy: bool) -> None:
        with self._changed:
            self.reports.append(healthy)
            self._changed.notify_all()

    def wait_for(self, reports: list[bool], timeout: float = 10) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: self.reports == reports, timeout), self.reports


def open_faulty(directory: Path, fileops: FaultyFileOps, health: Health, **options) -> DecisionLog:
    return DecisionLog.open(
        directory,
        fileops=fileops,
        next_sequence=1,
        on_health_change=health,
        retry_interval=0.01,
        **options,
    )


def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def assert_clean_gapless(directory: Path, expected: dict[int, bytes]) -> None:
    scan = scan_log(directory, FILEOPS, 0)
    on_disk = {record.sequence: record.payload for record in scan}
    assert scan.torn_tail is None
    assert sorted(on_disk) == list(range(1, len(on_disk) + 1))
    assert on_disk == expected


@pytest.mark.parametrize(
    ("operation", "error", "partial"),
    [
        ("fdatasync", errno.EIO, False),
        ("fdatasync", errno.ENOSPC, False),
        ("write", errno.ENOSPC, True),
        ("write", errno.EIO, False),
    ],
    ids=["fdatasync-EIO", "fdatasync-ENOSPC", "partial-write-ENOSPC", "write-EIO"],
)
def test_failure_is_reported_refused_and_healed(tmp_path: Path, operation: str, error: int, partial: bool) -> None:
    fileops, health = FaultyFileOps(), Health()
    log = open_faulty(tmp_path, fileops, health)
    expected = {1: b"before"}
    log.wait_durable(log.append(1, b"before"))

    # The recovery path rewrites with write + fsync, so both fsync flavours fail while the disk is bad.
    fileops.fail(operation, error, partial=partial)
    if operation == "fdatasync":
        fileops.fail("fsync", error)
    doomed = log.append(1, b"doomed")
    expected[doomed] = b"doomed"
    with pytest.raises(LogUnavailableError) as raised:
        log.wait_durable(doomed)
    assert isinstance(raised.value.__cause__, LogUnavailableError)
    assert isinstance(raised.value.__cause__.__cause__, StorageIOError)
    assert raised.value.__cause__.__cause__.errno == error
    health.wait_for([False])
    assert not log.healthy and log.durable_sequence == 1

    with pytest.raises(LogUnavailableError):
        log.append(1, b"refused")
    late: list[BaseException | None] = []
    log.add_durable_callback(doomed, late.append)
    assert len(late) == 1 and isinstance(late[0], LogUnavailableError)
    log.add_durable_callback(1, late.append)
    assert late[1] is None  # durable before the failure: still durable

    # The flusher keeps retrying (truncate + rewrite) and keeps failing while the fault lasts.
    retries_before = fileops.calls["ftruncate"]
    wait_until(lambda: fileops.calls["ftruncate"] >= retries_before + 3)
    assert not log.healthy and log.durable_sequence == 1

    fileops.heal()
    health.wait_for([False, True])
    assert log.healthy
    assert log.durable_sequence == doomed  # rewritten with its own sequence number
    after = log.append(1, b"after")
    expected[after] = b"after"
    log.wait_durable(after)
    log.close()
    assert_clean_gapless(tmp_path, expected)


class FailingWhileAppendsArrive(FileOps):
    """fdatasync blocks until released, then fails once: appends made meanwhile are pending at the failure."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.inside = threading.Event()
        self.release = threading.Event()

    def fdatasync(self, fd: int) -> None:
        if self.armed:
            self.armed = False
            self.inside.set()
            self.release.wait(10)
            raise StorageIOError("fdatasync", None, errno.EIO, "injected")
        super().fdatasync(fd)


def test_records_queued_during_the_failed_fsync_are_rewritten_too(tmp_path: Path) -> None:
    fileops, health = FailingWhileAppendsArrive(), Health()
    log = DecisionLog.open(
        tmp_path, fileops=fileops, next_sequence=1, on_health_change=health, retry_interval=0.01
    )
    errors: list[BaseException | None] = []
    fileops.armed = True
    first = log.append(1, payload_for(1))
    log.add_durable_callback(first, errors.append)
    assert fileops.inside.wait(5)
    queued = log.append_many([(1, payload_for(n)) for n in range(2, 6)])
    log.add_durable_callback(queued, errors.append)
    log.add_durable_callback(queued + 10, errors.append)  # a sequence not even appended yet
    fileops.release.set()
    health.wait_for([False, True])
    assert len(errors) == 3 and all(isinstance(error, LogUnavailableError) for error in errors)
    assert log.durable_sequence == 5
    log.wait_durable(log.append(1, payload_for(6)))
    log.close()
    assert_clean_gapless(tmp_path, {n: payload_for(n) for n in range(1, 7)})
    # The rewrite of 1..5 was one write: its first record marked, the records queued meanwhile not.
    assert first_of_write_flags(tmp_path / segment_name(1)) == [True, False, False, False, False, True]


def test_failed_rotation_is_retried(tmp_path: Path) -> None:
    fileops, health = FaultyFileOps(), Health()
    log = open_faulty(tmp_path, fileops, health, segment_bytes=512)
    fileops.fail("create_exclusive", errno.ENOSPC)
    expected = {n: payload_for(n, 150) for n in range(1, 6)}
    log.append_many([(1, expected[n]) for n in range(1, 6)])  # one batch, then the segment is full
    health.wait_for([False])  # the batch filled the segment, and the next one could not be created
    assert log.segment_count == 1
    assert log.durable_sequence == 5  # the records themselves were fsynced before rotating
    with pytest.raises(LogUnavailableError):
        log.append(1, b"refused")
    fileops.heal()
    health.wait_for([False, True])
    assert log.segment_count == 2
    expected[6] = payload_for(6, 150)
    log.wait_durable(log.append(1, expected[6]))
    log.close()
    assert [s.first_sequence for s in list_segments(tmp_path, FILEOPS)] == [1, 6]
    assert_clean_gapless(tmp_path, expected)


class FailingRotationWhileAppendsArrive(FileOps):
    """fdatasync blocks until released (appends arrive meanwhile), then creating the next segment fails once."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.inside = threading.Event()
        self.release = threading.Event()

    def fdatasync(self, fd: int) -> None:
        if self.armed:
            self.inside.set()
            self.release.wait(10)
        super().fdatasync(fd)

    def create_exclusive(self, path: Path) -> int:
        if self.armed:
            self.armed = False
            raise StorageIOError("open", path, errno.ENOSPC, "injected")
        return super().create_exclusive(path)


def test_a_rewrite_that_begins_with_records_never_written_marks_its_first(tmp_path: Path) -> None:
    """After a failed rotation the rewrite holds only records queued meanwhile, none of them marked yet."""
    fileops, health = FailingRotationWhileAppendsArrive(), Health()
    log = DecisionLog.open(
        tmp_path,
        fileops=fileops,
        next_sequence=1,
        on_health_change=health,
        retry_interval=0.01,
        segment_bytes=512,
    )
    fileops.armed = True
    log.append_many([(1, payload_for(n, 150)) for n in range(1, 5)])  # fills the segment
    assert fileops.inside.wait(5)
    queued = log.append_many([(1, payload_for(n, 150)) for n in range(5, 8)])
    fileops.release.set()
    health.wait_for([False, True])
    log.wait_durable(queued)
    log.close()
    assert [s.first_sequence for s in list_segments(tmp_path, FILEOPS)] == [1, 5]
    assert first_of_write_flags(tmp_path / segment_name(5)) == [True, False, False]
    assert_clean_gapless(tmp_path, {n: payload_for(n, 150) for n in range(1, 8)})


def test_rotation_whose_directory_fsync_fails_is_retried(tmp_path: Path) -> None:
    fileops, health = FaultyFileOps(), Health()
    log = open_faulty(tmp_path, fileops, health, segment_bytes=512)
    fileops.fail("fsync_dir", errno.EIO, times=1)
    log.wait_durable(log.append_many([(1, payload_for(n, 150)) for n in range(1, 5)]))
    health.wait_for([False, True])
    log.wait_durable(log.append(1, payload_for(5, 150)))
    log.close()
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    assert_clean_gapless(tmp_path, {n: payload_for(n, 150) for n in range(1, 6)})


def test_close_while_failed_raises_and_appends_stay_refused(tmp_path: Path) -> None:
    fileops, health = FaultyFileOps(), Health()
    log = open_faulty(tmp_path, fileops, health)
    fileops.fail("fdatasync", errno.EIO)
    fileops.fail("fsync", errno.EIO)
    sequence = log.append(1, b"never durable")
    health.wait_for([False])
    with pytest.raises(LogUnavailableError, match="not durable"):
        log.close()
    assert log.durable_sequence == sequence - 1
    with pytest.raises(LogUnavailableError):
        log.append(1, b"after close")


def test_retry_now_skips_the_retry_interval(tmp_path: Path) -> None:
    fileops, health = FaultyFileOps(), Health()
    log = DecisionLog.open(
        tmp_path, fileops=fileops, next_sequence=1, on_health_change=health, retry_interval=3600
    )
    fileops.fail("fdatasync", errno.EIO, times=1)
    log.append(1, b"x")
    health.wait_for([False])
    log.retry_now()
    health.wait_for([False, True])
    log.close()
    assert_clean_gapless(tmp_path, {1: b"x"})


def test_health_hook_errors_are_contained(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def broken_hook(healthy: bool) -> None:
        raise RuntimeError("metrics exploded")

    fileops = FaultyFileOps()
    log = DecisionLog.open(
        tmp_path, fileops=fileops, next_sequence=1, on_health_change=broken_hook, retry_interval=0.01
    )
    fileops.fail("fdatasync", errno.EIO, times=1)
    sequence = log.append(1, b"x")
    wait_until(lambda: log.healthy and log.durable_sequence == sequence)
    log.close()
    assert any("on_health_change hook failed" in message for message in caplog.messages)


def test_a_failed_write_on_the_appending_thread_hands_recovery_to_the_flusher(tmp_path: Path) -> None:
    fileops, health = FaultyFileOps(), Health()
    log = DecisionLog.open(
        tmp_path, fileops=fileops, next_sequence=1, on_health_change=health, retry_interval=0.01
    )
    log.defer_wakeups_on_this_thread()
    errors: list[BaseException | None] = []
    fileops.fail("fdatasync", errno.EIO, times=1)
    first = log.append(1, payload_for(1))
    assert log.flush_here()
    assert log.durable_sequence == 0
    log.add_durable_callback(first, errors.append)  # the failure is already known
    assert len(errors) == 1 and isinstance(errors[0], LogUnavailableError)
    health.wait_for([False, True])  # the flusher rewrote the record
    assert log.durable_sequence == first
    log.close()
    assert_clean_gapless(tmp_path, {1: payload_for(1)})


@pytest.mark.parametrize("heal_before_close", [True, False], ids=["healed", "closed-while-failed"])
def test_a_retracted_record_is_rewritten_as_its_replacement_never_as_itself(
    tmp_path: Path, heal_before_close: bool
) -> None:
    fileops, health = FaultyFileOps(), Health()
    log = open_faulty(tmp_path, fileops, health)
    log.wait_durable(log.append(1, b"before"))
    fileops.fail("write", errno.ENOSPC, partial=True)
    fileops.fail("fsync", errno.ENOSPC)
    decision = log.append(1, b"decision")
    commit = log.append(5, b"commit 7")
    with pytest.raises(LogUnavailableError):
        log.wait_durable(commit)
    assert log.retract_last(commit, (5, b"commit 7"), (5, b"commit 0"))
    if heal_before_close:
        fileops.heal()
        health.wait_for([False, True])
        assert log.durable_sequence == commit
        log.close()
    else:
        with pytest.raises(LogUnavailableError):
            log.close()
        fileops.heal()
        # The next open finds what the failed writes left (a part of the rewrite), never the original record.
        payloads = [record.payload for record in scan_log(tmp_path, FILEOPS, 0)]
        assert payloads[0] == b"before" and b"commit 7" not in payloads, payloads
        return
    assert_clean_gapless(tmp_path, {1: b"before", decision: b"decision", commit: b"commit 0"})


def test_a_retracted_record_that_began_its_write_keeps_the_mark(tmp_path: Path) -> None:
    """The commit alone in the write that failed was queued for writing marked: the retraction finds it so, and
    the replacement takes the mark over (the rewrite begins with it)."""
    fileops, health = FaultyFileOps(), Health()
    log = open_faulty(tmp_path, fileops, health)
    log.wait_durable(log.append(1, b"before"))
    log.defer_wakeups_on_this_thread()
    fileops.fail("fdatasync", errno.EIO)
    fileops.fail("fsync", errno.EIO)
    commit = log.append(5, b"commit 7")
    assert log.flush_here()  # the commit alone is the write that fails
    with pytest.raises(LogUnavailableError):
        log.wait_durable(commit)
    assert log.retract_last(commit, (5, b"commit 7"), (5, b"commit 0"))
    fileops.heal()
    health.wait_for([False, True])
    log.close()
    assert_clean_gapless(tmp_path, {1: b"before", commit: b"commit 0"})
    assert first_of_write_flags(tmp_path / segment_name(1)) == [True, True]


def test_retracting_a_durable_record_changes_nothing(tmp_path: Path) -> None:
    log = DecisionLog.open(tmp_path, fileops=FILEOPS, next_sequence=1)
    sequence = log.append(5, b"commit 7")
    log.wait_durable(sequence)
    assert not log.retract_last(sequence, (5, b"commit 7"), (5, b"commit 0"))
    log.close()
    assert_clean_gapless(tmp_path, {1: b"commit 7"})


def test_retract_refuses_anything_but_the_last_record_as_given(tmp_path: Path) -> None:
    fileops, health = FaultyFileOps(), Health()
    log = open_faulty(tmp_path, fileops, health)
    fileops.fail("fdatasync", errno.EIO)
    fileops.fail("fsync", errno.EIO)
    first = log.append(1, b"first")
    last = log.append(5, b"commit 7")
    with pytest.raises(LogUnavailableError):
        log.wait_durable(last)
    with pytest.raises(ValueError, match="not the last"):
        log.retract_last(first, (1, b"first"), (1, b"tsrif"))
    with pytest.raises(ValueError, match="not record"):
        log.retract_last(last, (5, b"commit 8"), (5, b"commit 0"))
    with pytest.raises(ValueError, match="same length"):
        log.retract_last(last, (5, b"commit 7"), (5, b"none"))
    fileops.heal()
    health.wait_for([False, True])
    log.close()
    assert_clean_gapless(tmp_path, {first: b"first", last: b"commit 7"})


def test_retract_waits_for_a_rewrite_under_way(tmp_path: Path) -> None:
    """A rewrite that already took the bytes decides the record's fate: retract reports it durable."""
    fileops = BlockingRewrite()
    health = Health()
    log = DecisionLog.open(
        tmp_path, fileops=fileops, next_sequence=1, on_health_change=health, retry_interval=0.01
    )
    fileops.failing = True
    sequence = log.append(5, b"commit 7")
    with pytest.raises(LogUnavailableError):
        log.wait_durable(sequence)
    fileops.failing, fileops.blocking = False, True
    assert fileops.rewriting.wait(5)  # the rewrite holds the original bytes, blocked in its fsync
    outcome: list[bool] = []
    retracting = threading.Thread(
        target=lambda: outcome.append(log.retract_last(sequence, (5, b"commit 7"), (5, b"commit 0")))
    )
    retracting.start()
    retracting.join(0.2)
    assert retracting.is_alive() and not outcome  # waits for the rewrite's outcome
    fileops.release.set()
    retracting.join(5)
    assert outcome == [False]
    log.close()
    assert_clean_gapless(tmp_path, {1: b"commit 7"})


class BlockingRewrite(FileOps):
    """fdatasync and fsync fail while `failing`; while `blocking`, fsync (the rewrite's) waits until released."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = False
        self.blocking = False
        self.rewriting = threading.Event()
        self.release = threading.Event()

    def fdatasync(self, fd: int) -> None:
        if self.failing:
            raise StorageIOError("fdatasync", None, errno.EIO, "injected")
        super().fdatasync(fd)

    def fsync(self, fd: int) -> None:
        if self.failing:
            raise StorageIOError("fsync", None, errno.EIO, "injected")
        if self.blocking and not self.release.is_set():
            self.rewriting.set()
            self.release.wait(10)
        super().fsync(fd)

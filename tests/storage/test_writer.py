"""DecisionLog: appending, group commit, waiters, rotation, segment deletion, reopening, metrics, and the format it
writes (segment format 2: the first record of each write marked; a format-1 segment never appended to)."""

from __future__ import annotations

import itertools
import threading
import time
from pathlib import Path

import pytest

from sidecar.storage import (
    DecisionLog,
    FileOps,
    LogCorruptionError,
    LogUnavailableError,
    list_segments,
    read_records,
    scan_log,
    segment_name,
)
from sidecar.storage.framing import MAX_PAYLOAD_SIZE, SEGMENT_HEADER_SIZE, decode_segment_header

from .damage import append_bytes, first_of_write_flags, payload_for, write_segment
from .fakes import FaultyFileOps, GatedFileOps

FILEOPS = FileOps()


def open_log(directory: Path, **options) -> DecisionLog:
    options.setdefault("fileops", FILEOPS)
    options.setdefault("next_sequence", 1)
    return DecisionLog.open(directory, **options)


def sequences_on_disk(directory: Path) -> list[int]:
    return [record.sequence for record in scan_log(directory, FILEOPS, 0)]


def test_append_assigns_consecutive_sequences_and_wait_makes_them_durable(tmp_path: Path) -> None:
    with open_log(tmp_path, next_sequence=10) as log:
        assert log.durable_sequence == 9 and log.last_sequence == 9
        first = log.append(1, b"one")
        last = log.append_many([(2, b"two"), (3, b"three")])
        assert (first, last) == (10, 12)
        log.wait_durable(last)
        assert log.durable_sequence >= 12
    records = list(scan_log(tmp_path, FILEOPS, 9))
    assert [(r.sequence, r.record_type, r.payload) for r in records] == [
        (10, 1, b"one"),
        (11, 2, b"two"),
        (12, 3, b"three"),
    ]


def test_group_commit_covers_everything_pending_with_one_fsync(tmp_path: Path) -> None:
    fileops = GatedFileOps()
    batches: list[tuple[float, int, int]] = []
    with open_log(tmp_path, fileops=fileops, on_fsync=lambda *batch: batches.append(batch)) as log:
        fileops.gate.clear()
        log.append(1, b"first")
        assert fileops.in_fdatasync.wait(5)
        # The flusher is stuck in fdatasync: appends must neither block (this line would never finish) nor
        # become durable.
        sequences = [log.append(1, payload_for(n)) for n in range(2, 1002)]
        assert log.durable_sequence == 0
        fileops.gate.set()
        log.wait_durable(sequences[-1])
    assert fileops.fdatasyncs == 2
    assert [(records, size) for _, records, size in batches] == [(1, 22), (1000, sum(17 + 40 for _ in sequences))]
    assert all(seconds >= 0 for seconds, _, _ in batches)
    assert sequences_on_disk(tmp_path) == list(range(1, 1002))


def test_concurrent_appenders_all_durable_with_few_fsyncs(tmp_path: Path) -> None:
    fileops = FaultyFileOps()
    threads_count, per_thread = 8, 300
    claimed: dict[int, bytes] = {}
    claimed_lock = threading.Lock()
    errors: list[BaseException] = []

    with open_log(tmp_path, fileops=fileops, segment_bytes=64 * 1024) as log:

        def worker(worker_id: int) -> None:
            try:
                for n in range(per_thread):
                    payload = f"worker {worker_id} record {n}".encode()
                    sequence = log.append(1, payload)
                    log.wait_durable(sequence)
                    assert log.durable_sequence >= sequence
                    with claimed_lock:
                        claimed[sequence] = payload
            except BaseException as error:
                errors.append(error)

        workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads_count)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
    assert not errors
    total = threads_count * per_thread
    assert sorted(claimed) == list(range(1, total + 1))
    assert fileops.calls["fdatasync"] < total  # group commit: fewer fsyncs than records
    on_disk = {r.sequence: r.payload for r in scan_log(tmp_path, FILEOPS, 0)}
    assert on_disk == claimed


def test_callbacks_fire_in_sequence_order_on_the_flusher_thread(tmp_path: Path) -> None:
    fileops = GatedFileOps()
    fired: list[tuple[int, BaseException | None, str]] = []
    with open_log(tmp_path, fileops=fileops) as log:
        fileops.gate.clear()
        log.append(1, b"a")
        assert fileops.in_fdatasync.wait(5)
        last = log.append_many([(1, b"b"), (1, b"c"), (1, b"d")])
        for sequence in (4, 2, 3, 1):

            def record(error: BaseException | None, s: int = sequence) -> None:
                fired.append((s, error, threading.current_thread().name))

            log.add_durable_callback(sequence, record)
        fileops.gate.set()
        log.wait_durable(last)
        log.add_durable_callback(2, lambda error: fired.append((2, error, threading.current_thread().name)))
    assert [s for s, _, _ in fired] == [1, 2, 3, 4, 2]
    assert all(error is None for _, error, _ in fired)
    assert {name for _, _, name in fired[:4]} == {"decision-log-flusher"}
    assert fired[4][2] == threading.current_thread().name  # already durable: runs at once, in the caller


def test_a_failing_callback_does_not_stop_the_flusher(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def explode(error: BaseException | None) -> None:
        raise RuntimeError("callback bug")

    with open_log(tmp_path) as log:
        sequence = log.append(1, b"x")
        log.add_durable_callback(sequence, explode)
        log.wait_durable(sequence)
        log.wait_durable(log.append(1, b"y"))
    assert any("durability callback failed" in message for message in caplog.messages)


def test_wait_durable_from_a_callback_is_refused(tmp_path: Path) -> None:
    outcome: list[BaseException] = []

    def waits(error: BaseException | None) -> None:
        try:
            log.wait_durable(log.last_sequence + 100)
        except RuntimeError as refusal:
            outcome.append(refusal)

    with open_log(tmp_path) as log:
        sequence = log.append(1, b"x")
        log.add_durable_callback(sequence, waits)
        log.sync()
    assert outcome and "flusher thread" in str(outcome[0])


def test_wait_durable_times_out(tmp_path: Path) -> None:
    fileops = GatedFileOps()
    with open_log(tmp_path, fileops=fileops) as log:
        fileops.gate.clear()
        sequence = log.append(1, b"x")
        with pytest.raises(TimeoutError):
            log.wait_durable(sequence, timeout=0.05)
        fileops.gate.set()
        log.wait_durable(sequence, timeout=5)


def test_append_validation_queues_nothing(tmp_path: Path) -> None:
    with open_log(tmp_path) as log:
        with pytest.raises(ValueError, match="reserved"):
            log.append(0, b"x")
        with pytest.raises(ValueError, match="maximum"):
            log.append(1, bytes(MAX_PAYLOAD_SIZE + 1))
        with pytest.raises(ValueError, match="reserved"):
            log.append_many([(1, b"fine"), (0, b"not fine")])
        with pytest.raises(ValueError, match="at least one"):
            log.append_many([])
        with pytest.raises(ValueError, match="maximum"):
            log.append_batch(2, [b"fine", bytes(MAX_PAYLOAD_SIZE + 1)])
        with pytest.raises(ValueError, match="at least one"):
            log.append_batch(2, [])
        assert log.append(1, b"first") == 1
        assert log.sync() == 1


def test_a_batch_of_one_type_takes_consecutive_sequences_after_other_appends(tmp_path: Path) -> None:
    with open_log(tmp_path) as log:
        assert log.append(1, b"one") == 1
        assert log.append_batch(2, [b"two", b"three", b"four"]) == 4
        assert log.append_many([(3, b"five")]) == 5
        log.wait_durable(5)
    assert sequences_on_disk(tmp_path) == [1, 2, 3, 4, 5]


def test_close_flushes_and_then_refuses(tmp_path: Path) -> None:
    log = open_log(tmp_path)
    last = log.append_many([(1, payload_for(n)) for n in range(1, 101)])
    log.close()
    log.close()  # idempotent
    assert log.durable_sequence == last == 100
    with pytest.raises(LogUnavailableError, match="closed"):
        log.append(1, b"late")
    with pytest.raises(LogUnavailableError, match="closed"):
        log.wait_durable(101)
    log.wait_durable(100)  # already durable: fine after close
    assert sequences_on_disk(tmp_path) == list(range(1, 101))


def test_rotation_names_segments_by_first_sequence(tmp_path: Path) -> None:
    with open_log(tmp_path, segment_bytes=1024) as log:
        for n in range(1, 51):
            log.wait_durable(log.append(1, payload_for(n, 100)))
        listed = list_segments(tmp_path, FILEOPS)
        assert log.segment_count == len(listed) >= 5
        assert log.bytes_on_disk == sum(segment.size for segment in listed)
        assert [(s.path, s.first_sequence) for s in log.segments()] == [(s.path, s.first_sequence) for s in listed]
    firsts = [segment.first_sequence for segment in listed]
    assert firsts[0] == 1
    for segment in listed[:-1]:
        assert segment.size >= 1024  # rotated only once the limit was reached, between batches
        assert segment.path.name == segment_name(segment.first_sequence)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    assert sequences_on_disk(tmp_path) == list(range(1, 51))


def fill_segments(log: DecisionLog, records: int) -> None:
    for n in range(log.last_sequence + 1, log.last_sequence + records + 1):
        log.wait_durable(log.append(1, payload_for(n, 100)))


def test_delete_segments_through_keeps_what_a_checkpoint_does_not_cover(tmp_path: Path) -> None:
    with open_log(tmp_path, segment_bytes=1024) as log:
        fill_segments(log, 50)
        before = log.segments()
        cut = 30
        removed = log.delete_segments_through(cut)
        remaining = log.segments()
        assert removed == [s.path for s in before if s not in remaining]
        assert removed and remaining[0].first_sequence <= cut + 1
        # Every removed segment held only records <= cut; the first kept one holds cut + 1.
        assert all(not p.exists() for p in removed)
        assert [r.sequence for r in scan_log(tmp_path, FILEOPS, after_sequence=cut)] == list(range(cut + 1, 51))
        # Never the active segment, even when the checkpoint covers everything.
        log.delete_segments_through(10_000)
        assert log.segment_count == 1 and log.segments()[0].path == before[-1].path
        assert log.delete_segments_through(10_000) == []
        fill_segments(log, 5)
    assert scan_log(tmp_path, FILEOPS, after_sequence=50).consume().next_sequence == 56


def test_delete_segments_into_an_archive(tmp_path: Path) -> None:
    directory, archive = tmp_path / "log", tmp_path / "archive"
    fileops = FaultyFileOps()
    with open_log(directory, fileops=fileops, segment_bytes=1024) as log:
        fill_segments(log, 50)
        removed = log.delete_segments_through(40, archive_dir=archive)
    assert removed and all((archive / p.name).exists() for p in removed)
    assert (archive.stat().st_mode & 0o777) == 0o700
    assert fileops.calls_by_file[("fsync_dir", "archive")] >= 1
    archived = [r.sequence for r in read_records(archive, FILEOPS)]
    kept = [r.sequence for r in read_records(directory, FILEOPS)]
    assert archived + kept == list(range(1, 51))


def test_reopen_continues_the_last_segment(tmp_path: Path) -> None:
    fileops = FaultyFileOps()
    with open_log(tmp_path, fileops=fileops) as log:
        log.wait_durable(log.append_many([(1, b"a"), (1, b"b")]))
    fileops.calls_by_file.clear()
    scan = scan_log(tmp_path, fileops, 0).consume()
    with open_log(tmp_path, fileops=fileops, next_sequence=scan.next_sequence) as log:
        # What a killed predecessor left in the page cache is made durable before anything follows it.
        assert fileops.calls_by_file[("fsync", segment_name(1))] == 1
        assert log.segment_count == 1
        log.wait_durable(log.append(1, b"c"))
    assert [r.payload for r in scan_log(tmp_path, FILEOPS, 0)] == [b"a", b"b", b"c"]


def test_open_refuses_a_next_sequence_that_does_not_continue_the_log(tmp_path: Path) -> None:
    with open_log(tmp_path) as log:
        log.wait_durable(log.append_many([(1, b"a"), (1, b"b")]))
    for wrong in (2, 4):
        with pytest.raises(ValueError, match="does not continue the log"):
            open_log(tmp_path, next_sequence=wrong)


def test_open_refuses_an_unrepaired_torn_tail(tmp_path: Path) -> None:
    with open_log(tmp_path) as log:
        log.wait_durable(log.append(1, b"a"))
    append_bytes(tmp_path / segment_name(1), b"\x05\x00")
    with pytest.raises(LogCorruptionError, match="scan and repair the log before opening it"):
        open_log(tmp_path, next_sequence=2)


def test_open_replaces_a_lone_empty_segment_superseded_by_a_checkpoint(tmp_path: Path) -> None:
    open_log(tmp_path, next_sequence=5).close()
    assert [s.first_sequence for s in list_segments(tmp_path, FILEOPS)] == [5]
    with open_log(tmp_path, next_sequence=5) as log:  # same name: reused
        assert log.segment_count == 1
    with open_log(tmp_path, next_sequence=900) as log:
        log.wait_durable(log.append(1, b"x"))
    assert [s.first_sequence for s in list_segments(tmp_path, FILEOPS)] == [900]


def test_open_removes_leftover_temporary_segments_and_creates_private_files(tmp_path: Path) -> None:
    directory = tmp_path / "a" / "log"
    directory.mkdir(parents=True)
    (directory / (segment_name(1) + ".tmp")).write_bytes(b"half")
    with open_log(directory) as log:
        log.wait_durable(log.append(1, b"x"))
    assert sorted(p.name for p in directory.iterdir()) == [segment_name(1)]
    assert ((directory / segment_name(1)).stat().st_mode & 0o777) == 0o600
    fresh = tmp_path / "b" / "c"
    open_log(fresh).close()
    assert (fresh.stat().st_mode & 0o777) == 0o700 and (fresh.parent.stat().st_mode & 0o777) == 0o700


def test_open_validates_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        open_log(tmp_path, next_sequence=0)
    with pytest.raises(ValueError):
        open_log(tmp_path, segment_bytes=SEGMENT_HEADER_SIZE)


def test_every_append_callback_fires_once_under_concurrent_appends(tmp_path: Path) -> None:
    """One durability callback per record, as the asyncio server registers them: every one fires exactly once,
    with no error. (Throughput is measured by the benchmarks, not asserted here.)"""
    threads_count, per_thread = 4, 25_000
    fired = itertools.count()
    with open_log(tmp_path) as log:

        def on_durable(error: BaseException | None) -> None:
            assert error is None
            next(fired)

        def worker() -> None:
            payload = bytes(120)
            for _ in range(per_thread):
                log.add_durable_callback(log.append(1, payload), on_durable)

        workers = [threading.Thread(target=worker) for _ in range(threads_count)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        log.sync()
    assert next(fired) == threads_count * per_thread


# ------------------------------------------------------------------ writing on the appending thread


def test_flush_here_makes_pending_records_durable_on_the_calling_thread(tmp_path: Path) -> None:
    fired: list[str] = []
    with open_log(tmp_path) as log:
        log.defer_wakeups_on_this_thread()
        first = log.append(1, b"a")
        last = log.append_batch(2, [b"b", b"c"])
        log.add_durable_callback(last, lambda error: fired.append(threading.current_thread().name))
        assert log.durable_sequence == first - 1  # deferred: nothing woke the flusher
        assert log.flush_here()
        assert log.durable_sequence == last
        assert fired == [threading.current_thread().name]
        assert not log.flush_here()  # nothing pending
    assert sequences_on_disk(tmp_path) == [1, 2, 3]


def test_flush_here_leaves_the_records_to_a_flusher_already_writing(tmp_path: Path) -> None:
    fileops = GatedFileOps()
    with open_log(tmp_path, fileops=fileops) as log:
        fileops.gate.clear()
        log.append(1, b"held in fdatasync")
        assert fileops.in_fdatasync.wait(5)
        later = log.append(1, b"queued meanwhile")
        assert not log.flush_here()  # the flusher holds the write; it takes these next
        fileops.gate.set()
        log.wait_durable(later, timeout=10)
    assert sequences_on_disk(tmp_path) == [1, 2]


def test_deferred_appends_reach_disk_on_wake_or_on_a_blocking_wait(tmp_path: Path) -> None:
    with open_log(tmp_path) as log:
        log.defer_wakeups_on_this_thread()
        first = log.append(1, b"a")
        log.wake()
        deadline = time.monotonic() + 10
        while log.durable_sequence < first and time.monotonic() < deadline:
            time.sleep(0.001)
        assert log.durable_sequence == first
        second = log.append(1, b"b")
        log.wait_durable(second, timeout=10)  # wakes the flusher itself rather than waiting forever
    assert sequences_on_disk(tmp_path) == [1, 2]


def test_appends_from_other_threads_still_wake_the_flusher(tmp_path: Path) -> None:
    with open_log(tmp_path) as log:
        log.defer_wakeups_on_this_thread()
        done = threading.Event()
        sequences: list[int] = []

        def append_elsewhere() -> None:
            sequences.append(log.append(1, b"from another thread"))
            log.add_durable_callback(sequences[0], lambda error: done.set())

        thread = threading.Thread(target=append_elsewhere)
        thread.start()
        thread.join()
        assert done.wait(10)


# -- segment format 2 ---------------------------------------------------------------------------------------------

GOLDEN_V2 = Path(__file__).parent / "golden" / "segment-v2.log"


def test_the_writer_still_writes_the_golden_v2_bytes(tmp_path: Path) -> None:
    """The writer's own output for two group commits is tests/storage/golden/segment-v2.log, byte for byte
    (test_framing.py reads it field by field). If this fails, the format changed: bump the version instead."""
    with open_log(tmp_path, next_sequence=7) as log:
        log.wait_durable(log.append_many([(1, b"first decision"), (127, b"")]))
        log.wait_durable(log.append(2, bytes(range(32))))
    assert (tmp_path / segment_name(7)).read_bytes() == GOLDEN_V2.read_bytes()


def test_every_write_begins_with_a_marked_record_and_only_it(tmp_path: Path) -> None:
    with open_log(tmp_path) as log:
        log.defer_wakeups_on_this_thread()
        log.append_batch(2, [b"a", b"b", b"c"])
        assert log.flush_here()  # a write on the appending thread
        log.append(1, b"d")
        log.wait_durable(log.append_many([(1, b"e"), (3, b"f")]))  # a write by the flusher
        log.wait_durable(log.append(1, b"g"))
    segment = tmp_path / segment_name(1)
    assert decode_segment_header(segment.read_bytes()).version == 2
    assert first_of_write_flags(segment) == [True, False, False, True, False, False, True]
    # Readers see the types as appended, without the mark.
    assert [(r.record_type, r.payload) for r in scan_log(tmp_path, FILEOPS, 0)] == [
        (2, b"a"),
        (2, b"b"),
        (2, b"c"),
        (1, b"d"),
        (1, b"e"),
        (3, b"f"),
        (1, b"g"),
    ]


def test_a_type_that_would_collide_with_the_mark_is_refused(tmp_path: Path) -> None:
    with open_log(tmp_path) as log:
        for record_type in (128, 255):
            with pytest.raises(ValueError, match=r"1\.\.127"):
                log.append(record_type, b"x")
            with pytest.raises(ValueError, match=r"1\.\.127"):
                log.append_batch(record_type, [b"x"])
        assert log.last_sequence == 0


def test_open_closes_a_format_1_segment_and_continues_in_a_format_2_one(tmp_path: Path) -> None:
    old = tmp_path / segment_name(1)
    write_segment(old, 1, list(range(1, 11)), version=1)
    before = old.read_bytes()
    fileops = FaultyFileOps()
    with open_log(tmp_path, fileops=fileops, next_sequence=11) as log:
        # Made durable before the new segment exists, as on every open (a killed predecessor's page cache).
        assert fileops.calls_by_file[("fsync", segment_name(1))] == 1
        assert log.segment_count == 2
        log.wait_durable(log.append_many([(1, payload_for(11)), (1, payload_for(12))]))
    assert old.read_bytes() == before  # nothing appended to the format-1 file
    new = tmp_path / segment_name(11)
    assert decode_segment_header(new.read_bytes()).version == 2
    assert first_of_write_flags(new) == [True, False]
    assert [(r.sequence, r.payload) for r in scan_log(tmp_path, FILEOPS, 0)] == [
        (n, payload_for(n)) for n in range(1, 13)
    ]


def test_open_replaces_an_empty_format_1_segment_by_a_format_2_one(tmp_path: Path) -> None:
    write_segment(tmp_path / segment_name(1), 1, list(range(1, 11)), version=1)
    write_segment(tmp_path / segment_name(11), 11, [], version=1)
    with open_log(tmp_path, next_sequence=11) as log:
        assert log.segment_count == 2
        log.wait_durable(log.append(1, payload_for(11)))
    assert [s.first_sequence for s in list_segments(tmp_path, FILEOPS)] == [1, 11]
    assert decode_segment_header((tmp_path / segment_name(11)).read_bytes()).version == 2
    assert sequences_on_disk(tmp_path) == list(range(1, 12))

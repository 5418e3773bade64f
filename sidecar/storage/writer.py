"""The decision log's writer: appends records to segments and makes them durable by one group-committing flusher.

Record framing is documented in :mod:`sidecar.storage.framing`, the segment files and their invariants in
:mod:`sidecar.storage.segments`; this module owns their lifecycle while the log is open (open, append, rotate,
delete, close). Reading and repair after a crash come first, in :mod:`sidecar.storage.reader` and
:mod:`sidecar.storage.repair`.

Durability: :meth:`DecisionLog.append` never touches the disk; it numbers the record and queues its bytes.
One flusher thread writes whatever is queued, calls ``fdatasync`` once for all of it (group commit), then
advances ``durable_sequence`` and runs the waiters. A caller that would only sit waiting for that (a lone
signing call) may do the same write itself with :meth:`DecisionLog.flush_here`; one lock makes sure only one
thread writes at a time. A sequence is reported durable only after an fsync that
covered it succeeded. After a failed write or fsync the page cache can no longer be trusted (fsyncgate), so
the flusher does not retry the fsync: it truncates the segment back to the last durable offset, rewrites the
records that were not durable (same sequence numbers) and fsyncs again.

Writes and their marks: each group commit is one ``write()`` of its records followed by one ``fdatasync``, and
the next is issued only after that returned; the first record of each write carries the first-of-write flag
(segment format 2, :mod:`sidecar.storage.framing`), which is what lets a reader recover by itself from a final
write whose pages reached the disk out of order (:mod:`sidecar.storage.reader`). Records are queued unflagged
and the writer flags the first frame of a batch as it writes it (one record's CRC recomputed). The rewrite
after a failure is one write too: its first frame is flagged, and frames inside it keep the flags they were
written with. In this writer only the failed write's first frame has one, and it is the rewrite's first frame as
well: what follows it is records queued, unflagged, before the failure (appends are refused while failed). New
segments are format 2; at open, a format-1 last segment is closed and a format-2 one started, never appended to.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sidecar.storage.errors import LogCorruptionError, LogUnavailableError, StorageError
from sidecar.storage.fileio import FileOps
from sidecar.storage.framing import (
    SEGMENT_FORMAT_VERSION,
    SEGMENT_HEADER_SIZE,
    Outcome,
    encode_record,
    encode_records,
    encode_segment_header,
    mark_first_of_write,
)
from sidecar.storage.reader import SegmentReader
from sidecar.storage.segments import (
    TEMPORARY_SUFFIX,
    SegmentInfo,
    list_segments,
    remove_temporary_segments,
    segment_name,
)

__all__ = ["DEFAULT_SEGMENT_BYTES", "DecisionLog", "DurableCallback"]

logger = logging.getLogger("sidecar.storage")

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
"""Size at which the writer starts a new segment. The storage layer's own default; ``sidecar.domain`` re-exports
it as the configuration default, so the number is written once."""

DurableCallback = Callable[[BaseException | None], None]
"""Called with ``None`` once a sequence is durable, or with the :class:`LogUnavailableError` that prevented it."""


@dataclass(slots=True)
class _ActiveSegment:
    """The segment being appended to. Owned by the flusher thread (and by ``open`` before it starts)."""

    path: Path
    first_sequence: int
    fd: int
    size: int  # bytes written, durable or not
    durable_size: int  # bytes covered by a successful fsync


# Why this class is longer than the house's ~300 lines: it is one state machine (appending -> writing ->
# durable, or failed -> rewriting -> durable) guarded by one lock (`_lock`) and one writer lock (`_writing`),
# and every method below reads or moves that state under the same locking protocol. Split into classes, the
# protocol would have to be re-stated at each boundary, and the hazards it guards against (a sequence reported
# durable before its fsync, a waiter released twice, a rewrite racing an append) would no longer be visible in
# one place. What is not part of that state (segment names, reading, repair) already lives in other modules.
class DecisionLog:
    """Appends records and group-commits them; see the module docstring for the durability contract.

    Thread-safe. ``append``/``append_many`` never wait for the disk. Waiters (``wait_durable``,
    ``add_durable_callback``) are released by the flusher thread, in sequence order, after the fsync that
    covered their record. Callbacks run on the flusher thread (or synchronously in the registering thread
    when the outcome is already known) and must not block; exceptions they raise are logged and ignored.
    """

    def __init__(
        self,
        directory: Path,
        fileops: FileOps,
        *,
        next_sequence: int,
        segment_bytes: int,
        on_fsync: Callable[[float, int, int], None] | None,
        on_health_change: Callable[[bool], None] | None,
        retry_interval: float,
        clock: Callable[[], float],
    ):
        """Use :meth:`open`."""
        self.directory = directory
        self._fileops = fileops
        self._segment_bytes = segment_bytes
        self._on_fsync = on_fsync
        self._on_health_change = on_health_change
        self._retry_interval = retry_interval
        self._clock = clock

        # Guarded by _lock: sequence assignment, the pending queue, waiters and the health state.
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        # Notified (all) whenever the fate of unsynced records may have been decided: a sequence published durable,
        # the log failed, or a rewrite attempt ended. `retract_last` waits on it.
        self._settled = threading.Condition(self._lock)
        self._next_sequence = next_sequence
        self._durable_sequence = next_sequence - 1
        self._pending: list[bytes] = []
        self._pending_records = 0
        self._waiters: list[tuple[int, int, DurableCallback]] = []
        self._waiter_order = itertools.count()
        self._failure: LogUnavailableError | None = None
        self._closing = False
        self._flusher_done = False
        self._flusher_idle = False
        self._retry_requested = False

        # Held by whoever writes and fsyncs (the flusher thread, or a caller of `flush_here`), so only one thread
        # touches the active segment; the state below belongs to its holder.
        self._writing = threading.Lock()
        # Appends made on this thread do not wake the flusher (see `defer_wakeups_on_this_thread`).
        self._deferring_thread: int | None = None
        # Duration of the newest group commit's fdatasync (read without a lock: a float, written by one thread).
        self.last_fsync_seconds = 0.0
        self._active: _ActiveSegment | None = None
        self._unsynced: list[bytes] = []
        self._unsynced_last = 0
        self._rewriting = False  # guarded by _lock: a rewrite of `_unsynced` is under way (see `retract_last`)
        self._needs_new_segment = False

        # Guarded by _segments_lock: the closed segments, oldest first, and the active segment's identity.
        self._segments_lock = threading.Lock()
        self._closed_segments: list[SegmentInfo] = []
        self._delete_lock = threading.Lock()

        self._close_lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run_flusher, name="decision-log-flusher", daemon=True)

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        fileops: FileOps,
        next_sequence: int,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        on_fsync: Callable[[float, int, int], None] | None = None,
        on_health_change: Callable[[bool], None] | None = None,
        retry_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> DecisionLog:
        """Open the log for appending after recovery; the first appended record gets ``next_sequence``.

        Creates ``directory`` (0700) if needed and removes leftover ``.tmp`` segments. Appends to the last
        segment if its last record is ``next_sequence - 1`` (or it is empty and named ``next_sequence``) and it
        is of the current format; starts a new segment if there is none or the last one is of format 1 (an empty
        one named ``next_sequence`` is replaced); replaces a lone empty segment with a different name (a newer
        checkpoint superseded it). The last segment is re-read and must be clean (run :func:`scan_log` and
        :func:`repair_torn_tail` first): :class:`LogCorruptionError` otherwise. A ``next_sequence`` that does
        not continue the log is a caller error: ``ValueError``.

        Before appending, the last segment and the directory are fsynced: a killed predecessor may have left
        written-but-unsynced records in the page cache, the scan handed them to the caller, and records
        appended after them must not become durable while they do not.

        ``on_fsync(seconds, records_in_batch, bytes_in_batch)`` is called after every successful group
        commit and ``on_health_change(healthy)`` when the log fails or recovers, both on the flusher thread.
        While failed, the flusher retries every ``retry_interval`` seconds (or at once on :meth:`retry_now`).
        """
        directory = Path(directory)
        if next_sequence < 1:
            raise ValueError(f"next_sequence must be >= 1, got {next_sequence}")
        if segment_bytes <= SEGMENT_HEADER_SIZE:
            raise ValueError(f"segment_bytes must exceed the {SEGMENT_HEADER_SIZE}-byte segment header")
        fileops.makedirs(directory)
        remove_temporary_segments(directory, fileops)
        log = cls(
            directory,
            fileops,
            next_sequence=next_sequence,
            segment_bytes=segment_bytes,
            on_fsync=on_fsync,
            on_health_change=on_health_change,
            retry_interval=retry_interval,
            clock=clock,
        )
        segments = list_segments(directory, fileops)
        reuse: SegmentInfo | None = None
        reuse_size = 0
        reuse_version = SEGMENT_FORMAT_VERSION
        if segments:
            last = segments[-1]
            reader = SegmentReader(fileops, last, last_in_log=True)
            for _ in reader.records():
                pass
            if reader.outcome is not Outcome.END:
                raise LogCorruptionError(
                    last.path, reader.end_offset, f"{reader.detail} (scan and repair the log before opening it)"
                )
            if reader.last_sequence is not None:
                if reader.last_sequence + 1 != next_sequence:
                    raise ValueError(
                        f"next_sequence {next_sequence} does not continue the log, whose last record is "
                        f"{reader.last_sequence} (in {last.path})"
                    )
                reuse = last
            elif last.first_sequence == next_sequence:
                reuse = last
            elif len(segments) == 1:
                # An empty segment alone: nothing in it, and a checkpoint has moved the log's start on.
                fileops.unlink(last.path)
                fileops.fsync_dir(directory)
                segments = []
            else:
                raise ValueError(
                    f"next_sequence {next_sequence} does not continue the log, which expects "
                    f"{last.first_sequence} (empty last segment {last.path})"
                )
            reuse_size = reader.end_offset
            reuse_version = reader.version
        if reuse is not None:
            fd = fileops.open_append(reuse.path)
            try:
                fileops.fsync(fd)
                fileops.fsync_dir(directory)
            except BaseException:
                fileops.close_quietly(fd)
                raise
            if reuse_version == SEGMENT_FORMAT_VERSION:
                log._active = _ActiveSegment(reuse.path, reuse.first_sequence, fd, reuse_size, reuse_size)
                log._closed_segments = segments[:-1]
            else:
                # One format per file: format-2 frames appended to a format-1 segment would be read with the
                # first-of-write flag as part of the type. The old segment is closed (fsynced above, so the new one
                # cannot become durable before it) and a new one started; an empty one is replaced by the new one,
                # which takes its name.
                fileops.close(fd)
                log._closed_segments = segments if reuse_size > SEGMENT_HEADER_SIZE else segments[:-1]
                log._start_segment(next_sequence)
        else:
            log._closed_segments = segments
            log._start_segment(next_sequence)
        log._thread.start()
        return log

    # -- appending ---------------------------------------------------------------------------------------------

    def append(self, record_type: int, payload: bytes) -> int:
        """Queue one record and return its sequence number; never waits for the disk.

        Raises ``ValueError`` for type 0 or an oversized payload and :class:`LogUnavailableError` while the
        log is failed or closed; in both cases nothing was queued and no sequence number was used.
        """
        return self._enqueue(lambda sequence: [encode_record(sequence, record_type, payload)])

    def append_many(self, records: Sequence[tuple[int, bytes]]) -> int:
        """Queue ``records`` (type, payload) with consecutive sequence numbers; return the last one.

        All or nothing: if any record is invalid (``ValueError``) or the log is unavailable, none is queued.
        """
        if not records:
            raise ValueError("append_many needs at least one record")
        return self._enqueue(
            lambda first: [
                encode_record(sequence, record_type, payload)
                for sequence, (record_type, payload) in enumerate(records, start=first)
            ]
        )

    def append_batch(self, record_type: int, payloads: list[bytes]) -> int:
        """`append_many` for records of one type: the signing hot path (framing checks its arguments once)."""
        if not payloads:
            raise ValueError("append_batch needs at least one record")
        return self._enqueue(lambda first: encode_records(first, record_type, payloads))

    def _enqueue(self, frames_from: Callable[[int], list[bytes]]) -> int:
        """Frame records from the next sequence number (``frames_from(first)``) and queue them; return the last
        sequence. Framing happens under the lock, so sequence numbers are queued in order and without gaps."""
        with self._lock:
            if self._failure is not None or self._closing:
                raise self._unavailable_locked()
            first = self._next_sequence
            frames = frames_from(first)
            self._next_sequence = first + len(frames)
            self._pending.extend(frames)
            self._pending_records += len(frames)
            if self._flusher_idle and threading.get_ident() != self._deferring_thread:
                self._flusher_idle = False
                self._wakeup.notify()
        return first + len(frames) - 1

    # -- who writes: the flusher thread, or the appending thread itself ---------------------------------------

    def defer_wakeups_on_this_thread(self) -> None:
        """Appends made on the calling thread stop waking the flusher: that thread promises to call `wake` or
        `flush_here` after appending. An event loop uses this to wake the flusher once for everything its
        callbacks appended in one turn, or to write a lone record itself instead of handing it over."""
        self._deferring_thread = threading.get_ident()

    def wake(self) -> None:
        """Have the flusher write whatever is pending (a no-op when nothing is)."""
        with self._lock:
            if self._pending and self._flusher_idle:
                self._flusher_idle = False
                self._wakeup.notify()

    def flush_here(self) -> bool:
        """Write and fsync what is pending on the calling thread; return whether it did.

        For a caller that would otherwise sit idle while the flusher does the same work: it saves the two thread
        handoffs. Does nothing (returns False) when another thread is writing, when nothing is pending, or while
        the log is failed or closing; the flusher then takes care of the records (call `wake`).
        """
        if not self._writing.acquire(blocking=False):
            return False
        try:
            with self._lock:
                if self._failure is not None or self._closing or not self._pending:
                    return False
                batch, batch_records, batch_last = self._take_pending_locked()
            self._write_batch(batch, batch_records, batch_last)
            return True
        finally:
            self._writing.release()

    # -- waiting for durability --------------------------------------------------------------------------------

    def add_durable_callback(self, sequence: int, callback: DurableCallback) -> None:
        """Call ``callback(None)`` once ``sequence`` is durable, or ``callback(error)`` if the log fails first.

        Runs ``callback`` synchronously, in this thread, when the outcome is already known: the sequence is
        durable, or the log is failed or closed (then with a :class:`LogUnavailableError`). Otherwise it runs
        on the flusher thread. To resume asyncio code, bridge with ``loop.call_soon_threadsafe``.
        """
        with self._lock:
            if sequence <= self._durable_sequence:
                outcome: BaseException | None = None
            elif (
                self._failure is not None
                or self._flusher_done
                or (self._closing and sequence >= self._next_sequence)
            ):
                # While closing, records already appended still get flushed; later ones never will be.
                outcome = self._unavailable_locked()
            else:
                heapq.heappush(self._waiters, (sequence, next(self._waiter_order), callback))
                return
        _run_callback(callback, outcome)

    def wait_durable(self, sequence: int, timeout: float | None = None) -> None:
        """Block until ``sequence`` is durable.

        Raises :class:`LogUnavailableError` if the log failed (or closed) before the record was fsynced, and
        ``TimeoutError`` if ``timeout`` seconds pass first (the record may still become durable later).
        Must not be called from a durability callback (that is the flusher thread: it would wait for itself).
        """
        if sequence <= self._durable_sequence:
            return
        if threading.get_ident() == self._thread.ident:
            raise RuntimeError("wait_durable called on the flusher thread (from a durability callback?)")
        self.wake()  # records appended on a deferring thread may not have woken the flusher yet
        released = threading.Lock()
        released.acquire()
        outcome: list[BaseException | None] = []

        def release(error: BaseException | None) -> None:
            outcome.append(error)
            released.release()

        self.add_durable_callback(sequence, release)
        if not released.acquire(timeout=-1 if timeout is None else timeout):
            raise TimeoutError(f"sequence {sequence} was not durable within {timeout} seconds")
        error = outcome[0]
        if error is not None:
            raise LogUnavailableError(str(error)) from error

    def sync(self, timeout: float | None = None) -> int:
        """Make every record appended so far durable; return the durable sequence (see :meth:`wait_durable`)."""
        with self._lock:
            target = self._next_sequence - 1
        self.wait_durable(target, timeout)
        return self._durable_sequence

    def retract_last(self, sequence: int, original: tuple[int, bytes], replacement: tuple[int, bytes]) -> bool:
        """Swap the last record appended, ``sequence`` = ``original`` (type, payload), for ``replacement`` if
        it failed to become durable; return True if it was swapped, False if ``original`` is durable.

        For a record that must not take effect later once its writer was told it failed: after a failure the log
        rewrites every record that was not durable, the same bytes under the same sequence numbers, so a record
        whose waiter got an error would otherwise take effect anyway. Call it after :meth:`wait_durable` raised
        :class:`LogUnavailableError`, with nothing appended since (the caller's own lock keeps it so). It waits
        while the record's fate is open (a write or a rewrite under way). ``replacement`` must frame to the same
        length, so the rewrite keeps its offsets. Raises ``ValueError`` when ``sequence`` is not the last record
        or its queued bytes are not ``original``'s.

        The swap covers the rewrite and the close: the record is never made durable as ``original``. What it
        cannot undo is what the failed attempt itself left in the page cache: if the write succeeded and only the
        fsync failed, and the process then stops before the log recovered (the rewrite truncates those bytes),
        the original frame may still be read at the next open.

        The record may have been queued for writing with the first-of-write flag (it began the write that
        failed); the replacement then keeps the flag, so the rewrite still says where it begins.
        """
        # (original frame, replacement frame), unflagged and flagged.
        swaps = [
            (
                encode_record(sequence, *original, first_of_write=first_of_write),
                encode_record(sequence, *replacement, first_of_write=first_of_write),
            )
            for first_of_write in (False, True)
        ]
        if len(swaps[0][0]) != len(swaps[0][1]):
            raise ValueError("a retracted record's replacement must frame to the same length")
        with self._lock:
            while True:
                if sequence <= self._durable_sequence:
                    return False
                if sequence != self._next_sequence - 1:
                    raise ValueError(f"sequence {sequence} is not the last record appended")
                if self._failure is not None and not self._rewriting:
                    break
                if self._flusher_done:
                    # Stopped without a failure: everything appended was flushed, so it is durable (above).
                    raise ValueError(f"sequence {sequence} was neither made durable nor failed")
                self._settled.wait()
            if self._unsynced_last != sequence or not self._unsynced:
                raise ValueError(f"the unsynced tail of the log is not record {sequence} as given")
            tail = self._unsynced[-1]
            for original_frame, replacement_frame in swaps:
                if tail.endswith(original_frame):
                    self._unsynced[-1] = tail[: len(tail) - len(original_frame)] + replacement_frame
                    return True
            raise ValueError(f"the unsynced tail of the log is not record {sequence} as given")

    # -- state -----------------------------------------------------------------------------------------------

    @property
    def durable_sequence(self) -> int:
        """The highest sequence covered by a successful fsync (``next_sequence - 1`` at open)."""
        return self._durable_sequence

    @property
    def last_sequence(self) -> int:
        """The highest sequence handed out by ``append``, durable or not."""
        return self._next_sequence - 1

    @property
    def healthy(self) -> bool:
        return self._failure is None

    @property
    def segment_count(self) -> int:
        with self._segments_lock:
            return len(self._closed_segments) + (1 if self._active is not None else 0)

    @property
    def bytes_on_disk(self) -> int:
        """Total size of the segments, including written bytes not yet fsynced."""
        with self._segments_lock:
            active = self._active.size if self._active is not None else 0
            return active + sum(segment.size for segment in self._closed_segments)

    def segments(self) -> list[SegmentInfo]:
        """The segments, oldest first; the last one is the active segment (its size may be growing)."""
        with self._segments_lock:
            listed = list(self._closed_segments)
            if self._active is not None:
                listed.append(SegmentInfo(self._active.path, self._active.first_sequence, self._active.size))
            return listed

    def retry_now(self) -> None:
        """While failed, make the flusher attempt recovery now instead of at the next retry interval."""
        with self._lock:
            self._retry_requested = True
            self._wakeup.notify()

    # -- housekeeping ----------------------------------------------------------------------------------------

    def delete_segments_through(self, sequence: int, archive_dir: Path | None = None) -> list[Path]:
        """Remove every segment whose records are all ``<= sequence``, except the active one.

        Call only once a checkpoint covering ``sequence`` is durable. With ``archive_dir`` the segments are
        renamed into it (same filesystem) instead of deleted; the archive directory is fsynced before the log
        directory, so a crash never leaves a segment in neither. Returns the removed segments' original paths.
        """
        with self._delete_lock:
            with self._segments_lock:
                closed = list(self._closed_segments)
                active_first = self._active.first_sequence if self._active is not None else sequence + 2
            removable: list[SegmentInfo] = []
            for index, segment in enumerate(closed):
                following = closed[index + 1].first_sequence if index + 1 < len(closed) else active_first
                if following - 1 > sequence:
                    break
                removable.append(segment)
            if not removable:
                return []
            done: list[SegmentInfo] = []
            try:
                if archive_dir is not None:
                    archive_dir = Path(archive_dir)
                    self._fileops.makedirs(archive_dir)
                    for segment in removable:
                        self._fileops.rename(segment.path, archive_dir / segment.path.name)
                        done.append(segment)
                    self._fileops.fsync_dir(archive_dir)
                else:
                    for segment in removable:
                        self._fileops.unlink(segment.path)
                        done.append(segment)
                self._fileops.fsync_dir(self.directory)
            finally:
                with self._segments_lock:
                    gone = {segment.path for segment in done}
                    self._closed_segments = [s for s in self._closed_segments if s.path not in gone]
            return [segment.path for segment in done]

    def close(self) -> None:
        """Flush and fsync everything appended, stop the flusher and close the segment.

        Raises :class:`LogUnavailableError` if records could not be made durable (the log was failed and a
        last recovery attempt failed too). Idempotent.
        """
        with self._close_lock:
            if self._closed:
                return
            with self._lock:
                self._closing = True
                self._wakeup.notify()
            if self._thread.is_alive():
                self._thread.join()
            self._closed = True
            if self._active is not None:
                self._fileops.close_quietly(self._active.fd)
            failure = self._failure
        if failure is not None:
            raise LogUnavailableError(
                f"decision log closed with records that are not durable: {failure}"
            ) from failure

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the flusher -------------------------------------------------------------------------------------------

    def _unavailable_locked(self) -> LogUnavailableError:
        if self._failure is not None:
            error = LogUnavailableError(f"decision log unavailable: {self._failure}")
            error.__cause__ = self._failure.__cause__
            return error
        return LogUnavailableError("decision log is closed")

    def _run_flusher(self) -> None:
        try:
            self._flush_until_closed()
        finally:
            with self._lock:
                self._flusher_done = True
                self._settled.notify_all()
                waiters = self._waiters
                self._waiters = []
                error = self._failure or LogUnavailableError("decision log is closed")
            for _, _, callback in sorted(waiters):
                _run_callback(callback, error)

    def _flush_until_closed(self) -> None:
        while True:
            with self._lock:
                while not self._pending and self._failure is None and not self._closing:
                    self._flusher_idle = True
                    self._wakeup.wait()
                self._flusher_idle = False
            with self._writing:
                with self._lock:
                    failed = self._failure is not None
                    closing = self._closing
                    if not failed:  # while failed, records to rewrite are in _unsynced and appends are refused
                        batch, batch_records, batch_last = self._take_pending_locked()
                if failed:
                    if not self._recover_from_failure():
                        return
                    continue
                if batch:
                    self._write_batch(batch, batch_records, batch_last)
                elif closing:
                    return  # everything is durable
                # else a `flush_here` took the records first

    def _take_pending_locked(self) -> tuple[list[bytes], int, int]:
        batch = self._pending
        batch_records = self._pending_records
        self._pending = []
        self._pending_records = 0
        return batch, batch_records, self._next_sequence - 1

    def _write_batch(self, batch: list[bytes], batch_records: int, batch_last: int) -> None:
        """One group commit: write, fsync, publish, and start a new segment when this one is full. Holder of
        `_writing` only. A failure enters the failed state, which the flusher thread recovers from."""
        # Each element of the batch is one frame (`_enqueue`): flagging the first costs one record's CRC.
        batch[0] = mark_first_of_write(batch[0])
        data = batch[0] if len(batch) == 1 else b"".join(batch)
        try:
            self._write_and_sync(data, batch_records)
        except Exception as error:
            self._enter_failure(error, [data])
            return
        self._publish_durable(batch_last)
        if self._active is not None and self._active.size >= self._segment_bytes:
            try:
                self._start_segment(batch_last + 1)
            except Exception as error:
                self._needs_new_segment = True
                self._enter_failure(error, [])

    def _write_and_sync(self, data: bytes, records: int) -> None:
        active = self._active
        assert active is not None
        self._fileops.write(active.fd, data)
        active.size += len(data)
        started = self._clock()
        self._fileops.fdatasync(active.fd)
        elapsed = self._clock() - started
        self.last_fsync_seconds = elapsed
        active.durable_size = active.size
        if self._on_fsync is not None:
            try:
                self._on_fsync(elapsed, records, len(data))
            except Exception:
                logger.exception("on_fsync hook failed")

    def _publish_durable(self, sequence: int) -> None:
        ready: list[DurableCallback] = []
        with self._lock:
            self._durable_sequence = sequence
            self._settled.notify_all()
            waiters = self._waiters
            while waiters and waiters[0][0] <= sequence:
                ready.append(heapq.heappop(waiters)[2])
        for callback in ready:
            _run_callback(callback, None)

    def _start_segment(self, first_sequence: int) -> None:
        """Create, fsync and publish a new segment, then make it the active one. Holder of `_writing` (or open)."""
        path = self.directory / segment_name(first_sequence)
        temporary = path.with_name(path.name + TEMPORARY_SUFFIX)
        fileops = self._fileops
        if fileops.exists(temporary):
            fileops.unlink(temporary)  # left by a failed earlier attempt
        fd = fileops.create_exclusive(temporary)
        try:
            fileops.write(fd, encode_segment_header(first_sequence))
            fileops.fsync(fd)
        finally:
            fileops.close(fd)
        fileops.rename(temporary, path)
        fileops.fsync_dir(self.directory)
        fd = fileops.open_append(path)
        new = _ActiveSegment(path, first_sequence, fd, SEGMENT_HEADER_SIZE, SEGMENT_HEADER_SIZE)
        with self._segments_lock:
            old = self._active
            self._active = new
            if old is not None:
                self._closed_segments.append(SegmentInfo(old.path, old.first_sequence, old.size))
        if old is not None:
            fileops.close_quietly(old.fd)  # everything in it was fsynced before rotating

    def _enter_failure(self, error: Exception, unsynced: list[bytes]) -> None:
        cause = (
            error
            if isinstance(error, StorageError)
            else StorageError(f"unexpected error in the flusher: {error!r}")
        )
        if cause is not error:
            logger.error("decision log flusher hit an unexpected error", exc_info=error)
        failure = LogUnavailableError(f"decision log cannot make records durable: {cause}")
        failure.__cause__ = cause
        with self._lock:
            self._unsynced = unsynced + self._pending
            self._unsynced_last = self._next_sequence - 1
            self._pending = []
            self._pending_records = 0
            self._failure = failure
            waiters = self._waiters
            self._waiters = []
            self._wakeup.notify()  # the flusher recovers; this may be a `flush_here` caller's thread
            self._settled.notify_all()
        logger.error(
            "decision log failed (%s); %d waiters released with an error; sequences %d..%d are not durable and "
            "will be rewritten",
            cause,
            len(waiters),
            self._durable_sequence + 1,
            self._unsynced_last,
        )
        for _, _, callback in sorted(waiters):
            _run_callback(callback, failure)
        self._report_health(False)

    def _recover_from_failure(self) -> bool:
        """Retry until the unsynced records are durable again (True) or the log is closing (False)."""
        while True:
            with self._lock:
                if not self._closing and not self._retry_requested:
                    self._wakeup.wait(self._retry_interval)
                self._retry_requested = False
                closing = self._closing
            with self._lock:
                # The bytes to rewrite are fixed from here to the end of the attempt (`retract_last` waits).
                self._rewriting = True
                unsynced = b"".join(self._unsynced)
            try:
                self._rewrite_unsynced(unsynced)
            except Exception as error:
                with self._lock:
                    self._rewriting = False
                    self._settled.notify_all()
                logger.warning("decision log still unavailable: %s", error)
                if closing:
                    return False
                continue
            with self._lock:
                self._unsynced = []
                self._rewriting = False
                self._failure = None
            self._publish_durable(self._unsynced_last)
            logger.warning("decision log recovered; durable through sequence %d", self._durable_sequence)
            self._report_health(True)
            return True

    def _rewrite_unsynced(self, data: bytes) -> None:
        """Truncate the active segment to its durable size, rewrite the unsynced records (``data``, one write
        whose first frame is flagged here, if it was not already) and fsync."""
        if self._needs_new_segment:
            self._start_segment(self._durable_sequence + 1)
            self._needs_new_segment = False
        active = self._active
        assert active is not None
        # A fresh descriptor: the failed one may still carry the error, and what it wrote is not trusted.
        fd = self._fileops.open_append(active.path)
        previous, active.fd = active.fd, fd
        self._fileops.close_quietly(previous)
        self._fileops.ftruncate(fd, active.durable_size)
        active.size = active.durable_size
        if data:
            data = mark_first_of_write(data)
        self._fileops.write(fd, data)
        active.size += len(data)
        self._fileops.fsync(fd)  # fsync, not fdatasync: the truncation changed the file's size
        active.durable_size = active.size

    def _report_health(self, healthy: bool) -> None:
        if self._on_health_change is not None:
            try:
                self._on_health_change(healthy)
            except Exception:
                logger.exception("on_health_change hook failed")


def _run_callback(callback: DurableCallback, outcome: BaseException | None) -> None:
    try:
        callback(outcome)
    except Exception:
        logger.exception("durability callback failed")

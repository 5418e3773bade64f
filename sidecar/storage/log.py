"""The decision log: append-only segments of framed records, made durable by one group-committing flusher.

Record framing is documented in :mod:`sidecar.storage.framing`; this module owns files and their lifecycle.

Directory layout::

    00000000000000000001.log          a segment; the name is its first sequence number (%020d)
    00000000000000052311.log
    00000000000000052311.log.tmp      a segment being created: never read, removed by DecisionLog.open
    00000000000000052311.log.broken   the original bytes of a segment whose torn tail was truncated

Invariants a reader relies on:

* Sequence numbers start at 1 and are gapless across the whole log. A segment's header names its first
  sequence, which equals its file name; its first record (if any) carries that sequence; each next segment
  starts right after the previous segment's last record (an empty segment "ends" just before its name).
* A segment is created under a temporary name, its header fsynced, renamed and the directory fsynced, so a
  segment name is either absent or holds a complete header.
* Records are only ever appended at the end of the newest (last) segment, and a new segment is started only
  after everything in the previous one was fsynced. So only the end of the last segment can be torn by a
  crash; damage anywhere else is corruption.

Recovery, in the store's order: :func:`scan_log` (read-only, streaming) → apply the records → if the scan
found a torn tail, :func:`repair_torn_tail` → :meth:`DecisionLog.open` with the scan's ``next_sequence``.
A torn tail is what an interrupted write leaves at the end of the last segment and is repaired (a
``.broken`` copy is kept); everything else raises :class:`LogCorruptionError` naming the file and offset,
and the sidecar must refuse to start.

What a power cut leaves, and what recovers by itself: unsynced bytes dropped (the last segment ends earlier),
a torn final record (the final write cut short, or its missing end reading as zeros up to the end of the file)
and un-fsynced directory entries reverted all start without an operator, because the damage, if any, runs to
the end of the last segment and truncating it drops only bytes whose fdatasync never returned. A zeroed hole
inside the final write followed by intact records (its pages written back out of order) is refused like any
other damage, fail closed: the bytes alone cannot tell it from a sector of synced, acknowledged records that
the disk zeroed later, and truncating there could drop ALLOWED decisions a signer already acted on. The
operator has ``verify`` and ``repair``. Closing that case needs a format change (segment format v2: a marker on
the first record of each write, so that a reader knows where the final write begins and can confine the
torn-tail rule to it).

Durability: :meth:`DecisionLog.append` never touches the disk; it numbers the record and queues its bytes.
One flusher thread writes whatever is queued, calls ``fdatasync`` once for all of it (group commit), then
advances ``durable_sequence`` and runs the waiters. A caller that would only sit waiting for that (a lone
signing call) may do the same write itself with :meth:`DecisionLog.flush_here`; one lock makes sure only one
thread writes at a time. A sequence is reported durable only after an fsync that
covered it succeeded. After a failed write or fsync the page cache can no longer be trusted (fsyncgate), so
the flusher does not retry the fsync: it truncates the segment back to the last durable offset, rewrites the
records that were not durable (same sequence numbers) and fsyncs again.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from sidecar.storage.errors import LogCorruptionError, LogUnavailableError, StorageError
from sidecar.storage.fileio import FileOps
from sidecar.storage.framing import (
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    FramingError,
    Outcome,
    decode_intact_records,
    decode_record,
    decode_segment_header,
    encode_record,
    encode_records,
    encode_segment_header,
    find_intact_record,
)

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "DecisionLog",
    "DurableCallback",
    "LogRecord",
    "LogScan",
    "SegmentInfo",
    "TornTail",
    "list_segments",
    "read_records",
    "repair_torn_tail",
    "scan_log",
    "segment_name",
]

logger = logging.getLogger("sidecar.storage")

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
_READ_CHUNK_BYTES = 1024 * 1024
_YIELD_NONE = 2**64  # above every sequence: read and check every record, hand out none
_SEGMENT_NAME = re.compile(r"^(\d{20})\.log$")
_TEMPORARY_SUFFIX = ".tmp"
_BROKEN_SUFFIX = ".broken"

DurableCallback = Callable[[BaseException | None], None]
"""Called with ``None`` once a sequence is durable, or with the :class:`LogUnavailableError` that prevented it."""


class LogRecord(NamedTuple):
    sequence: int
    record_type: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    path: Path
    first_sequence: int
    size: int


@dataclass(frozen=True, slots=True)
class TornTail:
    """A repairable torn tail at the end of the last segment.

    ``offset`` is the end of the last good record (the length to truncate to), ``file_size`` the size the
    segment had when scanned (repair refuses if it changed), ``last_good_sequence`` the last intact record's
    sequence (``None`` if the segment holds none).
    """

    path: Path
    offset: int
    file_size: int
    last_good_sequence: int | None
    detail: str


def segment_name(first_sequence: int) -> str:
    return f"{first_sequence:020d}.log"


def list_segments(directory: Path, fileops: FileOps) -> list[SegmentInfo]:
    """The segments in ``directory``, oldest first; a missing directory has none. Other files are ignored."""
    directory = Path(directory)
    if not fileops.is_dir(directory):
        return []
    segments = []
    for name in fileops.listdir(directory):
        match = _SEGMENT_NAME.match(name)
        if match is not None:
            path = directory / name
            segments.append(SegmentInfo(path, int(match.group(1)), fileops.stat_size(path)))
    segments.sort(key=lambda segment: segment.first_sequence)
    return segments


def _read_header(fileops: FileOps, segment: SegmentInfo) -> None:
    """Validate a segment's header against its name; raise :class:`LogCorruptionError` if it is damaged."""
    fd = fileops.open_read(segment.path)
    try:
        data = fileops.pread(fd, SEGMENT_HEADER_SIZE, 0)
    finally:
        fileops.close(fd)
    try:
        header = decode_segment_header(data)
    except FramingError as error:
        raise LogCorruptionError(segment.path, error.offset, error.detail) from None
    if header.first_sequence != segment.first_sequence:
        raise LogCorruptionError(
            segment.path,
            9,
            f"segment header says its first sequence is {header.first_sequence} but its name says "
            f"{segment.first_sequence}",
        )


class _SegmentReader:
    """Streams one segment's records, checking that they are consecutive from the segment's first sequence.

    After :meth:`records` is exhausted, ``outcome`` is END, TORN or CORRUPT, ``end_offset`` is the offset just
    past the last good record and ``detail`` describes any damage. A TORN outcome is downgraded to CORRUPT
    when an intact record follows the damage: then it was not a torn write, and truncating would destroy
    records that were durable.
    """

    def __init__(self, fileops: FileOps, segment: SegmentInfo, *, chunk_bytes: int = _READ_CHUNK_BYTES):
        self.segment = segment
        self.outcome = Outcome.NEED_MORE
        self.end_offset = SEGMENT_HEADER_SIZE
        self.detail = ""
        self.last_sequence: int | None = None
        self.record_count = 0
        self.file_size = SEGMENT_HEADER_SIZE
        self._fileops = fileops
        self._chunk_bytes = chunk_bytes

    def records(self, after_sequence: int = 0) -> Iterator[LogRecord]:
        """The segment's records with ``sequence > after_sequence`` (all are checked, whatever they are)."""
        return _flatten(self.batches(after_sequence))

    def batches(self, after_sequence: int = 0) -> Iterator[list[tuple[int, int, bytes]]]:
        """The records of :meth:`records` as ``(sequence, record_type, payload)`` tuples, a read chunk's worth
        at a time: the form replay consumes, with no per-record object beyond the tuple. No batch is empty."""
        segment = self.segment
        fileops = self._fileops
        path = segment.path
        expected = segment.first_sequence
        fd = fileops.open_read(path)
        try:
            buffer = b""
            buffer_start = SEGMENT_HEADER_SIZE  # file offset of buffer[0]
            position = 0
            read_offset = SEGMENT_HEADER_SIZE
            at_end = False
            while True:
                intact, position, expected = decode_intact_records(
                    buffer, position, expected, after_sequence=after_sequence
                )
                self.record_count = expected - segment.first_sequence
                self.last_sequence = expected - 1 if self.record_count else None
                if intact:
                    yield intact
                    del intact
                decoded = decode_record(buffer, position, final=at_end, base_offset=buffer_start)
                outcome = decoded.outcome
                if outcome is Outcome.RECORD:
                    # Intact, but the run stopped there: it does not carry the expected sequence.
                    raise LogCorruptionError(
                        path, buffer_start + position, self._sequence_problem(decoded.sequence, expected)
                    )
                if outcome is Outcome.NEED_MORE:
                    # A record longer than a chunk doubles the read each time, so reading it stays linear.
                    remainder = buffer[position:]
                    chunk = fileops.pread(fd, max(self._chunk_bytes, len(remainder)), read_offset)
                    if not chunk:
                        at_end = True
                        self.file_size = read_offset
                        continue
                    read_offset += len(chunk)
                    buffer_start += position
                    position = 0
                    buffer = b""  # released before the next one is built: two chunks in memory, not three
                    buffer = remainder + chunk
                    del remainder, chunk
                    continue
                self.outcome = outcome
                self.end_offset = buffer_start + position
                self.detail = decoded.detail
                if outcome is Outcome.TORN:
                    self._refuse_torn_if_intact_record_follows(buffer, position, buffer_start, expected)
                return
        finally:
            fileops.close(fd)

    def _sequence_problem(self, found: int, expected: int) -> str:
        if expected == self.segment.first_sequence:
            named = self.segment.first_sequence
            return f"first record has sequence {found} but the segment's name and header say {named}"
        if found < expected:
            return f"sequence {found} does not increase (expected {expected})"
        missing = f"record {expected} is" if found == expected + 1 else f"records {expected}..{found - 1} are"
        return f"sequence gap: expected {expected}, found {found} ({missing} missing)"

    def _refuse_torn_if_intact_record_follows(
        self, buffer: bytes, position: int, buffer_start: int, expected: int
    ) -> None:
        # ``buffer`` holds every byte from ``position`` to the end of the file here: TORN is only reported
        # once the reader has reached the end.
        most_records = (len(buffer) - position) // RECORD_HEADER_SIZE + 1
        intact = find_intact_record(
            buffer, position + 1, min_sequence=expected, max_sequence=expected + most_records
        )
        if intact is not None:
            self.outcome = Outcome.CORRUPT
            self.detail = (
                f"{self.detail}, yet an intact record follows at offset {buffer_start + intact}: "
                "this is damage, not a torn write, and truncating would destroy durable records"
            )


class LogScan:
    """The streaming result of :func:`scan_log` or :func:`read_records`.

    Iterate it (or :meth:`records`, or :meth:`batches`) exactly once: it yields :class:`LogRecord` values with
    ``sequence > after_sequence`` in order (or lists of them as plain tuples),
    reading segments in chunks (memory stays bounded by the largest record plus one read chunk). Damage that is
    not a repairable torn tail raises :class:`LogCorruptionError` from the iteration, naming file and offset.
    Once the iteration has finished, ``torn_tail``, ``last_sequence``, ``next_sequence`` and ``record_count``
    are available; reading them earlier raises ``RuntimeError``.
    """

    def __init__(
        self,
        directory: Path,
        fileops: FileOps,
        segments: list[SegmentInfo],
        after_sequence: int,
        *,
        require_continuity: bool,
    ):
        self.directory = directory
        self.segments = segments
        self.after_sequence = after_sequence
        self._fileops = fileops
        self._require_continuity = require_continuity
        self._started = False
        self._generator: Iterator[LogRecord] | None = None
        self._batch_generator: Iterator[list[tuple[int, int, bytes]]] | None = None
        self._finished = False
        self._torn_tail: TornTail | None = None
        self._has_records = False
        self._log_next = segments[0].first_sequence if segments else 1
        self._record_count = 0

    def __iter__(self) -> Iterator[LogRecord]:
        return self.records()

    def records(self) -> Iterator[LogRecord]:
        """The records after ``after_sequence``, in sequence order. Callable once (this or :meth:`batches`)."""
        batches = self._start(self.after_sequence)
        self._generator = _flatten(batches)
        return self._generator

    def batches(self) -> Iterator[list[tuple[int, int, bytes]]]:
        """The same records as :meth:`records`, as lists of ``(sequence, record_type, payload)`` tuples (about
        one read chunk each, never empty): replay's form of the scan. Callable once (this or :meth:`records`)."""
        return self._start(self.after_sequence)

    def _start(self, yield_after: int) -> Iterator[list[tuple[int, int, bytes]]]:
        if self._started:
            raise RuntimeError("a LogScan can be iterated only once")
        self._started = True
        self._batch_generator = self._batches(yield_after)
        return self._batch_generator

    def close(self) -> None:
        """Abandon an unfinished iteration now, closing the segment file it holds open."""
        for generator in (self._generator, self._batch_generator):
            if generator is not None and hasattr(generator, "close"):
                generator.close()

    def __enter__(self) -> LogScan:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def consume(self) -> LogScan:
        """Read to the end, discarding the records (to validate, or when the caller needs only the outcome).

        Every record is still read and checked; none is handed out, so no payload is copied."""
        for _ in self._start(_YIELD_NONE):
            pass
        return self

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def torn_tail(self) -> TornTail | None:
        self._require_finished()
        return self._torn_tail

    @property
    def last_sequence(self) -> int:
        """The last sequence the log accounts for: its last intact record, or, when it holds none, one before
        the sequence its first segment is named after (0 for no segment)."""
        self._require_finished()
        return self._log_next - 1

    @property
    def next_sequence(self) -> int:
        """The sequence the next appended record must get: after both the log and ``after_sequence``."""
        self._require_finished()
        return max(self._log_next, self.after_sequence + 1)

    @property
    def record_count(self) -> int:
        """Intact records read, including those at or below ``after_sequence``."""
        self._require_finished()
        return self._record_count

    def _require_finished(self) -> None:
        if not self._finished:
            raise RuntimeError("the log scan has not been read to the end")

    def _batches(self, yield_after: int) -> Iterator[list[tuple[int, int, bytes]]]:
        after = self.after_sequence
        expected: int | None = None
        last_index = len(self.segments) - 1
        for index, segment in enumerate(self.segments):
            _read_header(self._fileops, segment)
            if expected is not None and segment.first_sequence != expected:
                raise LogCorruptionError(
                    segment.path,
                    0,
                    f"missing segment: the previous segment ends at sequence {expected - 1} but this one starts "
                    f"at {segment.first_sequence}",
                )
            reader = _SegmentReader(self._fileops, segment)
            yield from reader.batches(yield_after)
            self._record_count += reader.record_count
            self._has_records = self._has_records or reader.record_count > 0
            if reader.outcome is Outcome.TORN:
                if index != last_index:
                    raise LogCorruptionError(
                        segment.path,
                        reader.end_offset,
                        f"{reader.detail}, in a segment that is not the last (it was complete once)",
                    )
                self._torn_tail = TornTail(
                    segment.path, reader.end_offset, reader.file_size, reader.last_sequence, reader.detail
                )
            elif reader.outcome is Outcome.CORRUPT:
                raise LogCorruptionError(segment.path, reader.end_offset, reader.detail)
            expected = segment.first_sequence + reader.record_count
            self._log_next = expected
        log_last = self._log_next - 1
        if self._require_continuity and self._has_records and log_last < after:
            last = self.segments[-1]
            raise LogCorruptionError(
                last.path,
                self._torn_tail.offset if self._torn_tail is not None else last.size,
                f"the log ends at sequence {log_last} but the checkpoint covers through {after}: "
                f"records {log_last + 1}..{after} were durable when it was written and are missing",
            )
        self._finished = True


def _flatten(batches: Iterator[list[tuple[int, int, bytes]]]) -> Iterator[LogRecord]:
    new_record = tuple.__new__  # LogRecord(...) without the keyword-handling constructor
    for batch in batches:
        for record in batch:
            yield new_record(LogRecord, record)
        del batch  # not held while the next batch is read: memory stays bounded by about one chunk


def scan_log(directory: Path, fileops: FileOps, after_sequence: int = 0) -> LogScan:
    """Scan the log for recovery after a checkpoint covering ``after_sequence`` (0: no checkpoint).

    Read-only. Beyond the per-segment checks, the log must continue the checkpoint: its first segment must
    start at or before ``after_sequence + 1`` and, unless it holds no record, it must reach
    ``after_sequence``. Structural problems visible from names alone raise here; everything else raises
    during iteration. A missing directory is an empty log.
    """
    directory = Path(directory)
    if after_sequence < 0:
        raise ValueError(f"after_sequence must be >= 0, got {after_sequence}")
    segments = list_segments(directory, fileops)
    if segments and segments[0].first_sequence > after_sequence + 1:
        first = segments[0]
        raise LogCorruptionError(
            first.path,
            0,
            f"the log starts at sequence {first.first_sequence} but "
            + (
                f"the checkpoint covers only through {after_sequence}"
                if after_sequence
                else "there is no checkpoint"
            )
            + f": records {after_sequence + 1}..{first.first_sequence - 1} are missing",
        )
    return LogScan(directory, fileops, segments, after_sequence, require_continuity=True)


def read_records(directory: Path, fileops: FileOps, *, after_sequence: int = 0) -> LogScan:
    """Read every record (for the audit trail and ``verify``) without repairing anything.

    Unlike :func:`scan_log` the log may start anywhere (older segments may have been deleted or archived). A
    torn tail is reported in ``torn_tail`` after iteration; other damage raises :class:`LogCorruptionError`.

    It may run while a :class:`DecisionLog` appends to the same directory: a batch being written at that
    moment shows up as a torn tail and is not returned. A segment deleted by ``delete_segments_through``
    between listing and reading raises :class:`StorageIOError` (``ENOENT``).
    """
    return LogScan(
        Path(directory), fileops, list_segments(Path(directory), fileops), after_sequence, require_continuity=False
    )


def repair_torn_tail(torn_tail: TornTail, fileops: FileOps) -> Path:
    """Truncate the last segment to its last good record, keeping the original as ``<segment>.broken``.

    Refuses (``StorageError``) if the segment's size changed since the scan. The copy and its directory entry are
    made durable before the truncation, which is fsynced in turn. Returns the path of the copy.
    """
    path = torn_tail.path
    size = fileops.stat_size(path)
    if size != torn_tail.file_size:
        raise StorageError(
            f"{path} is {size} bytes, not the {torn_tail.file_size} it had when scanned; rescan first"
        )
    broken = path.with_name(path.name + _BROKEN_SUFFIX)
    copy_number = 1
    while fileops.exists(broken):
        copy_number += 1
        broken = path.with_name(f"{path.name}{_BROKEN_SUFFIX}.{copy_number}")
    _copy_file(fileops, path, broken)
    # The copy's name must be durable before the original loses its tail, or a power cut in between could keep
    # the truncation and lose the only copy of the torn bytes.
    fileops.fsync_dir(path.parent)
    fd = fileops.open_append(path)
    try:
        fileops.ftruncate(fd, torn_tail.offset)
        fileops.fsync(fd)
    finally:
        fileops.close(fd)
    fileops.fsync_dir(path.parent)
    logger.warning(
        "repaired torn tail of decision log segment %s: truncated to byte offset %d, dropping %d bytes (%s); "
        "last good sequence %s; original kept as %s",
        path,
        torn_tail.offset,
        size - torn_tail.offset,
        torn_tail.detail,
        torn_tail.last_good_sequence,
        broken.name,
    )
    return broken


def _copy_file(fileops: FileOps, source: Path, destination: Path) -> None:
    source_fd = fileops.open_read(source)
    try:
        destination_fd = fileops.create_exclusive(destination)
        try:
            offset = 0
            while chunk := fileops.pread(source_fd, _READ_CHUNK_BYTES, offset):
                fileops.write(destination_fd, chunk)
                offset += len(chunk)
            fileops.fsync(destination_fd)
        finally:
            fileops.close(destination_fd)
    finally:
        fileops.close(source_fd)


@dataclass(slots=True)
class _ActiveSegment:
    """The segment being appended to. Owned by the flusher thread (and by ``open`` before it starts)."""

    path: Path
    first_sequence: int
    fd: int
    size: int  # bytes written, durable or not
    durable_size: int  # bytes covered by a successful fsync


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
        segment if its last record is ``next_sequence - 1`` (or it is empty and named ``next_sequence``);
        starts a new segment if there is none; replaces a lone empty segment with a different name (a newer
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
        _remove_temporary_segments(directory, fileops)
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
        if segments:
            last = segments[-1]
            _read_header(fileops, last)
            reader = _SegmentReader(fileops, last)
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
        if reuse is not None:
            fd = fileops.open_append(reuse.path)
            try:
                fileops.fsync(fd)
                fileops.fsync_dir(directory)
            except BaseException:
                fileops.close_quietly(fd)
                raise
            log._active = _ActiveSegment(reuse.path, reuse.first_sequence, fd, reuse_size, reuse_size)
            log._closed_segments = segments[:-1]
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
            waiters = self._waiters
            while waiters and waiters[0][0] <= sequence:
                ready.append(heapq.heappop(waiters)[2])
        for callback in ready:
            _run_callback(callback, None)

    def _start_segment(self, first_sequence: int) -> None:
        """Create, fsync and publish a new segment, then make it the active one. Holder of `_writing` (or open)."""
        path = self.directory / segment_name(first_sequence)
        temporary = path.with_name(path.name + _TEMPORARY_SUFFIX)
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
            try:
                self._rewrite_unsynced()
            except Exception as error:
                logger.warning("decision log still unavailable: %s", error)
                if closing:
                    return False
                continue
            with self._lock:
                self._failure = None
            self._publish_durable(self._unsynced_last)
            logger.warning("decision log recovered; durable through sequence %d", self._durable_sequence)
            self._report_health(True)
            return True

    def _rewrite_unsynced(self) -> None:
        """Truncate the active segment to its durable size, rewrite the unsynced records and fsync them."""
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
        data = b"".join(self._unsynced)
        self._fileops.write(fd, data)
        active.size += len(data)
        self._fileops.fsync(fd)  # fsync, not fdatasync: the truncation changed the file's size
        active.durable_size = active.size
        self._unsynced = []

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


def _remove_temporary_segments(directory: Path, fileops: FileOps) -> None:
    removed = False
    for name in fileops.listdir(directory):
        if name.endswith(".log" + _TEMPORARY_SUFFIX):
            fileops.unlink(directory / name)
            removed = True
    if removed:
        fileops.fsync_dir(directory)

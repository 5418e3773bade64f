"""Reading the decision log: a streaming scan whose three outcomes are kept apart.

* **Clean end**: every segment ends on a record boundary.
* **Torn tail**: what an interrupted write leaves at the end of the last segment. Reported in
  :attr:`LogScan.torn_tail` after the iteration; repairable by :func:`sidecar.storage.repair.repair_torn_tail`.
* **Corruption**: damage anywhere else, a missing segment, a sequence that does not continue, a log that does
  not reach its checkpoint. Raised as :class:`LogCorruptionError` naming the file and offset; the sidecar must
  refuse to start.

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

The invariants checked here are listed in :mod:`sidecar.storage.segments`, the outcomes of one record in
:mod:`sidecar.storage.framing`.

Recovery, in the store's order: :func:`scan_log` (read-only, streaming) → apply the records → if the scan
found a torn tail, ``repair_torn_tail`` → ``DecisionLog.open`` (:mod:`sidecar.storage.writer`) with the scan's
``next_sequence``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from sidecar.storage.errors import LogCorruptionError
from sidecar.storage.fileio import FileOps
from sidecar.storage.framing import (
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    Outcome,
    decode_intact_records,
    decode_record,
    find_intact_record,
)
from sidecar.storage.segments import READ_CHUNK_BYTES, SegmentInfo, check_segment_header, list_segments

__all__ = [
    "LogRecord",
    "LogScan",
    "SegmentReader",
    "TornTail",
    "read_records",
    "scan_log",
]

_YIELD_NONE = 2**64  # above every sequence: read and check every record, hand out none


class LogRecord(NamedTuple):
    sequence: int
    record_type: int
    payload: bytes


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


class SegmentReader:
    """Streams one segment's records, checking that they are consecutive from the segment's first sequence.

    After :meth:`records` is exhausted, ``outcome`` is END, TORN or CORRUPT, ``end_offset`` is the offset just
    past the last good record and ``detail`` describes any damage. A TORN outcome is downgraded to CORRUPT
    when an intact record follows the damage: then it was not a torn write, and truncating would destroy
    records that were durable.
    """

    def __init__(self, fileops: FileOps, segment: SegmentInfo, *, chunk_bytes: int = READ_CHUNK_BYTES):
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
            check_segment_header(self._fileops, segment)
            if expected is not None and segment.first_sequence != expected:
                raise LogCorruptionError(
                    segment.path,
                    0,
                    f"missing segment: the previous segment ends at sequence {expected - 1} but this one starts "
                    f"at {segment.first_sequence}",
                )
            reader = SegmentReader(self._fileops, segment)
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

"""Reading the decision log: a streaming scan whose three outcomes are kept apart.

* **Clean end**: every segment ends on a record boundary.
* **Torn tail**: what an interrupted write leaves at the end of the last segment. Reported in
  :attr:`LogScan.torn_tail` after the iteration; the sidecar repairs it by itself at start with
  :func:`sidecar.storage.repair.repair_torn_tail` (truncation at the offset named, the original kept aside).
* **Corruption**: damage anywhere else, a missing segment, a sequence that does not continue, a log that does
  not reach its checkpoint. Raised as :class:`LogCorruptionError` naming the file and offset; the sidecar must
  refuse to start.

The invariants checked here are listed in :mod:`sidecar.storage.segments`, the outcomes of one record in
:mod:`sidecar.storage.framing`.

Recovery, in the store's order: :func:`scan_log` (read-only, streaming) → apply the records → if the scan
found a torn tail, ``repair_torn_tail`` → ``DecisionLog.open`` (:mod:`sidecar.storage.writer`) with the scan's
``next_sequence``.

What a power cut leaves, and why the sidecar starts by itself after it
----------------------------------------------------------------------

A power cut loses or scrambles only bytes whose fsync never returned: unsynced bytes dropped (the last segment
ends earlier), the final write cut short or its missing end reading as zeros, un-fsynced directory entries
reverted, and the final write's pages written back out of order, so that a zeroed hole precedes intact records
of that same write. An ALLOWED answer is given only after the fsync covering its record returned, so dropping
bytes whose fsync never returned drops no answer a signer acted on. All of these must start without an
operator; damage to bytes that were synced must not.

**The rule.** Let ``p`` be the first damaged record of the last segment of a format-2 log: the first offset
where no intact record with the expected sequence starts. The damage is a torn tail, truncated at ``p``, iff

(a) it shows the signature of bytes that never reached the disk: one of framing's torn outcomes with no intact
    record after it (the data ends inside a record, zeros run to the end, or the final record fails its CRC
    and holds a zeroed sector piece: the etcd rule); or, with data after the damaged record, a piece of the
    damaged stretch, from ``p`` to the first intact record after it (or to the last non-zero byte), that reads
    as a sector never written: zeros up to a 512-byte sector boundary, from the sector's start or from ``p``
    (:func:`~sidecar.storage.framing.find_unwritten_sector`); and
(b) no intact record after ``p`` carries the first-of-write flag.

Anything else is corruption at ``p``. Non-zero garbage (bit rot, a stray write) has no zeroed sector and stays
corruption, in the final write too: a power cut leaves zeros where pages never landed, it flips no bits.

**Why truncating at p drops only bytes whose fsync never returned.** Call the segment's writes ``W1 .. Wn`` in
file order (they are appended in the order they are issued) and let ``Wk`` hold the record at ``p`` (a record
is never split between writes). The writer issues ``W(k+1)`` only after ``Wk``'s fdatasync returned (after a
restart, the open's fsync of the last segment plays that part), and flags ``W(k+1)``'s first record. So if
``k < n``, ``W(k+1)`` begins after ``p`` and ``Wk`` was synced; if ``W(k+1)``'s first record is intact, (b)
fails and the scan refuses: damage to synced bytes. When (b) holds, then, either ``k = n``, or the first record
of every later write is damaged too (the limit below). If ``k = n``, everything from ``p`` on belongs to the
final write. Its fsync had not returned at the cut, unless the damage came later (the limit below again): none
of its records was answered ALLOWED (the answer waits for that fsync) and no checkpoint covers them (a
checkpoint covers durable records only, and the scan refuses a log that ends before its checkpoint anyway).
Truncating at ``p`` drops part of that write: no more than the power cut itself could have lost.

**The limit: what the bytes cannot tell apart.** Both cases need the disk to destroy bytes after acknowledging
them as durable, at the very end of the log; nothing in the log's bytes can tell them from a power cut without
a second copy, and they are accepted:

1. The final write synced and answered, then a sector of it zeroed by the medium: it reads exactly like that
   write's pages lost in a power cut, and is truncated at ``p`` with the answers after it. (Before format 2
   this limit already held for the final record alone, through the etcd rule.)
2. A synced sector of an earlier write ``Wk`` zeroed by the medium together with the loss of the first record of
   every later write: for instance the next and final write's first record lost in the power cut, or one
   zeroed 4 KiB page spanning the end of ``Wk`` and the start of ``Wn``. With every later boundary hidden, it
   reads as case 1.

The repair keeps the whole original segment as ``<segment>.broken`` and logs what it dropped, so an operator can
still look. Everywhere else (an earlier segment, or any damage followed by the intact start of a later write)
damage to synced bytes is refused.

A rewrite after a failed write is one write too (:mod:`sidecar.storage.writer`): its first frame is flagged,
and a frame inside it keeps the flag it was written with, so a hole inside a rewrite followed by such a frame
is refused, fail closed (a failure, then a power cut during the rewrite, then out-of-order write-back).

A format-1 segment (0.2.0 and earlier) marks no write, so its final write cannot be told apart: damage followed
by an intact record is refused there, as it always was (the operator has ``verify`` and ``repair``). The writer
never appends to a format-1 segment, so only a power cut under 0.2.0 can leave one to be judged so.
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
    find_unwritten_sector,
)
from sidecar.storage.segments import (
    READ_CHUNK_BYTES,
    SegmentInfo,
    check_segment_header,
    decode_header_of,
    list_segments,
)

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
    """Streams one segment's records, checking its header and that the records are consecutive from the
    segment's first sequence.

    After :meth:`records` is exhausted, ``outcome`` is END, TORN or CORRUPT, ``end_offset`` is the offset just
    past the last good record, ``detail`` describes any damage and ``version`` is the segment's format version.
    Damage followed by an intact record is CORRUPT (it was not a torn write, and truncating would destroy
    records that were durable), except in the log's last segment (``last_in_log``) of format 2, where the rule
    of the module docstring decides between TORN and CORRUPT; to apply it, the reader then holds the rest of
    the segment in memory (it was reading all of it anyway).
    """

    def __init__(
        self, fileops: FileOps, segment: SegmentInfo, *, last_in_log: bool, chunk_bytes: int = READ_CHUNK_BYTES
    ):
        self.segment = segment
        self.outcome = Outcome.NEED_MORE
        self.end_offset = SEGMENT_HEADER_SIZE
        self.detail = ""
        self.last_sequence: int | None = None
        self.record_count = 0
        self.file_size = SEGMENT_HEADER_SIZE
        self.version = 0  # known once reading has started
        self._fileops = fileops
        self._chunk_bytes = chunk_bytes
        self._last_in_log = last_in_log

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
            version = decode_header_of(segment, fileops.pread(fd, SEGMENT_HEADER_SIZE, 0)).version
            self.version = version
            # Only the log's last segment can hold the final write, and only format 2 says where it begins.
            judge_final_write = self._last_in_log and version >= 2
            buffer = b""
            buffer_start = SEGMENT_HEADER_SIZE  # file offset of buffer[0]
            position = 0
            read_offset = SEGMENT_HEADER_SIZE
            at_end = False
            while True:
                intact, position, expected = decode_intact_records(
                    buffer, position, expected, after_sequence=after_sequence, version=version
                )
                self.record_count = expected - segment.first_sequence
                self.last_sequence = expected - 1 if self.record_count else None
                if intact:
                    yield intact
                    del intact
                decoded = decode_record(buffer, position, final=at_end, base_offset=buffer_start, version=version)
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
                self.end_offset = buffer_start + position
                if judge_final_write and outcome is not Outcome.END:
                    rest = b"" if at_end else self._read_to_end(fd, read_offset)
                    self.file_size = read_offset + len(rest)
                    self._judge_damage_in_final_write(buffer[position:] + rest, self.end_offset, expected)
                    return
                self.outcome = outcome
                self.detail = decoded.detail
                if outcome is Outcome.TORN:
                    self._refuse_torn_if_intact_record_follows(buffer, position, buffer_start, expected)
                return
        finally:
            fileops.close(fd)

    def _read_to_end(self, fd: int, offset: int) -> bytes:
        chunks = []
        while chunk := self._fileops.pread(fd, self._chunk_bytes, offset):
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)

    def _judge_damage_in_final_write(self, data: bytes, base_offset: int, expected: int) -> None:
        """Set the outcome for damage at the start of ``data`` (every byte from the damage to the end of the
        segment, which is the log's last and of format 2) by the rule of the module docstring."""
        decoded = decode_record(data, 0, base_offset=base_offset, version=self.version)
        self.detail = decoded.detail
        last_possible = expected + len(data) // RECORD_HEADER_SIZE + 1
        intact = find_intact_record(data, 1, min_sequence=expected, max_sequence=last_possible)
        if decoded.outcome is Outcome.TORN and intact is None:
            self.outcome = Outcome.TORN
            return
        self.outcome = Outcome.CORRUPT
        later_write = find_intact_record(
            data, 1, min_sequence=expected, max_sequence=last_possible, first_of_write=True
        )
        if later_write is not None:
            self.detail = (
                f"{decoded.detail}, yet an intact record beginning a later write follows at offset "
                f"{base_offset + later_write}: that write was issued only once this one was synced, so this is "
                "damage to synced records, not a torn write"
            )
            return
        stretch_end = intact if intact is not None else len(data.rstrip(b"\x00"))
        unwritten = find_unwritten_sector(data, 0, stretch_end, base_offset=base_offset)
        if unwritten is None:
            if intact is not None:
                self.detail = (
                    f"{decoded.detail}, yet an intact record follows at offset {base_offset + intact} and no "
                    "sector before it reads as never written: this is damage, not a torn write, and truncating "
                    "would destroy durable records"
                )
            return
        self.outcome = Outcome.TORN
        self.detail = (
            f"{decoded.detail}; the sector piece at offset {unwritten} reads as never written and no later "
            "write begins after it: the final write, never synced, reached the disk out of order"
        )

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
        appended_to: bool,
    ):
        self.directory = directory
        self.segments = segments
        self.after_sequence = after_sequence
        self._fileops = fileops
        self._require_continuity = require_continuity
        # Whether the directory is the one the log appends to: only then may its last segment hold the final write.
        self._appended_to = appended_to
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
        last_index = len(self.segments) - 1 if self._appended_to else -1
        for index, segment in enumerate(self.segments):
            # As well as in the segment reader: a damaged header is reported as such, not as a missing segment.
            check_segment_header(self._fileops, segment)
            if expected is not None and segment.first_sequence != expected:
                raise LogCorruptionError(
                    segment.path,
                    0,
                    f"missing segment: the previous segment ends at sequence {expected - 1} but this one starts "
                    f"at {segment.first_sequence}",
                )
            reader = SegmentReader(self._fileops, segment, last_in_log=index == last_index)
            yield from reader.batches(yield_after)
            self._record_count += reader.record_count
            self._has_records = self._has_records or reader.record_count > 0
            if reader.outcome is Outcome.TORN:
                if index != last_index:
                    raise LogCorruptionError(
                        segment.path,
                        reader.end_offset,
                        f"{reader.detail}, in a segment that is not the last of the log (it was complete once)",
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
    return LogScan(directory, fileops, segments, after_sequence, require_continuity=True, appended_to=True)


def read_records(directory: Path, fileops: FileOps, *, after_sequence: int = 0, archive: bool = False) -> LogScan:
    """Read every record (for the audit trail and ``verify``) without repairing anything.

    Unlike :func:`scan_log` the log may start anywhere (older segments may have been deleted or archived). A
    torn tail is reported in ``torn_tail`` after iteration; other damage raises :class:`LogCorruptionError`.
    With ``archive``, ``directory`` holds segments moved out of the log, each complete when it was moved: none
    may end torn, and damage anywhere is corruption.

    It may run while a :class:`DecisionLog` appends to the same directory: a batch being written at that
    moment shows up as a torn tail and is not returned. A segment deleted by ``delete_segments_through``
    between listing and reading raises :class:`StorageIOError` (``ENOENT``).
    """
    return LogScan(
        Path(directory),
        fileops,
        list_segments(Path(directory), fileops),
        after_sequence,
        require_continuity=False,
        appended_to=not archive,
    )

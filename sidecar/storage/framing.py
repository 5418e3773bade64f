"""Decision-log framing: the bytes of a segment file, encoded and decoded. Pure: no I/O, no state.

On-disk format, version 2 (version 1 is still read; see below). All integers are little-endian.

Segment header (21 bytes, at offset 0 of every segment file)::

    offset  size  field
    0       8     magic            b"SIDECLOG"
    8       1     format version   2 (or 1); a reader refuses any other value
    9       8     first sequence   u64, the sequence number of the segment's first record
    17      4     header CRC32C    u32 over bytes 0..16

Records follow the header back to back, with no padding::

    offset  size  field
    0       4     length           u32, payload bytes (0 .. MAX_PAYLOAD_SIZE)
    4       4     CRC32C           u32 (Castagnoli) over the type byte + sequence + payload, as written
    8       1     type byte        bit 7 (0x80): first record of a write; bits 0..6: record type, 1..127
    9       8     sequence         u64
    17      length payload         opaque to the log

A *write* is the bytes the writer hands to one ``write()`` call and then makes durable with one fsync: one group
commit, or the rewrite after a failed one (:mod:`sidecar.storage.writer`). Its first record carries the
first-of-write flag; no other record does. Decoders hand out the record type without the flag (callers see types
1..127) and the flag separately (``Decoded.first_of_write``).

Format version 1 (written by 0.2.0 and earlier) is the same but for the type byte: all eight bits are the type,
1..255, and no record is marked. A version-1 segment is read exactly as it always was; the writer never appends
to one, it starts a version-2 segment instead.

Why these choices:

* Type 0 is reserved so that zeroed or preallocated space never decodes as a record: a torn write that
  extended the file but never landed reads back as zeros, and zeros are recognisable. A type byte of 0x80
  (type 0 with the flag) is never written either, and is damage.
* The first-of-write flag tells a reader where each write began. A write starts only after the previous one's
  fsync returned, so an intact flagged record after damage proves the damaged bytes were synced; with no such
  record, damage in the last segment lies in the final write, which may never have been synced. That is what
  lets a reader recover by itself from a final write whose pages reached the disk out of order (the argument is
  in :mod:`sidecar.storage.reader`). It costs no byte: the domain uses six record types.
* The CRC covers the type byte (flag included) and sequence as well as the payload, so a record cannot be
  misattributed to a different sequence number, nor gain or lose its flag undetected. The length is not
  covered: a damaged length shows up as a CRC mismatch over the wrong range, as an impossible length, or as a
  record running past the end of the data (see below).
* ``MAX_PAYLOAD_SIZE`` (16 MiB) bounds what a damaged length field can make a reader allocate, and makes most
  damaged lengths detectable as impossible.

Decoding one record at an offset has exactly one of these outcomes (``Outcome``):

* ``RECORD``: a complete record whose CRC matches.
* ``END``: no bytes remain; the data ends cleanly on a record boundary.
* ``TORN``: what a write interrupted by a crash leaves behind, repairable by truncation if it is at the end of
  the last segment. Either the bytes end inside a record (a partial header, or fewer payload bytes than the
  length says); or the bytes from the record's type field to the end are all zero (zero-filled space); or the
  final record's CRC fails, nothing but zeros follows it, and some 512-byte-sector-aligned piece of it is all
  zeros (a sector that never reached the disk: the rule etcd uses to tell a torn write from bit rot).
* ``CORRUPT``: anything else: a CRC mismatch with more data after the record, a CRC mismatch at the end
  without the zero-sector signature of a torn write, a length above ``MAX_PAYLOAD_SIZE``, type 0 followed by
  non-zero bytes, a valid frame of type 0x80.
* ``NEED_MORE``: only when the caller says the data is not final (``final=False``): the outcome depends on
  bytes the caller has not supplied yet.

Damage with data after it (``CORRUPT`` above, or ``TORN`` followed by an intact record) is judged again by the
reader when it is in the last segment of a version-2 log, with :func:`find_intact_record` and
:func:`find_unwritten_sector`. Sequence continuity (consecutive numbers, first record matching the segment
header) is a property of the log, not of one record; ``sidecar.storage.reader`` checks both.
"""

from __future__ import annotations

import enum
import re
import struct
from typing import NamedTuple

import crc32c

__all__ = [
    "FIRST_OF_WRITE",
    "MAX_PAYLOAD_SIZE",
    "MAX_RECORD_TYPE",
    "READABLE_SEGMENT_VERSIONS",
    "RECORD_HEADER_SIZE",
    "SEGMENT_FORMAT_VERSION",
    "SEGMENT_HEADER_SIZE",
    "SEGMENT_MAGIC",
    "Decoded",
    "FramingError",
    "Outcome",
    "SegmentHeader",
    "decode_intact_records",
    "decode_record",
    "decode_segment_header",
    "encode_record",
    "encode_records",
    "encode_segment_header",
    "find_intact_record",
    "find_unwritten_sector",
    "mark_first_of_write",
]

SEGMENT_MAGIC = b"SIDECLOG"
SEGMENT_FORMAT_VERSION = 2
"""The version the writer writes."""
READABLE_SEGMENT_VERSIONS = (1, 2)
FIRST_OF_WRITE = 0x80
"""Bit 7 of the type byte in format 2: the record is the first of a write."""
MAX_RECORD_TYPE = 0x7F
MAX_PAYLOAD_SIZE = 16 * 1024 * 1024
SECTOR_SIZE = 512

_SEGMENT_HEADER = struct.Struct("<8sBQI")
_SEGMENT_HEADER_BODY = struct.Struct("<8sBQ")
SEGMENT_HEADER_SIZE = _SEGMENT_HEADER.size

_RECORD_HEADER = struct.Struct("<IIBQ")
_TYPE_AND_SEQUENCE = struct.Struct("<BQ")
_LENGTH_AND_CRC = struct.Struct("<II")  # the record header's first two fields; _TYPE_AND_SEQUENCE completes it
_LENGTH = struct.Struct("<I")
RECORD_HEADER_SIZE = _RECORD_HEADER.size
_CRC_COVERAGE_START = 8  # the CRC covers the record from its type byte onward
_PAYLOAD_IN_COVERAGE = RECORD_HEADER_SIZE - _CRC_COVERAGE_START
_MAX_SEQUENCE = 2**64 - 1

_NONZERO = re.compile(rb"[^\x00]")
# A candidate record start when resynchronising: any offset whose type byte (offset + 8) is non-zero.
_NONZERO_TYPE_AHEAD = re.compile(rb"(?s)(?=.{8}[^\x00])")
# The same for a record that begins a write (format 2): the flag set, on a type other than the reserved 0.
_FIRST_OF_WRITE_TYPE_AHEAD = re.compile(rb"(?s)(?=.{8}[\x81-\xff])")

Buffer = bytes | bytearray | memoryview


class FramingError(ValueError):
    """A segment header cannot be decoded. ``offset`` is the byte offset of the bad field."""

    def __init__(self, offset: int, detail: str):
        self.offset = offset
        self.detail = detail
        super().__init__(detail)


class SegmentHeader(NamedTuple):
    version: int
    first_sequence: int


class Outcome(enum.Enum):
    RECORD = "record"
    END = "end"
    TORN = "torn"
    CORRUPT = "corrupt"
    NEED_MORE = "need more data"


class Decoded(NamedTuple):
    """Result of :func:`decode_record`.

    For ``RECORD``, ``next_offset`` is where the next record starts, ``record_type`` is the type without the
    first-of-write flag and ``first_of_write`` the flag (always False in format 1); for every other outcome
    ``next_offset`` equals the offset that was decoded (where the clean end or the damage is) and ``detail``
    describes the damage.
    """

    outcome: Outcome
    sequence: int
    record_type: int
    payload: bytes
    next_offset: int
    detail: str
    first_of_write: bool = False


def encode_segment_header(first_sequence: int, *, version: int = SEGMENT_FORMAT_VERSION) -> bytes:
    """A segment header. The writer always writes ``SEGMENT_FORMAT_VERSION``; ``version`` is for tests that build
    an older segment."""
    if not 0 < first_sequence <= _MAX_SEQUENCE:
        raise ValueError(f"first sequence {first_sequence} is out of range")
    if version not in READABLE_SEGMENT_VERSIONS:
        raise ValueError(f"segment format version {version} is unknown")
    body = _SEGMENT_HEADER_BODY.pack(SEGMENT_MAGIC, version, first_sequence)
    return body + struct.pack("<I", crc32c.crc32c(body))


def decode_segment_header(data: Buffer) -> SegmentHeader:
    """Decode the first ``SEGMENT_HEADER_SIZE`` bytes of a segment; raise :class:`FramingError` if invalid.

    An unknown version is refused before the CRC is checked, so a file written by a newer format is reported
    as such rather than as damage.
    """
    if len(data) < SEGMENT_HEADER_SIZE:
        raise FramingError(0, f"segment header is {len(data)} bytes, expected {SEGMENT_HEADER_SIZE}")
    magic, version, first_sequence, stored_crc = _SEGMENT_HEADER.unpack_from(data, 0)
    if magic != SEGMENT_MAGIC:
        raise FramingError(0, f"bad segment magic {bytes(magic)!r}, expected {SEGMENT_MAGIC!r}")
    if version not in READABLE_SEGMENT_VERSIONS:
        raise FramingError(
            8,
            f"unsupported segment format version {version} (this build reads versions "
            f"{', '.join(map(str, READABLE_SEGMENT_VERSIONS))}; a newer sidecar wrote it)",
        )
    computed = crc32c.crc32c(memoryview(data)[: _SEGMENT_HEADER_BODY.size])
    if computed != stored_crc:
        raise FramingError(
            17, f"segment header checksum mismatch (stored {stored_crc:#010x}, computed {computed:#010x})"
        )
    if first_sequence == 0:
        raise FramingError(9, "segment header names first sequence 0, which is never assigned")
    return SegmentHeader(version, first_sequence)


def _check_record_type(record_type: int) -> None:
    if not 0 < record_type <= MAX_RECORD_TYPE:
        raise ValueError(
            f"record type must be 1..{MAX_RECORD_TYPE} (0 is reserved and bit 7 marks the first record of a "
            f"write), got {record_type}"
        )


def encode_record(
    sequence: int, record_type: int, payload: bytes | memoryview, *, first_of_write: bool = False
) -> bytes:
    """Frame one record (format 2), with the first-of-write flag if ``first_of_write``. Raise ``ValueError``
    for a type outside 1..127, an out-of-range sequence or an oversized payload."""
    _check_record_type(record_type)
    if not 0 < sequence <= _MAX_SEQUENCE:
        raise ValueError(f"sequence {sequence} is out of range")
    if len(payload) > MAX_PAYLOAD_SIZE:
        raise ValueError(f"payload of {len(payload)} bytes exceeds the maximum of {MAX_PAYLOAD_SIZE}")
    type_byte = record_type | FIRST_OF_WRITE if first_of_write else record_type
    covered = _TYPE_AND_SEQUENCE.pack(type_byte, sequence) + payload
    return _LENGTH_AND_CRC.pack(len(payload), crc32c.crc32c(covered)) + covered


def encode_records(first_sequence: int, record_type: int, payloads: list[bytes]) -> list[bytes]:
    """Frame ``payloads``, all of ``record_type``, under consecutive sequence numbers from ``first_sequence``:
    `encode_record` for a batch, checking its arguments once instead of per record (the signing hot path).
    None is flagged: the writer flags the first record of each write as it writes it (:func:`mark_first_of_write`).
    """
    _check_record_type(record_type)
    if first_sequence < 1 or first_sequence + len(payloads) - 1 > _MAX_SEQUENCE:
        raise ValueError(f"sequences {first_sequence}..{first_sequence + len(payloads) - 1} are out of range")
    if payloads and max(map(len, payloads)) > MAX_PAYLOAD_SIZE:
        raise ValueError(f"a payload exceeds the maximum of {MAX_PAYLOAD_SIZE} bytes")
    pack_covered = _TYPE_AND_SEQUENCE.pack
    pack_length_and_crc = _LENGTH_AND_CRC.pack
    crc = crc32c.crc32c
    frames = []
    for sequence, payload in enumerate(payloads, first_sequence):
        covered = pack_covered(record_type, sequence) + payload
        frames.append(pack_length_and_crc(len(payload), crc(covered)) + covered)
    return frames


def mark_first_of_write(frames: bytes) -> bytes:
    """``frames`` (one or more complete frames, as framed by :func:`encode_record`) with the first one flagged
    as the first record of a write and its CRC recomputed: the cost is one record's CRC, plus a copy of the rest
    when there is more than one frame. Flagging a flagged frame changes nothing."""
    if len(frames) < RECORD_HEADER_SIZE:
        raise ValueError(f"{len(frames)} bytes hold no record to mark")
    (length,) = _LENGTH.unpack_from(frames, 0)
    frame_end = RECORD_HEADER_SIZE + length
    if frame_end > len(frames):
        raise ValueError(f"the first record needs {frame_end} bytes but only {len(frames)} are given")
    covered = bytes((frames[_CRC_COVERAGE_START] | FIRST_OF_WRITE,)) + frames[_CRC_COVERAGE_START + 1 : frame_end]
    marked = _LENGTH_AND_CRC.pack(length, crc32c.crc32c(covered)) + covered
    return marked if frame_end == len(frames) else marked + frames[frame_end:]


def _damage(outcome: Outcome, offset: int, detail: str) -> Decoded:
    return Decoded(outcome, 0, 0, b"", offset, detail)


def _type_mask(version: int) -> int:
    return MAX_RECORD_TYPE if version >= 2 else 0xFF


def decode_record(
    data: Buffer, offset: int, *, final: bool = True, base_offset: int = 0, version: int = SEGMENT_FORMAT_VERSION
) -> Decoded:
    """Decode the record starting at ``data[offset]`` of a segment of format ``version``.

    ``final`` says that ``data`` holds everything up to the end of the segment; with ``final=False`` an
    outcome that depends on unseen bytes is ``NEED_MORE``. ``base_offset`` is the position of ``data[0]`` in
    the file: torn-write detection looks at sector boundaries, and details name file offsets.
    """
    end = len(data)
    remaining = end - offset
    where = base_offset + offset
    if remaining == 0:
        return _damage(Outcome.END if final else Outcome.NEED_MORE, offset, "")
    if remaining < RECORD_HEADER_SIZE:
        if not final:
            return _damage(Outcome.NEED_MORE, offset, "")
        return _damage(
            Outcome.TORN, offset, f"only {remaining} bytes remain at offset {where}, less than a record header"
        )
    length, stored_crc, record_type, sequence = _RECORD_HEADER.unpack_from(data, offset)
    if record_type == 0:
        nonzero = _NONZERO.search(data, offset + _CRC_COVERAGE_START)
        if nonzero is None:
            if not final:
                return _damage(Outcome.NEED_MORE, offset, "")
            return _damage(Outcome.TORN, offset, f"zero-filled from offset {where} to the end")
        return _damage(
            Outcome.CORRUPT,
            offset,
            f"record type 0 (reserved) at offset {where} followed by non-zero bytes at offset "
            f"{base_offset + nonzero.start()}",
        )
    if length > MAX_PAYLOAD_SIZE:
        return _damage(
            Outcome.CORRUPT,
            offset,
            f"impossible record length {length} at offset {where} (max {MAX_PAYLOAD_SIZE})",
        )
    frame_end = offset + RECORD_HEADER_SIZE + length
    if frame_end > end:
        if not final:
            return _damage(Outcome.NEED_MORE, offset, "")
        return _damage(
            Outcome.TORN,
            offset,
            f"record at offset {where} needs {RECORD_HEADER_SIZE + length} bytes but only {remaining} remain",
        )
    view = memoryview(data)
    computed_crc = crc32c.crc32c(view[offset + _CRC_COVERAGE_START : frame_end])
    if computed_crc != stored_crc:
        mismatch = (
            f"checksum mismatch in record at offset {where} "
            f"(stored {stored_crc:#010x}, computed {computed_crc:#010x})"
        )
        nonzero = _NONZERO.search(data, frame_end)
        if nonzero is not None:
            return _damage(
                Outcome.CORRUPT, offset, f"{mismatch} with more data after it at offset {base_offset + frame_end}"
            )
        if not final:
            return _damage(Outcome.NEED_MORE, offset, "")
        if _has_zero_sector_piece(view, offset, frame_end, base_offset):
            return _damage(Outcome.TORN, offset, f"{mismatch}; the final record holds a zeroed sector")
        return _damage(Outcome.CORRUPT, offset, f"{mismatch} in the final record, with no sign of a torn write")
    type_mask = _type_mask(version)
    if not record_type & type_mask:
        return _damage(
            Outcome.CORRUPT, offset, f"record type 0 (reserved) with the first-of-write flag at offset {where}"
        )
    return Decoded(
        Outcome.RECORD,
        sequence,
        record_type & type_mask,
        bytes(view[offset + RECORD_HEADER_SIZE : frame_end]),
        frame_end,
        "",
        bool(record_type & ~type_mask),
    )


def decode_intact_records(
    data: bytes,
    offset: int,
    expected_sequence: int,
    *,
    after_sequence: int = 0,
    version: int = SEGMENT_FORMAT_VERSION,
) -> tuple[list[tuple[int, int, bytes]], int, int]:
    """Decode the run of complete, CRC-valid, consecutively numbered records from ``offset`` of a segment of
    format ``version``: the fast path of reading. Every record's CRC is checked, whether it is returned or not.

    Returns ``(records, stop, next_sequence)``: the records with a sequence above ``after_sequence``, each as
    ``(sequence, record_type, payload)`` with the type stripped of the first-of-write flag (which no consumer of
    records needs); the offset where the run stopped; and the sequence the record at
    ``stop`` should carry (``expected_sequence`` plus the records in the run). The run stops at the end of
    ``data`` or at the first frame that is not a complete valid record numbered ``next_sequence``, without
    saying why: the caller classifies what is at ``stop`` with :func:`decode_record` (a ``RECORD`` there is
    a sequence problem). ``data`` is ``bytes`` so that payloads are plain slices of it.
    """
    unpack = _RECORD_HEADER.unpack_from
    checksum = crc32c.crc32c
    type_mask = _type_mask(version)
    end = len(data)
    last_header = end - RECORD_HEADER_SIZE
    payload_start = _PAYLOAD_IN_COVERAGE
    records: list[tuple[int, int, bytes]] = []
    append = records.append
    while offset <= last_header:
        length, stored_crc, type_byte, sequence = unpack(data, offset)
        frame_end = offset + RECORD_HEADER_SIZE + length
        record_type = type_byte & type_mask
        if frame_end > end or sequence != expected_sequence or not record_type or length > MAX_PAYLOAD_SIZE:
            break
        # One copy for the CRC's range (type, sequence, payload) and one for the payload: cheaper than slicing
        # a memoryview for each.
        covered = data[offset + _CRC_COVERAGE_START : frame_end]
        if checksum(covered) != stored_crc:
            break
        if sequence > after_sequence:
            append((sequence, record_type, covered[payload_start:]))
        expected_sequence += 1
        offset = frame_end
    return records, offset, expected_sequence


def _has_zero_sector_piece(view: memoryview, start: int, end: int, base_offset: int) -> bool:
    """True if a piece of ``view[start:end]``, cut at sector boundaries of the file, is entirely zero."""
    piece_start = start
    while piece_start < end:
        file_offset = base_offset + piece_start
        piece_end = min(end, piece_start + SECTOR_SIZE - file_offset % SECTOR_SIZE)
        if _NONZERO.search(view[piece_start:piece_end]) is None:
            return True
        piece_start = piece_end
    return False


def find_unwritten_sector(data: Buffer, start: int, end: int, *, base_offset: int = 0) -> int | None:
    """File offset of the first piece of ``data[start:end]`` that reads as a sector never written: all zeros up
    to a 512-byte sector boundary of the file, from the sector's start or from ``start`` (a write that began
    inside a sector, whose earlier part was synced before). ``None`` if there is none.

    Pages the disk never received read back as zeros, whole sectors of them; bit rot and stray writes do not
    end on a sector boundary with zeros. A piece cut short by ``end`` does not count: the zeros at the end of a
    record (or of the data) that happen to stop before a boundary are no such sign.
    """
    view = memoryview(data)
    piece_start = start
    while True:
        piece_end = piece_start + SECTOR_SIZE - (base_offset + piece_start) % SECTOR_SIZE
        if piece_end > end:
            return None
        if _NONZERO.search(view[piece_start:piece_end]) is None:
            return base_offset + piece_start
        piece_start = piece_end


def find_intact_record(
    data: Buffer, start: int, *, min_sequence: int, max_sequence: int, first_of_write: bool = False
) -> int | None:
    """Offset of the first complete, CRC-valid record at or after ``start`` with a sequence number in
    ``[min_sequence, max_sequence]``, looking at every byte offset; ``None`` if there is none. With
    ``first_of_write``, only a record whose type byte carries the first-of-write flag counts (format 2).

    Used before truncating a torn tail: a damaged length field can make a record seem to run past the end of
    the data, and intact records after it prove the damage is not a torn write; in format 2, an intact record
    that begins a write proves the damage is in a write that was synced before that one began.
    """
    view = memoryview(data)
    end = len(data)
    candidates = _FIRST_OF_WRITE_TYPE_AHEAD if first_of_write else _NONZERO_TYPE_AHEAD
    for match in candidates.finditer(data, start):
        candidate = match.start()
        if end - candidate < RECORD_HEADER_SIZE:
            return None
        length, stored_crc, _, sequence = _RECORD_HEADER.unpack_from(data, candidate)
        if not min_sequence <= sequence <= max_sequence or length > MAX_PAYLOAD_SIZE:
            continue
        frame_end = candidate + RECORD_HEADER_SIZE + length
        if frame_end > end:
            continue
        if crc32c.crc32c(view[candidate + _CRC_COVERAGE_START : frame_end]) == stored_crc:
            return candidate
    return None

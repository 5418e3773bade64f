"""Decision-log segments: how they are named, listed and told apart from the other files of the log directory.

The bytes inside a segment (its header and the records after it) are :mod:`sidecar.storage.framing`'s; reading
them is :mod:`sidecar.storage.reader`'s, writing them :mod:`sidecar.storage.writer`'s and repairing a torn tail
:mod:`sidecar.storage.repair`'s. This module owns the files themselves.

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
* Records are appended in *writes*: the bytes of one group commit (or of the rewrite after a failed one),
  handed to one ``write()`` and then fsynced. A write is issued only after the previous write's fsync returned
  (after a restart: after the last segment was fsynced at open). So at any moment only the final write of the
  last segment can hold bytes that were never synced. In format 2 the first record of every write is marked
  (:mod:`sidecar.storage.framing`), which lets the reader tell that final write from the synced ones before it
  (:mod:`sidecar.storage.reader`). The writer never appends to a format-1 segment: it starts a format-2 one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from sidecar.storage.errors import LogCorruptionError
from sidecar.storage.fileio import FileOps
from sidecar.storage.framing import SEGMENT_HEADER_SIZE, FramingError, SegmentHeader, decode_segment_header

__all__ = [
    "BROKEN_SUFFIX",
    "READ_CHUNK_BYTES",
    "TEMPORARY_SUFFIX",
    "SegmentInfo",
    "check_segment_header",
    "decode_header_of",
    "list_segments",
    "remove_temporary_segments",
    "segment_name",
]

READ_CHUNK_BYTES = 1024 * 1024
"""How much of a segment is read at once (scanning, and copying a torn segment aside)."""
TEMPORARY_SUFFIX = ".tmp"
BROKEN_SUFFIX = ".broken"
_SEGMENT_NAME = re.compile(r"^(\d{20})\.log$")


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    path: Path
    first_sequence: int
    size: int


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


def check_segment_header(fileops: FileOps, segment: SegmentInfo) -> SegmentHeader:
    """Validate a segment's header against its name and return it; raise :class:`LogCorruptionError` if it is
    damaged or of a format version this build does not read."""
    fd = fileops.open_read(segment.path)
    try:
        data = fileops.pread(fd, SEGMENT_HEADER_SIZE, 0)
    finally:
        fileops.close(fd)
    return decode_header_of(segment, data)


def decode_header_of(segment: SegmentInfo, data: bytes) -> SegmentHeader:
    """:func:`check_segment_header` for a header already read (``data``, the segment's first bytes)."""
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
    return header


def remove_temporary_segments(directory: Path, fileops: FileOps) -> None:
    """Remove segments a crash left half-created (``.log.tmp``), then fsync the directory if any was."""
    removed = False
    for name in fileops.listdir(directory):
        if name.endswith(".log" + TEMPORARY_SUFFIX):
            fileops.unlink(directory / name)
            removed = True
    if removed:
        fileops.fsync_dir(directory)

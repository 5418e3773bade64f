"""Helpers that build decision logs on disk and damage them by hand, for the corruption tables."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from sidecar.storage.fileio import FileOps
from sidecar.storage.framing import (
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    Outcome,
    decode_record,
    encode_record,
    encode_segment_header,
)
from sidecar.storage.segments import list_segments, segment_name
from sidecar.storage.writer import DecisionLog


def payload_for(sequence: int, size: int = 40) -> bytes:
    """A payload that names its sequence, so tests can check records land under the right number."""
    stem = f"decision-{sequence}:".encode()
    return (stem * (size // len(stem) + 1))[:size]


def build_log(
    directory: Path,
    *,
    segments: int,
    records_per_segment: int,
    payload_size: int = 40,
    writes_per_segment: int = 1,
) -> list[Path]:
    """Write a real log through DecisionLog with exactly ``segments`` segments of ``records_per_segment``.

    Each segment's records go in ``writes_per_segment`` equal batches, each followed by a sync (one write each,
    its first record flagged), and the segment size is chosen so that the last batch fills its segment:
    rotation then happens exactly between segments' batches.
    """
    assert records_per_segment % writes_per_segment == 0
    per_write = records_per_segment // writes_per_segment
    frame = RECORD_HEADER_SIZE + payload_size
    log = DecisionLog.open(
        directory,
        fileops=FileOps(),
        next_sequence=1,
        segment_bytes=SEGMENT_HEADER_SIZE + frame * records_per_segment,
    )
    sequence = 1
    for _ in range(segments * writes_per_segment):
        batch = []
        for _ in range(per_write):
            batch.append((1, payload_for(sequence, payload_size)))
            sequence += 1
        log.append_many(batch)
        log.sync()
    log.close()
    found = [segment.path for segment in list_segments(directory, FileOps())]
    # The last rotation leaves an empty active segment after the final full one.
    assert len(found) == segments + 1, found
    (directory / found[-1].name).unlink()
    return found[:-1]


def write_segment(
    path: Path,
    first_sequence: int,
    sequences: list[int],
    payload_size: int = 40,
    *,
    version: int = 2,
    first_of_write: Collection[int] = (),
) -> None:
    """Hand-make a segment of format ``version``: header naming ``first_sequence``, then records numbered
    ``sequences``; those in ``first_of_write`` carry the first-of-write flag (format 2 only)."""
    assert version == 2 or not first_of_write
    data = encode_segment_header(first_sequence, version=version)
    for sequence in sequences:
        data += encode_record(
            sequence, 1, payload_for(sequence, payload_size), first_of_write=sequence in first_of_write
        )
    path.write_bytes(data)


def record_offsets(path: Path) -> list[tuple[int, int, int]]:
    """(sequence, offset, frame length) of every intact record of a segment."""
    data = path.read_bytes()
    found: list[tuple[int, int, int]] = []
    offset = SEGMENT_HEADER_SIZE
    while True:
        decoded = decode_record(data, offset, version=data[8])
        if decoded.outcome is not Outcome.RECORD:
            return found
        found.append((decoded.sequence, offset, decoded.next_offset - offset))
        offset = decoded.next_offset


def first_of_write_flags(path: Path) -> list[bool]:
    """Whether each intact record of a (format-2) segment carries the first-of-write flag, in order."""
    data = path.read_bytes()
    return [decode_record(data, offset).first_of_write for _, offset, _ in record_offsets(path)]


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def set_byte(path: Path, offset: int, value: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] = value
    path.write_bytes(bytes(data))


def zero_range(path: Path, offset: int, length: int) -> None:
    data = bytearray(path.read_bytes())
    end = min(len(data), offset + length)
    data[offset:end] = bytes(end - offset)
    path.write_bytes(bytes(data))


def truncate(path: Path, size: int) -> None:
    with path.open("r+b") as file:
        file.truncate(size)


def append_bytes(path: Path, data: bytes) -> None:
    with path.open("ab") as file:
        file.write(data)


def segment_path(directory: Path, first_sequence: int) -> Path:
    return directory / segment_name(first_sequence)

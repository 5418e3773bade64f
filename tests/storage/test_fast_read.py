"""The fast read path against the simple one: the same records, the same outcome, the same error text.

Reading a segment goes through ``decode_intact_records`` (a run of valid, consecutively numbered frames, decoded
in bulk) and falls back to ``decode_record`` only where that run stops. The reference here is the simple path
alone: ``decode_record`` frame by frame over the whole file, a sequence check after each record, and the
log module's contract for damage, applied to the whole file at once: the torn-tail downgrade, and in the log's
last segment the rule for the final write (``sidecar.storage.reader``). Both must agree on hand-made damage (a
flipped byte, a truncation, a zeroed sector, a wrong sequence) and on random logs with random damage and random
write boundaries, at every read-chunk size, as the last segment and as an earlier one, since chunk boundaries are
where a streaming reader goes wrong.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.storage import FileOps, LogCorruptionError, scan_log, segment_name
from sidecar.storage.framing import (
    RECORD_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    Outcome,
    decode_intact_records,
    decode_record,
    encode_record,
    encode_segment_header,
    find_intact_record,
    find_unwritten_sector,
)
from sidecar.storage.reader import SegmentReader
from sidecar.storage.segments import SegmentInfo

from .damage import build_log, payload_for

FILEOPS = FileOps()
CHUNK_SIZES = (1, 7, RECORD_HEADER_SIZE, 100, 512, 4096, 1 << 20)


@dataclass(frozen=True)
class Read:
    """What reading one segment concluded: the records handed out, then END, TORN (offset, detail) or an error."""

    records: list[tuple[int, int, bytes]]
    outcome: Outcome | None  # None: a sequence problem raised LogCorruptionError
    end_offset: int
    detail: str  # for a sequence problem: the sequence found and the one expected


def reference_read(path: Path, first_sequence: int, after_sequence: int = 0, *, last_in_log: bool = True) -> Read:
    """The simple path: decode_record frame by frame over the whole file."""
    data = path.read_bytes()
    version = data[8]
    offset = SEGMENT_HEADER_SIZE
    expected = first_sequence
    records: list[tuple[int, int, bytes]] = []
    while True:
        decoded = decode_record(data, offset, version=version)
        if decoded.outcome is Outcome.RECORD:
            if decoded.sequence != expected:
                return Read(records, None, offset, f"found {decoded.sequence}, expected {expected}")
            if decoded.sequence > after_sequence:
                records.append((decoded.sequence, decoded.record_type, decoded.payload))
            expected += 1
            offset = decoded.next_offset
            continue
        detail = decoded.detail
        outcome = decoded.outcome
        if last_in_log and version == 2 and outcome is not Outcome.END:
            return Read(records, *final_write_judgement(data, offset, expected))
        if outcome is Outcome.TORN:
            most = (len(data) - offset) // RECORD_HEADER_SIZE + 1
            intact = find_intact_record(data, offset + 1, min_sequence=expected, max_sequence=expected + most)
            if intact is not None:
                outcome = Outcome.CORRUPT
                detail = (
                    f"{detail}, yet an intact record follows at offset {intact}: "
                    "this is damage, not a torn write, and truncating would destroy durable records"
                )
        return Read(records, outcome, offset, detail)


def final_write_judgement(data: bytes, offset: int, expected: int) -> tuple[Outcome, int, str]:
    """The rule for damage at ``offset`` of the log's last segment (format 2), as the reader's docstring states
    it: torn iff (a) a sign of bytes that never reached the disk and (b) no intact record after it begins a
    write."""
    decoded = decode_record(data, offset)
    most = (len(data) - offset) // RECORD_HEADER_SIZE + 1
    intact = find_intact_record(data, offset + 1, min_sequence=expected, max_sequence=expected + most)
    if decoded.outcome is Outcome.TORN and intact is None:
        return Outcome.TORN, offset, decoded.detail
    flagged = find_intact_record(
        data, offset + 1, min_sequence=expected, max_sequence=expected + most, first_of_write=True
    )
    if flagged is not None:
        return (
            Outcome.CORRUPT,
            offset,
            f"{decoded.detail}, yet an intact record beginning a later write follows at offset {flagged}: "
            "that write was issued only once this one was synced, so this is damage to synced records, not a "
            "torn write",
        )
    end = intact if intact is not None else len(data.rstrip(b"\x00"))
    unwritten = find_unwritten_sector(data, offset, end)
    if unwritten is None:
        if intact is None:
            return Outcome.CORRUPT, offset, decoded.detail
        return (
            Outcome.CORRUPT,
            offset,
            f"{decoded.detail}, yet an intact record follows at offset {intact} and no sector before it reads as "
            "never written: this is damage, not a torn write, and truncating would destroy durable records",
        )
    return (
        Outcome.TORN,
        offset,
        f"{decoded.detail}; the sector piece at offset {unwritten} reads as never written and no later write "
        "begins after it: the final write, never synced, reached the disk out of order",
    )


def fast_read(
    path: Path, first_sequence: int, chunk_bytes: int, after_sequence: int = 0, *, last_in_log: bool = True
) -> Read:
    reader = SegmentReader(
        FILEOPS,
        SegmentInfo(path, first_sequence, path.stat().st_size),
        chunk_bytes=chunk_bytes,
        last_in_log=last_in_log,
    )
    records: list[tuple[int, int, bytes]] = []
    try:
        for batch in reader.batches(after_sequence):
            assert batch, "an empty batch was handed out"
            records.extend(batch)
    except LogCorruptionError as error:
        # Only sequence problems raise from the segment reader: the sentence names the file, the offset, the
        # sequence found and the one expected.
        assert str(error).startswith(f"decision log corrupted in {path} at byte offset {error.offset}: ")
        found, expected = sequence_problem_numbers(error.detail)
        return Read(records, None, error.offset, f"found {found}, expected {expected}")
    assert reader.record_count == (reader.last_sequence or first_sequence - 1) - first_sequence + 1
    return Read(records, reader.outcome, reader.end_offset, reader.detail)


def sequence_problem_numbers(detail: str) -> tuple[int, int]:
    """(found, expected) from the log's sentence about a sequence problem."""
    for pattern in (
        r"^first record has sequence (?P<found>\d+) but the segment's name and header say (?P<expected>\d+)$",
        r"^sequence (?P<found>\d+) does not increase \(expected (?P<expected>\d+)\)$",
        r"^sequence gap: expected (?P<expected>\d+), found (?P<found>\d+) \(records? [\d.]+ (is|are) missing\)$",
    ):
        match = re.match(pattern, detail)
        if match:
            return int(match["found"]), int(match["expected"])
    raise AssertionError(f"not a sequence problem: {detail}")


def write_records(path: Path, first_sequence: int, frames: list[bytes]) -> None:
    path.write_bytes(encode_segment_header(first_sequence) + b"".join(frames))


def frames_for(first_sequence: int, count: int, payload_size: int = 40, write_every: int = 0) -> list[bytes]:
    """Frames numbered from ``first_sequence``; with ``write_every``, written in writes of that many records."""
    return [
        encode_record(
            sequence,
            1 + sequence % 5,
            payload_for(sequence, payload_size),
            first_of_write=write_every > 0 and (sequence - first_sequence) % write_every == 0,
        )
        for sequence in range(first_sequence, first_sequence + count)
    ]


# -- hand-made damage -------------------------------------------------------------------------------------------


def damaged(kind: str, path: Path) -> int:
    """Write a 60-record segment starting at 1000, in writes of 8 records, with damage of ``kind``; return its
    first sequence. (Kinds ending in ``_one_write``: all 60 records in one write.)"""
    first = 1000
    frames = frames_for(first, 60, payload_size=70, write_every=60 if kind.endswith("_one_write") else 8)
    data = bytearray(encode_segment_header(first) + b"".join(frames))
    frame = len(frames[0])
    middle = SEGMENT_HEADER_SIZE + 30 * frame
    last = len(data) - frame
    if kind == "clean":
        pass
    elif kind == "flip_payload_byte_middle":
        data[middle + RECORD_HEADER_SIZE + 5] ^= 0x01
    elif kind == "flip_crc_byte_last":
        data[last + 5] ^= 0x80
    elif kind == "flip_length_byte_middle":
        data[middle] ^= 0x04
    elif kind == "length_past_end_with_records_after":
        data[middle + 2] = 0x10
    elif kind == "truncate_mid_record":
        del data[last + 30 :]
    elif kind == "truncate_inside_header":
        del data[last + 5 :]
    elif kind in ("zero_sector_middle", "zero_sector_middle_one_write"):
        data[4096:4608] = bytes(512)
    elif kind == "flip_payload_byte_middle_one_write":
        data[middle + RECORD_HEADER_SIZE + 5] ^= 0x01
    elif kind == "zero_final_sector_piece":
        # End the segment with a record that straddles a sector boundary, and zero its part past the boundary.
        end = next(
            SEGMENT_HEADER_SIZE + n * frame
            for n in range(50, 60)
            if (SEGMENT_HEADER_SIZE + n * frame) % 512 < frame - 1
        )
        boundary = end - end % 512
        del data[end:]
        data[boundary:] = bytes(end - boundary)
    elif kind == "zeros_appended":
        data += bytes(3000)
    elif kind == "zeroed_to_end":
        data[middle:] = bytes(len(data) - middle)
    elif kind == "type_zero_middle":
        data[middle + 8] = 0
    elif kind == "wrong_sequence_middle":
        data[middle : middle + frame] = encode_record(first + 31, 1, payload_for(first, 70))
    elif kind == "repeated_sequence":
        data[middle : middle + frame] = encode_record(first + 29, 1, payload_for(first, 70))
    elif kind == "wrong_first_sequence":
        data[SEGMENT_HEADER_SIZE : SEGMENT_HEADER_SIZE + frame] = encode_record(first + 1, 1, payload_for(1, 70))
    elif kind == "header_only":
        del data[SEGMENT_HEADER_SIZE:]
    else:
        raise AssertionError(kind)
    path.write_bytes(bytes(data))
    return first


DAMAGE = [
    "clean",
    "flip_payload_byte_middle",
    "flip_crc_byte_last",
    "flip_length_byte_middle",
    "length_past_end_with_records_after",
    "truncate_mid_record",
    "truncate_inside_header",
    "zero_sector_middle",
    "zero_sector_middle_one_write",
    "flip_payload_byte_middle_one_write",
    "zero_final_sector_piece",
    "zeros_appended",
    "zeroed_to_end",
    "type_zero_middle",
    "wrong_sequence_middle",
    "repeated_sequence",
    "wrong_first_sequence",
    "header_only",
]


@pytest.mark.parametrize("chunk_bytes", CHUNK_SIZES)
@pytest.mark.parametrize("kind", DAMAGE)
@pytest.mark.parametrize("last_in_log", [True, False], ids=["last", "earlier"])
def test_hand_made_damage_reads_like_the_simple_path(
    tmp_path: Path, kind: str, chunk_bytes: int, last_in_log: bool
) -> None:
    path = tmp_path / "segment.log"
    first = damaged(kind, path)
    expected = reference_read(path, first, last_in_log=last_in_log)
    assert fast_read(path, first, chunk_bytes, last_in_log=last_in_log) == expected
    # Skipping records (those a checkpoint covers) still checks them and changes nothing else.
    skipped = reference_read(path, first, after_sequence=first + 40, last_in_log=last_in_log)
    assert fast_read(path, first, chunk_bytes, after_sequence=first + 40, last_in_log=last_in_log) == skipped


def test_hand_made_damage_has_the_outcomes_the_contract_names(tmp_path: Path) -> None:
    """The reference itself is not vacuous: the cases reach every outcome."""
    seen = {}
    for kind in DAMAGE:
        path = tmp_path / f"{kind}.log"
        read = reference_read(path, damaged(kind, path))
        seen[kind] = read.outcome
        if kind == "zero_sector_middle_one_write":
            earlier = reference_read(path, damaged(kind, path), last_in_log=False)
    assert seen["clean"] is Outcome.END
    assert seen["truncate_mid_record"] is Outcome.TORN
    assert seen["zero_final_sector_piece"] is Outcome.TORN
    assert seen["flip_payload_byte_middle"] is Outcome.CORRUPT
    assert seen["flip_payload_byte_middle_one_write"] is Outcome.CORRUPT
    assert seen["length_past_end_with_records_after"] is Outcome.CORRUPT
    assert seen["zero_sector_middle"] is Outcome.CORRUPT  # a later write begins after the hole
    assert seen["zero_sector_middle_one_write"] is Outcome.TORN  # a hole in the final write
    assert earlier.outcome is Outcome.CORRUPT  # the same hole in a segment that is not the last
    assert seen["wrong_sequence_middle"] is None


# -- random logs, random damage ---------------------------------------------------------------------------------


@st.composite
def damaged_segments(draw: st.DrawFn) -> tuple[bytes, int]:
    first = draw(st.integers(1, 2**40))
    count = draw(st.integers(0, 25))
    frames: list[bytes] = []
    sequence = first
    for _ in range(count):
        step = draw(st.sampled_from([1] * 12 + [0, 2, -1]))
        sequence = max(1, sequence + step) if frames else first
        size = draw(st.sampled_from([0, 1, 40, 147, 300, 700]))
        record_type = draw(st.integers(1, 127))
        payload = draw(st.binary(min_size=size, max_size=size))
        frames.append(encode_record(sequence, record_type, payload, first_of_write=draw(st.booleans())))
        sequence += 1
    data = bytearray(encode_segment_header(first) + b"".join(frames))
    for _ in range(draw(st.integers(0, 2))):
        position = draw(st.integers(SEGMENT_HEADER_SIZE, max(SEGMENT_HEADER_SIZE, len(data))))
        action = draw(st.sampled_from(["flip", "truncate", "zero_sector", "zero_to_end", "append_zeros"]))
        if action == "flip" and position < len(data):
            data[position] ^= draw(st.integers(1, 255))
        elif action == "truncate":
            del data[position:]
        elif action == "zero_sector":
            start = max(SEGMENT_HEADER_SIZE, position - position % 512)  # the header is checked on its own
            data[start : start + 512] = bytes(len(data[start : start + 512]))
        elif action == "zero_to_end":
            data[position:] = bytes(len(data) - position)
        elif action == "append_zeros":
            data += bytes(draw(st.integers(1, 1500)))
    return bytes(data), first


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    segment=damaged_segments(),
    chunk_bytes=st.sampled_from(CHUNK_SIZES),
    after=st.integers(0, 30),
    last_in_log=st.booleans(),
)
def test_random_damage_reads_like_the_simple_path(
    tmp_path: Path, segment: tuple[bytes, int], chunk_bytes: int, after: int, last_in_log: bool
) -> None:
    data, first = segment
    path = tmp_path / "random.log"
    path.write_bytes(data)
    after_sequence = first - 1 + after
    assert fast_read(path, first, chunk_bytes, after_sequence, last_in_log=last_in_log) == reference_read(
        path, first, after_sequence, last_in_log=last_in_log
    )


@settings(max_examples=300, deadline=None)
@given(segment=damaged_segments(), start=st.integers(0, 5000), expected_delta=st.integers(-1, 1))
def test_decode_intact_records_is_the_longest_valid_consecutive_run(
    segment: tuple[bytes, int], start: int, expected_delta: int
) -> None:
    data, first = segment
    offset = SEGMENT_HEADER_SIZE + min(start, len(data) - SEGMENT_HEADER_SIZE)
    # Start at a frame boundary when the drawn offset is inside the intact part, else anywhere at all.
    expected = first + expected_delta
    records, stop, next_sequence = decode_intact_records(data, offset, expected)
    reference = []
    position, sequence = offset, expected
    while True:
        decoded = decode_record(data, position)
        if decoded.outcome is not Outcome.RECORD or decoded.sequence != sequence:
            break
        reference.append((decoded.sequence, decoded.record_type, decoded.payload))
        position, sequence = decoded.next_offset, sequence + 1
    assert (records, stop, next_sequence) == (reference, position, sequence)
    assert all(type(payload) is bytes for _, _, payload in records)


# -- through the log: records, batches and consume agree ----------------------------------------------------------


def test_records_batches_and_consume_agree_on_a_multi_segment_log(tmp_path: Path) -> None:
    build_log(tmp_path, segments=3, records_per_segment=50, payload_size=90)
    through_records = [tuple(record) for record in scan_log(tmp_path, FILEOPS, 20)]
    batches_scan = scan_log(tmp_path, FILEOPS, 20)
    through_batches = [record for batch in batches_scan.batches() for record in batch]
    consumed = scan_log(tmp_path, FILEOPS, 20).consume()
    assert through_records == through_batches
    assert [sequence for sequence, _, _ in through_batches] == list(range(21, 151))
    assert consumed.last_sequence == batches_scan.last_sequence == 150
    assert consumed.record_count == batches_scan.record_count == 150
    with pytest.raises(RuntimeError):
        batches_scan.records()


def test_a_record_longer_than_the_read_chunk_is_read_whole(tmp_path: Path) -> None:
    payloads = [random.Random(seed).randbytes(size) for seed, size in enumerate((10, 3_000_000, 5, 1_500_000))]
    path = tmp_path / segment_name(1)
    write_records(path, 1, [encode_record(i + 1, 4, payload) for i, payload in enumerate(payloads)])
    read = fast_read(path, 1, chunk_bytes=4096)
    assert read.outcome is Outcome.END
    assert [payload for _, _, payload in read.records] == payloads

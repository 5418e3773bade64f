"""Record framing: the golden bytes of format versions 1 and 2, each decode outcome, the first-of-write flag, and
properties of damage."""

from __future__ import annotations

import struct
from pathlib import Path

import crc32c
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.storage.framing import (
    MAX_PAYLOAD_SIZE,
    RECORD_HEADER_SIZE,
    SEGMENT_FORMAT_VERSION,
    SEGMENT_HEADER_SIZE,
    Decoded,
    FramingError,
    Outcome,
    decode_intact_records,
    decode_record,
    decode_segment_header,
    encode_record,
    encode_records,
    encode_segment_header,
    find_intact_record,
    find_unwritten_sector,
    mark_first_of_write,
)

GOLDEN_V1 = Path(__file__).parent / "golden" / "segment-v1.log"
GOLDEN_V1_RECORDS = [(7, 1, b"first decision"), (8, 255, b""), (9, 2, bytes(range(32)))]
# Format 2, as DecisionLog writes it (tests/storage/test_writer.py): records 7 and 8 in one write, 9 in the next.
GOLDEN_V2 = Path(__file__).parent / "golden" / "segment-v2.log"
GOLDEN_V2_RECORDS = [(7, 1, b"first decision", True), (8, 127, b"", False), (9, 2, bytes(range(32)), True)]


def crc32c_reference(data: bytes) -> int:
    """Bitwise CRC-32C (Castagnoli, reflected polynomial 0x82F63B78): independent of the crc32c package."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def decode_all(
    data: bytes, offset: int = SEGMENT_HEADER_SIZE, *, version: int = 2
) -> tuple[list[tuple[int, int, bytes]], Outcome]:
    records, outcome = decode_all_flagged(data, offset, version=version)
    return [(sequence, record_type, payload) for sequence, record_type, payload, _ in records], outcome


def decode_all_flagged(
    data: bytes, offset: int = SEGMENT_HEADER_SIZE, *, version: int = 2
) -> tuple[list[tuple[int, int, bytes, bool]], Outcome]:
    records: list[tuple[int, int, bytes, bool]] = []
    while True:
        decoded = decode_record(data, offset, version=version)
        if decoded.outcome is not Outcome.RECORD:
            return records, decoded.outcome
        records.append((decoded.sequence, decoded.record_type, decoded.payload, decoded.first_of_write))
        offset = decoded.next_offset


def test_reference_crc_is_castagnoli() -> None:
    assert crc32c_reference(b"123456789") == 0xE3069283


def test_golden_v2_segment_bytes_are_stable() -> None:
    """Format version 2 on disk. If this fails, the format changed: bump the version instead."""
    golden = GOLDEN_V2.read_bytes()
    encoded = encode_segment_header(7) + b"".join(
        encode_record(sequence, record_type, payload, first_of_write=first)
        for sequence, record_type, payload, first in GOLDEN_V2_RECORDS
    )
    assert encoded == golden


def test_golden_v2_segment_layout_field_by_field() -> None:
    golden = GOLDEN_V2.read_bytes()
    assert golden[0:8] == b"SIDECLOG"
    assert golden[8] == 2
    assert struct.unpack_from("<Q", golden, 9)[0] == 7
    assert struct.unpack_from("<I", golden, 17)[0] == crc32c_reference(golden[0:17])
    assert decode_segment_header(golden) == (2, 7)
    offset = SEGMENT_HEADER_SIZE
    for sequence, record_type, payload, first in GOLDEN_V2_RECORDS:
        length, crc, stored_type, stored_sequence = struct.unpack_from("<IIBQ", golden, offset)
        # Bit 7 of the type byte is the first-of-write flag; the CRC covers the byte as written.
        assert (length, stored_type, stored_sequence) == (len(payload), record_type | (0x80 * first), sequence)
        body_end = offset + RECORD_HEADER_SIZE + length
        assert crc == crc32c_reference(golden[offset + 8 : body_end])  # type + sequence + payload
        assert golden[offset + RECORD_HEADER_SIZE : body_end] == payload
        offset = body_end
    assert offset == len(golden)
    assert decode_all_flagged(golden) == (GOLDEN_V2_RECORDS, Outcome.END)


def test_golden_v1_segment_is_still_read_as_written() -> None:
    """Format version 1 (0.2.0 and earlier): no flag, the type byte is the whole type, 1..255."""
    golden = GOLDEN_V1.read_bytes()
    assert golden[0:8] == b"SIDECLOG"
    assert golden[8] == 1
    assert struct.unpack_from("<Q", golden, 9)[0] == 7
    assert struct.unpack_from("<I", golden, 17)[0] == crc32c_reference(golden[0:17])
    assert decode_segment_header(golden) == (1, 7)
    assert golden[:SEGMENT_HEADER_SIZE] == encode_segment_header(7, version=1)
    offset = SEGMENT_HEADER_SIZE
    for sequence, record_type, payload in GOLDEN_V1_RECORDS:
        length, crc, stored_type, stored_sequence = struct.unpack_from("<IIBQ", golden, offset)
        assert (length, stored_type, stored_sequence) == (len(payload), record_type, sequence)
        body_end = offset + RECORD_HEADER_SIZE + length
        assert crc == crc32c_reference(golden[offset + 8 : body_end])  # type + sequence + payload
        assert golden[offset + RECORD_HEADER_SIZE : body_end] == payload
        if record_type <= 127:  # an unflagged record of a type both formats know frames the same in both
            assert golden[offset:body_end] == encode_record(sequence, record_type, payload)
        offset = body_end
    assert offset == len(golden)
    assert decode_all_flagged(golden, version=1) == (
        [(*record, False) for record in GOLDEN_V1_RECORDS],
        Outcome.END,
    )
    records, stop, _ = decode_intact_records(golden, SEGMENT_HEADER_SIZE, 7, version=1)
    assert (records, stop) == (GOLDEN_V1_RECORDS, len(golden))


@pytest.mark.parametrize(
    ("damage", "offset", "detail"),
    [
        (lambda h: b"NOTALOG!" + h[8:], 0, "bad segment magic"),
        (
            lambda h: h[:8] + b"\x03" + h[9:],
            8,
            "unsupported segment format version 3 (this build reads versions 1, 2",
        ),
        (lambda h: h[:8] + b"\x00" + h[9:], 8, "unsupported segment format version 0"),
        (lambda h: h[:10] + b"\x01" + h[11:], 17, "checksum mismatch"),
        (lambda h: h[:15], 0, "segment header is 15 bytes"),
    ],
)
def test_segment_header_refusals(damage, offset: int, detail: str) -> None:
    with pytest.raises(FramingError) as raised:
        decode_segment_header(damage(encode_segment_header(42)))
    assert raised.value.offset == offset
    assert detail in raised.value.detail


def test_encode_refuses_reserved_type_and_oversized_payload() -> None:
    with pytest.raises(ValueError, match="0 is reserved"):
        encode_record(1, 0, b"x")
    for reserved_for_the_flag in (128, 129, 255, 256):
        with pytest.raises(ValueError, match=r"1\.\.127 .*bit 7 marks the first record of a write"):
            encode_record(1, reserved_for_the_flag, b"x")
        with pytest.raises(ValueError, match=r"1\.\.127"):
            encode_records(1, reserved_for_the_flag, [b"x"])
    with pytest.raises(ValueError, match="exceeds the maximum"):
        encode_record(1, 1, bytes(MAX_PAYLOAD_SIZE + 1))
    with pytest.raises(ValueError, match="out of range"):
        encode_record(0, 1, b"x")


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 2**64 - 50), st.integers(1, 127), st.lists(st.binary(max_size=64), min_size=1, max_size=40))
def test_a_batch_frames_exactly_as_records_one_by_one(first: int, record_type: int, payloads: list[bytes]) -> None:
    frames = encode_records(first, record_type, payloads)
    assert frames == [encode_record(first + i, record_type, p) for i, p in enumerate(payloads)]
    for i, frame in enumerate(frames):
        decoded = decode_record(frame, 0)
        assert (decoded.outcome, decoded.sequence, decoded.payload) == (Outcome.RECORD, first + i, payloads[i])


def test_a_batch_is_refused_whole_for_one_bad_argument() -> None:
    with pytest.raises(ValueError, match="0 is reserved"):
        encode_records(1, 0, [b"x"])
    with pytest.raises(ValueError, match="exceeds the maximum"):
        encode_records(1, 1, [b"x", bytes(MAX_PAYLOAD_SIZE + 1)])
    with pytest.raises(ValueError, match="out of range"):
        encode_records(0, 1, [b"x"])
    with pytest.raises(ValueError, match="out of range"):
        encode_records(2**64 - 1, 1, [b"x", b"y"])


RECORD = encode_record(5, 3, b"payload bytes")
NEXT = encode_record(6, 3, b"more")


@pytest.mark.parametrize(
    ("data", "outcome", "detail"),
    [
        (b"", Outcome.END, ""),
        (RECORD, Outcome.RECORD, ""),
        (RECORD[:10], Outcome.TORN, "less than a record header"),
        (RECORD[:-1], Outcome.TORN, "only 29 remain"),
        (bytes(4096), Outcome.TORN, "zero-filled"),
        (RECORD[:8] + bytes(64), Outcome.TORN, "zero-filled"),  # header cut short by zeros
        (bytes(20) + b"\x01", Outcome.CORRUPT, "record type 0"),
        (RECORD[:8] + b"\x00" + RECORD[9:], Outcome.CORRUPT, "record type 0"),
        (RECORD[:-1] + b"!" + NEXT, Outcome.CORRUPT, "with more data after it"),
        (RECORD[:-1] + b"!", Outcome.CORRUPT, "no sign of a torn write"),
        (RECORD[:-1] + b"!" + bytes(100), Outcome.CORRUPT, "no sign of a torn write"),
        (RECORD[:RECORD_HEADER_SIZE] + bytes(len(RECORD) - RECORD_HEADER_SIZE), Outcome.CORRUPT, "no sign"),
        (struct.pack("<I", MAX_PAYLOAD_SIZE + 1) + RECORD[4:], Outcome.CORRUPT, "impossible record length"),
    ],
)
def test_decode_outcomes(data: bytes, outcome: Outcome, detail: str) -> None:
    decoded = decode_record(data, 0)
    assert decoded.outcome is outcome, decoded.detail
    assert detail in decoded.detail
    if outcome is Outcome.RECORD:
        assert (decoded.sequence, decoded.record_type, decoded.payload) == (5, 3, b"payload bytes")
        assert decoded.next_offset == len(RECORD)
    else:
        assert decoded.next_offset == 0


def test_torn_final_record_needs_a_zeroed_sector_piece() -> None:
    # A 1500-byte record at file offset 400 spans sectors [0,512), [512,1024), [1024,1536), [1536,2048).
    record = encode_record(1, 1, b"\xaa" * (1500 - RECORD_HEADER_SIZE))
    sector_start = 512 - 400
    zeroed_sector = record[:sector_start] + bytes(512) + record[sector_start + 512 :]
    assert len(zeroed_sector) == len(record)
    assert decode_record(zeroed_sector, 0, base_offset=400).outcome is Outcome.TORN
    # The same bytes at file offset 0 straddle two sectors, neither all zero: no torn-write signature.
    assert decode_record(zeroed_sector, 0, base_offset=0).outcome is Outcome.CORRUPT


def test_not_final_data_asks_for_more() -> None:
    for partial in (b"", RECORD[:3], RECORD[:-1], bytes(40), RECORD[:-1] + b"!" + bytes(10)):
        assert decode_record(partial, 0, final=False).outcome is Outcome.NEED_MORE
    assert decode_record(RECORD, 0, final=False).outcome is Outcome.RECORD
    assert decode_record(bytes(20) + b"\x01", 0, final=False).outcome is Outcome.CORRUPT


def test_find_intact_record() -> None:
    data = b"\x07" * 13 + RECORD + NEXT
    assert find_intact_record(data, 0, min_sequence=5, max_sequence=9) == 13
    assert find_intact_record(data, 14, min_sequence=5, max_sequence=9) == 13 + len(RECORD)
    assert find_intact_record(data, 0, min_sequence=7, max_sequence=9) is None
    assert find_intact_record(bytes(1000), 0, min_sequence=1, max_sequence=100) is None


# -- the first-of-write flag (format 2) ------------------------------------------------------------------------


def test_a_flagged_record_decodes_to_its_type_and_the_flag() -> None:
    flagged = encode_record(5, 3, b"payload bytes", first_of_write=True)
    assert flagged[8] == 0x83 and flagged[:4] == RECORD[:4] and flagged[9:] == RECORD[9:]
    assert flagged[4:8] != RECORD[4:8]  # the CRC covers the type byte as written, flag included
    decoded = decode_record(flagged, 0)
    assert (decoded.outcome, decoded.record_type, decoded.first_of_write) == (Outcome.RECORD, 3, True)
    assert decode_record(RECORD, 0).first_of_write is False
    # Format 1 reads the same byte as type 0x83, unflagged, as it always did.
    decoded = decode_record(flagged, 0, version=1)
    assert (decoded.outcome, decoded.record_type, decoded.first_of_write) == (Outcome.RECORD, 0x83, False)
    records, stop, _ = decode_intact_records(flagged + NEXT, 0, 5)
    assert (records, stop) == ([(5, 3, b"payload bytes"), (6, 3, b"more")], len(flagged + NEXT))
    assert decode_intact_records(flagged, 0, 5, version=1)[0] == [(5, 0x83, b"payload bytes")]


def test_marking_the_first_of_a_write_reframes_that_record_only() -> None:
    assert mark_first_of_write(RECORD) == encode_record(5, 3, b"payload bytes", first_of_write=True)
    assert mark_first_of_write(RECORD + NEXT) == mark_first_of_write(RECORD) + NEXT
    assert mark_first_of_write(mark_first_of_write(RECORD + NEXT)) == mark_first_of_write(RECORD + NEXT)
    with pytest.raises(ValueError, match="no record"):
        mark_first_of_write(RECORD[:10])
    with pytest.raises(ValueError, match="only"):
        mark_first_of_write(RECORD[:-1])


def test_a_valid_frame_of_type_0x80_is_damage_in_format_2() -> None:
    """Type 0 with the flag is never written; a CRC that matches it does not make it a record."""
    covered = struct.pack("<BQ", 0x80, 5) + b"x"
    frame = struct.pack("<II", 1, crc32c_reference(covered)) + covered
    decoded = decode_record(frame + NEXT, 0)
    assert (decoded.outcome, decoded.next_offset) == (Outcome.CORRUPT, 0)
    assert "record type 0 (reserved) with the first-of-write flag" in decoded.detail
    assert decode_intact_records(frame, 0, 5) == ([], 0, 5)
    assert find_intact_record(frame + NEXT, 0, min_sequence=5, max_sequence=6, first_of_write=True) is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 127), st.binary(max_size=300), st.booleans()), min_size=1, max_size=20))
def test_flags_round_trip(records: list[tuple[int, bytes, bool]]) -> None:
    body = b"".join(
        encode_record(1 + i, record_type, payload, first_of_write=first)
        for i, (record_type, payload, first) in enumerate(records)
    )
    decoded, outcome = decode_all_flagged(encode_segment_header(1) + body)
    assert outcome is Outcome.END
    assert decoded == [(1 + i, t, p, first) for i, (t, p, first) in enumerate(records)]
    intact, stop, _ = decode_intact_records(body, 0, 1)
    assert intact == [(1 + i, t, p) for i, (t, p, _) in enumerate(records)] and stop == len(body)


def test_find_intact_record_that_begins_a_write() -> None:
    flagged = encode_record(7, 3, b"later write", first_of_write=True)
    data = b"\x07" * 13 + RECORD + NEXT + flagged
    assert find_intact_record(data, 0, min_sequence=5, max_sequence=9, first_of_write=True) == 13 + len(
        RECORD + NEXT
    )
    assert find_intact_record(data[:-1], 0, min_sequence=5, max_sequence=9, first_of_write=True) is None
    assert find_intact_record(data, 0, min_sequence=5, max_sequence=6, first_of_write=True) is None


@pytest.mark.parametrize(
    ("zeroed", "start", "end", "base_offset", "found"),
    [
        ((512, 1024), 100, 2000, 0, 512),  # a whole sector
        ((300, 512), 300, 2000, 0, 300),  # from the start of the stretch (a write began there) to a boundary
        ((300, 512), 250, 2000, 0, None),  # zeros from mid-sector, not from the stretch's start: no sign
        ((512, 1000), 100, 2000, 0, None),  # zeros that stop short of the boundary: no sign
        ((512, 1024), 100, 1000, 0, None),  # the zeroed sector runs past the stretch
        ((112, 624), 0, 2000, 400, 512),  # sector boundaries are the file's, not the buffer's
        ((0, 0), 0, 4096, 0, None),
    ],
)
def test_find_unwritten_sector(
    zeroed: tuple[int, int], start: int, end: int, base_offset: int, found: int | None
) -> None:
    data = bytearray(b"\xa5" * 4096)
    data[zeroed[0] : zeroed[1]] = bytes(zeroed[1] - zeroed[0])
    assert find_unwritten_sector(bytes(data), start, end, base_offset=base_offset) == found


records_strategy = st.lists(
    st.tuples(st.integers(1, 127), st.binary(max_size=300)),
    min_size=1,
    max_size=20,
)


def stream(records: list[tuple[int, bytes]], first: int = 1) -> bytes:
    body = b"".join(encode_record(first + i, t, p) for i, (t, p) in enumerate(records))
    return encode_segment_header(first) + body


@settings(max_examples=200, deadline=None)
@given(records_strategy, st.integers(1, 2**40))
def test_round_trip(records: list[tuple[int, bytes]], first: int) -> None:
    decoded, outcome = decode_all(stream(records, first))
    assert outcome is Outcome.END
    assert decoded == [(first + i, t, p) for i, (t, p) in enumerate(records)]


@settings(max_examples=300, deadline=None)
@given(records_strategy, st.data())
def test_truncation_is_never_corruption(records: list[tuple[int, bytes]], data: st.DataObject) -> None:
    full = stream(records)
    cut = data.draw(st.integers(SEGMENT_HEADER_SIZE, len(full)))
    decoded, outcome = decode_all(full[:cut])
    assert outcome in (Outcome.END, Outcome.TORN)
    assert decoded == [(1 + i, t, p) for i, (t, p) in enumerate(records)][: len(decoded)]


@settings(max_examples=300, deadline=None)
@given(records_strategy, st.data())
def test_zero_fill_after_any_record_boundary_is_torn(
    records: list[tuple[int, bytes]], data: st.DataObject
) -> None:
    full = stream(records)
    keep = data.draw(st.integers(0, len(records)))
    boundary = len(stream(records[:keep])) if keep else SEGMENT_HEADER_SIZE
    decoded, outcome = decode_all(full[:boundary] + bytes(data.draw(st.integers(1, 5000))))
    assert outcome is Outcome.TORN
    assert len(decoded) == keep


@settings(max_examples=500, deadline=None)
@given(records_strategy, st.data())
def test_a_flipped_byte_never_yields_a_wrong_record(records: list[tuple[int, bytes]], data: st.DataObject) -> None:
    full = bytearray(stream(records))
    position = data.draw(st.integers(SEGMENT_HEADER_SIZE, len(full) - 1))
    full[position] ^= data.draw(st.integers(1, 127))
    decoded, outcome = decode_all(bytes(full))
    expected = [(1 + i, t, p) for i, (t, p) in enumerate(records)]
    # Whatever is decoded is a prefix of the truth, and decoding stops at (or before) the damaged record.
    assert decoded == expected[: len(decoded)]
    assert outcome is not Outcome.END


# ------------------------------------------------------------------------------ exact limits (scripts/mutation)


def test_a_refused_segment_header_says_why_in_its_message() -> None:
    with pytest.raises(FramingError) as raised:
        decode_segment_header(b"short")
    assert str(raised.value) == raised.value.detail == "segment header is 5 bytes, expected 21"


def test_segment_header_with_first_sequence_zero_is_refused_and_one_is_the_lowest_accepted() -> None:
    body = struct.pack("<8sBQ", b"SIDECLOG", 1, 0)
    header = body + struct.pack("<I", crc32c_reference(body))  # intact, but names sequence 0
    with pytest.raises(FramingError) as raised:
        decode_segment_header(header)
    assert raised.value.offset == 9
    assert raised.value.detail == "segment header names first sequence 0, which is never assigned"
    assert decode_segment_header(encode_segment_header(1)) == (SEGMENT_FORMAT_VERSION, 1)
    assert decode_segment_header(encode_segment_header(2**64 - 1)) == (SEGMENT_FORMAT_VERSION, 2**64 - 1)


def test_batch_limits_are_the_single_record_limits() -> None:
    top = 2**64 - 1
    assert encode_records(1, 127, [b"x"]) == [encode_record(1, 127, b"x")]
    with pytest.raises(ValueError, match=r"1\.\.127"):
        encode_records(1, 128, [b"x"])
    # The last sequence of a batch may be the highest u64, and not one more.
    assert encode_records(top - 1, 1, [b"x", b"y"]) == [
        encode_record(top - 1, 1, b"x"),
        encode_record(top, 1, b"y"),
    ]
    with pytest.raises(ValueError, match=rf"^sequences {top - 1}\.\.{top + 1} are out of range$"):
        encode_records(top - 1, 1, [b"x", b"y", b"z"])
    largest = bytes(MAX_PAYLOAD_SIZE)
    assert encode_records(1, 1, [largest]) == [encode_record(1, 1, largest)]


def test_find_intact_record_limits() -> None:
    # A header-only record (empty payload) ending exactly at the end of the data is found.
    empty = encode_record(9, 1, b"")
    assert find_intact_record(b"\x00" + empty, 0, min_sequence=9, max_sequence=9) == 1
    # The bounds of the sequence range are inclusive.
    assert find_intact_record(RECORD, 0, min_sequence=1, max_sequence=5) == 0
    # A record of the largest payload is a record.
    largest = encode_record(5, 1, bytes(MAX_PAYLOAD_SIZE))
    assert find_intact_record(largest, 0, min_sequence=5, max_sequence=5) == 0
    # A candidate whose length runs past the end is skipped, and the search goes on after it.
    runs_past_the_end = struct.pack("<IIBQ", 1000, 0, 1, 5)
    assert find_intact_record(runs_past_the_end + NEXT, 0, min_sequence=5, max_sequence=6) == RECORD_HEADER_SIZE


def test_decode_intact_records_runs_to_the_first_frame_that_is_not_the_next_valid_record() -> None:
    first, second, last = (1, 1, b"one"), (2, 127, b"two"), (3, 9, b"")  # the last one is a bare header
    frames = [encode_record(*record) for record in (first, second, last)]
    data = encode_segment_header(1) + b"".join(frames)
    at = [SEGMENT_HEADER_SIZE, SEGMENT_HEADER_SIZE + len(frames[0]), len(data) - len(frames[2])]
    records, stop, next_sequence = decode_intact_records(data, at[0], 1)
    assert (records, stop, next_sequence) == ([first, second, last], len(data), 4)
    assert all(type(payload) is bytes for _, _, payload in records)
    # Records up to after_sequence are checked and skipped, not returned.
    assert decode_intact_records(data, at[0], 1, after_sequence=2) == ([last], len(data), 4)
    assert decode_intact_records(data, at[1], 2) == ([second, last], len(data), 4)
    # It stops, without saying why, at: a record numbered otherwise, a checksum mismatch, a frame cut short,
    # type 0, and a length above the maximum even with a matching checksum.
    assert decode_intact_records(data, at[0], 2) == ([], at[0], 2)
    damaged = bytearray(data)
    damaged[at[1] + RECORD_HEADER_SIZE] ^= 1
    assert decode_intact_records(bytes(damaged), at[0], 1) == ([first], at[1], 2)
    assert decode_intact_records(data[:-1], at[0], 1) == ([first, second], at[2], 3)
    assert decode_intact_records(data[: at[1] + 3], at[0], 1) == ([first], at[1], 2)
    zero_type = struct.pack("<BQ", 0, 1) + b"one"
    assert decode_intact_records(struct.pack("<II", 3, crc32c.crc32c(zero_type)) + zero_type, 0, 1) == ([], 0, 1)
    largest = encode_record(1, 1, bytes(MAX_PAYLOAD_SIZE))
    assert decode_intact_records(largest, 0, 1) == ([(1, 1, bytes(MAX_PAYLOAD_SIZE))], len(largest), 2)
    covered = struct.pack("<BQ", 1, 1) + bytes(MAX_PAYLOAD_SIZE + 1)
    too_long = struct.pack("<II", MAX_PAYLOAD_SIZE + 1, crc32c.crc32c(covered)) + covered
    assert decode_intact_records(too_long, 0, 1) == ([], 0, 1)


def test_segment_header_encoding_refuses_sequence_zero() -> None:
    with pytest.raises(ValueError, match=r"^first sequence 0 is out of range$"):
        encode_segment_header(0)


def test_every_outcome_but_a_record_carries_no_record_and_stays_at_the_offset() -> None:
    """Details name file offsets: base_offset plus the offset in the data."""
    junk = b"junk"
    cases = [
        (junk, True, Outcome.END, ""),
        (junk, False, Outcome.NEED_MORE, ""),
        (junk + RECORD[:10], False, Outcome.NEED_MORE, ""),
        (junk + RECORD[:10], True, Outcome.TORN, "only 10 bytes remain at offset 1004, less than a record header"),
        (junk + bytes(30), False, Outcome.NEED_MORE, ""),
        (junk + RECORD[:-1], False, Outcome.NEED_MORE, ""),
        (junk + RECORD[:-1], True, Outcome.TORN, "record at offset 1004 needs 30 bytes but only 29 remain"),
        (junk + RECORD[:-1] + b"!" + bytes(3), False, Outcome.NEED_MORE, ""),
        (
            junk + bytes(20) + b"\x01",
            True,
            Outcome.CORRUPT,
            "record type 0 (reserved) at offset 1004 followed by non-zero bytes at offset 1024",
        ),
        (
            junk + RECORD[:-1] + b"!" + NEXT,
            True,
            Outcome.CORRUPT,
            f"checksum mismatch in record at offset 1004 (stored {struct.unpack_from('<I', RECORD, 4)[0]:#010x}, "
            f"computed {crc32c.crc32c(RECORD[8:-1] + b'!'):#010x}) with more data after it at offset 1034",
        ),
    ]
    for data, final, outcome, detail in cases:
        assert decode_record(data, 4, final=final, base_offset=1000) == Decoded(outcome, 0, 0, b"", 4, detail)
    assert decode_record(RECORD[:10], 0).detail == "only 10 bytes remain at offset 0, less than a record header"


def test_a_record_of_the_largest_payload_decodes() -> None:
    payload = bytes(MAX_PAYLOAD_SIZE)
    decoded = decode_record(encode_record(1, 1, payload), 0)
    assert (decoded.outcome, decoded.payload == payload, decoded.detail) == (Outcome.RECORD, True, "")


def test_zeroed_sector_pieces_are_cut_at_file_offsets_not_data_offsets() -> None:
    # The record of test_torn_final_record_needs_a_zeroed_sector_piece, at data offset 50 and file offset 400.
    record = encode_record(1, 1, b"\xaa" * (1500 - RECORD_HEADER_SIZE))
    zeroed_sector = record[:112] + bytes(512) + record[624:]
    data = b"\x01" * 50 + zeroed_sector
    torn = decode_record(data, 50, base_offset=350)
    assert (torn.outcome, torn.next_offset) == (Outcome.TORN, 50)
    assert torn.detail.startswith("checksum mismatch in record at offset 400 (stored ")
    assert torn.detail.endswith("; the final record holds a zeroed sector")
    assert decode_record(data, 50, base_offset=50).outcome is Outcome.CORRUPT


def test_a_record_without_payload_can_be_marked_first_of_its_write() -> None:
    """A bare header (an empty payload) is a whole frame: marking it flags it and recomputes its CRC."""
    bare = encode_record(9, 3, b"")
    assert len(bare) == RECORD_HEADER_SIZE
    marked = mark_first_of_write(bare)
    decoded = decode_record(marked, 0)
    assert (decoded.outcome, decoded.record_type, decoded.first_of_write) == (Outcome.RECORD, 3, True)
    with pytest.raises(ValueError, match=r"^16 bytes hold no record to mark$"):
        mark_first_of_write(bare[:-1])


def test_a_segment_header_of_an_unknown_version_is_not_written() -> None:
    with pytest.raises(ValueError, match=r"^segment format version 3 is unknown$"):
        encode_segment_header(1, version=3)

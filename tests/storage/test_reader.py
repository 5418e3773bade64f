"""Recovery scanning (``sidecar.storage.reader``) over real segment files with hand-made damage: each kind of
damage has one outcome, and a torn tail is then repaired (``sidecar.storage.repair``).

The standard log has three segments of 40 records (217-byte frames, so a segment is ~8.7 KiB and a 4 KiB
sector holds ~19 records): A = 1..40, B = 41..80, C = 81..120. Each segment was written in four writes of ten
records, the first of each flagged as the first of a write (segment format 2); C's final write is 111..120, from
offset 6531.

In the last segment of a format-2 log, damage followed by intact records is a torn tail when it shows a sector that
never reached the disk and no later write begins after it (the final write's pages written back out of order);
``sidecar.storage.reader`` gives the argument and its limit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sidecar.storage import (
    DecisionLog,
    FileOps,
    LogCorruptionError,
    read_records,
    repair_torn_tail,
    scan_log,
    segment_name,
)
from sidecar.storage.framing import RECORD_HEADER_SIZE, SEGMENT_HEADER_SIZE

from .damage import (
    append_bytes,
    build_log,
    flip_byte,
    payload_for,
    record_offsets,
    set_byte,
    truncate,
    write_segment,
    zero_range,
)

PAYLOAD = 200
PER_SEGMENT = 40
FILEOPS = FileOps()


@dataclass(frozen=True)
class Clean:
    last: int


@dataclass(frozen=True)
class Torn:
    last_good: int
    offset: int


@dataclass(frozen=True)
class Corrupt:
    file: str
    offset: int
    detail: str


Expectation = Clean | Torn | Corrupt


FINAL_WRITE = 111  # the first record of C's final write


def standard_log(directory: Path) -> list[Path]:
    return build_log(
        directory, segments=3, records_per_segment=PER_SEGMENT, payload_size=PAYLOAD, writes_per_segment=4
    )


def offset_of(path: Path, sequence: int) -> int:
    return next(offset for seq, offset, _ in record_offsets(path) if seq == sequence)


def record_overlapping(path: Path, file_offset: int) -> tuple[int, int]:
    """(sequence, offset) of the record whose frame contains ``file_offset``."""
    for sequence, offset, length in record_offsets(path):
        if offset <= file_offset < offset + length:
            return sequence, offset
    raise AssertionError(f"no record at {file_offset} in {path}")


# -- the cases: each damages a fresh log and says what the scan must conclude ---------------------------------


def case_clean(directory: Path) -> Expectation:
    standard_log(directory)
    return Clean(last=120)


def case_truncated_mid_record(directory: Path) -> Expectation:
    _, _, c = standard_log(directory)
    cut = offset_of(c, 110)
    truncate(c, cut + 30)
    return Torn(last_good=109, offset=cut)


def case_truncated_inside_record_header(directory: Path) -> Expectation:
    _, _, c = standard_log(directory)
    cut = offset_of(c, 120)
    truncate(c, cut + 5)
    return Torn(last_good=119, offset=cut)


def case_preallocated_zeros_after_last_record(directory: Path) -> Expectation:
    _, _, c = standard_log(directory)
    end = c.stat().st_size
    append_bytes(c, bytes(8192))
    return Torn(last_good=120, offset=end)


def case_last_sector_zeroed_to_end(directory: Path) -> Expectation:
    # A write that extended the file but whose final sectors never reached the disk reads back as zeros.
    _, _, c = standard_log(directory)
    assert c.stat().st_size > 8192
    sequence, offset = record_overlapping(c, 8192)
    zero_range(c, 8192, c.stat().st_size)
    return Torn(last_good=sequence - 1, offset=offset)


def case_final_record_tail_zeroed(directory: Path) -> Expectation:
    # The final record's last sector never landed: checksum fails, nothing follows, and the piece of the
    # record in that sector is all zeros (the etcd torn-entry rule).
    _, _, c = standard_log(directory)
    sequence, offset, length = next(
        (seq, off, size) for seq, off, size in record_offsets(c) if seq > 110 and (off + size) % 512 < size - 1
    )
    boundary = ((offset + length) // 512) * 512
    assert offset < boundary < offset + length
    truncate(c, offset + length)
    zero_range(c, boundary, offset + length - boundary)
    return Torn(last_good=sequence - 1, offset=offset)


def case_zeroed_sector_in_middle_segment(directory: Path) -> Expectation:
    _, b, _ = standard_log(directory)
    _, offset = record_overlapping(b, 4096)
    zero_range(b, 4096, 4096)
    return Corrupt(b.name, offset, "checksum mismatch")


def case_zeroed_sector_followed_by_a_later_write_in_last_segment(directory: Path) -> Expectation:
    # Zeros followed by the intact start of a later write are not a torn write: the damaged write was synced
    # before that one began, and the records after the zeros were durable.
    _, _, c = standard_log(directory)
    sequence, offset = record_overlapping(c, 4096)
    assert sequence < FINAL_WRITE - 10  # in the write before the one before the final write
    later_write = offset_of(c, FINAL_WRITE)
    zero_range(c, 4096, 512)
    return Corrupt(c.name, offset, f"beginning a later write follows at offset {later_write}")


def case_hole_in_the_final_write_before_its_own_records(directory: Path) -> Expectation:
    # The final write's pages written back out of order: a sector inside it never landed, the ones after it did.
    _, _, c = standard_log(directory)
    zeroed = 7168
    sequence, offset = record_overlapping(c, zeroed)
    assert offset > offset_of(c, FINAL_WRITE) and offset_of(c, 120) > zeroed + 512
    zero_range(c, zeroed, 512)
    return Torn(last_good=sequence - 1, offset=offset)


def case_hole_at_the_start_of_the_final_write(directory: Path) -> Expectation:
    # The page holding the final write's start never landed: zeros from there to the sector's end (the part of
    # the sector before it was synced by the write before), intact records of the same write after them.
    _, _, c = standard_log(directory)
    start = offset_of(c, FINAL_WRITE)
    zero_range(c, start, 512 - start % 512)
    return Torn(last_good=FINAL_WRITE - 1, offset=start)


def case_zeroed_page_hiding_every_later_write_start(directory: Path) -> Expectation:
    # The accepted limit (sidecar.storage.reader, case 2): a zeroed 4 KiB page of synced records that also hides
    # the start of every later write, up to and including the final one, reads as that final write's pages lost
    # in a power cut. It is truncated as a torn tail; the original is kept as .broken.
    _, _, c = standard_log(directory)
    sequence, offset = record_overlapping(c, 4096)
    assert 4096 < offset_of(c, FINAL_WRITE) < 8192 < offset_of(c, 120)
    zero_range(c, 4096, 4096)
    return Torn(last_good=sequence - 1, offset=offset)


def case_flipped_byte_in_the_final_write_before_its_own_records(directory: Path) -> Expectation:
    # Non-zero garbage is not a page that never landed, in the final write too.
    _, _, c = standard_log(directory)
    offset = offset_of(c, FINAL_WRITE + 2)
    flip_byte(c, offset + RECORD_HEADER_SIZE + 17)
    return Corrupt(c.name, offset, "intact record follows")


def case_hole_in_a_format_1_segment(directory: Path) -> Expectation:
    # Format 1 marks no write: a hole followed by intact records is refused, as it always was.
    only = directory / segment_name(1)
    write_segment(only, 1, list(range(1, 41)), PAYLOAD, version=1)
    _, offset = record_overlapping(only, 4096)
    zero_range(only, 4096, 512)
    return Corrupt(only.name, offset, "checksum mismatch")


def case_hand_made_hole_before_unflagged_records(directory: Path) -> Expectation:
    only = directory / segment_name(1)
    write_segment(only, 1, list(range(1, 41)), PAYLOAD, first_of_write={1, 11})
    sequence, offset = record_overlapping(only, 4096)
    zero_range(only, 4096, 512)
    return Torn(last_good=sequence - 1, offset=offset)


def case_hand_made_hole_before_a_flagged_record(directory: Path) -> Expectation:
    only = directory / segment_name(1)
    write_segment(only, 1, list(range(1, 41)), PAYLOAD, first_of_write={1, 11, 31})
    _, offset = record_overlapping(only, 4096)
    later_write = offset_of(only, 31)
    zero_range(only, 4096, 512)
    return Corrupt(only.name, offset, f"beginning a later write follows at offset {later_write}")


def case_flipped_payload_byte_in_middle_segment(directory: Path) -> Expectation:
    _, b, _ = standard_log(directory)
    offset = offset_of(b, 60)
    flip_byte(b, offset + RECORD_HEADER_SIZE + 17)
    return Corrupt(b.name, offset, "checksum mismatch")


def case_flipped_byte_in_final_record(directory: Path) -> Expectation:
    # Bit rot in the very last record must not be "repaired" away: it carries no torn-write signature.
    _, _, c = standard_log(directory)
    offset = offset_of(c, 120)
    flip_byte(c, offset + RECORD_HEADER_SIZE + 3)
    return Corrupt(c.name, offset, "no sign of a torn write")


def case_flipped_sequence_byte(directory: Path) -> Expectation:
    _, b, _ = standard_log(directory)
    offset = offset_of(b, 55)
    flip_byte(b, offset + 9)
    return Corrupt(b.name, offset, "checksum mismatch")


def case_length_points_past_end_with_records_after(directory: Path) -> Expectation:
    # A damaged length that runs past the end looks like a torn record; the intact records after it say no.
    _, _, c = standard_log(directory)
    offset = offset_of(c, 100)
    set_byte(c, offset + 2, 0x10)
    return Corrupt(c.name, offset, "intact record beginning a later write follows")


def case_length_points_past_end_inside_the_final_write(directory: Path) -> Expectation:
    _, _, c = standard_log(directory)
    offset = offset_of(c, FINAL_WRITE + 2)
    set_byte(c, offset + 2, 0x10)
    return Corrupt(c.name, offset, "intact record follows")


def case_impossible_length(directory: Path) -> Expectation:
    _, b, _ = standard_log(directory)
    offset = offset_of(b, 50)
    set_byte(b, offset + 3, 0x7F)
    return Corrupt(b.name, offset, "impossible record length")


def case_type_zero_followed_by_data(directory: Path) -> Expectation:
    _, b, _ = standard_log(directory)
    offset = offset_of(b, 50)
    set_byte(b, offset + 8, 0)
    return Corrupt(b.name, offset, "record type 0")


def case_middle_segment_missing(directory: Path) -> Expectation:
    _, b, c = standard_log(directory)
    b.unlink()
    return Corrupt(c.name, 0, "missing segment")


def case_middle_segment_torn(directory: Path) -> Expectation:
    _, b, _ = standard_log(directory)
    offset = offset_of(b, 70)
    truncate(b, offset + 50)
    return Corrupt(b.name, offset, "not the last")


def case_unknown_segment_version(directory: Path) -> Expectation:
    _, b, _ = standard_log(directory)
    set_byte(b, 8, 3)
    return Corrupt(b.name, 8, "unsupported segment format version 3")


def case_bad_segment_magic(directory: Path) -> Expectation:
    _, b, _ = standard_log(directory)
    set_byte(b, 0, ord("X"))
    return Corrupt(b.name, 0, "bad segment magic")


def case_damaged_segment_header(directory: Path) -> Expectation:
    _, b, _ = standard_log(directory)
    flip_byte(b, 12)
    return Corrupt(b.name, 17, "segment header checksum mismatch")


def case_segment_renamed(directory: Path) -> Expectation:
    _, _, c = standard_log(directory)
    renamed = c.with_name(segment_name(90))
    c.rename(renamed)
    return Corrupt(renamed.name, 9, "header says its first sequence is 81 but its name says 90")


def case_segment_without_header(directory: Path) -> Expectation:
    _, _, c = standard_log(directory)
    truncate(c, 10)
    return Corrupt(c.name, 0, "segment header is 10 bytes")


def case_first_record_does_not_match_name(directory: Path) -> Expectation:
    write_segment(directory / segment_name(1), 1, list(range(1, 11)))
    second = directory / segment_name(11)
    write_segment(second, 11, list(range(12, 21)))
    return Corrupt(second.name, SEGMENT_HEADER_SIZE, "first record has sequence 12")


def case_sequence_gap_inside_segment(directory: Path) -> Expectation:
    only = directory / segment_name(1)
    write_segment(only, 1, [1, 2, 3, 5, 6])
    return Corrupt(only.name, offset_of(only, 5), "sequence gap: expected 4, found 5")


def case_sequences_swapped(directory: Path) -> Expectation:
    only = directory / segment_name(1)
    write_segment(only, 1, [1, 3, 2, 4])
    return Corrupt(
        only.name, record_offsets(only)[1][1], "sequence gap: expected 2, found 3 (record 2 is missing)"
    )


def case_sequence_repeats(directory: Path) -> Expectation:
    only = directory / segment_name(1)
    write_segment(only, 1, [1, 2, 2, 3])
    third = record_offsets(only)[2][1]
    return Corrupt(only.name, third, "does not increase")


CASES: dict[str, Callable[[Path], Expectation]] = {
    name.removeprefix("case_"): function for name, function in globals().items() if name.startswith("case_")
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_scan_outcome(tmp_path: Path, case: str) -> None:
    directory = tmp_path / "log"
    directory.mkdir()
    expected = CASES[case](directory)
    scan = scan_log(directory, FILEOPS, 0)
    seen: list[int] = []
    if isinstance(expected, Corrupt):
        with pytest.raises(LogCorruptionError) as raised:
            for record in scan:
                seen.append(record.sequence)
        error = raised.value
        assert error.file.name == expected.file
        assert error.offset == expected.offset, str(error)
        assert expected.detail in error.detail, str(error)
        assert expected.file in str(error) and f"byte offset {expected.offset}" in str(error)
        # Streaming: what came before the damage was already handed out, gapless from 1.
        assert seen == list(range(1, len(seen) + 1))
        return
    records = list(scan)
    assert [r.sequence for r in records] == list(range(1, len(records) + 1))
    assert all(r.payload == payload_for(r.sequence, PAYLOAD) and r.record_type == 1 for r in records)
    if isinstance(expected, Clean):
        assert scan.torn_tail is None
        assert scan.last_sequence == expected.last == len(records)
        assert scan.next_sequence == expected.last + 1
        return
    torn = scan.torn_tail
    assert torn is not None
    assert (torn.last_good_sequence, torn.offset) == (expected.last_good, expected.offset), torn.detail
    assert scan.last_sequence == expected.last_good == len(records)
    check_repair(directory, torn.path, expected)


def check_repair(directory: Path, segment: Path, expected: Torn) -> None:
    original = segment.read_bytes()
    scan = scan_log(directory, FILEOPS, 0).consume()
    assert scan.torn_tail is not None
    broken = repair_torn_tail(scan.torn_tail, FILEOPS)
    assert broken == segment.with_name(segment.name + ".broken")
    assert broken.read_bytes() == original
    assert segment.stat().st_size == expected.offset
    rescan = scan_log(directory, FILEOPS, 0).consume()
    assert rescan.torn_tail is None
    assert rescan.last_sequence == expected.last_good
    # The repaired log continues where it stopped.
    with DecisionLog.open(directory, fileops=FILEOPS, next_sequence=rescan.next_sequence) as log:
        log.wait_durable(log.append(1, payload_for(expected.last_good + 1, PAYLOAD)))
    final = scan_log(directory, FILEOPS, 0)
    assert [r.sequence for r in final] == list(range(1, expected.last_good + 2))


def test_repair_logs_a_warning_and_numbers_repeated_copies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _, _, c = standard_log(tmp_path)
    for attempt in (1, 2):
        append_bytes(c, b"\x07" * 5)  # a partial record header
        scan = scan_log(tmp_path, FILEOPS, 0).consume()
        assert scan.torn_tail is not None
        with caplog.at_level("WARNING", logger="sidecar.storage"):
            broken = repair_torn_tail(scan.torn_tail, FILEOPS)
        assert broken.name == (f"{c.name}.broken" if attempt == 1 else f"{c.name}.broken.2")
    assert any("repaired torn tail" in message and c.name in message for message in caplog.messages)


def test_repair_refuses_when_the_segment_changed_since_the_scan(tmp_path: Path) -> None:
    _, _, c = standard_log(tmp_path)
    append_bytes(c, b"\x07" * 5)
    scan = scan_log(tmp_path, FILEOPS, 0).consume()
    append_bytes(c, b"\x07")
    assert scan.torn_tail is not None
    with pytest.raises(Exception, match="rescan first"):
        repair_torn_tail(scan.torn_tail, FILEOPS)


def test_scan_results_require_reading_to_the_end(tmp_path: Path) -> None:
    standard_log(tmp_path)
    scan = scan_log(tmp_path, FILEOPS, 0)
    with pytest.raises(RuntimeError):
        _ = scan.torn_tail
    iterator = iter(scan)
    assert next(iterator).sequence == 1
    with pytest.raises(RuntimeError):
        iter(scan)
    scan.close()  # abandons the iteration and closes the open segment
    with pytest.raises(StopIteration):
        next(iterator)


# -- the log against the checkpoint it continues ---------------------------------------------------------------


def test_records_after_the_checkpoint_only(tmp_path: Path) -> None:
    standard_log(tmp_path)
    scan = scan_log(tmp_path, FILEOPS, after_sequence=57)
    assert [r.sequence for r in scan] == list(range(58, 121))
    assert scan.record_count == 120 and scan.next_sequence == 121


def test_log_ending_exactly_at_the_checkpoint_is_clean(tmp_path: Path) -> None:
    standard_log(tmp_path)
    scan = scan_log(tmp_path, FILEOPS, after_sequence=120)
    assert list(scan) == [] and scan.next_sequence == 121


def test_log_that_starts_after_the_checkpoint_is_refused(tmp_path: Path) -> None:
    a, _, _ = standard_log(tmp_path)
    a.unlink()
    with pytest.raises(LogCorruptionError, match=r"records 31\.\.40 are missing"):
        scan_log(tmp_path, FILEOPS, after_sequence=30)
    assert [r.sequence for r in scan_log(tmp_path, FILEOPS, after_sequence=40)] == list(range(41, 121))


def test_log_without_checkpoint_must_start_at_one(tmp_path: Path) -> None:
    a, _, _ = standard_log(tmp_path)
    a.unlink()
    with pytest.raises(LogCorruptionError, match="there is no checkpoint"):
        scan_log(tmp_path, FILEOPS, 0)


def test_log_that_ends_before_the_checkpoint_is_refused(tmp_path: Path) -> None:
    _, _, c = standard_log(tmp_path)
    c.unlink()
    scan = scan_log(tmp_path, FILEOPS, after_sequence=100)
    with pytest.raises(LogCorruptionError, match=r"ends at sequence 80 but the checkpoint covers through 100"):
        scan.consume()


def test_torn_tail_that_would_cut_into_the_checkpoint_is_refused(tmp_path: Path) -> None:
    _, _, c = standard_log(tmp_path)
    truncate(c, offset_of(c, 100) + 20)
    with pytest.raises(LogCorruptionError, match="were durable when it was written"):
        scan_log(tmp_path, FILEOPS, after_sequence=110).consume()


def test_empty_log_continues_any_checkpoint(tmp_path: Path) -> None:
    scan = scan_log(tmp_path / "missing", FILEOPS, after_sequence=500).consume()
    assert scan.next_sequence == 501 and scan.last_sequence == 0 and scan.torn_tail is None
    directory = tmp_path / "log"
    DecisionLog.open(directory, fileops=FILEOPS, next_sequence=7).close()  # one empty segment named 7
    scan = scan_log(directory, FILEOPS, after_sequence=500).consume()
    assert scan.next_sequence == 501 and scan.last_sequence == 6


def test_read_records_tolerates_deleted_old_segments_and_reports_torn_tail(tmp_path: Path) -> None:
    a, _, c = standard_log(tmp_path)
    a.unlink()
    cut = offset_of(c, 120) + 3
    truncate(c, cut)
    scan = read_records(tmp_path, FILEOPS)
    assert [r.sequence for r in scan] == list(range(41, 120))
    assert scan.torn_tail is not None and scan.torn_tail.last_good_sequence == 119
    assert c.stat().st_size == cut  # read-only: nothing repaired
    assert next(iter(read_records(tmp_path, FILEOPS, after_sequence=100))).sequence == 101


@pytest.mark.parametrize("damage", ["hole in the last write", "cut short"])
def test_an_archive_ends_in_no_torn_tail(tmp_path: Path, damage: str) -> None:
    """Archived segments were complete when moved: what the log's last segment may show after a power cut is
    corruption there."""
    _, _, c = standard_log(tmp_path)
    if damage == "cut short":
        offset = offset_of(c, 120)
        truncate(c, offset + 30)
    else:
        _, offset = record_overlapping(c, 7168)
        zero_range(c, 7168, 512)
    assert read_records(tmp_path, FILEOPS).consume().torn_tail is not None  # as the log it would be torn
    with pytest.raises(LogCorruptionError) as raised:
        read_records(tmp_path, FILEOPS, archive=True).consume()
    assert (raised.value.file, raised.value.offset) == (c, offset)


def test_scan_ignores_foreign_files(tmp_path: Path) -> None:
    standard_log(tmp_path)
    (tmp_path / "README").write_text("not a segment")
    (tmp_path / (segment_name(121) + ".tmp")).write_bytes(b"half-made")
    (tmp_path / (segment_name(81) + ".broken")).write_bytes(b"old")
    assert scan_log(tmp_path, FILEOPS, 0).consume().last_sequence == 120


def test_scan_streams_large_logs_in_bounded_memory(tmp_path: Path) -> None:
    import tracemalloc

    count = 60_000
    with DecisionLog.open(tmp_path, fileops=FILEOPS, next_sequence=1, segment_bytes=4 << 20) as log:
        for start in range(1, count + 1, 5000):
            log.append_many([(2, payload_for(s, 200)) for s in range(start, start + 5000)])
            log.sync()
    total_bytes = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert total_bytes > 12_000_000
    tracemalloc.start()
    try:
        last = 0
        for record in scan_log(tmp_path, FILEOPS, 0):
            assert record.sequence == last + 1
            last = record.sequence
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert last == count
    # A read chunk (1 MiB), its successor being appended, and one decoded batch: not the log's size.
    assert peak < 4 * 1024 * 1024, peak

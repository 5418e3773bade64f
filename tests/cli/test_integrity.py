"""`verify` and `repair` on real data directories, damaged by hand.

The damage tools read the on-disk log format as documented in `sidecar/storage/framing.py`: a 21-byte segment
header, then records of u32 length, u32 CRC32C (over type, sequence and payload), u8 type (bit 7 marks the first
record of a write), u64 sequence, payload.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import crc32c
import pytest

from tests.cli.conftest import ALLOWED, REFUSED, ServeFactory, Signer, error_line, run_ok
from tests.support.keys import pubkey_hex
from tests.support.processes import run_cli

KEY = pubkey_hex(0x5E)
SEGMENT_HEADER = 21
RECORD_HEADER = 17


@dataclass(frozen=True)
class Record:
    sequence: int
    offset: int
    length: int  # whole frame


def records_of(segment: Path) -> list[Record]:
    data = segment.read_bytes()
    found, offset = [], SEGMENT_HEADER
    while offset + RECORD_HEADER <= len(data):
        (length,) = struct.unpack_from("<I", data, offset)
        (sequence,) = struct.unpack_from("<Q", data, offset + 9)
        if offset + RECORD_HEADER + length > len(data):
            break
        found.append(Record(sequence, offset, RECORD_HEADER + length))
        offset += RECORD_HEADER + length
    assert offset == len(data), f"{segment}: unparsed bytes from {offset}"
    return found


def only_segment(data_dir: Path) -> Path:
    segments = sorted((data_dir / "log").glob("*.log"))
    assert segments, f"no log segment in {data_dir}"
    return segments[-1]


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def damage_mid_log(data_dir: Path) -> tuple[Path, Record, int]:
    """Flips one payload byte of a record in the middle of the log; returns (segment, record, byte offset)."""
    segment = only_segment(data_dir)
    records = records_of(segment)
    assert len(records) >= 10
    record = records[len(records) // 2]
    where = record.offset + RECORD_HEADER + 3
    flip(segment, where)
    return segment, record, where


def offsets_named(text: str, file_name: str) -> list[int]:
    """Byte offsets given on the lines of `text` that name `file_name`."""
    return [
        int(number)
        for line in text.splitlines()
        if file_name in line
        for number in re.findall(r"offset (\d+)", line)
    ]


@dataclass(frozen=True)
class Images:
    crashed: Path  # copied while the server ran: every decision is in the log, after the only checkpoint
    stopped: Path  # the same directory after SIGTERM: a final checkpoint covers everything


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory, module_serve: ServeFactory) -> Images:
    base = tmp_path_factory.mktemp("images")
    data_dir = base / "live"
    # Created offline (which leaves a checkpoint), then served without naming the root again.
    run_ok("register", "--data-dir", data_dir, "--network", "mainnet", "--pubkey", KEY)
    assert list((data_dir / "checkpoints").glob("*"))
    sidecar = module_serve(data_dir, "--checkpoint-interval", "3600")
    signer = Signer(sidecar.address)
    try:
        for slot in range(100, 124):
            assert signer.block(KEY, slot).verdict == ALLOWED
        for epoch in range(1, 6):
            assert signer.attestation(KEY, epoch, epoch + 1).verdict == ALLOWED
    finally:
        signer.close()
    crashed = base / "crashed"
    shutil.copytree(data_dir, crashed)  # every answered decision is already fsynced
    assert sidecar.stop() == 0
    return Images(crashed=crashed, stopped=data_dir)


def copy_of(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(source, target)
    return target


def test_verify_a_clean_dir(images: Images) -> None:
    for data_dir in (images.stopped, images.crashed):
        result = run_cli("verify", "--data-dir", data_dir)
        assert result.returncode == 0, result.stdout + result.stderr


def test_verify_names_file_and_offset_of_mid_log_damage_and_serve_refuses(
    tmp_path: Path, images: Images, serve: ServeFactory
) -> None:
    data_dir = copy_of(images.crashed, tmp_path)
    segment, record, where = damage_mid_log(data_dir)
    result = run_cli("verify", "--data-dir", data_dir)
    assert result.returncode != 0
    report = result.stdout + result.stderr
    offsets = offsets_named(report, segment.name)
    assert any(record.offset <= offset <= where for offset in offsets), report

    refused = serve.launch(data_dir)
    assert refused.wait_exit() != 0
    line = error_line(refused.stderr)
    assert segment.name in line and str(record.offset) in line, line


def test_verify_names_a_corrupted_newest_checkpoint(tmp_path: Path, images: Images) -> None:
    data_dir = copy_of(images.stopped, tmp_path)
    newest = sorted((data_dir / "checkpoints").glob("*.ckpt"))[-1]
    flip(newest, newest.stat().st_size // 2)
    result = run_cli("verify", "--data-dir", data_dir)
    assert result.returncode != 0
    assert newest.name in result.stdout + result.stderr, result.stdout


def test_verify_reports_a_torn_tail_which_the_next_start_repairs(
    tmp_path: Path, images: Images, serve: ServeFactory
) -> None:
    data_dir = copy_of(images.crashed, tmp_path)
    segment = only_segment(data_dir)
    last = records_of(segment)[-1]
    with open(segment, "r+b") as handle:
        handle.truncate(last.offset + last.length // 2)
    result = run_cli("verify", "--data-dir", data_dir)
    assert result.returncode != 0
    report = result.stdout + result.stderr
    assert last.offset in offsets_named(report, segment.name), report

    serve(data_dir)  # a torn tail is what a crash leaves: the start repairs it (cuts the partial record off)
    assert records_of(segment)[-1].sequence == last.sequence - 1


def test_verify_reports_a_write_back_hole_in_the_final_write_as_a_torn_tail_which_the_next_start_cuts(
    tmp_path: Path, images: Images, serve: ServeFactory
) -> None:
    data_dir = copy_of(images.crashed, tmp_path)
    segment = only_segment(data_dir)
    records = records_of(segment)
    # The last ten decisions as one final write (as a group commit of ten would be): the first-of-write mark off
    # on all but its first record. Then a sector inside it never reached the disk, the sectors after it did.
    data = bytearray(segment.read_bytes())
    final_write = records[-10:]
    for record in final_write[1:]:
        data[record.offset + 8] &= 0x7F
        end = record.offset + record.length
        struct.pack_into("<I", data, record.offset + 4, crc32c.crc32c(bytes(data[record.offset + 8 : end])))
    hole = (final_write[0].offset // 512 + 1) * 512
    assert hole + 512 < final_write[-1].offset, "intact records of the final write after the hole"
    data[hole : hole + 512] = bytes(512)
    segment.write_bytes(bytes(data))
    damaged = next(record for record in records if record.offset + record.length > hole)

    result = run_cli("verify", "--data-dir", data_dir)
    report = result.stdout + result.stderr
    assert "torn tail in" in report and "repaired automatically at the next start" in report, report
    assert "corrupted" not in report, report
    assert damaged.offset in offsets_named(report, segment.name), report

    serve(data_dir)  # starts by itself: the start cuts the final write off at the hole
    assert records_of(segment)[-1].sequence == damaged.sequence - 1
    assert (segment.parent / (segment.name + ".broken")).read_bytes() == bytes(data)


def test_repair_after_mid_log_damage(tmp_path: Path, images: Images, serve: ServeFactory) -> None:
    data_dir = copy_of(images.crashed, tmp_path)
    segment, _, _ = damage_mid_log(data_dir)
    repaired = run_cli("repair", "--data-dir", data_dir, "--min-slot", "500", "--min-epoch", "50")
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    said = repaired.stdout + repaired.stderr
    assert segment.name in said, f"repair does not say where the damage was:\n{said}"
    assert "500" in said and "50" in said, f"repair does not say which bounds it set:\n{said}"
    assert run_cli("verify", "--data-dir", data_dir).returncode == 0

    summary = json.loads(run_ok("summary", "--data-dir", data_dir, "--pubkey", KEY).stdout)
    assert (summary["slot_floor"], summary["source_epoch_floor"], summary["target_epoch_floor"]) == (500, 50, 50)
    assert summary["lowest_slot"] == 100, "the records before the damage were not kept"

    sidecar = serve(data_dir)

    signer = Signer(sidecar.address)
    try:
        assert signer.block(KEY, 499).verdict == REFUSED
        assert signer.block(KEY, 500).verdict == REFUSED
        assert signer.attestation(KEY, 49, 51).verdict == REFUSED
        assert signer.attestation(KEY, 50, 50).verdict == REFUSED
        assert signer.block(KEY, 501).verdict == ALLOWED
        assert signer.attestation(KEY, 50, 51).verdict == ALLOWED
    finally:
        signer.close()


def test_repair_after_mid_log_damage_before_any_checkpoint(tmp_path: Path, images: Images) -> None:
    data_dir = copy_of(images.crashed, tmp_path)
    # What a crash before the first checkpoint leaves: the log from sequence 1 and no checkpoint.
    for checkpoint in (data_dir / "checkpoints").iterdir():
        checkpoint.unlink()
    assert records_of(only_segment(data_dir))[0].sequence == 1
    damage_mid_log(data_dir)
    repaired = run_cli("repair", "--data-dir", data_dir, "--min-slot", "500", "--min-epoch", "50")
    assert repaired.returncode == 0, repaired.stderr
    summary = json.loads(run_ok("summary", "--data-dir", data_dir, "--pubkey", KEY).stdout)
    assert (summary["slot_floor"], summary["lowest_slot"]) == (500, 100)

"""The fuzz targets in CI: every seed replayed in process, each target fuzzed briefly under atheris, and no decoder
allocating what a length field claims rather than what it was given.

The short runs are bounded by both ``-runs`` and ``-max_total_time`` (whichever comes first), so a slow machine
runs fewer inputs, never longer; a crash, a hang (``-timeout``) or a memory blow-up (``-rss_limit_mb``) fails the
test with libFuzzer's report and the input's bytes. Longer runs: ``scripts/fuzz TARGET [SECONDS]``. An input a run
finds wrong becomes a plain test of its exact bytes, committed with its fix.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from google.protobuf.message import DecodeError

from sidecar import records as codec
from sidecar.storage import CheckpointError, FileOps, LogCorruptionError, read_checkpoint, read_records
from sidecar.storage.framing import MAX_PAYLOAD_SIZE, encode_record, encode_segment_header
from sidecar.storage.segments import segment_name
from slashing_protection.v1 import signing_pb2

from .targets import TARGETS, quiet_logs, wrap_checkpoint

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).parent / "corpus"
RUNS = 3000
SECONDS = 3
# Far below the lengths the inputs below claim (16 MiB and more), above what reading a small file costs (one
# read chunk of the log reader is 1 MiB).
ALLOCATION_LIMIT = 4 * 1024 * 1024


def seeds() -> list[object]:
    return [
        pytest.param(target, path, id=f"{target}/{path.name}")
        for target in sorted(TARGETS)
        for path in sorted((CORPUS / target).iterdir())
    ]


@pytest.mark.parametrize(("target", "path"), seeds())
def test_every_seed_gets_an_answer_or_one_of_our_errors(target: str, path: Path) -> None:
    quiet_logs()
    try:
        TARGETS[target](path.read_bytes())
    finally:
        # Process-wide: left disabled, every later test of this worker would lose its log records (caplog).
        logging.disable(logging.NOTSET)


def test_every_target_has_seeds() -> None:
    assert sorted(p.name for p in CORPUS.iterdir()) == sorted(TARGETS)
    assert all(any((CORPUS / target).iterdir()) for target in TARGETS)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_a_short_fuzzing_run_finds_nothing(tmp_path: Path, target: str) -> None:
    corpus = tmp_path / "corpus"
    shutil.copytree(CORPUS / target, corpus)  # libFuzzer adds what it finds to the first corpus directory
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.fuzz.run",
            target,
            str(corpus),
            f"-runs={RUNS}",
            f"-max_total_time={SECONDS}",
            "-timeout=10",
            "-rss_limit_mb=1024",
            f"-artifact_prefix={tmp_path}/",
            "-seed=1",
        ],
        cwd=REPO,
        env={**os.environ, "SIDECAR_FUZZ_SCRATCH": str(tmp_path / "scratch")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report = result.stderr[-6000:]
    assert result.returncode == 0, report
    assert "Done " in result.stderr, report
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("crash-", "timeout-", "oom-"))], report


# -- allocation follows the input, not a length field in it --------------------------------------------------


def peak_allocation(function: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_frame_claiming_the_largest_payload_allocates_what_the_file_holds(tmp_path: Path) -> None:
    frame = bytearray(encode_record(1, 1, b"x" * 40))
    struct.pack_into("<I", frame, 0, MAX_PAYLOAD_SIZE)  # the length field claims 16 MiB; 40 bytes follow
    (tmp_path / segment_name(1)).write_bytes(encode_segment_header(1) + bytes(frame))

    def read() -> None:
        scan = read_records(tmp_path, FileOps())
        assert list(scan) == []
        assert scan.torn_tail is not None

    assert peak_allocation(read) < ALLOCATION_LIMIT


def test_an_impossible_frame_length_allocates_nothing_for_it(tmp_path: Path) -> None:
    frames = bytearray(encode_record(1, 1, b"x" * 40) + encode_record(2, 1, b"y" * 40))
    struct.pack_into("<I", frames, 0, 0xFFFFFFFF)
    (tmp_path / segment_name(1)).write_bytes(encode_segment_header(1) + bytes(frames))

    def read() -> None:
        with pytest.raises(LogCorruptionError, match="impossible record length"):
            list(read_records(tmp_path, FileOps()))

    assert peak_allocation(read) < ALLOCATION_LIMIT


def test_a_checkpoint_trailer_claiming_a_huge_body_allocates_nothing_for_it(tmp_path: Path) -> None:
    content = bytearray(wrap_checkpoint(b"body"))
    struct.pack_into("<Q", content, len(content) - 12, 2**62)
    path = tmp_path / "checkpoint-00000000000000000001.ckpt"
    path.write_bytes(bytes(content))

    def read() -> None:
        with pytest.raises(CheckpointError, match="trailer says the body is"):
            read_checkpoint(path, FileOps())

    assert peak_allocation(read) < ALLOCATION_LIMIT


@pytest.mark.parametrize(
    ("name", "decode", "payload"),
    [
        (
            "checkpoint body, 2**64-1 validators",
            lambda p: list(codec.decode_checkpoint_body(p)),
            b"\x01" + b"\xff" * 8,
        ),
        (
            "checkpoint validator, 2**32-1 blocks",
            lambda p: list(codec.decode_checkpoint_body(p)),
            b"\x01" + struct.pack("<Q", 1) + bytes(200) + b"\xff" * 4,
        ),
        ("register record, 2**32-1 keys", codec.decode_register, b"\xff" * 4 + bytes(48)),
        ("import record, 2**32-1 records", codec.decode_import_pruned_validator, b"\x00" * 60 + b"\xff" * 40),
    ],
)
def test_state_codec_counts_do_not_allocate_what_they_claim(
    name: str, decode: Callable[[bytes], object], payload: bytes
) -> None:
    def run() -> None:
        with pytest.raises(codec.CodecError):
            decode(payload)

    assert peak_allocation(run) < ALLOCATION_LIMIT, name


def test_a_protobuf_field_claiming_two_gigabytes_allocates_nothing_for_it() -> None:
    # Field 1 (pubkey), wire type 2, length varint 2**31 - 1, then four bytes.
    data = b"\x0a" + b"\xff\xff\xff\xff\x07" + b"abcd"

    def parse() -> None:
        with pytest.raises(DecodeError):
            signing_pb2.CheckAndRecordBlockRequest.FromString(data)

    assert peak_allocation(parse) < ALLOCATION_LIMIT

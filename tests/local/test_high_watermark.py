"""The high watermark in a data directory: its log record (type 7), the checkpoint body that carries it (version
2), replay, restarts from the log alone and from a checkpoint, repair and verify.

The golden bodies: `golden/checkpoint-body-v1.bin` was written by 0.2.0's encoder (commit 16a7beb) from
`golden_state()`, so it pins both that version 1 is still read and that a body without a watermark is still
written byte for byte as 0.2.0 wrote it; `golden/checkpoint-body-v2.bin` is the same state with the watermark
(slot 3200, epoch 100), written by this version.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from sidecar import records as codec
from sidecar.domain import valid_pubkey, valid_signing_root
from sidecar.errors import DataDirError
from sidecar.history import ValidatorHistory
from sidecar.local.options import StoreOptions
from sidecar.local.recovery import Recovered, replay
from sidecar.local.repair import repair_data_dir
from sidecar.local.state import ValidatorStates
from sidecar.local.store import Store
from sidecar.rules import HighWatermark, Reason
from sidecar.storage import FileOps, list_checkpoints, read_checkpoint
from sidecar.verify import verify_data_dir
from tests.support.history_state import full_state

GOLDEN = Path(__file__).parent / "golden"
KEY_A = valid_pubkey(bytes([0xA1]) * 48)
KEY_B = valid_pubkey(bytes([0xB2]) * 48)
ROOT_A = valid_signing_root(bytes([0xAA]) * 32)
ROOT_B = valid_signing_root(bytes([0xBB]) * 32)
GENESIS = bytes(32)
NOBODY = valid_pubkey(bytes(48))  # never registered
NOW = 1_700_000_000_000_000_000
WATERMARK = HighWatermark(3200, 100)


def golden_state() -> dict[bytes, ValidatorHistory]:
    signer = ValidatorHistory()
    signer.add_block(100, ROOT_A)
    signer.add_block(101, None)
    signer.add_attestation(4, 5, ROOT_A)
    signer.add_attestation(5, 6, ROOT_B)
    signer.raise_floors(99, 3, 4)
    signer.allowed_count, signer.refused_count = 4, 1
    signer.applied_sequence = signer.last_decision_sequence = 12
    signer.last_decision = codec.encode_attestation_decision(KEY_A, 5, 6, ROOT_B, 1, NOW)
    return {KEY_A: signer, KEY_B: ValidatorHistory()}


def body_of(state: dict[bytes, ValidatorHistory], high_watermark: HighWatermark | None) -> bytes:
    validators = b"".join(codec.encode_checkpoint_validator(key, history) for key, history in state.items())
    return codec.encode_checkpoint_header(len(state), high_watermark) + validators


def decoded(body: bytes) -> dict[bytes, dict[str, object]]:
    return {entry.pubkey: full_state(entry.history) for entry in codec.decode_checkpoint_body(body)}


# ---------------------------------------------------------------- checkpoint bodies


def test_a_body_without_a_watermark_is_still_version_1_byte_for_byte() -> None:
    golden = (GOLDEN / "checkpoint-body-v1.bin").read_bytes()
    assert body_of(golden_state(), None) == golden
    header = codec.decode_checkpoint_header(golden)
    assert (header.version, header.validators, header.high_watermark, header.size) == (1, 2, None, 9)
    assert decoded(golden) == {key: full_state(history) for key, history in golden_state().items()}


def test_a_body_with_a_watermark_is_version_2_field_by_field() -> None:
    golden = (GOLDEN / "checkpoint-body-v2.bin").read_bytes()
    assert body_of(golden_state(), WATERMARK) == golden
    assert golden[0] == 2
    assert struct.unpack_from("<QQQ", golden, 1) == (2, 3200, 100)
    # The validators are laid out exactly as in version 1, after the longer header.
    assert golden[25:] == (GOLDEN / "checkpoint-body-v1.bin").read_bytes()[9:]
    header = codec.decode_checkpoint_header(golden)
    assert (header.version, header.validators, header.high_watermark, header.size) == (2, 2, WATERMARK, 25)
    assert decoded(golden) == {key: full_state(history) for key, history in golden_state().items()}


def test_every_truncation_of_a_version_2_body_is_a_codec_error() -> None:
    body = (GOLDEN / "checkpoint-body-v2.bin").read_bytes()
    for cut in range(len(body)):
        with pytest.raises(codec.CodecError):
            list(codec.decode_checkpoint_body(body[:cut]))


def test_an_unknown_body_version_is_refused_naming_it() -> None:
    body = bytearray((GOLDEN / "checkpoint-body-v2.bin").read_bytes())
    body[0] = 3
    newer = r"unknown checkpoint body version 3 \(this sidecar reads versions 1 to 2; a newer sidecar wrote it\?\)"
    with pytest.raises(codec.CodecError, match=newer):
        codec.decode_checkpoint_header(bytes(body))
    with pytest.raises(codec.CodecError, match="unknown checkpoint body version 3"):
        list(codec.decode_checkpoint_body(bytes(body)))


# ---------------------------------------------------------------- the log record


@pytest.mark.parametrize("high_watermark", [WATERMARK, HighWatermark(0, 0), HighWatermark(2**63 - 1, 5), None])
def test_the_record_round_trips(high_watermark: HighWatermark | None) -> None:
    payload = codec.encode_high_watermark(high_watermark)
    assert len(payload) == 17
    assert codec.decode_high_watermark(payload) == high_watermark


def test_the_record_layout() -> None:
    assert codec.encode_high_watermark(WATERMARK) == b"\x01" + struct.pack("<QQ", 3200, 100)
    assert codec.encode_high_watermark(None) == bytes(17)


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        (bytes(16), "16 bytes, expected 17"),
        (bytes(18), "18 bytes, expected 17"),
        (b"\x02" + bytes(16), "present 2"),
        (b"\x00" + struct.pack("<QQ", 5, 0), "present 0, slot 5"),
    ],
)
def test_a_record_that_does_not_decode(payload: bytes, detail: str) -> None:
    with pytest.raises(codec.CodecError, match=detail):
        codec.decode_high_watermark(payload)


# ---------------------------------------------------------------- replay


def watermark_record(sequence: int, high_watermark: HighWatermark | None) -> tuple[int, int, bytes]:
    return (sequence, codec.HIGH_WATERMARK, codec.encode_high_watermark(high_watermark))


def test_replay_keeps_the_last_watermark_record() -> None:
    recovered = Recovered(ValidatorStates(None), None)
    replay(recovered, [[watermark_record(1, HighWatermark(10, 1)), watermark_record(2, WATERMARK)]])
    assert recovered.state.high_watermark == WATERMARK
    replay(recovered, [[watermark_record(3, None)]])
    assert recovered.state.high_watermark is None
    assert (recovered.replayed, recovered.through) == (3, 3)


def test_a_watermark_record_that_does_not_decode_refuses_naming_it() -> None:
    recovered = Recovered(ValidatorStates(None), None)
    with pytest.raises(DataDirError, match=r"log record 4 \(type 7\) does not decode: high watermark payload"):
        replay(recovered, [[(4, codec.HIGH_WATERMARK, b"\x01")]])


def test_a_record_type_from_a_newer_sidecar_refuses_naming_it() -> None:
    recovered = Recovered(ValidatorStates(None), None)
    with pytest.raises(DataDirError, match=r"log record 9 has unknown type 8 \(written by a newer sidecar"):
        replay(recovered, [[(9, 8, b"")]])


# ---------------------------------------------------------------- a store, closed and reopened


def open_store(directory: Path) -> Store:
    return Store.open_or_create(directory, GENESIS, StoreOptions())


def set_in(store: Store, high_watermark: HighWatermark | None) -> int:
    sequence = store.record_high_watermark(high_watermark)
    store.log.wait_durable(sequence)
    return sequence


def test_the_store_decides_under_the_watermark_and_records_the_refusals(tmp_path: Path) -> None:
    store = open_store(tmp_path / "d")
    try:
        store.register_validators([KEY_A, KEY_B])
        set_in(store, WATERMARK)
        assert store.check_and_record_block(KEY_A, 3199, ROOT_A)[0].reason is Reason.ALLOWED_NEW
        assert store.check_and_record_block(KEY_A, 3200, ROOT_A)[0].reason is Reason.AT_OR_BEYOND_HIGH_WATERMARK
        decided = store.check_and_record_attestations([(KEY_A, 98, 99, ROOT_A), (KEY_B, 99, 100, ROOT_A)])
        assert [decision.reason for decision, _ in decided] == [
            Reason.ALLOWED_NEW,
            Reason.AT_OR_BEYOND_HIGH_WATERMARK,
        ]
        assert store.check_and_record_block(NOBODY, 5000, ROOT_A)[0].reason is Reason.VALIDATOR_NOT_REGISTERED
        store.log.sync()
        trail = [(record.pubkey, record.reason) for record in store.decisions()]
        assert trail[-3:] == [
            (KEY_A, Reason.ALLOWED_NEW),
            (KEY_B, Reason.AT_OR_BEYOND_HIGH_WATERMARK),
            (NOBODY, Reason.VALIDATOR_NOT_REGISTERED),
        ]
        summary = store.summary(KEY_B)
        assert summary is not None and (summary.refused_decisions, summary.attestation_count) == (1, 0)
        set_in(store, None)
        assert store.check_and_record_block(KEY_A, 3200, ROOT_A)[0].reason is Reason.ALLOWED_NEW
    finally:
        store.close(final_checkpoint=False)


def test_the_watermark_survives_a_restart_from_the_log_alone(tmp_path: Path) -> None:
    store = open_store(tmp_path / "d")
    try:
        store.register_validators([KEY_A])
        set_in(store, HighWatermark(10, 1))
        set_in(store, WATERMARK)
    finally:
        store.close(final_checkpoint=False)
    assert list_checkpoints(tmp_path / "d" / "checkpoints", FileOps()) == []
    reopened = open_store(tmp_path / "d")
    try:
        assert reopened.recovery is not None and reopened.recovery.replayed_records == 3
        assert reopened.high_watermark == WATERMARK
        assert reopened.check_and_record_block(KEY_A, 3200, ROOT_A)[0].reason is Reason.AT_OR_BEYOND_HIGH_WATERMARK
        set_in(reopened, None)
    finally:
        reopened.close(final_checkpoint=False)
    again = open_store(tmp_path / "d")
    try:
        assert again.high_watermark is None
    finally:
        again.close(final_checkpoint=False)


def test_the_watermark_survives_a_restart_from_a_checkpoint(tmp_path: Path) -> None:
    store = open_store(tmp_path / "d")
    try:
        store.register_validators([KEY_A])
        sequence = set_in(store, WATERMARK)
        info = store.save_checkpoint(while_serving=False)
        assert info.sequence == sequence
    finally:
        store.close(final_checkpoint=False)
    loaded = read_checkpoint(info.path, FileOps())
    assert codec.decode_checkpoint_header(loaded.body).high_watermark == WATERMARK
    reopened = open_store(tmp_path / "d")
    try:
        recovery = reopened.recovery
        assert recovery is not None and (recovery.checkpoint_sequence, recovery.replayed_records) == (sequence, 0)
        assert reopened.high_watermark == WATERMARK
        # Removed, then a checkpoint: version 1 again, with no watermark.
        set_in(reopened, None)
        removed = reopened.save_checkpoint(while_serving=False)
    finally:
        reopened.close(final_checkpoint=False)
    body = read_checkpoint(removed.path, FileOps()).body
    assert body[0] == 1 and codec.decode_checkpoint_header(body).high_watermark is None
    again = open_store(tmp_path / "d")
    try:
        assert again.high_watermark is None
    finally:
        again.close(final_checkpoint=False)


def test_a_checkpoint_carries_the_watermark_of_its_own_sequence(tmp_path: Path) -> None:
    """A record after the checkpoint's sequence is replayed over the checkpoint's watermark."""
    store = open_store(tmp_path / "d")
    try:
        set_in(store, HighWatermark(10, 1))
        store.save_checkpoint(while_serving=False)
        set_in(store, WATERMARK)
    finally:
        store.close(final_checkpoint=False)
    reopened = open_store(tmp_path / "d")
    try:
        assert reopened.recovery is not None and reopened.recovery.replayed_records == 1
        assert reopened.high_watermark == WATERMARK
    finally:
        reopened.close(final_checkpoint=False)


def test_repair_keeps_the_watermark_and_verify_reads_it(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    store = open_store(directory)
    try:
        store.register_validators([KEY_A])
        set_in(store, WATERMARK)
        store.save_checkpoint(while_serving=False)
        set_in(store, HighWatermark(6400, 200))  # in the log only
    finally:
        store.close(final_checkpoint=False)
    report = verify_data_dir(directory)
    assert report.ok, report.lines
    assert any("high watermark slot 3200 epoch 100" in line for line in report.lines), report.lines
    lines = repair_data_dir(directory, 0, 0)
    assert "kept the high watermark: slot 6400, epoch 200" in lines
    reopened = open_store(directory)
    try:
        assert reopened.high_watermark == HighWatermark(6400, 200)
    finally:
        reopened.close(final_checkpoint=False)

"""Recovery rebuilds exactly the state that was live: every field of every history, derived indexes included.

A random workload (attestations and blocks that are allowed, repeated and refused, registrations, imports in
both strategies, checkpoints at random points, pruning windows) runs through the store's public methods; the
store is then closed without a final checkpoint, so that reopening replays the log after the last checkpoint
through the fast read and replay paths. The reopened state must equal the live one field by field. The
checkpoint body codec is checked on its own too: a body decodes to the histories it was encoded from, and a
damaged one raises CodecError, never another exception.
"""

from __future__ import annotations

import io
import json
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar import records as codec
from sidecar.backend import Strategy
from sidecar.domain import DEFAULT_SEGMENT_BYTES
from sidecar.history import ValidatorHistory
from sidecar.local.options import StoreOptions
from sidecar.local.store import Store
from tests.support.history_state import full_state
from tests.support.keys import pubkey, root_for

GENESIS = root_for("recovery-state genesis")
KEYS = [pubkey(index) for index in range(5)]  # the last one is never registered
ROOTS = [root_for("message", index) for index in range(3)]


def store_state(store: Store) -> dict[bytes, dict[str, object]]:
    return {pubkey: full_state(history) for pubkey, history in store._state.validators.items()}


def interchange(entries: list[tuple[int, list[int], list[tuple[int, int]]]]) -> bytes:
    data = [
        {
            "pubkey": "0x" + KEYS[key].hex(),
            "signed_blocks": [{"slot": str(slot), "signing_root": "0x" + ROOTS[slot % 3].hex()} for slot in slots],
            "signed_attestations": [
                {"source_epoch": str(s), "target_epoch": str(t), "signing_root": "0x" + ROOTS[t % 3].hex()}
                for s, t in votes
            ],
        }
        for key, slots, votes in entries
    ]
    metadata = {"interchange_format_version": "5", "genesis_validators_root": "0x" + GENESIS.hex()}
    return json.dumps({"metadata": metadata, "data": data}).encode()


epochs = st.integers(0, 40)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("attest"), st.integers(0, 4), epochs, st.integers(0, 3), st.integers(0, 2)),
        st.tuples(st.just("attest"), st.integers(0, 4), epochs, st.integers(-2, 3), st.integers(0, 2)),
        st.tuples(st.just("block"), st.integers(0, 4), st.integers(0, 1500), st.integers(0, 2)),
        st.tuples(st.just("register"), st.integers(0, 3)),
        st.tuples(
            st.just("import"),
            st.lists(
                st.tuples(
                    st.integers(0, 3),
                    st.lists(st.integers(0, 1500), max_size=3),
                    st.lists(st.tuples(epochs, epochs), max_size=3),
                ),
                min_size=1,
                max_size=2,
                unique_by=lambda entry: entry[0],
            ),
        ),
        st.tuples(st.just("checkpoint")),
    ),
    max_size=80,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    workload=steps,
    window=st.sampled_from([None, 2, 64]),
    strategy=st.sampled_from(list(Strategy)),
    segment_bytes=st.sampled_from([1024, DEFAULT_SEGMENT_BYTES]),
)
def test_reopened_store_holds_exactly_the_live_state(
    tmp_path_factory: pytest.TempPathFactory,
    workload: list[tuple[object, ...]],
    window: int | None,
    strategy: Strategy,
    segment_bytes: int,
) -> None:
    directory = tmp_path_factory.mktemp("store")
    options = StoreOptions(strategy=strategy, history_window_epochs=window, segment_bytes=segment_bytes)
    store = Store.open_or_create(directory, GENESIS, options)
    try:
        store.register_validators(KEYS[:2])
        for step in workload:
            kind = step[0]
            if kind == "attest":
                _, key, source, span, root = step
                assert isinstance(key, int) and isinstance(source, int) and isinstance(span, int)
                assert isinstance(root, int)
                store.check_and_record_attestations([(KEYS[key], source, max(0, source + span), ROOTS[root])])
            elif kind == "block":
                _, key, slot, root = step
                assert isinstance(key, int) and isinstance(slot, int) and isinstance(root, int)
                store.check_and_record_block(KEYS[key], slot, ROOTS[root])
            elif kind == "register":
                assert isinstance(step[1], int)
                store.register_validators([KEYS[step[1]]])
            elif kind == "import":
                entries = step[1]
                assert isinstance(entries, list)
                store.import_interchange(io.BytesIO(interchange(entries)))
            else:
                store.save_checkpoint(while_serving=False)
        store.log.sync()
        live = store_state(store)
    finally:
        store.close(final_checkpoint=False)
    reopened = Store.open_or_create(directory, GENESIS, options)
    try:
        assert store_state(reopened) == live
    finally:
        reopened.close(final_checkpoint=False)


# ------------------------------------------------------------------------------ the checkpoint body on its own


def honest_history(start: int, length: int, *, blocks: int = 2, decisions: int = 3) -> ValidatorHistory:
    history = ValidatorHistory()
    for slot in range(blocks):
        history.add_block(100 + slot, ROOTS[slot % 3])
    for epoch in range(start, start + length):
        history.add_attestation(epoch, epoch + 1, ROOTS[epoch % 3])
    history.allowed_count = decisions
    history.refused_count = 1
    history.applied_sequence = 40 + start
    history.last_decision = codec.encode_attestation_decision(KEYS[0], start, start + 1, ROOTS[0], 1, 7)
    history.last_decision_sequence = 40 + start
    return history


def imported_history() -> ValidatorHistory:
    history = ValidatorHistory()
    history.raise_floors(5, 2, 3)
    for source, target, root in [(4, 9, ROOTS[0]), (6, 9, None), (1, 12, ROOTS[1]), (8, 10, None)]:
        history.add_attestation(source, target, root)
    history.add_block(9, None)
    return history


def body_of(histories: dict[bytes, ValidatorHistory]) -> bytes:
    parts = [codec.encode_checkpoint_header(len(histories))]
    parts += [codec.encode_checkpoint_validator(pubkey, history) for pubkey, history in histories.items()]
    return b"".join(parts)


SAMPLE: dict[bytes, ValidatorHistory] = {
    KEYS[0]: honest_history(3, 20),
    KEYS[1]: imported_history(),
    KEYS[2]: ValidatorHistory(),
    KEYS[3]: honest_history(0, 1, blocks=0, decisions=0),
}


def test_checkpoint_body_decodes_to_the_histories_it_was_encoded_from() -> None:
    decoded = list(codec.decode_checkpoint_body(body_of(SAMPLE)))
    assert [entry.pubkey for entry in decoded] == list(SAMPLE)
    for entry in decoded:
        assert type(entry.pubkey) is bytes
        assert full_state(entry.history) == full_state(SAMPLE[entry.pubkey])
        assert entry.history.last_decision is None or type(entry.history.last_decision) is bytes


def test_every_truncation_of_a_checkpoint_body_is_a_codec_error() -> None:
    body = body_of(SAMPLE)
    for cut in range(len(body)):
        with pytest.raises(codec.CodecError):
            list(codec.decode_checkpoint_body(body[:cut]))
    with pytest.raises(codec.CodecError, match="1 bytes after its last validator"):
        list(codec.decode_checkpoint_body(body + b"\x00"))


def test_checkpoint_attestations_out_of_order_name_the_validator() -> None:
    body = bytearray(body_of({KEYS[0]: honest_history(3, 4, blocks=0)}))
    # The targets array follows the attestation count; swap its first two entries.
    count_at = body.index(struct.pack("<I", 4) + struct.pack("<Q", 4))
    first, second = count_at + 4, count_at + 12
    body[first:second], body[second : second + 8] = body[second : second + 8], body[first:second]
    with pytest.raises(codec.CodecError, match=f"validator 0x{KEYS[0].hex()}: attestations out of order"):
        list(codec.decode_checkpoint_body(bytes(body)))


def round_trip(history: ValidatorHistory) -> ValidatorHistory:
    [entry] = codec.decode_checkpoint_body(body_of({KEYS[0]: history}))
    return entry.history


@pytest.mark.parametrize(
    "floors",
    [(0, 0, -1), (-1, 3, -1), (-1, 0, 0), (7, 0, -1), (-1, 0, 9), (7, 3, 9)],
    ids=["slot 0", "source 3", "target 0", "slot 7", "target 9", "all three"],
)
def test_each_floor_survives_the_body_alone(floors: tuple[int, int, int]) -> None:
    # A floor that is none stays none (slot 0, source 0 and target 0 are real floors that refuse epoch or slot 0).
    history = honest_history(3, 2)
    history.raise_floors(*floors)
    decoded = round_trip(history)
    assert (decoded.slot_floor, decoded.source_epoch_floor, decoded.target_epoch_floor) == floors
    assert full_state(decoded) == full_state(history)


def test_validator_entry_layout_field_by_field() -> None:
    """The documented layout of one validator entry; a floor whose bit is clear has the field 0."""
    history = honest_history(3, 2, blocks=1)
    history.raise_floors(-1, 2, -1)
    entry = codec.encode_checkpoint_validator(KEYS[0], history)
    head = struct.Struct("<48sQQQBQQQBQI")
    assert head.unpack_from(entry) == (KEYS[0], 43, 3, 1, 0b010, 0, 2, 0, codec.ATTESTATION_DECISION, 43, 106)
    last_end = head.size + 106
    assert entry[head.size : last_end] == history.last_decision
    assert struct.unpack_from("<IQB32s", entry, last_end) == (1, 100, 1, ROOTS[0])
    assert struct.unpack_from("<I4Q", entry, last_end + 45) == (2, 4, 5, 3, 4)

    history.last_decision = codec.encode_block_decision(KEYS[0], 100, ROOTS[0], 1, 7)
    assert head.unpack_from(codec.encode_checkpoint_validator(KEYS[0], history))[8] == codec.BLOCK_DECISION
    history.last_decision = None
    history.raise_floors(0, 2, 0)
    fields = head.unpack_from(codec.encode_checkpoint_validator(KEYS[0], history))
    assert fields[4:9] == (0b111, 0, 2, 0, 0) and fields[10] == 0


def test_a_last_decision_of_neither_length_is_refused() -> None:
    with pytest.raises(codec.CodecError, match=r"^a decision payload of 3 bytes$"):
        codec.last_decision_type(b"abc")


def test_a_body_without_validators_is_its_nine_byte_header() -> None:
    header = codec.encode_checkpoint_header(0)
    assert header == b"\x01" + bytes(8)
    assert list(codec.decode_checkpoint_body(header)) == []
    with pytest.raises(codec.CodecError, match=r"^checkpoint body too short$"):
        list(codec.decode_checkpoint_body(header[:8]))
    with pytest.raises(codec.CodecError, match=r"^unknown checkpoint body version 3 "):
        list(codec.decode_checkpoint_body(b"\x03" + header[1:]))


def test_a_big_endian_host_writes_and_reads_the_arrays_little_endian(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a big-endian host the u64 arrays are byte-swapped on the way out and back: simulated here by forcing the
    swap on this (little-endian) host, where the bytes written must then be the big-endian ones."""
    history = ValidatorHistory()
    history.add_attestation(2**63 + 1, 2**64 - 2, ROOTS[0])  # above the signed range: the arrays are unsigned
    native = body_of({KEYS[0]: history})
    monkeypatch.setattr(codec, "_NEEDS_BYTESWAP", True)
    swapped = body_of({KEYS[0]: history})
    arrays_at = native.index(struct.pack("<Q", 2**64 - 2))
    assert swapped[arrays_at : arrays_at + 16] == struct.pack(">QQ", 2**64 - 2, 2**63 + 1)
    [entry] = codec.decode_checkpoint_body(swapped)
    assert full_state(entry.history) == full_state(history)


def test_a_damaged_body_says_where() -> None:
    body = body_of({KEYS[0]: honest_history(3, 2)})
    with pytest.raises(codec.CodecError, match=r"^checkpoint body truncated at byte 9$"):
        list(codec.decode_checkpoint_body(body[:20]))  # inside the first validator's fixed fields
    with pytest.raises(codec.CodecError, match=r"^checkpoint body truncated inside a validator$"):
        list(codec.decode_checkpoint_body(body[:-1]))  # inside the attestation arrays
    last_type_at = 9 + 48 + 3 * 8 + 1 + 3 * 8
    assert body[last_type_at] == codec.ATTESTATION_DECISION
    damaged = body[:last_type_at] + b"\x03" + body[last_type_at + 1 :]
    with pytest.raises(codec.CodecError, match=r"^unknown last decision type 3$"):
        list(codec.decode_checkpoint_body(damaged))


def test_the_order_records_arrive_in_does_not_change_the_checkpoint_bytes() -> None:
    """An attestation inserted below others (an import's out-of-order record) is encoded exactly as one appended in
    order: same arrays, same root flags (1 for a known root), byte for byte."""
    records = [(3, 4, ROOTS[0]), (5, 6, None), (7, 8, ROOTS[1])]
    in_order, reversed_order = ValidatorHistory(), ValidatorHistory()
    for source, target, root in records:
        in_order.add_attestation(source, target, root)
    for source, target, root in reversed(records):
        reversed_order.add_attestation(source, target, root)
    assert codec.encode_checkpoint_validator(KEYS[0], reversed_order) == codec.encode_checkpoint_validator(
        KEYS[0], in_order
    )


def test_a_key_that_never_decided_has_no_counts_and_no_last_decision_in_its_entry() -> None:
    """A registered key with no decision yet: applied sequence and both counts 0 (offset 48), last decision type 0
    and sequence 0 (offset 97: pubkey 48, applied sequence, counts 2x8, floor bits 1, floors 3x8)."""
    entry = codec.encode_checkpoint_validator(KEYS[0], ValidatorHistory())
    assert struct.unpack_from("<QQQ", entry, 48) == (0, 0, 0)
    assert entry[97] == 0
    assert struct.unpack_from("<Q", entry, 98) == (0,)

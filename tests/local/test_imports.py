"""Imports through the store, down to the log bytes: the floors an import carries survive restart, export and
import elsewhere; v0.1 import records (type 4, hand-made bytes here) still replay; a document refused at its
last byte changes nothing; one key in several entries merges; and staging holds a window of records per key,
not the document.
"""

from __future__ import annotations

import gc
import io
import json
import struct
from collections.abc import Sequence
from pathlib import Path

import pytest

from interchange import ValidatorEntryEnd, ValidatorRecordsPart, stream_interchange_parts
from sidecar import records as codec
from sidecar.backend import Strategy
from sidecar.domain import SLOTS_PER_EPOCH, Pubkey, SigningRoot, valid_pubkey, valid_signing_root
from sidecar.errors import DataDirError, GenesisRootMismatchError, ImportRefusedError
from sidecar.history import PRUNE_SLACK_EPOCHS, ValidatorHistory
from sidecar.import_staging import DocumentStaging
from sidecar.local.gc import BULK_GC_THRESHOLD, bulk_loading
from sidecar.local.imports import stage_import
from sidecar.local.options import StoreOptions
from sidecar.local.store import Store
from sidecar.rules import Reason
from sidecar.storage import FileOps, read_records
from sidecar.storage.framing import encode_record, encode_segment_header
from sidecar.verify import verify_data_dir

GENESIS = bytes(range(32))
KEY = valid_pubkey(bytes([0xA1]) * 48)
OTHER = valid_pubkey(bytes([0xB2]) * 48)
ROOT_A = valid_signing_root(bytes([0xAA]) * 32)
ROOT_B = valid_signing_root(bytes([0xBB]) * 32)
FRESH = valid_signing_root(bytes([0xFF]) * 32)
WINDOW = 4


def document(
    entries: Sequence[tuple[bytes, Sequence[tuple[int, bytes | None]], Sequence[tuple[int, int, bytes | None]]]],
    genesis: bytes = GENESIS,
    *,
    metadata_last: bool = False,
) -> bytes:
    def root(value: bytes | None) -> dict[str, str]:
        return {} if value is None else {"signing_root": "0x" + value.hex()}

    data = [
        {
            "pubkey": "0x" + key.hex(),
            "signed_blocks": [{"slot": str(slot), **root(r)} for slot, r in blocks],
            "signed_attestations": [
                {"source_epoch": str(source), "target_epoch": str(target), **root(r)}
                for source, target, r in attestations
            ],
        }
        for key, blocks, attestations in entries
    ]
    metadata = {"interchange_format_version": "5", "genesis_validators_root": "0x" + genesis.hex()}
    members = [("metadata", metadata), ("data", data)]
    if metadata_last:
        members.reverse()
    return json.dumps(dict(members)).encode()


def open_store(data_dir: Path, window: int | None = WINDOW, strategy: Strategy = Strategy.COMPLETE) -> Store:
    return Store.open_or_create(data_dir, GENESIS, StoreOptions(history_window_epochs=window, strategy=strategy))


def attestation(store: Store, source: int, target: int, root: SigningRoot = FRESH, key: Pubkey = KEY) -> Reason:
    [(decision, _)] = store.check_and_record_attestations([(key, source, target, root)])
    return decision.reason


def block(store: Store, slot: int, root: SigningRoot = FRESH, key: Pubkey = KEY) -> Reason:
    decision, _ = store.check_and_record_block(key, slot, root)
    return decision.reason


def export(store: Store) -> bytes:
    out = io.BytesIO()
    store.export_interchange(out)
    return out.getvalue()


def record_types(data_dir: Path) -> list[int]:
    return [record_type for _, record_type, _ in read_records(data_dir / "log", FileOps())]


# Twenty epochs of ordinary votes, then one vote (2, 30) that surrounds most of them. With a window of 4, staging
# keeps only (2, 30): its source is far below the sources it dropped. Without the floors, (5, 31) would look
# safe (it neither surrounds nor is surrounded by (2, 30)), yet it surrounds (t - 1, t) for t = 7..20.
SURROUND_HISTORY = [(t - 1, t, ROOT_A) for t in range(1, 21)] + [(2, 30, ROOT_B)]
BLOCK_HISTORY = [(slot, ROOT_A) for slot in range(0, 1000, 100)]  # a window of 4 epochs keeps 800 and 900


def assert_protected_by_floors(store: Store) -> None:
    summary = store.summary(KEY)
    assert summary is not None
    assert (summary.source_epoch_floor, summary.target_epoch_floor) == (19, 20)
    assert attestation(store, 5, 31) is Reason.SOURCE_EPOCH_BELOW_LOWER_BOUND
    assert attestation(store, 2, 30, ROOT_B) is Reason.ALLOWED_REPEAT
    assert block(store, 750) is Reason.SLOT_AT_OR_BELOW_LOWER_BOUND


def test_floors_survive_restart_export_and_import_elsewhere(tmp_path: Path) -> None:
    store = open_store(tmp_path / "a")
    store.import_interchange(io.BytesIO(document([(KEY, BLOCK_HISTORY, SURROUND_HISTORY)])))
    summary = store.summary(KEY)
    assert summary is not None
    assert (summary.attestation_count, summary.block_count, summary.slot_floor) == (1, 2, 700)
    assert_protected_by_floors(store)
    store.close(final_checkpoint=False)  # the next start must replay the import record, not load a checkpoint

    assert codec.IMPORT_PRUNED_VALIDATOR in record_types(tmp_path / "a")
    assert verify_data_dir(tmp_path / "a").ok
    store = open_store(tmp_path / "a")
    assert store.recovery is not None and store.recovery.checkpoint_sequence == 0
    assert_protected_by_floors(store)
    exported = export(store)
    store.close()

    # A database that keeps everything (no window) imports what we exported: the floors travel as records.
    elsewhere = open_store(tmp_path / "b", window=None)
    elsewhere.import_interchange(io.BytesIO(exported))
    assert attestation(elsewhere, 5, 31) is not Reason.ALLOWED_NEW
    assert block(elsewhere, 750) is not Reason.ALLOWED_NEW
    elsewhere.close()


def v01_import_payload(
    pubkey: bytes,
    blocks: Sequence[tuple[int, bytes | None]],
    attestations: Sequence[tuple[int, int, bytes | None]],
    minimal: bool = False,
) -> bytes:
    """Type 4 as v0.1 wrote it, packed by hand from the format table (not through the codec)."""
    payload = struct.pack("<B48sII", int(minimal), pubkey, len(blocks), len(attestations))
    for slot, root in blocks:
        payload += struct.pack("<QB32s", slot, root is not None, root or bytes(32))
    for source, target, root in attestations:
        payload += struct.pack("<QQB32s", source, target, root is not None, root or bytes(32))
    return payload


def write_v01_log(data_dir: Path, records: list[tuple[int, bytes]]) -> None:
    """A data directory as v0.1 left it: the identity file and one log segment, no checkpoint."""
    (data_dir / "log").mkdir(parents=True)
    identity = {"format": 1, "genesis_validators_root": "0x" + GENESIS.hex()}
    (data_dir / "IDENTITY.json").write_text(json.dumps(identity))
    segment = encode_segment_header(1) + b"".join(
        encode_record(sequence, record_type, payload) for sequence, (record_type, payload) in enumerate(records, 1)
    )
    (data_dir / "log" / f"{1:020d}.log").write_bytes(segment)


def test_v01_import_records_still_replay(tmp_path: Path) -> None:
    write_v01_log(
        tmp_path,
        [
            (codec.IMPORT_VALIDATOR, v01_import_payload(KEY, BLOCK_HISTORY, SURROUND_HISTORY)),
            (codec.IMPORT_VALIDATOR, v01_import_payload(OTHER, [(7, None)], [(1, 2, ROOT_A)])),
            (codec.IMPORT_COMMIT, struct.pack("<I", 2)),
        ],
    )

    store = open_store(tmp_path)

    # Replayed as the live path stages the same records now: pruned to the window, floors covering the rest.
    assert_protected_by_floors(store)
    assert block(store, 7, key=OTHER) is Reason.DOUBLE_PROPOSAL
    assert attestation(store, 1, 2, ROOT_A, key=OTHER) is Reason.ALLOWED_REPEAT
    store.close()


def test_a_commit_applies_its_own_records_not_the_remains_of_a_crashed_import(tmp_path: Path) -> None:
    """A crash cut an import short after its first record (a torn tail keeps whole records); a later import of
    another key committed. Replay must apply the later import, and only it."""
    write_v01_log(
        tmp_path,
        [
            (codec.IMPORT_VALIDATOR, v01_import_payload(OTHER, [(7, ROOT_A)], [])),  # no commit ever followed
            (codec.IMPORT_VALIDATOR, v01_import_payload(KEY, [(5, ROOT_A)], [])),
            (codec.IMPORT_COMMIT, struct.pack("<I", 1)),
        ],
    )

    store = open_store(tmp_path)

    assert store.summary(OTHER) is None
    assert block(store, 5, ROOT_A) is Reason.ALLOWED_REPEAT
    store.close()


def test_a_commit_for_more_records_than_the_log_holds_refuses_to_start(tmp_path: Path) -> None:
    """Checkpoints wait for imports to commit, so a commit whose records are not all in the log is damage: refuse
    to start rather than apply part of an acknowledged import."""
    write_v01_log(
        tmp_path,
        [
            (codec.IMPORT_VALIDATOR, v01_import_payload(KEY, [(5, ROOT_A)], [])),
            (codec.IMPORT_COMMIT, struct.pack("<I", 2)),
        ],
    )

    with pytest.raises(DataDirError, match="log record 2: import commit for 2 validators follows only 1"):
        open_store(tmp_path)


def test_decisions_between_an_imports_records_and_its_commit_do_not_end_it(tmp_path: Path) -> None:
    """The live import writes its records without stopping signing, so decisions can come between them."""
    decision = codec.encode_attestation_decision(OTHER, 1, 2, ROOT_A, Reason.VALIDATOR_NOT_REGISTERED, 0)
    staged_key = codec.encode_import_pruned_validator(False, KEY, _history([(5, ROOT_A)]))
    write_v01_log(
        tmp_path,
        [
            (codec.IMPORT_PRUNED_VALIDATOR, staged_key),
            (codec.ATTESTATION_DECISION, decision),
            (codec.IMPORT_COMMIT, struct.pack("<I", 1)),
        ],
    )

    store = open_store(tmp_path)

    assert block(store, 5, ROOT_A) is Reason.ALLOWED_REPEAT
    store.close()


def _history(blocks: list[tuple[int, bytes | None]]) -> ValidatorHistory:
    history = ValidatorHistory()
    for slot, root in blocks:
        history.add_block(slot, root)
    return history


def big_document_refused_at_the_end(how: str) -> bytes:
    entries = [(bytes([i]) * 48, [(i, ROOT_A)], [(0, i + 1, ROOT_A)]) for i in range(1, 200)]
    if how == "genesis root":
        return document(entries, bytes(32), metadata_last=True)
    valid = document(entries)
    if how == "trailing bytes":
        return valid + b" x"
    # The very last attestation's target is one above the u64 range.
    assert valid.endswith(b'"}]}]}')
    cut = valid.rindex(b'"target_epoch": "') + len(b'"target_epoch": "')
    return valid[:cut] + str(2**64).encode() + valid[valid.index(b'"', cut) :]


@pytest.mark.parametrize("how", ["genesis root", "trailing bytes", "u64 range"])
def test_a_document_refused_at_its_last_byte_changes_nothing(tmp_path: Path, how: str) -> None:
    store = open_store(tmp_path)
    store.import_interchange(io.BytesIO(document([(KEY, BLOCK_HISTORY, SURROUND_HISTORY)])))
    before = export(store)
    last_sequence = store.log.last_sequence

    expected = GenesisRootMismatchError if how == "genesis root" else ImportRefusedError
    with pytest.raises(expected) as refused:
        store.import_interchange(io.BytesIO(big_document_refused_at_the_end(how)))

    assert str(refused.value)
    assert store.log.last_sequence == last_sequence  # not one record written
    assert store.validator_count == 1
    assert export(store) == before
    store.close()


@pytest.mark.parametrize("strategy", [Strategy.COMPLETE, Strategy.MINIMAL])
def test_one_key_in_several_entries_imports_like_one_entry(tmp_path: Path, strategy: Strategy) -> None:
    """The halves of one complete history in two entries (the later half first): the same state as the history
    in one entry, floors included, and both survive a restart the same way."""
    older = [(t - 1, t, ROOT_A) for t in range(1, 16)]
    newer = [(t - 1, t, ROOT_A) for t in range(16, 21)] + [(2, 30, ROOT_B)]
    split = document([(KEY, [], newer), (OTHER, [(3, None)], []), (KEY, BLOCK_HISTORY, older)])
    whole = document([(KEY, BLOCK_HISTORY, older + newer), (OTHER, [(3, None)], [])])
    exports = []
    for name, source in (("split", split), ("whole", whole)):
        store = open_store(tmp_path / name, strategy=strategy)
        result = store.import_interchange(io.BytesIO(source))
        assert result.validators == 2
        store.close(final_checkpoint=False)
        store = open_store(tmp_path / name, strategy=strategy)
        exports.append((export(store), store.summary(KEY)))
        store.close()
    assert exports[0] == exports[1]
    if strategy is Strategy.COMPLETE:
        summary = exports[0][1]
        assert summary is not None
        assert (summary.source_epoch_floor, summary.target_epoch_floor) == (19, 20)


def complete_history(keys: int, epochs: int) -> bytes:
    """A complete-history document: every key voted (t - 1, t) in every epoch and proposed every fourth epoch."""
    return document(
        [
            (
                bytes([0x80 + k]) * 48,
                [(t * SLOTS_PER_EPOCH + k, ROOT_A) for t in range(4, epochs + 1, 4)],
                [(t - 1, t, ROOT_B) for t in range(1, epochs + 1)],
            )
            for k in range(keys)
        ]
    )


def test_staging_holds_a_window_of_records_per_key_not_the_document(tmp_path: Path) -> None:
    """Memory, structurally: while a document of 3 keys x 3,000 epochs is read, no key ever holds more than a
    window (plus the pruning slack) of votes and blocks, and the parser hands over bounded parts."""
    keys, epochs, window = 3, 3000, 8
    source = complete_history(keys, epochs)
    staging = DocumentStaging(window, minimal=False, max_records_per_validator=codec.MAX_IMPORT_RECORDS)
    most_votes = most_blocks = largest_part = 0
    for item in stream_interchange_parts(io.BytesIO(source)):
        if isinstance(item, ValidatorRecordsPart):
            largest_part = max(largest_part, len(item.signed_blocks) + len(item.signed_attestations))
        if isinstance(item, (ValidatorRecordsPart, ValidatorEntryEnd)):
            staging.add(item)
        for staged in staging.staged_histories():
            most_votes = max(most_votes, len(staged.history.targets))
            most_blocks = max(most_blocks, len(staged.history.blocks))
    staged_keys = staging.finish()

    assert len(staged_keys) == keys
    assert largest_part <= 1024
    assert most_votes <= window + PRUNE_SLACK_EPOCHS + 1
    assert most_blocks <= (window + PRUNE_SLACK_EPOCHS) // 4 + 1
    for _, staged in staged_keys:
        assert [a.target_epoch for a in staged.history.attestations()] == list(range(epochs - window, epochs + 1))

    store = open_store(tmp_path, window=window)
    result = store.import_interchange(io.BytesIO(source))
    assert (result.validators, result.imported) == (keys, keys)
    summary = store.summary(valid_pubkey(bytes([0x80]) * 48))
    assert summary is not None
    assert (summary.attestation_count, summary.target_epoch_floor, summary.source_epoch_floor) == (9, 2991, 2990)
    store.close()


def test_a_key_over_what_one_import_record_holds_is_refused_while_reading() -> None:
    staging = DocumentStaging(None, minimal=False, max_records_per_validator=100)
    source = complete_history(1, 200)
    with pytest.raises(ImportRefusedError, match=r"data\[0\]: more than 100 blocks and attestations"):
        for item in stream_interchange_parts(io.BytesIO(source)):
            if isinstance(item, (ValidatorRecordsPart, ValidatorEntryEnd)):
                staging.add(item)


# ------------------------------------------------------------------ staging without a store


def test_a_document_staged_before_the_store_exists_imports_like_a_direct_import(tmp_path: Path) -> None:
    source = document([(KEY, [(5, ROOT_A)], [(1, 2, ROOT_A)]), (OTHER, [(7, None)], [(2, 3, None)])])
    options = StoreOptions(history_window_epochs=WINDOW)
    staged = stage_import(io.BytesIO(source), options)
    assert staged.genesis_validators_root == GENESIS
    created = Store.open_or_create(tmp_path / "staged", staged.genesis_validators_root, options)
    direct = Store.open_or_create(tmp_path / "direct", GENESIS, options)
    try:
        assert (
            created.import_staged(staged).imported == direct.import_interchange(io.BytesIO(source)).imported == 2
        )
        exported = [io.BytesIO(), io.BytesIO()]
        created.export_interchange(exported[0])
        direct.export_interchange(exported[1])
        assert exported[0].getvalue() == exported[1].getvalue()
    finally:
        created.close()
        direct.close()


def test_a_staged_document_is_refused_for_another_root_or_other_options(tmp_path: Path) -> None:
    source = document([(KEY, [(5, ROOT_A)], [(1, 2, ROOT_A)])])
    with pytest.raises(GenesisRootMismatchError, match="differs from the expected"):
        stage_import(io.BytesIO(source), StoreOptions(), genesis_validators_root=bytes(32))
    store = Store.open_or_create(tmp_path / "data", GENESIS, StoreOptions(history_window_epochs=WINDOW))
    try:
        with pytest.raises(ValueError, match="another history window"):
            store.import_staged(stage_import(io.BytesIO(source), StoreOptions(history_window_epochs=WINDOW + 1)))
        other_root = document([(KEY, [(5, ROOT_A)], [(1, 2, ROOT_A)])], genesis=bytes(32))
        with pytest.raises(GenesisRootMismatchError, match="this database's"):
            store.import_staged(stage_import(io.BytesIO(other_root), StoreOptions(history_window_epochs=WINDOW)))
        assert store.validator_count == 0
    finally:
        store.close()


def test_bulk_loading_spaces_out_the_cycle_collector_until_the_outermost_use_ends() -> None:
    before = gc.get_threshold()
    assert before[0] < BULK_GC_THRESHOLD
    with bulk_loading():
        assert gc.get_threshold()[0] == BULK_GC_THRESHOLD
        with bulk_loading():
            assert gc.get_threshold()[0] == BULK_GC_THRESHOLD
        assert gc.get_threshold()[0] == BULK_GC_THRESHOLD
    assert gc.get_threshold() == before
    with pytest.raises(RuntimeError), bulk_loading():
        raise RuntimeError("a failed load")
    assert gc.get_threshold() == before
    assert gc.isenabled()

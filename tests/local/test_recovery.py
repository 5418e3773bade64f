"""Replay, record by record: recorded verdicts are re-applied (never re-decided), a record at or below its
validator's applied sequence is skipped (a fuzzy checkpoint already holds it), and an import commit for more
records than precede it refuses rather than applying part of an acknowledged import."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar import records as codec
from sidecar.errors import DataDirError
from sidecar.history import ValidatorHistory
from sidecar.local.layout import DataDirLayout, open_or_create_identity
from sidecar.local.recovery import Recovered, load_checkpoint, recover, replay
from sidecar.local.state import ValidatorStates
from sidecar.rules import Reason
from sidecar.storage import FileOps

KEY = bytes([0xA1]) * 48
OTHER = bytes([0xB2]) * 48
ROOT_A = bytes([0xAA]) * 32
ROOT_B = bytes([0xBB]) * 32
GENESIS = bytes(range(32))
NOW = 1_700_000_000_000_000_000

Record = tuple[int, int, bytes]


def attestation(sequence: int, source: int, target: int, reason: Reason = Reason.ALLOWED_NEW) -> Record:
    payload = codec.encode_attestation_decision(KEY, source, target, ROOT_A, reason, NOW)
    return (sequence, codec.ATTESTATION_DECISION, payload)


def block(sequence: int, slot: int, reason: Reason = Reason.ALLOWED_NEW) -> Record:
    return (sequence, codec.BLOCK_DECISION, codec.encode_block_decision(KEY, slot, ROOT_A, reason, NOW))


def register(sequence: int, *pubkeys: bytes) -> Record:
    return (sequence, codec.REGISTER, codec.encode_register(list(pubkeys)))


def imported(sequence: int, pubkey: bytes, slot: int) -> Record:
    history = ValidatorHistory()
    history.add_block(slot, ROOT_B)
    return (sequence, codec.IMPORT_PRUNED_VALIDATOR, codec.encode_import_pruned_validator(False, pubkey, history))


def commit(sequence: int, count: int) -> Record:
    return (sequence, codec.IMPORT_COMMIT, codec.encode_import_commit(count))


def replayed(*records: Record, state: ValidatorStates | None = None) -> Recovered:
    recovered = Recovered(state or ValidatorStates(None), None)
    replay(recovered, [list(records)])
    return recovered


def test_replay_applies_recorded_verdicts_in_order() -> None:
    recovered = replayed(
        register(1, KEY),
        attestation(2, 1, 2),
        attestation(3, 1, 2, Reason.ALLOWED_REPEAT),
        attestation(4, 0, 3, Reason.SURROUNDS_RECORDED_VOTE),
        block(5, 10),
    )
    history = recovered.state.validators[KEY]
    assert (recovered.replayed, recovered.through) == (5, 5)
    assert list(history.targets) == [2]
    assert history.highest_slot == 10
    assert (history.allowed_count, history.refused_count) == (3, 1)
    assert history.applied_sequence == history.last_decision_sequence == 5


def test_replay_skips_records_at_or_below_a_validators_applied_sequence() -> None:
    # As after a fuzzy checkpoint that copied this validator once record 3 was applied to it.
    state = ValidatorStates(None)
    history = ValidatorHistory()
    history.applied_sequence = 3
    state.validators[KEY] = history
    records = (attestation(2, 1, 2), attestation(3, 2, 3), block(3, 7), attestation(4, 3, 4))
    recovered = replayed(*records, state=state)
    assert list(history.targets) == [4], "records 2 and 3 were already in the checkpoint"
    assert history.highest_slot is None
    assert (history.allowed_count, history.applied_sequence) == (1, 4)
    assert (recovered.replayed, recovered.through) == (4, 4), "skipped records are still read"


def test_records_of_unregistered_keys_change_nothing() -> None:
    recovered = replayed(attestation(1, 1, 2), block(2, 5))
    assert recovered.state.validators == {}
    assert recovered.through == 2


def test_an_import_applies_at_its_commit_and_only_its_own_records() -> None:
    # Record 1 is a crashed import's (no commit); records 2-3 and the decision between them are the next one's.
    recovered = replayed(
        imported(1, OTHER, 99),
        imported(2, KEY, 10),
        register(3, OTHER),
        imported(4, OTHER, 20),
        commit(5, 2),
    )
    validators = recovered.state.validators
    assert validators[KEY].highest_slot == 10
    assert validators[OTHER].highest_slot == 20
    assert 99 not in validators[OTHER].blocks


def test_an_import_commit_for_more_records_than_the_log_holds_refuses() -> None:
    recovered = Recovered(ValidatorStates(None), None)
    with pytest.raises(DataDirError, match="import commit for 3 validators follows only 2 import records"):
        replay(recovered, [[imported(1, KEY, 10), imported(2, OTHER, 20), commit(3, 3)]])
    assert recovered.state.validators == {}, "no part of the import is applied"
    assert recovered.through == 2, "the last record read before the damage"


@pytest.mark.parametrize(
    ("record", "detail"),
    [
        ((1, codec.ATTESTATION_DECISION, b"short"), "attestation payload size"),
        ((1, 99, b""), "unknown type 99"),
        ((1, codec.REGISTER, b"\x00"), "does not decode"),
    ],
)
def test_a_record_that_does_not_decode_refuses(record: Record, detail: str) -> None:
    with pytest.raises(DataDirError, match=detail):
        replayed(record)


def test_recover_of_a_new_directory_is_empty(tmp_path: Path) -> None:
    layout = DataDirLayout(tmp_path)
    open_or_create_identity(layout, GENESIS, FileOps())
    recovered, next_sequence, repaired = recover(layout, FileOps(), GENESIS, 64)
    assert (len(recovered.state), recovered.checkpoint, next_sequence, repaired) == (0, None, 1, False)
    assert layout.log_dir.is_dir() and layout.checkpoint_dir.is_dir()
    assert load_checkpoint(layout, FileOps(), GENESIS, 64).checkpoint_sequence == 0

"""Signing RPCs through a real server: every reason the API can reach, for blocks, attestations and batches,
with a verdict that follows the reason, a message, and a log sequence number that only grows. Registration
through AdminService."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import pytest

from slashing_protection.v1 import admin_pb2, signing_pb2
from tests.service.helpers import (
    ALLOWED,
    REFUSED,
    assert_decision,
    export_document,
    register,
    settled_decisions,
    sign_attestation,
    sign_batch,
    sign_block,
    summary,
)
from tests.support.keys import pubkey, signing_root
from tests.support.server import Running

A = signing_root(0xA)
B = signing_root(0xB)
ZERO = signing_root(0)

R = signing_pb2


@dataclass(frozen=True)
class BlockCase:
    name: str
    history: tuple[tuple[int, bytes], ...]
    slot: int
    root: bytes
    reason: int


BLOCK_CASES = [
    BlockCase("first block", (), 10, A, R.REASON_ALLOWED_NEW),
    BlockCase("higher slot", ((10, A),), 11, B, R.REASON_ALLOWED_NEW),
    BlockCase("between recorded slots", ((10, A), (20, A)), 15, A, R.REASON_ALLOWED_NEW),
    BlockCase("same block again", ((10, A),), 10, A, R.REASON_ALLOWED_REPEAT),
    BlockCase("all-zero root repeated", ((10, ZERO),), 10, ZERO, R.REASON_ALLOWED_REPEAT),
    BlockCase("other root at a signed slot", ((10, A),), 10, B, R.REASON_DOUBLE_PROPOSAL),
    BlockCase("zero root against another", ((10, A),), 10, ZERO, R.REASON_DOUBLE_PROPOSAL),
    BlockCase("below the lowest slot", ((10, A),), 9, A, R.REASON_SLOT_AT_OR_BELOW_LOWER_BOUND),
    BlockCase("slot 0 below the lowest", ((10, A),), 0, A, R.REASON_SLOT_AT_OR_BELOW_LOWER_BOUND),
]


@dataclass(frozen=True)
class AttestationCase:
    name: str
    history: tuple[tuple[int, int, bytes], ...]
    source_epoch: int
    target_epoch: int
    root: bytes
    reason: int


ATTESTATION_CASES = [
    AttestationCase("first vote", (), 1, 2, A, R.REASON_ALLOWED_NEW),
    AttestationCase("source equals target", (), 3, 3, A, R.REASON_ALLOWED_NEW),
    AttestationCase("next vote", ((1, 2, A),), 2, 3, B, R.REASON_ALLOWED_NEW),
    AttestationCase("same vote again", ((1, 2, A),), 1, 2, A, R.REASON_ALLOWED_REPEAT),
    AttestationCase("all-zero root repeated", ((1, 2, ZERO),), 1, 2, ZERO, R.REASON_ALLOWED_REPEAT),
    AttestationCase("other root, same target", ((1, 2, A),), 1, 2, B, R.REASON_DOUBLE_VOTE),
    AttestationCase("other source, same target", ((1, 2, A),), 0, 2, A, R.REASON_DOUBLE_VOTE),
    AttestationCase("surrounds a recorded vote", ((2, 3, A),), 1, 4, A, R.REASON_SURROUNDS_RECORDED_VOTE),
    AttestationCase("surrounded by a recorded vote", ((1, 4, A),), 2, 3, A, R.REASON_SURROUNDED_BY_RECORDED_VOTE),
    AttestationCase("source below the lowest", ((5, 6, A),), 4, 5, A, R.REASON_SOURCE_EPOCH_BELOW_LOWER_BOUND),
    AttestationCase("target at the lowest", ((5, 6, A),), 5, 5, A, R.REASON_TARGET_EPOCH_AT_OR_BELOW_LOWER_BOUND),
    AttestationCase("source above target", (), 3, 2, A, R.REASON_SOURCE_EPOCH_GREATER_THAN_TARGET_EPOCH),
]


def _check_sequences(sequences: list[int]) -> None:
    assert sequences == sorted(sequences), sequences
    assert len(set(sequences)) == len(sequences), sequences


@pytest.mark.parametrize("case", BLOCK_CASES, ids=lambda case: case.name)
def test_block_reason(server: Running, case: BlockCase) -> None:
    key = pubkey(1)
    register(server, key)
    sequences = []
    for slot, root in case.history:
        decision = sign_block(server, key, slot, root)
        assert_decision(decision, R.REASON_ALLOWED_NEW)
        sequences.append(decision.sequence)
    before = summary(server, key)

    decision = sign_block(server, key, case.slot, case.root)

    assert_decision(decision, case.reason)
    sequences.append(decision.sequence)
    _check_sequences(sequences)
    after = summary(server, key)
    allowed = decision.verdict == ALLOWED
    new = case.reason == R.REASON_ALLOWED_NEW
    assert after.block_count == before.block_count + int(new)
    assert after.allowed_decisions == before.allowed_decisions + int(allowed)
    assert after.refused_decisions == before.refused_decisions + int(not allowed)
    (record,) = settled_decisions(server, key, since_sequence=decision.sequence - 1)
    assert (record.sequence, record.kind, record.slot) == (
        decision.sequence,
        admin_pb2.DECISION_KIND_BLOCK,
        case.slot,
    )
    assert (record.verdict, record.reason, record.signing_root) == (decision.verdict, decision.reason, case.root)


@pytest.mark.parametrize("case", ATTESTATION_CASES, ids=lambda case: case.name)
def test_attestation_reason(server: Running, case: AttestationCase) -> None:
    key = pubkey(1)
    register(server, key)
    sequences = []
    for source, target, root in case.history:
        decision = sign_attestation(server, key, source, target, root)
        assert_decision(decision, R.REASON_ALLOWED_NEW)
        sequences.append(decision.sequence)
    before = summary(server, key)

    decision = sign_attestation(server, key, case.source_epoch, case.target_epoch, case.root)

    assert_decision(decision, case.reason)
    sequences.append(decision.sequence)
    _check_sequences(sequences)
    after = summary(server, key)
    allowed = decision.verdict == ALLOWED
    new = case.reason == R.REASON_ALLOWED_NEW
    assert after.attestation_count == before.attestation_count + int(new)
    assert after.allowed_decisions == before.allowed_decisions + int(allowed)
    assert after.refused_decisions == before.refused_decisions + int(not allowed)
    (record,) = settled_decisions(server, key, since_sequence=decision.sequence - 1)
    assert record.kind == admin_pb2.DECISION_KIND_ATTESTATION
    assert (record.source_epoch, record.target_epoch) == (case.source_epoch, case.target_epoch)
    assert (record.verdict, record.reason, record.sequence) == (
        decision.verdict,
        decision.reason,
        decision.sequence,
    )


@pytest.mark.parametrize("case", ATTESTATION_CASES, ids=lambda case: case.name)
def test_attestation_reason_in_a_batch(server: Running, case: AttestationCase) -> None:
    """The batch RPC applies the same rules as the single one, item by item."""
    key, bystander = pubkey(1), pubkey(2)
    register(server, key, bystander)
    for source, target, root in case.history:
        sign_attestation(server, key, source, target, root)

    decided = sign_batch(
        server, [(bystander, 100, 101, A), (key, case.source_epoch, case.target_epoch, case.root)]
    )

    assert_decision(decided[0], R.REASON_ALLOWED_NEW)
    assert_decision(decided[1], case.reason)
    assert decided[1].sequence == decided[0].sequence + 1


def test_every_reason_is_reachable() -> None:
    """The two tables above reach every reason of the contract except the unregistered key (tested below) and
    the high watermark (test_high_watermark)."""
    reached = {case.reason for case in BLOCK_CASES} | {case.reason for case in ATTESTATION_CASES}
    every = {value for value in signing_pb2.Reason.values() if value != signing_pb2.REASON_UNSPECIFIED}
    assert every - reached == {
        signing_pb2.REASON_VALIDATOR_NOT_REGISTERED,
        signing_pb2.REASON_AT_OR_BEYOND_HIGH_WATERMARK,
    }


def test_unregistered_key_is_refused_and_the_refusal_recorded(server: Running) -> None:
    stranger = pubkey(666)

    block = sign_block(server, stranger, 10, A)
    attestation = sign_attestation(server, stranger, 1, 2, A)
    (batched,) = sign_batch(server, [(stranger, 2, 3, A)])

    for decision in (block, attestation, batched):
        assert_decision(decision, R.REASON_VALIDATOR_NOT_REGISTERED)
    assert block.sequence < attestation.sequence < batched.sequence
    trail = settled_decisions(server, stranger, count=3)
    assert [(r.sequence, r.reason) for r in trail] == [
        (d.sequence, R.REASON_VALIDATOR_NOT_REGISTERED) for d in (block, attestation, batched)
    ]
    assert all(r.verdict == REFUSED for r in trail)
    # A refusal does not register the key.
    assert summary(server, stranger).registered is False
    assert stranger.hex() not in export_document(server).decode()


def test_registration_is_idempotent_and_enables_signing(server: Running) -> None:
    a, b, c = pubkey(1), pubkey(2), pubkey(3)
    assert_decision(sign_block(server, a, 5, A), R.REASON_VALIDATOR_NOT_REGISTERED)

    first = register(server, a, b)
    second = register(server, a, b, c)
    third = register(server, c, b, a)

    assert (first.registered, first.already_registered) == (2, 0)
    assert first.sequence > 0
    assert (second.registered, second.already_registered) == (1, 2)
    assert second.sequence > first.sequence
    assert (third.registered, third.already_registered, third.sequence) == (0, 3, 0)
    for key in (a, b, c):
        state = summary(server, key)
        assert state.registered is True
        assert (state.block_count, state.attestation_count) == (0, 0)
    # The refusal before registration left no history: the same slot is new now.
    assert_decision(sign_block(server, a, 5, A), R.REASON_ALLOWED_NEW)
    assert_decision(sign_attestation(server, b, 1, 2, A), R.REASON_ALLOWED_NEW)
    # Registering again changes nothing that was recorded.
    register(server, a, b)
    assert_decision(sign_block(server, a, 5, B), R.REASON_DOUBLE_PROPOSAL)


def test_registering_a_new_key_listed_twice(server: Running) -> None:
    key = pubkey(7)
    try:
        response = register(server, key, key)
    except grpc.RpcError as error:  # refusing the duplicate outright would be a fine answer too
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert summary(server, key).registered is False
        return
    assert (response.registered, response.already_registered) == (1, 0)


def test_sequences_increase_across_kinds_and_rpcs(server: Running) -> None:
    a, b = pubkey(1), pubkey(2)
    register(server, a, b)
    sequences = [
        sign_block(server, a, 1, A).sequence,
        sign_attestation(server, a, 0, 1, A).sequence,
        sign_block(server, a, 1, B).sequence,  # refused
        *(d.sequence for d in sign_batch(server, [(a, 1, 2, A), (b, 1, 2, A)])),
        sign_attestation(server, b, 1, 2, A).sequence,  # repeat
        sign_block(server, pubkey(3), 1, A).sequence,  # not registered
    ]
    assert sequences == sorted(set(sequences)), sequences
    assert [r.sequence for r in settled_decisions(server, count=len(sequences))] == sequences


def test_extreme_slots_and_epochs(server: Running) -> None:
    """uint64 bounds go through the API, the audit trail and the summary unchanged."""
    top = 2**64 - 1
    key = pubkey(1)
    register(server, key)
    assert_decision(sign_block(server, key, top, A), R.REASON_ALLOWED_NEW)
    assert_decision(sign_attestation(server, key, top, top, A), R.REASON_ALLOWED_NEW)
    assert_decision(sign_block(server, key, top, A), R.REASON_ALLOWED_REPEAT)
    assert_decision(sign_attestation(server, key, 0, 0, A), R.REASON_SOURCE_EPOCH_BELOW_LOWER_BOUND)
    state = summary(server, key)
    assert (state.highest_slot, state.highest_target_epoch, state.lowest_source_epoch) == (top, top, top)
    assert [r.slot for r in settled_decisions(server, key)][:1] == [top]
    assert f'"slot": "{top}"' in export_document(server).decode()


def test_refusals_do_not_need_a_registered_key_in_a_batch(server: Running) -> None:
    """A batch mixing registered and unregistered keys decides each on its own."""
    known, stranger = pubkey(1), pubkey(2)
    register(server, known)
    decided = sign_batch(server, [(stranger, 1, 2, A), (known, 1, 2, A)])
    assert_decision(decided[0], R.REASON_VALIDATOR_NOT_REGISTERED)
    assert_decision(decided[1], R.REASON_ALLOWED_NEW)

"""Batches and durability: each item decided on its own and in order, one run of sequence numbers, and every
ALLOWED decision on stable storage before its response (checked against a power-loss image of the data
directory taken the instant the response arrives, and by restarting on the same directory)."""

from __future__ import annotations

from pathlib import Path

from sidecar.service import MAX_BATCH_SIZE
from slashing_protection.v1 import signing_pb2
from tests.service.helpers import (
    ROOT,
    DurableImageFileOps,
    assert_decision,
    decisions,
    export_document,
    register,
    settled_decisions,
    sign_attestation,
    sign_batch,
    sign_block,
    summary,
)
from tests.support.keys import pubkey, signing_root
from tests.support.server import Running, running_server

R = signing_pb2
A, B = signing_root(0xA), signing_root(0xB)


def test_mixed_batch_is_decided_item_by_item_in_order(server: Running) -> None:
    keys = [pubkey(i) for i in range(1, 8)]
    register(server, *keys[:6])  # keys[6] is never registered
    sign_attestation(server, keys[1], 1, 2, A)
    sign_attestation(server, keys[2], 1, 2, A)
    sign_attestation(server, keys[3], 2, 3, A)
    sign_attestation(server, keys[4], 5, 6, A)
    items = [
        (keys[0], 1, 2, A),  # new
        (keys[1], 1, 2, A),  # repeat
        (keys[2], 1, 2, B),  # double vote
        (keys[3], 1, 4, A),  # surrounds (2, 3)
        (keys[4], 4, 5, A),  # source below the lowest
        (keys[5], 3, 2, A),  # source above target
        (keys[6], 1, 2, A),  # not registered
    ]
    expected = [
        R.REASON_ALLOWED_NEW,
        R.REASON_ALLOWED_REPEAT,
        R.REASON_DOUBLE_VOTE,
        R.REASON_SURROUNDS_RECORDED_VOTE,
        R.REASON_SOURCE_EPOCH_BELOW_LOWER_BOUND,
        R.REASON_SOURCE_EPOCH_GREATER_THAN_TARGET_EPOCH,
        R.REASON_VALIDATOR_NOT_REGISTERED,
    ]

    decided = sign_batch(server, items)

    assert len(decided) == len(items)
    for decision, reason in zip(decided, expected, strict=True):
        assert_decision(decision, reason)
    first = decided[0].sequence
    assert [d.sequence for d in decided] == list(range(first, first + len(items)))
    trail = settled_decisions(server, since_sequence=first - 1, count=len(items))
    assert [(r.sequence, r.pubkey, r.source_epoch, r.target_epoch, r.reason) for r in trail] == [
        (d.sequence, key, source, target, d.reason)
        for d, (key, source, target, _) in zip(decided, items, strict=True)
    ]
    # Only the new vote was added to a history.
    assert summary(server, keys[0]).attestation_count == 1
    assert summary(server, keys[2]).attestation_count == 1
    assert summary(server, keys[3]).attestation_count == 1


def test_a_refused_item_does_not_stop_the_next(server: Running) -> None:
    a, b = pubkey(1), pubkey(2)
    register(server, a, b)
    sign_attestation(server, a, 1, 2, A)
    decided = sign_batch(server, [(a, 1, 2, B), (b, 1, 2, B)])
    assert_decision(decided[0], R.REASON_DOUBLE_VOTE)
    assert_decision(decided[1], R.REASON_ALLOWED_NEW)
    # and the later item's vote counts for the next call
    assert_decision(sign_attestation(server, b, 1, 2, A), R.REASON_DOUBLE_VOTE)


def test_consecutive_batches_and_single_calls_share_one_sequence(server: Running) -> None:
    keys = [pubkey(i) for i in range(10)]
    register(server, *keys)
    sequences: list[int] = []
    for epoch in range(1, 4):
        sequences += [d.sequence for d in sign_batch(server, [(key, epoch, epoch + 1, A) for key in keys])]
        sequences.append(sign_block(server, keys[0], epoch, A).sequence)
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))


def test_a_batch_of_exactly_the_cap_is_accepted(server: Running) -> None:
    keys = [pubkey(10_000 + i) for i in range(MAX_BATCH_SIZE)]
    register(server, *keys[:2])
    decided = sign_batch(server, [(key, 1, 2, A) for key in keys])
    assert len(decided) == MAX_BATCH_SIZE
    assert_decision(decided[0], R.REASON_ALLOWED_NEW)
    assert_decision(decided[1], R.REASON_ALLOWED_NEW)
    assert {d.reason for d in decided[2:]} == {R.REASON_VALIDATOR_NOT_REGISTERED}
    first = decided[0].sequence
    assert [d.sequence for d in decided] == list(range(first, first + MAX_BATCH_SIZE))


def test_allowed_decisions_are_durable_before_the_response(tmp_path: Path) -> None:
    """Every fsync is held back 50 ms before it starts; a power-loss image taken the moment each response
    arrives must recover with the decision in it."""
    data_dir = tmp_path / "db"
    fileops = DurableImageFileOps(sync_delay=0.05)
    a, b, c, d = (pubkey(i) for i in range(1, 5))
    with running_server(data_dir, ROOT, fileops=fileops) as server:
        register(server, a, b, c, d)
        assert_decision(sign_block(server, a, 10, A), R.REASON_ALLOWED_NEW)
        after_block = fileops.durable_image(data_dir, tmp_path / "after-block")
        assert_decision(sign_attestation(server, b, 1, 2, A), R.REASON_ALLOWED_NEW)
        after_attestation = fileops.durable_image(data_dir, tmp_path / "after-attestation")
        decided = sign_batch(server, [(c, 1, 2, A), (d, 3, 2, A), (a, 1, 2, A)])
        after_batch = fileops.durable_image(data_dir, tmp_path / "after-batch")
    assert [d.verdict for d in decided] == [R.VERDICT_ALLOWED, R.VERDICT_REFUSED, R.VERDICT_ALLOWED]

    with running_server(after_block, None) as recovered:
        assert summary(recovered, a).block_count == 1
        assert_decision(sign_block(recovered, a, 10, B), R.REASON_DOUBLE_PROPOSAL)
    with running_server(after_attestation, None) as recovered:
        assert summary(recovered, b).attestation_count == 1
        assert_decision(sign_attestation(recovered, b, 1, 2, B), R.REASON_DOUBLE_VOTE)
    with running_server(after_batch, None) as recovered:
        # The whole batch is durable, refusal included.
        assert summary(recovered, c).attestation_count == 1
        assert summary(recovered, a).attestation_count == 1
        assert summary(recovered, d).refused_decisions == 1
        assert_decision(sign_attestation(recovered, c, 1, 2, B), R.REASON_DOUBLE_VOTE)
        assert_decision(sign_attestation(recovered, a, 0, 3, B), R.REASON_SURROUNDS_RECORDED_VOTE)


def test_power_loss_image_can_lose_what_was_not_synced(tmp_path: Path) -> None:
    """Control for the test above: an image taken before any fsync of a decision does not hold it, so that
    test would catch a response sent before the fsync."""
    data_dir = tmp_path / "db"
    fileops = DurableImageFileOps()
    key = pubkey(1)
    with running_server(data_dir, ROOT, fileops=fileops) as server:
        register(server, key)
        before = fileops.durable_image(data_dir, tmp_path / "before")
        assert_decision(sign_block(server, key, 10, A), R.REASON_ALLOWED_NEW)
    with running_server(before, None) as recovered:
        assert summary(recovered, key).block_count == 0
        assert_decision(sign_block(recovered, key, 10, B), R.REASON_ALLOWED_NEW)


def test_decisions_survive_a_restart_on_the_same_directory(tmp_path: Path) -> None:
    data_dir = tmp_path / "db"
    a, b, stranger = pubkey(1), pubkey(2), pubkey(3)
    with running_server(data_dir, ROOT) as server:
        register(server, a, b)
        block = sign_block(server, a, 10, A)
        decided = sign_batch(server, [(a, 1, 2, A), (b, 1, 2, A), (stranger, 1, 2, A)])
        refused = sign_block(server, a, 10, B)
        summaries = {key: summary(server, key) for key in (a, b, stranger)}
        trail = settled_decisions(server, count=5)
        exported = export_document(server)
    assert len(trail) == 5

    # A restart without the root reads it from the directory.
    with running_server(data_dir, None) as restarted:
        for key, before in summaries.items():
            assert summary(restarted, key) == before
        assert summaries[a].last_decision.sequence == refused.sequence
        assert export_document(restarted) == exported
        assert decisions(restarted, since_sequence=block.sequence - 1)[: len(trail)] == trail
        assert_decision(sign_block(restarted, a, 10, A), R.REASON_ALLOWED_REPEAT)
        assert_decision(sign_attestation(restarted, b, 1, 2, B), R.REASON_DOUBLE_VOTE)
        # Sequence numbers go on from where the log ended.
        assert sign_block(restarted, b, 5, A).sequence > max(refused.sequence, decided[-1].sequence)

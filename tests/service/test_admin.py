"""AdminService: checkpoints, the per-key summary and the audit trail, as an operator sees them."""

from __future__ import annotations

from pathlib import Path

from sidecar.domain import SLOTS_PER_EPOCH
from slashing_protection.v1 import admin_pb2, signing_pb2
from tests.service.helpers import (
    ROOT,
    DurableImageFileOps,
    assert_decision,
    decisions,
    register,
    settled_decisions,
    sign_attestation,
    sign_batch,
    sign_block,
    summary,
)
from tests.support.keys import pubkey, signing_root
from tests.support.requests import block_request
from tests.support.server import Running, running_server

A, B = signing_root(0xA), signing_root(0xB)
R = signing_pb2
BOUNDS = (
    "lowest_slot",
    "highest_slot",
    "lowest_source_epoch",
    "highest_source_epoch",
    "lowest_target_epoch",
    "highest_target_epoch",
    "slot_floor",
    "source_epoch_floor",
    "target_epoch_floor",
)


def save_checkpoint(server: Running) -> admin_pb2.SaveCheckpointResponse:
    response: admin_pb2.SaveCheckpointResponse = server.admin.SaveCheckpoint(admin_pb2.SaveCheckpointRequest())
    return response


def test_checkpoint_covers_the_last_recorded_sequence(tmp_path: Path) -> None:
    a, b = pubkey(1), pubkey(2)
    with running_server(tmp_path / "db", ROOT) as server:
        empty = save_checkpoint(server)
        assert (empty.sequence, empty.validators) == (0, 0)
        registration = register(server, a, b)
        sign_block(server, a, 10, A)
        last = sign_block(server, a, 10, B)  # a refusal counts too
        first = save_checkpoint(server)
        assert first.sequence == last.sequence > registration.sequence
        assert first.validators == 2
        assert first.file_name
        decided = sign_batch(server, [(a, 1, 2, A), (b, 1, 2, A)])
        second = save_checkpoint(server)
        assert second.sequence == decided[-1].sequence
        assert second.file_name != first.file_name
        again = save_checkpoint(server)
        assert again.sequence == second.sequence
        summaries = {key: summary(server, key) for key in (a, b)}
        assert (tmp_path / "db" / "checkpoints" / second.file_name).is_file()
    with running_server(tmp_path / "db", ROOT) as restarted:
        for key, before in summaries.items():
            assert summary(restarted, key) == before
        assert_decision(sign_attestation(restarted, b, 1, 2, B), R.REASON_DOUBLE_VOTE)
        assert sign_block(restarted, b, 1, A).sequence > second.sequence


def test_summary_of_an_unknown_and_of_a_fresh_key(server: Running) -> None:
    unknown, fresh = pubkey(1), pubkey(2)
    register(server, fresh)
    for key, registered in ((unknown, False), (fresh, True)):
        state = summary(server, key)
        assert state.pubkey == key
        assert state.registered is registered
        assert (state.block_count, state.attestation_count) == (0, 0)
        assert (state.allowed_decisions, state.refused_decisions) == (0, 0)
        for name in (*BOUNDS, "last_decision"):
            assert not state.HasField(name), name


def test_summary_counts_bounds_and_last_decision(server: Running) -> None:
    key = pubkey(1)
    register(server, key)
    sign_block(server, key, 5, A)
    sign_block(server, key, 9, A)
    sign_block(server, key, 9, A)  # repeat: allowed, not a new block
    sign_attestation(server, key, 1, 2, A)
    sign_attestation(server, key, 2, 3, A)
    sign_attestation(server, key, 3, 5, A)
    sign_attestation(server, key, 1, 5, B)  # refused
    last = sign_attestation(server, key, 0, 1, A)  # refused: source below the lowest

    state = summary(server, key)

    assert state.registered is True
    assert (state.block_count, state.attestation_count) == (2, 3)
    assert (state.allowed_decisions, state.refused_decisions) == (6, 2)
    assert (state.lowest_slot, state.highest_slot) == (5, 9)
    assert (state.lowest_source_epoch, state.highest_source_epoch) == (1, 3)
    assert (state.lowest_target_epoch, state.highest_target_epoch) == (2, 5)
    for floor in ("slot_floor", "source_epoch_floor", "target_epoch_floor"):
        assert not state.HasField(floor), floor
    record = state.last_decision
    assert (record.sequence, record.pubkey, record.kind) == (
        last.sequence,
        key,
        admin_pb2.DECISION_KIND_ATTESTATION,
    )
    assert (record.source_epoch, record.target_epoch, record.signing_root) == (0, 1, A)
    assert (record.verdict, record.reason) == (R.VERDICT_REFUSED, R.REASON_SOURCE_EPOCH_BELOW_LOWER_BOUND)
    assert record.recorded_at_unix_nanos > 0


def test_summary_shows_floors_raised_by_pruning(tmp_path: Path) -> None:
    """With a 64-epoch window, records far enough behind the newest are pruned and the floors carry them."""
    key = pubkey(1)
    with running_server(tmp_path / "db", ROOT, history_window_epochs=64) as server:
        register(server, key)
        sign_block(server, key, 100, A)
        far_slot = 100 + (64 + 16) * SLOTS_PER_EPOCH + 1
        sign_block(server, key, far_slot, A)
        sign_attestation(server, key, 5, 6, A)
        sign_attestation(server, key, 150, 170, A)

        state = summary(server, key)

        assert (state.block_count, state.lowest_slot, state.slot_floor) == (1, far_slot, 100)
        assert (state.attestation_count, state.source_epoch_floor, state.target_epoch_floor) == (1, 5, 6)
        assert (state.lowest_source_epoch, state.lowest_target_epoch) == (150, 170)
        # The floors refuse what the pruned records refused.
        assert_decision(sign_block(server, key, far_slot - 1, A), R.REASON_SLOT_AT_OR_BELOW_LOWER_BOUND)


def test_list_decisions_streams_the_audit_trail(server: Running) -> None:
    a, b, stranger = pubkey(1), pubkey(2), pubkey(3)
    register(server, a, b)
    answered = [
        (a, sign_block(server, a, 10, A)),
        (b, sign_attestation(server, b, 1, 2, A)),
        (stranger, sign_block(server, stranger, 1, A)),
        (a, sign_block(server, a, 10, B)),
        *zip((a, b), sign_batch(server, [(a, 1, 2, A), (b, 1, 2, B)]), strict=True),
    ]
    sequences = [decision.sequence for _, decision in answered]

    trail = settled_decisions(server, count=len(answered))

    assert [record.sequence for record in trail] == sequences  # oldest first, registrations are not decisions
    for record, (key, decision) in zip(trail, answered, strict=True):
        assert (record.pubkey, record.verdict, record.reason) == (key, decision.verdict, decision.reason)
        assert record.recorded_at_unix_nanos > 0
    assert [r.kind for r in trail[:2]] == [admin_pb2.DECISION_KIND_BLOCK, admin_pb2.DECISION_KIND_ATTESTATION]
    assert (trail[0].slot, trail[0].signing_root) == (10, A)
    assert (trail[1].source_epoch, trail[1].target_epoch) == (1, 2)

    only_a = decisions(server, a)
    assert [r.sequence for r in only_a] == [d.sequence for key, d in answered if key == a]
    since = sequences[2]
    assert [r.sequence for r in decisions(server, since_sequence=since)] == sequences[3:]  # strictly after
    assert [r.sequence for r in decisions(server, a, since_sequence=since)] == [
        d.sequence for key, d in answered[3:] if key == a
    ]
    assert decisions(server, since_sequence=sequences[-1]) == []
    assert decisions(server, pubkey(99)) == []


def test_list_decisions_streams_more_than_one_read_batch(server: Running) -> None:
    """Over a thousand records come back whole and in order (the server reads the log in batches)."""
    keys = [pubkey(i) for i in range(1, 101)]
    register(server, *keys)
    sequences = []
    for epoch in range(1, 13):
        sequences += [d.sequence for d in sign_batch(server, [(key, epoch, epoch + 1, A) for key in keys])]
    trail = decisions(server)
    assert [r.sequence for r in trail] == sequences
    assert [r.sequence for r in decisions(server, keys[7])] == sequences[7::100]


def test_audit_trail_shows_every_answered_decision(tmp_path: Path) -> None:
    """While an fsync is slow, a refusal answered meanwhile must already be in the audit trail."""
    signer, stranger = pubkey(1), pubkey(2)
    fileops = DurableImageFileOps()
    with running_server(tmp_path / "db", ROOT, fileops=fileops) as server:
        register(server, signer)
        fileops.sync_delay = 1.0
        pending = server.signing.CheckAndRecordBlock.future(block_request(signer, 1, A, ROOT))
        # The flusher writes a record, then fsyncs it: once the block is in the file, the slow fsync has begun.
        settled_decisions(server, signer, count=1)
        refused = sign_block(server, stranger, 1, A)
        try:
            trail = decisions(server, since_sequence=refused.sequence - 1)
        finally:
            fileops.sync_delay = 0.0
            pending.result(timeout=10)
        assert [record.sequence for record in trail] == [refused.sequence]

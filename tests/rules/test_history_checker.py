"""The history checker (tests/support/history_checker.py) on its own: the slashable predicate against the
consensus specification's cases and against the crash tier's independent ledger, and what `History.check` makes of
allowed, refused and indeterminate calls. The checker judges the PostgreSQL drills, so it is tested first."""

from __future__ import annotations

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.client import SidecarDeadlineExceededError, SidecarUnavailableError
from tests.crash.ledger import Attestation, Block, attestation_conflicts, block_conflicts
from tests.support.history_checker import (
    AttestationMessage,
    BlockMessage,
    History,
    Message,
    Outcome,
    outcome_of_error,
    slashable,
)

KEY = bytes([0xAA]) * 48
OTHER_KEY = bytes([0xBB]) * 48
ROOT_A = bytes([1]) * 32
ROOT_B = bytes([2]) * 32


def vote(source: int, target: int, root: bytes = ROOT_A, pubkey: bytes = KEY) -> AttestationMessage:
    return AttestationMessage(pubkey, source, target, root)


def block(slot: int, root: bytes = ROOT_A, pubkey: bytes = KEY) -> BlockMessage:
    return BlockMessage(pubkey, slot, root)


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        (block(5), block(5, ROOT_B), "double proposal"),
        (block(5), block(5), None),  # the same header twice
        (block(5), block(6, ROOT_B), None),
        (block(5), block(5, ROOT_B, OTHER_KEY), None),  # another proposer
        (vote(1, 2), vote(1, 2, ROOT_B), "double vote"),  # data_1 != data_2, one target
        (vote(1, 3), vote(2, 3), "double vote"),
        (vote(1, 2), vote(1, 2), None),  # data_1 == data_2
        (vote(1, 4), vote(2, 3), "surround vote"),  # s1 < s2 and t2 < t1
        (vote(2, 3), vote(1, 4), "surround vote"),  # ... either way round
        (vote(1, 3), vote(1, 2), None),  # same source: not strictly inside
        (vote(1, 3), vote(2, 4), None),  # overlapping, neither surrounds
        (vote(1, 2), vote(2, 3), None),
        (vote(1, 4), vote(2, 3, ROOT_A, OTHER_KEY), None),
        (vote(1, 5), block(5), None),  # a block and a vote never conflict
    ],
)
def test_slashable_follows_the_consensus_specification(
    first: Message, second: Message, expected: str | None
) -> None:
    found = slashable(first, second)
    assert found is None if expected is None else found is not None and found.startswith(expected), found
    assert (slashable(second, first) is None) == (found is None)


votes = st.builds(
    lambda source, span, root, key: vote(source, source + span, bytes([root]) * 32, bytes([key]) * 48),
    st.integers(0, 6),
    st.integers(0, 4),
    st.integers(1, 2),
    st.integers(1, 2),
)
blocks = st.builds(
    lambda slot, root, key: block(slot, bytes([root]) * 32, bytes([key]) * 48),
    st.integers(0, 4),
    st.integers(1, 3),
    st.integers(1, 2),
)


@given(st.sets(votes, max_size=8), st.sets(blocks, max_size=8))
def test_slashable_agrees_with_the_crash_ledgers_independent_checker(
    attestations: set[AttestationMessage], proposals: set[BlockMessage]
) -> None:
    def mine(messages: set[Message]) -> list[tuple[Message, Message]]:
        ordered = sorted(messages, key=repr)
        return [(a, b) for i, a in enumerate(ordered) for b in ordered[i + 1 :] if slashable(a, b) is not None]

    theirs_votes = attestation_conflicts(
        Attestation(a.pubkey, a.source_epoch, a.target_epoch, a.signing_root) for a in attestations
    )
    assert len(mine(set(attestations))) == len(theirs_votes)
    flagged_slots = {(a.pubkey, a.slot) for a, _ in mine(set(proposals)) if isinstance(a, BlockMessage)}
    theirs_blocks = block_conflicts(Block(b.pubkey, b.slot, b.signing_root) for b in proposals)
    assert len(flagged_slots) == len(theirs_blocks)


def test_a_clean_history_passes_and_counts_what_happened() -> None:
    history = History()
    history.record(vote(1, 2), Outcome.ALLOWED, "r1")
    history.record(vote(1, 2, ROOT_B), Outcome.REFUSED, "r2")
    history.record(block(7), Outcome.ALLOWED, "r2")
    history.record(block(7), Outcome.ALLOWED, "r1")  # a repeat: the same message again
    report = history.check(durable={vote(1, 2), block(7)})
    assert report.violations == []
    assert (report.calls, report.allowed, report.refused, report.indeterminate) == (4, 3, 1, 0)


def test_two_allowed_conflicting_messages_are_caught() -> None:
    history = History()
    history.record(vote(1, 4), Outcome.ALLOWED)
    history.record(vote(2, 3, ROOT_B), Outcome.ALLOWED)
    report = history.check()
    assert len(report.slashable) == 1 and report.slashable[0].startswith("surround vote")


def test_an_allowed_message_missing_from_the_database_is_lost() -> None:
    history = History()
    history.record(block(3), Outcome.ALLOWED)
    history.record(block(4), Outcome.ALLOWED)
    report = history.check(durable={block(4)})
    assert report.lost == [block(3)]
    assert report.violations == [f"acknowledged ALLOWED but not in the database: {block(3)}"]


def test_an_indeterminate_call_counts_as_allowed_unless_the_database_shows_it_never_took_effect() -> None:
    history = History()
    history.record(block(9), Outcome.TIMED_OUT)
    history.record(block(9, ROOT_B), Outcome.ALLOWED)
    # Strictest reading: the timed-out proposal may have been committed, so allowing the other is a violation.
    assert len(history.check().slashable) == 1
    # The database recorded only the second: the first never took effect.
    report = history.check(durable={block(9, ROOT_B)})
    assert report.violations == [] and report.took_effect == 0
    # Had it recorded both, the sidecar would have allowed a double proposal.
    report = history.check(durable={block(9), block(9, ROOT_B)})
    assert len(report.slashable) == 1 and report.took_effect == 1


def test_the_databases_own_records_are_checked_pairwise_too() -> None:
    history = History()
    history.record(vote(3, 4), Outcome.ALLOWED)
    report = history.check(durable={vote(3, 4), vote(3, 4, ROOT_B)})
    assert len(report.slashable) == 1 and report.slashable[0].startswith("double vote")


def test_attempt_records_a_batch_item_by_item_and_an_error_for_every_item() -> None:
    history = History()
    items = [vote(1, 2), vote(1, 2, ROOT_A, OTHER_KEY)]
    assert history.attempt("r1", items, lambda: [True, False]) == [Outcome.ALLOWED, Outcome.REFUSED]

    def fails() -> list[bool]:
        raise SidecarDeadlineExceededError("127.0.0.1:1", grpc.StatusCode.DEADLINE_EXCEEDED, "late")

    assert history.attempt("r2", items, fails) == [Outcome.TIMED_OUT, Outcome.TIMED_OUT]
    assert [(call.replica, call.outcome) for call in history.calls] == [
        ("r1", Outcome.ALLOWED),
        ("r1", Outcome.REFUSED),
        ("r2", Outcome.TIMED_OUT),
        ("r2", Outcome.TIMED_OUT),
    ]
    assert history.calls[-1].detail == "server 127.0.0.1:1: DEADLINE_EXCEEDED: late"


def test_errors_are_classified_by_their_status() -> None:
    assert outcome_of_error(SidecarUnavailableError("t", grpc.StatusCode.UNAVAILABLE, "down")) is Outcome.ERROR
    assert outcome_of_error(ConnectionResetError()) is Outcome.ERROR
    assert Outcome.ERROR.possibly_allowed and Outcome.TIMED_OUT.indeterminate
    assert not Outcome.REFUSED.possibly_allowed and not Outcome.ALLOWED.indeterminate

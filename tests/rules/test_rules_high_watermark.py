"""The global high watermark in the rules: what it refuses, exactly at its bounds, and the order of the checks
(an unregistered key first, then the watermark, then the key's own rules), as scenarios and as a property over
random histories: with a watermark, every decision is the watermark's refusal where the candidate is at or beyond
it, and otherwise exactly the decision without one.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.history import ValidatorHistory
from sidecar.rules import HighWatermark, Reason, check_attestation, check_block

from .rules_oracle import Recorded
from .rules_support import (
    FRESH_ROOT,
    ROOT_A,
    ROOT_B,
    attestation_candidates,
    block_candidates,
    build_history,
    imported_histories,
)

BEYOND = Reason.AT_OR_BEYOND_HIGH_WATERMARK
WATERMARK = HighWatermark(slot=3200, epoch=100)


def signed() -> ValidatorHistory:
    """A key that proposed at slot 3199 and voted (98, 99), the last messages below `WATERMARK`."""
    history = ValidatorHistory()
    history.add_block(3199, ROOT_A)
    history.add_attestation(98, 99, ROOT_A)
    return history


@pytest.mark.parametrize(
    ("slot", "root", "expected"),
    [
        (3200, FRESH_ROOT, BEYOND),  # the watermark's own slot
        (3201, FRESH_ROOT, BEYOND),
        (2**64 - 1, FRESH_ROOT, BEYOND),
        (3199, FRESH_ROOT, Reason.DOUBLE_PROPOSAL),  # below it: the key's own rules decide
        (3199, ROOT_A, Reason.ALLOWED_REPEAT),
        (3100, FRESH_ROOT, Reason.SLOT_AT_OR_BELOW_LOWER_BOUND),
    ],
)
def test_blocks_at_or_beyond_the_watermark_slot_are_refused(slot: int, root: bytes, expected: Reason) -> None:
    history = signed()
    history.raise_floors(3150, 0, 0)
    assert check_block(history, slot, root, WATERMARK).reason is expected


@pytest.mark.parametrize(
    ("source", "target", "root", "expected"),
    [
        (99, 100, FRESH_ROOT, BEYOND),  # target at the watermark epoch
        (99, 2**64 - 1, FRESH_ROOT, BEYOND),
        (100, 100, FRESH_ROOT, BEYOND),  # source at it too
        (100, 99, FRESH_ROOT, BEYOND),  # source beyond, target below: invalid, but the watermark is checked first
        (101, 5, FRESH_ROOT, BEYOND),
        (99, 99, FRESH_ROOT, Reason.DOUBLE_VOTE),  # below it: the key's own rules decide
        (98, 99, ROOT_A, Reason.ALLOWED_REPEAT),
        (98, 98, FRESH_ROOT, Reason.TARGET_EPOCH_AT_OR_BELOW_LOWER_BOUND),
        (99, 98, FRESH_ROOT, Reason.SOURCE_EPOCH_GREATER_THAN_TARGET_EPOCH),
    ],
)
def test_votes_with_a_source_or_target_at_or_beyond_the_watermark_epoch_are_refused(
    source: int, target: int, root: bytes, expected: Reason
) -> None:
    history = signed()
    assert check_attestation(history, source, target, root, WATERMARK).reason is expected


def test_a_repeat_at_or_beyond_the_watermark_is_refused_too() -> None:
    """Nothing at or beyond it is signed, not even a message signed before it was set (the next signer may not
    know that message)."""
    history = signed()
    history.add_block(3300, ROOT_B)
    history.add_attestation(99, 120, ROOT_B)
    assert check_block(history, 3300, ROOT_B).reason is Reason.ALLOWED_REPEAT
    assert check_block(history, 3300, ROOT_B, WATERMARK).reason is BEYOND
    assert check_attestation(history, 99, 120, ROOT_B).reason is Reason.ALLOWED_REPEAT
    assert check_attestation(history, 99, 120, ROOT_B, WATERMARK).reason is BEYOND


def test_the_usual_next_vote_is_refused_at_the_watermark() -> None:
    """The fast path for the next honest vote comes after the watermark check."""
    history = signed()
    assert history.is_next_honest_vote(99, 100)
    assert check_attestation(history, 99, 100, FRESH_ROOT).reason is Reason.ALLOWED_NEW
    assert check_attestation(history, 99, 100, FRESH_ROOT, WATERMARK).reason is BEYOND


def test_an_unregistered_key_is_refused_as_unregistered_before_the_watermark() -> None:
    assert check_block(None, 5000, FRESH_ROOT, WATERMARK).reason is Reason.VALIDATOR_NOT_REGISTERED
    assert check_attestation(None, 200, 201, FRESH_ROOT, WATERMARK).reason is Reason.VALIDATOR_NOT_REGISTERED


def test_a_zero_watermark_refuses_everything_and_the_message_names_it() -> None:
    history = ValidatorHistory()
    zero = HighWatermark(0, 0)
    block = check_block(history, 0, FRESH_ROOT, zero)
    vote = check_attestation(history, 0, 0, FRESH_ROOT, zero)
    assert (block.reason, vote.reason) == (BEYOND, BEYOND)
    assert block.message == "refused: slot 0 is at or beyond the high watermark, slot 0"
    assert vote.message == "refused: the vote (0, 0) is at or beyond the high watermark, epoch 0"
    assert not block.allowed and not vote.allowed


@settings(max_examples=100, deadline=None)
@given(imported_histories(), st.integers(0, 50), st.integers(0, 50))
def test_a_watermark_only_adds_its_own_refusals(drawn: tuple[Recorded, int], slot: int, epoch: int) -> None:
    recorded, floors_after = drawn
    history = build_history(recorded, floors_after)
    watermark = HighWatermark(max(slot, epoch), epoch)
    for candidate_slot, root in block_candidates(recorded):
        without = check_block(history, candidate_slot, root)
        expected = BEYOND if candidate_slot >= watermark.slot else without.reason
        assert check_block(history, candidate_slot, root, watermark).reason is expected
    for source, target, root in attestation_candidates(recorded):
        without = check_attestation(history, source, target, root)
        beyond = source >= watermark.epoch or target >= watermark.epoch
        expected = BEYOND if beyond else without.reason
        assert check_attestation(history, source, target, root, watermark).reason is expected

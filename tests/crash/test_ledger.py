"""The crash tier's brute-force slashing checker must itself catch what it is there to catch."""

from __future__ import annotations

import pytest

from tests.support.keys import pubkey, root_for

from .ledger import Attestation, Block, attestation_conflicts, block_conflicts

KEY = pubkey(1)
OTHER_KEY = pubkey(2)


def vote(source: int, target: int, root: str = "a", pubkey: bytes = KEY) -> Attestation:
    return Attestation(pubkey, source, target, root_for(root))


@pytest.mark.parametrize(
    ("votes", "problem"),
    [
        ([vote(1, 2, "a"), vote(1, 2, "b")], "double vote"),
        ([vote(1, 3), vote(2, 3)], "double vote"),
        ([vote(1, 4), vote(2, 3)], "surround vote"),
        ([vote(2, 3), vote(1, 4)], "surround vote"),
        ([vote(0, 10), vote(3, 4), vote(5, 6)], "surround vote"),
    ],
)
def test_slashable_attestations_are_reported(votes: list[Attestation], problem: str) -> None:
    found = attestation_conflicts(votes)
    assert found and all(problem in line for line in found), found


@pytest.mark.parametrize(
    "votes",
    [
        [vote(1, 2), vote(1, 2)],  # a repeat is one message
        [vote(1, 2), vote(2, 3), vote(3, 4)],
        [vote(1, 3), vote(2, 4)],  # overlapping, not surrounding
        [vote(1, 4), vote(1, 3)],  # same source: no strict surround
        [vote(1, 2, "a"), vote(1, 2, "b", OTHER_KEY)],  # two validators
    ],
)
def test_safe_attestations_pass(votes: list[Attestation]) -> None:
    assert attestation_conflicts(votes) == []


def test_double_proposals_are_reported_and_repeats_pass() -> None:
    first = Block(KEY, 5, root_for("x"))
    assert block_conflicts([first, first, Block(OTHER_KEY, 5, root_for("y"))]) == []
    found = block_conflicts([first, Block(KEY, 5, root_for("y")), Block(KEY, 6, root_for("y"))])
    assert len(found) == 1 and "double proposal at slot 5" in found[0], found

"""The sentence each refusal carries names the recorded message it conflicts with, exactly: an operator reading a
log line or a CLI answer acts on those numbers and roots. (Mutation testing found these texts unchecked.)"""

from __future__ import annotations

from sidecar.history import ValidatorHistory
from sidecar.rules import Reason, check_attestation, check_block

ROOT_A = bytes([0xAA]) * 32
ROOT_B = bytes([0xBB]) * 32


def test_a_double_vote_names_the_recorded_vote_and_its_root() -> None:
    history = ValidatorHistory()
    history.add_attestation(3, 5, ROOT_A)
    decision = check_attestation(history, 4, 5, ROOT_B)
    assert decision.reason is Reason.DOUBLE_VOTE
    assert decision.message == (
        f"refused: double vote, an attestation with target epoch 5 is recorded (source epoch 3, signing root "
        f"0x{ROOT_A.hex()})"
    )


def test_a_double_vote_against_a_record_without_a_root_says_the_root_is_unknown() -> None:
    history = ValidatorHistory()
    history.add_attestation(3, 5, None)
    decision = check_attestation(history, 3, 5, ROOT_B)
    assert decision.message == (
        "refused: double vote, an attestation with target epoch 5 is recorded (source epoch 3, an unknown "
        "signing root)"
    )


def test_a_double_proposal_names_the_recorded_root_known_or_not() -> None:
    history = ValidatorHistory()
    history.add_block(7, ROOT_A)
    history.add_block(8, None)
    assert check_block(history, 7, ROOT_B).message == (
        f"refused: double proposal, a block at slot 7 is recorded with signing root 0x{ROOT_A.hex()}"
    )
    assert check_block(history, 8, ROOT_B).message == (
        "refused: double proposal, a block at slot 8 is recorded with an unknown signing root"
    )


def test_surround_refusals_name_both_votes_in_order() -> None:
    history = ValidatorHistory()
    history.add_attestation(10, 20, ROOT_A)
    surrounding = check_attestation(history, 9, 21, ROOT_B)
    assert surrounding.reason is Reason.SURROUNDS_RECORDED_VOTE
    assert surrounding.message == "refused: the vote (9, 21) surrounds the recorded vote (10, 20)"
    surrounded = check_attestation(history, 11, 19, ROOT_B)
    assert surrounded.reason is Reason.SURROUNDED_BY_RECORDED_VOTE
    assert surrounded.message == "refused: the vote (11, 19) is surrounded by the recorded vote (10, 20)"


def test_a_surrounded_vote_names_the_surrounding_vote_among_several() -> None:
    """With votes on both sides, the one named is the one that surrounds, not a neighbour of it."""
    history = ValidatorHistory()
    for source, target in ((1, 2), (10, 20), (30, 40)):
        history.add_attestation(source, target, ROOT_A)
    decision = check_attestation(history, 11, 19, ROOT_B)
    assert decision.reason is Reason.SURROUNDED_BY_RECORDED_VOTE
    assert decision.message == "refused: the vote (11, 19) is surrounded by the recorded vote (10, 20)"

"""Named scenarios for the slashing rules, one row each, in the style of Lighthouse's declarative tests.

Each row is checked three ways: `sidecar.rules` gives the expected reason, the brute-force oracle agrees (so the
oracle itself is pinned to hand-written expectations), and the history survives an export -> import -> re-export
round trip unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from sidecar.history import ValidatorHistory
from sidecar.rules import Decision, Reason, check_attestation, check_block

from .rules_oracle import Attestation, Block, Floors, Recorded, attestation_reason, block_reason
from .rules_support import ROOT_A, ROOT_B, ZERO_ROOT, build_history, reimport

NEW = Reason.ALLOWED_NEW
NO_FLOORS = Floors()
REPEAT = Reason.ALLOWED_REPEAT


@dataclass(frozen=True)
class Scenario:
    name: str
    candidate: Block | Attestation
    expected: Reason
    blocks: tuple[Block, ...] = ()
    attestations: tuple[Attestation, ...] = ()
    floors: Floors = NO_FLOORS
    registered: bool = True

    def recorded(self) -> Recorded | None:
        if not self.registered:
            return None
        return Recorded(list(self.blocks), list(self.attestations), self.floors)


def block(slot: int, root: bytes | None = ROOT_A) -> Block:
    return Block(slot, root)


def vote(source: int, target: int, root: bytes | None = ROOT_A) -> Attestation:
    return Attestation(source, target, root)


SCENARIOS = [
    # ------------------------------------------------------------------------------------------------ blocks
    Scenario("first block", block(5), NEW),
    Scenario("first block at slot 0", block(0), NEW),
    Scenario("same block again is a repeat", block(5), REPEAT, blocks=(block(5),)),
    Scenario("same block imported twice is one block", block(5), REPEAT, blocks=(block(5), block(5))),
    Scenario("other root at a recorded slot", block(5, ROOT_B), Reason.DOUBLE_PROPOSAL, blocks=(block(5),)),
    Scenario(
        "two blocks imported at one slot refuse both",
        block(5),
        Reason.DOUBLE_PROPOSAL,
        blocks=(block(5), block(5, ROOT_B)),
    ),
    Scenario("zero root block repeat", block(5, ZERO_ROOT), REPEAT, blocks=(block(5, ZERO_ROOT),)),
    Scenario("zero root against another root", block(5, ZERO_ROOT), Reason.DOUBLE_PROPOSAL, blocks=(block(5),)),
    Scenario(
        "unknown recorded block root is never a repeat",
        block(5),
        Reason.DOUBLE_PROPOSAL,
        blocks=(block(5, None),),
    ),
    Scenario(
        "zero root does not match an unknown recorded root",
        block(5, ZERO_ROOT),
        Reason.DOUBLE_PROPOSAL,
        blocks=(block(5, None),),
    ),
    Scenario("block below the lowest slot", block(4), Reason.SLOT_AT_OR_BELOW_LOWER_BOUND, blocks=(block(5),)),
    Scenario("block between recorded slots", block(7), NEW, blocks=(block(5), block(10))),
    Scenario("block above the highest slot", block(11), NEW, blocks=(block(5), block(10))),
    Scenario("block at the slot floor", block(10), Reason.SLOT_AT_OR_BELOW_LOWER_BOUND, floors=Floors(slot=10)),
    Scenario("block above the slot floor", block(11), NEW, floors=Floors(slot=10)),
    Scenario(
        "slot floor above the lowest slot wins",
        block(7),
        Reason.SLOT_AT_OR_BELOW_LOWER_BOUND,
        blocks=(block(5),),
        floors=Floors(slot=8),
    ),
    Scenario(
        "repeat below the slot floor is still a repeat",
        block(5),
        REPEAT,
        blocks=(block(5),),
        floors=Floors(slot=8),
    ),
    # ---------------------------------------------------------------------------------------- attestations
    Scenario("first attestation", vote(1, 2), NEW),
    Scenario("genesis attestation (0, 0)", vote(0, 0), NEW),
    Scenario("source equal to target", vote(3, 3), NEW, attestations=(vote(1, 2),)),
    Scenario("source greater than target", vote(3, 2), Reason.SOURCE_EPOCH_GREATER_THAN_TARGET_EPOCH),
    Scenario(
        "source greater than target outranks a double vote",
        vote(3, 2),
        Reason.SOURCE_EPOCH_GREATER_THAN_TARGET_EPOCH,
        attestations=(vote(1, 2),),
    ),
    Scenario("same vote again is a repeat", vote(1, 2), REPEAT, attestations=(vote(1, 2),)),
    Scenario("same vote imported twice is one vote", vote(1, 2), REPEAT, attestations=(vote(1, 2), vote(1, 2))),
    Scenario("zero root vote repeat", vote(1, 2, ZERO_ROOT), REPEAT, attestations=(vote(1, 2, ZERO_ROOT),)),
    Scenario("double vote, other root", vote(1, 2, ROOT_B), Reason.DOUBLE_VOTE, attestations=(vote(1, 2),)),
    Scenario("double vote, other source", vote(0, 2), Reason.DOUBLE_VOTE, attestations=(vote(1, 2),)),
    Scenario(
        "double vote, zero root against another root",
        vote(1, 2, ZERO_ROOT),
        Reason.DOUBLE_VOTE,
        attestations=(vote(1, 2),),
    ),
    Scenario(
        "unknown recorded vote root is never a repeat",
        vote(1, 2),
        Reason.DOUBLE_VOTE,
        attestations=(vote(1, 2, None),),
    ),
    Scenario(
        "zero root does not match an unknown recorded vote root",
        vote(1, 2, ZERO_ROOT),
        Reason.DOUBLE_VOTE,
        attestations=(vote(1, 2, None),),
    ),
    Scenario(
        "two roots imported for one vote refuse both",
        vote(1, 2),
        Reason.DOUBLE_VOTE,
        attestations=(vote(1, 2), vote(1, 2, ROOT_B)),
    ),
    Scenario(
        "two sources imported at one target refuse both",
        vote(1, 3),
        Reason.DOUBLE_VOTE,
        attestations=(vote(1, 3), vote(2, 3)),
    ),
    Scenario(
        "new vote surrounds a recorded one",
        vote(1, 4),
        Reason.SURROUNDS_RECORDED_VOTE,
        attestations=(vote(2, 3),),
    ),
    Scenario(
        "new vote is surrounded by a recorded one",
        vote(2, 3),
        Reason.SURROUNDED_BY_RECORDED_VOTE,
        attestations=(vote(1, 4),),
    ),
    Scenario(
        "surrounding outranks being surrounded",
        vote(1, 4),
        Reason.SURROUNDS_RECORDED_VOTE,
        attestations=(vote(2, 3), vote(0, 10)),
    ),
    Scenario("same source, later target is no surround", vote(1, 4), NEW, attestations=(vote(1, 3),)),
    Scenario("later source, later target", vote(3, 5), NEW, attestations=(vote(1, 3), vote(2, 4))),
    Scenario("gap between recorded targets", vote(2, 4), NEW, attestations=(vote(1, 3), vote(2, 6))),
    Scenario(
        "an imported source > target vote is surrounded by later votes below its source",
        vote(5, 7),
        Reason.SURROUNDS_RECORDED_VOTE,
        attestations=(vote(6, 2),),
    ),
    Scenario(
        "source below the lowest source outranks the target bound",
        vote(2, 3),
        Reason.SOURCE_EPOCH_BELOW_LOWER_BOUND,
        attestations=(vote(3, 4),),
    ),
    Scenario(
        "target below the lowest target",
        vote(3, 4),
        Reason.TARGET_EPOCH_AT_OR_BELOW_LOWER_BOUND,
        attestations=(vote(3, 5), vote(4, 6)),
    ),
    Scenario(
        "source below the source floor",
        vote(4, 10),
        Reason.SOURCE_EPOCH_BELOW_LOWER_BOUND,
        floors=Floors(source=5),
    ),
    Scenario("source at the source floor", vote(5, 10), NEW, floors=Floors(source=5)),
    Scenario(
        "target at the target floor",
        vote(5, 9),
        Reason.TARGET_EPOCH_AT_OR_BELOW_LOWER_BOUND,
        floors=Floors(target=9),
    ),
    Scenario("target above the target floor", vote(5, 10), NEW, floors=Floors(target=9)),
    Scenario(
        "repeat below the target floor is still a repeat",
        vote(1, 2),
        REPEAT,
        attestations=(vote(1, 2),),
        floors=Floors(source=3, target=5),
    ),
    # -------------------------------------------------------------------------------------- not registered
    Scenario("block from an unregistered validator", block(5), Reason.VALIDATOR_NOT_REGISTERED, registered=False),
    Scenario("vote from an unregistered validator", vote(1, 2), Reason.VALIDATOR_NOT_REGISTERED, registered=False),
    Scenario(
        "not registered outranks source greater than target",
        vote(3, 2),
        Reason.VALIDATOR_NOT_REGISTERED,
        registered=False,
    ),
]


def decide(history: ValidatorHistory | None, candidate: Block | Attestation) -> Decision:
    assert candidate.root is not None, "a signing request always carries a root"
    if isinstance(candidate, Block):
        return check_block(history, candidate.slot, candidate.root)
    return check_attestation(history, candidate.source, candidate.target, candidate.root)


def oracle(recorded: Recorded | None, candidate: Block | Attestation) -> Reason:
    assert candidate.root is not None
    if isinstance(candidate, Block):
        return block_reason(recorded, candidate.slot, candidate.root)
    return attestation_reason(recorded, candidate.source, candidate.target, candidate.root)


def test_scenario_names_are_unique() -> None:
    names = [scenario.name for scenario in SCENARIOS]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda scenario: scenario.name)
def test_scenario(scenario: Scenario) -> None:
    recorded = scenario.recorded()
    # Floors go up after the records, as pruning and repair raise them over an existing history.
    history = None if recorded is None else build_history(recorded, floors_after=len(recorded.attestations))

    decision = decide(history, scenario.candidate)

    assert decision.reason is scenario.expected, decision.message
    assert oracle(recorded, scenario.candidate) is scenario.expected
    assert decision.allowed is scenario.expected.allows
    assert decision.records_new_message is (scenario.expected is NEW)
    assert decision.message.startswith("allowed" if decision.allowed else "refused"), decision.message


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s.registered], ids=lambda scenario: scenario.name)
def test_scenario_round_trip(scenario: Scenario) -> None:
    """Export -> import -> re-export gives the same lists, and the re-imported history never allows more."""
    recorded = scenario.recorded()
    assert recorded is not None
    history = build_history(recorded)
    exported_blocks = history.export_blocks()
    exported_attestations, _ = history.export_attestations()

    imported = reimport(history)

    assert imported.export_blocks() == exported_blocks
    assert imported.export_attestations() == (exported_attestations, False)
    if not decide(history, scenario.candidate).allowed:
        assert not decide(imported, scenario.candidate).allowed


def test_decisions_name_the_conflict() -> None:
    history = build_history(Recorded(blocks=[block(5)], attestations=[vote(2, 3)]))

    assert "slot 5" in check_block(history, 5, ROOT_B).message
    assert "0x" + ROOT_A.hex() in check_block(history, 5, ROOT_B).message
    assert "(2, 3)" in check_attestation(history, 1, 4, ROOT_A).message
    assert (
        "unknown"
        in check_attestation(build_history(Recorded(attestations=[vote(2, 3, None)])), 2, 3, ROOT_A).message
    )

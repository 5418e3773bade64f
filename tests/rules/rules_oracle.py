"""A brute-force oracle for the slashing rules, written from the rule definitions alone.

It keeps plain lists of recorded messages and floors, and answers every question by scanning all of them. It
knows nothing of `ValidatorHistory`'s sorted arrays, prefix maxima or suffix minima, so agreeing with it is
evidence that those indexes are exact. Where several rules apply it names the first one in the order of
`sidecar.rules`: not registered, source > target, repeat or double vote (double proposal), surrounds,
surrounded, source bound, target bound (slot bound).

A signing root of None is unknown (imported without `signing_root`) and never equals anything, itself included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations

from sidecar.rules import Reason

Root = bytes | None

# Floors whose defaults refuse nothing: refuse slot <= slot floor, source < source floor, target <= target floor.
NO_SLOT_FLOOR = -1
NO_SOURCE_FLOOR = 0
NO_TARGET_FLOOR = -1


@dataclass(frozen=True)
class Floors:
    slot: int = NO_SLOT_FLOOR
    source: int = NO_SOURCE_FLOOR
    target: int = NO_TARGET_FLOOR


@dataclass(frozen=True)
class Block:
    slot: int
    root: Root


@dataclass(frozen=True)
class Attestation:
    source: int
    target: int
    root: Root


@dataclass
class Recorded:
    """Everything one validator has recorded, as the rules define it: a list of messages and three floors."""

    blocks: list[Block] = field(default_factory=list)
    attestations: list[Attestation] = field(default_factory=list)
    floors: Floors = Floors()


def same_root(recorded: Root, candidate: Root) -> bool:
    return recorded is not None and recorded == candidate


def block_reason(recorded: Recorded | None, slot: int, root: bytes) -> Reason:
    if recorded is None:
        return Reason.VALIDATOR_NOT_REGISTERED
    # A set: the same block recorded twice is one message; unknown roots collapse too, harmlessly, since an
    # unknown root can never make a repeat.
    at_slot = {block.root for block in recorded.blocks if block.slot == slot}
    if at_slot:
        if len(at_slot) == 1 and same_root(next(iter(at_slot)), root):
            return Reason.ALLOWED_REPEAT
        return Reason.DOUBLE_PROPOSAL
    lowest_slot = min((block.slot for block in recorded.blocks), default=NO_SLOT_FLOOR)
    if slot <= max(recorded.floors.slot, lowest_slot):
        return Reason.SLOT_AT_OR_BELOW_LOWER_BOUND
    return Reason.ALLOWED_NEW


def attestation_reason(recorded: Recorded | None, source: int, target: int, root: bytes) -> Reason:
    if recorded is None:
        return Reason.VALIDATOR_NOT_REGISTERED
    if source > target:
        return Reason.SOURCE_EPOCH_GREATER_THAN_TARGET_EPOCH
    records = recorded.attestations
    at_target = {(old.source, old.root) for old in records if old.target == target}
    if at_target:
        if len(at_target) == 1:
            (old_source, old_root) = next(iter(at_target))
            if old_source == source and same_root(old_root, root):
                return Reason.ALLOWED_REPEAT
        return Reason.DOUBLE_VOTE
    if any(source < old.source and old.target < target for old in records):
        return Reason.SURROUNDS_RECORDED_VOTE
    if any(old.source < source and target < old.target for old in records):
        return Reason.SURROUNDED_BY_RECORDED_VOTE
    lowest_source = min((old.source for old in records), default=NO_SOURCE_FLOOR)
    if source < max(recorded.floors.source, lowest_source):
        return Reason.SOURCE_EPOCH_BELOW_LOWER_BOUND
    lowest_target = min((old.target for old in records), default=NO_TARGET_FLOOR)
    if target <= max(recorded.floors.target, lowest_target):
        return Reason.TARGET_EPOCH_AT_OR_BELOW_LOWER_BOUND
    return Reason.ALLOWED_NEW


def slashable_attestation_pairs(records: list[Attestation]) -> list[tuple[Attestation, Attestation]]:
    """Pairs of distinct recorded attestations that a validator could be slashed for signing together."""
    distinct = list(dict.fromkeys(records))
    return [
        (a, b)
        for a, b in combinations(distinct, 2)
        if a.target == b.target
        or (a.source < b.source and b.target < a.target)
        or (b.source < a.source and a.target < b.target)
    ]


def double_proposals(blocks: list[Block]) -> list[tuple[Block, Block]]:
    distinct = list(dict.fromkeys(blocks))
    return [(a, b) for a, b in combinations(distinct, 2) if a.slot == b.slot]

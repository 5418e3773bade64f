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


# --------------------------------------------------------------------------------------------------------------
# EIP-3076 as written, one imported file at a time.
#
# The oracle above answers for one merged list of records. That is not what EIP-3076 says: its conditions are
# stated "after importing an interchange file with data field `data`", so each imported file brings its own:
#
#   1. refuse a block slashable with respect to the file's blocks (a double proposal);
#   2. refuse a block with slot <= the file's lowest block slot for the key, except a repeat signing as
#      determined by the signing root;
#   3. refuse an attestation slashable with respect to the file's attestations (double or surround vote);
#   4. refuse an attestation with source epoch < the file's lowest source epoch for the key;
#   5. refuse an attestation with target epoch <= the file's lowest target epoch for the key, except a repeat
#      signing as determined by the signing root.
#
# Its "Advice for Complete Databases" is the reason the minima must stay per file: the gap between an older file's
# records and a newer file's lowest ones is "an area of unknown signing activity". A repeat (the identical message,
# with a signing root the database knows) is excepted from every bound, as conditions 2 and 5 say: signing the
# same message twice is never slashable. The sidecar's own messages add
# the consensus spec's double and surround votes, and the database's own lower bounds (its lowest recorded slot,
# source and target), as before. A minimal database keeps, after each import, only the highest block and the
# highest source and target (unknown roots) and refuses anything at or below them.


@dataclass
class Protection:
    """One key's protection after a sequence of imports and signings, kept as EIP-3076 describes it: each imported
    file's records apart from the others, the messages the sidecar allowed since, and (minimal strategy) the
    highest slot, source and target that minification kept."""

    minimal: bool = False
    files: list[Recorded] = field(default_factory=list)
    signed: Recorded = field(default_factory=Recorded)
    # Minimal strategy: what every import's minification raised the bounds to (the highest records so far).
    minimal_floors: Floors = Floors()
    # Lower bounds an operator raised (`repair`): nothing at or below them is signed anew, a repeat excepted.
    raised_floors: Floors = Floors()

    def everything(self) -> Recorded:
        """Every record known for the key, imported or signed, as one list (for the slashing conditions)."""
        raised = self.raised_floors
        if self.minimal:
            floors = self.minimal_floors
            return Recorded(
                list(self.signed.blocks),
                list(self.signed.attestations),
                Floors(
                    max(floors.slot, raised.slot),
                    max(floors.source, raised.source),
                    max(floors.target, raised.target),
                ),
            )
        return Recorded(
            [block for file in self.files for block in file.blocks] + self.signed.blocks,
            [a for file in self.files for a in file.attestations] + self.signed.attestations,
            raised,
        )

    def raise_floors(self, slot: int, source: int, target: int) -> None:
        """An operator's `repair`: lower bounds for everything after, kept apart from any file."""
        raised = self.raised_floors
        self.raised_floors = Floors(max(raised.slot, slot), max(raised.source, source), max(raised.target, target))

    def import_file(self, file: Recorded) -> None:
        self.files.append(file)
        if not self.minimal:
            return
        # EIP-3076's minimal strategy: of everything known, only the highest block and the highest source and
        # target survive, with unknown roots, and nothing at or below them may be signed anew.
        blocks = file.blocks + self.signed.blocks
        attestations = file.attestations + self.signed.attestations
        kept = Recorded(
            [Block(max(b.slot for b in blocks), None)] if blocks else [],
            [Attestation(max(a.source for a in attestations), max(a.target for a in attestations), None)]
            if attestations
            else [],
        )
        floors = self.minimal_floors
        self.minimal_floors = Floors(
            max([floors.slot, *(b.slot for b in kept.blocks)]),
            max([floors.source, *(a.source for a in kept.attestations)]),
            max([floors.target, *(a.target for a in kept.attestations)]),
        )
        self.signed = kept

    def block_reason(self, slot: int, root: bytes) -> Reason:
        reason = block_reason(self.everything(), slot, root)
        if reason.allows and not self.minimal and reason is not Reason.ALLOWED_REPEAT:
            for file in self.files:  # condition 2, file by file
                if file.blocks and slot <= min(block.slot for block in file.blocks):
                    return Reason.SLOT_AT_OR_BELOW_LOWER_BOUND
        return reason

    def attestation_reason(self, source: int, target: int, root: bytes) -> Reason:
        reason = attestation_reason(self.everything(), source, target, root)
        if reason.allows and not self.minimal and reason is not Reason.ALLOWED_REPEAT:
            for file in self.files:  # conditions 4 and 5, file by file
                if file.attestations and source < min(a.source for a in file.attestations):
                    return Reason.SOURCE_EPOCH_BELOW_LOWER_BOUND
            for file in self.files:
                if file.attestations and target <= min(a.target for a in file.attestations):
                    return Reason.TARGET_EPOCH_AT_OR_BELOW_LOWER_BOUND
        return reason

    def sign_block(self, slot: int, root: bytes) -> Reason:
        reason = self.block_reason(slot, root)
        if reason is Reason.ALLOWED_NEW:
            self.signed.blocks.append(Block(slot, root))
        return reason

    def sign_attestation(self, source: int, target: int, root: bytes) -> Reason:
        reason = self.attestation_reason(source, target, root)
        if reason is Reason.ALLOWED_NEW:
            self.signed.attestations.append(Attestation(source, target, root))
        return reason

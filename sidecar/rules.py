"""The slashing rules, as pure functions.

`check_block` and `check_attestation` take a validator's history (plain data: `ValidatorHistory`) and a
candidate message, and return a `Decision`. They do no I/O, take no lock and change nothing: the store calls them
inside its own critical section and records the result.

The rules are EIP-3076's conditions plus the consensus spec's slashing conditions:

* a block is a repeat (allowed, nothing new recorded) when a block with the same slot and the same *known*
  signing root is recorded; any other recorded block at that slot makes it a double proposal;
* a block at or below the lowest recorded slot (or the slot floor raised by pruning or repair) is refused;
* an attestation with source epoch > target epoch is refused;
* an attestation is a repeat when exactly one attestation is recorded at its target epoch, with the same source
  epoch and the same known signing root; any other recorded attestation at that target makes it a double vote;
* an attestation that surrounds a recorded one (new.source < old.source and old.target < new.target), or is
  surrounded by one (old.source < new.source and new.target < old.target), is refused;
* an attestation whose source epoch is below the lowest recorded source epoch (or the source floor), or whose
  target epoch is at or below the lowest recorded target epoch (or the target floor), is refused.

A signing root in a request is a value like any other, all zeros included. Only records imported without a
`signing_root` have an unknown root (`None`), and an unknown root never equals anything.

Beside each key's history, one value is global: the operator's high watermark (`HighWatermark`, a slot and an
epoch; `AdminService.SetHighWatermark`). While one is set, a block at or above its slot, and an attestation whose
source or target epoch is at or above its epoch, are refused, repeats included: it stops signing at a point an
operator chose, so that another cluster can take over from there. A backend passes it in as plain data.

The order of the checks is part of the contract, and every backend gets it by calling these functions: an
unregistered key first (fail closed: nothing is known of it), then the high watermark, then the key's own rules
in the order listed above.

Anything the rules do not positively allow is refused: there is no path that allows by default.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.history import ValidatorHistory

__all__ = [
    "ALLOWED_NEW",
    "ALLOWED_REPEAT",
    "NOT_REGISTERED",
    "Decision",
    "HighWatermark",
    "Reason",
    "check_attestation",
    "check_block",
    "vote_conflict",
]


class Reason(enum.IntEnum):
    """Why a decision was made. Values equal the proto `Reason` numbers, so they convert without a table."""

    ALLOWED_NEW = 1
    ALLOWED_REPEAT = 2
    DOUBLE_PROPOSAL = 3
    DOUBLE_VOTE = 4
    SURROUNDS_RECORDED_VOTE = 5
    SURROUNDED_BY_RECORDED_VOTE = 6
    SLOT_AT_OR_BELOW_LOWER_BOUND = 7
    SOURCE_EPOCH_BELOW_LOWER_BOUND = 8
    TARGET_EPOCH_AT_OR_BELOW_LOWER_BOUND = 9
    SOURCE_EPOCH_GREATER_THAN_TARGET_EPOCH = 10
    VALIDATOR_NOT_REGISTERED = 11
    AT_OR_BEYOND_HIGH_WATERMARK = 12

    @property
    def allows(self) -> bool:
        return self is Reason.ALLOWED_NEW or self is Reason.ALLOWED_REPEAT


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to "may I sign this?". `message` is a sentence for humans, naming the conflict if any."""

    reason: Reason
    message: str

    @property
    def allowed(self) -> bool:
        return self.reason.allows

    @property
    def records_new_message(self) -> bool:
        """True when recording this decision adds the message to the validator's history."""
        return self.reason is Reason.ALLOWED_NEW


@dataclass(frozen=True, slots=True)
class HighWatermark:
    """The global high watermark: no block at or above `slot`, and no attestation with a source or target epoch
    at or above `epoch`, is signed by any key. Which values a database accepts is the seam's to check
    (`sidecar.backend.valid_high_watermark`); the rules take any."""

    slot: int
    epoch: int


# Shared instances: allowed answers are the hot path and need no per-call text.
ALLOWED_NEW = Decision(Reason.ALLOWED_NEW, "allowed: no recorded message conflicts")
ALLOWED_REPEAT = Decision(Reason.ALLOWED_REPEAT, "allowed: identical message already recorded")
NOT_REGISTERED = Decision(Reason.VALIDATOR_NOT_REGISTERED, "refused: validator is not registered")


def _root_text(root: bytes | None) -> str:
    return "an unknown signing root" if root is None else f"signing root 0x{root.hex()}"


def check_block(
    history: ValidatorHistory | None, slot: int, signing_root: bytes, high_watermark: HighWatermark | None = None
) -> Decision:
    """Decides whether a block proposal at `slot` with `signing_root` may be signed, under `high_watermark` (None:
    no watermark is set)."""
    if history is None:
        return NOT_REGISTERED
    if high_watermark is not None and slot >= high_watermark.slot:
        return Decision(
            Reason.AT_OR_BEYOND_HIGH_WATERMARK,
            f"refused: slot {slot} is at or beyond the high watermark, slot {high_watermark.slot}",
        )
    blocks = history.blocks
    if slot in blocks:
        recorded = blocks[slot]
        if recorded is not None and recorded == signing_root:
            return ALLOWED_REPEAT
        return Decision(
            Reason.DOUBLE_PROPOSAL,
            f"refused: double proposal, a block at slot {slot} is recorded with {_root_text(recorded)}",
        )
    bound = history.slot_lower_bound()
    if bound is not None and slot <= bound:
        return Decision(
            Reason.SLOT_AT_OR_BELOW_LOWER_BOUND,
            f"refused: slot {slot} is at or below the lower bound, slot {bound}",
        )
    return ALLOWED_NEW


def check_attestation(
    history: ValidatorHistory | None,
    source_epoch: int,
    target_epoch: int,
    signing_root: bytes,
    high_watermark: HighWatermark | None = None,
) -> Decision:
    """Decides whether an attestation (source_epoch, target_epoch, signing_root) may be signed, under
    `high_watermark` (None: no watermark is set).

    Every lookup is a dictionary probe or a binary search over the validator's indexed history, so the cost does
    not grow with the length of that history.
    """
    if history is None:
        return NOT_REGISTERED
    if high_watermark is not None and (
        target_epoch >= high_watermark.epoch or source_epoch >= high_watermark.epoch
    ):
        return Decision(
            Reason.AT_OR_BEYOND_HIGH_WATERMARK,
            f"refused: the vote ({source_epoch}, {target_epoch}) is at or beyond the high watermark, "
            f"epoch {high_watermark.epoch}",
        )
    if history.is_next_honest_vote(source_epoch, target_epoch):
        return ALLOWED_NEW  # the usual vote: every check below would pass (see the method)
    if source_epoch <= target_epoch:
        same_target = history.attestations_at_target(target_epoch)
        if len(same_target) == 1:
            recorded_source, recorded_root = same_target[0]
            if recorded_source == source_epoch and recorded_root is not None and recorded_root == signing_root:
                return ALLOWED_REPEAT
    conflict = vote_conflict(history, source_epoch, target_epoch)
    if conflict is not None:
        return conflict
    source_bound = history.source_epoch_lower_bound()
    if source_bound is not None and source_epoch < source_bound:
        return Decision(
            Reason.SOURCE_EPOCH_BELOW_LOWER_BOUND,
            f"refused: source epoch {source_epoch} is below the lower bound, source epoch {source_bound}",
        )
    target_bound = history.target_epoch_lower_bound()
    if target_bound is not None and target_epoch <= target_bound:
        return Decision(
            Reason.TARGET_EPOCH_AT_OR_BELOW_LOWER_BOUND,
            f"refused: target epoch {target_epoch} is at or below the lower bound, target epoch {target_bound}",
        )
    return ALLOWED_NEW


def vote_conflict(history: ValidatorHistory, source_epoch: int, target_epoch: int) -> Decision | None:
    """The refusal a vote (source_epoch, target_epoch) other than the identical repeat meets against the recorded
    votes alone, or None: the consensus spec's slashing conditions (`is_slashable_attestation_data`: a double
    vote, any other recorded vote at the target; a surround, either way) and a source above its target.

    The one conflict predicate: `check_attestation` refuses with it (after its repeat check and before the lower
    bounds), and the import merge (`ValidatorHistory.add_attestation`) marks with it a record that is slashable
    evidence against the history it joins. Checked in that order, which is the order of the reasons it names.
    """
    if source_epoch > target_epoch:
        return Decision(
            Reason.SOURCE_EPOCH_GREATER_THAN_TARGET_EPOCH,
            f"refused: source epoch {source_epoch} is greater than target epoch {target_epoch}",
        )
    same_target = history.attestations_at_target(target_epoch)
    if same_target:
        recorded_source, recorded_root = same_target[0]
        return Decision(
            Reason.DOUBLE_VOTE,
            f"refused: double vote, an attestation with target epoch {target_epoch} is recorded "
            f"(source epoch {recorded_source}, {_root_text(recorded_root)})",
        )
    surrounded = history.recorded_vote_surrounded_by(source_epoch, target_epoch)
    if surrounded is not None:
        return Decision(
            Reason.SURROUNDS_RECORDED_VOTE,
            f"refused: the vote ({source_epoch}, {target_epoch}) surrounds the recorded vote "
            f"({surrounded[0]}, {surrounded[1]})",
        )
    surrounding = history.recorded_vote_surrounding(source_epoch, target_epoch)
    if surrounding is not None:
        return Decision(
            Reason.SURROUNDED_BY_RECORDED_VOTE,
            f"refused: the vote ({source_epoch}, {target_epoch}) is surrounded by the recorded vote "
            f"({surrounding[0]}, {surrounding[1]})",
        )
    return None

"""The in-memory state of a data directory: one `ValidatorHistory` per registered key, and how a recorded
decision, registration or import changes it.

This is the one place both the hot path and recovery call: a record is applied right after it is appended, and
identically when it is replayed (replay re-applies recorded verdicts; it never re-decides). Keeping it here, below
the store, recovery, imports and checkpoints, is what keeps those from importing each other in circles.

Every function here assumes the caller holds the store's lock (`_locked`), or is recovery or repair, which run
before anyone else can see the state. Each validator carries the sequence number of the newest record applied to
it (`applied_sequence`); replay skips records at or below it, which is what makes fuzzy checkpoints safe.
"""

from __future__ import annotations

from collections.abc import Iterable

from sidecar import records as codec
from sidecar.audit import decode_decision
from sidecar.backend import ImportStatus, ValidatorSummary
from sidecar.history import (
    EPOCH_FLOOR_NONE,
    SLOT_FLOOR_NONE,
    SOURCE_FLOOR_NONE,
    MergeOutcome,
    StagedHistory,
    ValidatorHistory,
)
from sidecar.rules import Reason

__all__ = [
    "Floors",
    "ValidatorStates",
    "apply_attestation_locked",
    "apply_block_locked",
    "summarize",
]

# Module constants rather than enum attributes: apply_attestation_locked runs once per replayed record.
_ALLOWED_NEW = int(Reason.ALLOWED_NEW)
_ALLOWED_REPEAT = int(Reason.ALLOWED_REPEAT)

# A key's lower bounds (slot, source epoch, target epoch), None where there is none.
Floors = tuple[int | None, int | None, int | None]


# The two decision kinds are applied by two functions of one shape rather than one function taking the kind's
# own "add" and "prune" as arguments: attestations are nearly the whole log, replay of 1,000,000 of them is
# restart time, and each argument bound per record would be one more call on that path.


def apply_block_locked(
    history: ValidatorHistory,
    sequence: int,
    slot: int,
    signing_root: bytes,
    reason: int,
    payload: bytes,
    window: int | None,
) -> None:
    """Applies one recorded block decision to its validator's history (live and at replay alike)."""
    history.applied_sequence = sequence
    history.last_decision_sequence = sequence
    history.last_decision = payload
    if reason == _ALLOWED_NEW:
        history.allowed_count += 1
        history.add_block(slot, signing_root)
        if window is not None:
            history.prune_blocks(window)
    elif reason == _ALLOWED_REPEAT:
        history.allowed_count += 1
    else:
        history.refused_count += 1


def apply_attestation_locked(
    history: ValidatorHistory,
    sequence: int,
    source_epoch: int,
    target_epoch: int,
    signing_root: bytes,
    reason: int,
    payload: bytes,
    window: int | None,
) -> None:
    """Applies one recorded attestation decision to its validator's history (live and at replay alike)."""
    history.applied_sequence = sequence
    history.last_decision_sequence = sequence
    history.last_decision = payload
    if reason == _ALLOWED_NEW:
        history.allowed_count += 1
        if not history.add_attestation_if_newest(source_epoch, target_epoch, signing_root):
            history.add_attestation(source_epoch, target_epoch, signing_root)
        if window is not None:
            history.prune_attestations(window)
    elif reason == _ALLOWED_REPEAT:
        history.allowed_count += 1
    else:
        history.refused_count += 1


class ValidatorStates:
    """The histories of every registered key, and the history window they are pruned to.

    `validators` is the plain dict, read directly by the hot path (one probe per decision).
    """

    __slots__ = ("validators", "window")

    def __init__(self, window: int | None) -> None:
        self.validators: dict[bytes, ValidatorHistory] = {}
        self.window = window

    def __len__(self) -> int:
        return len(self.validators)

    def register_locked(self, pubkeys: Iterable[bytes], sequence: int) -> int:
        """Adds an empty history for each key not yet registered; returns how many were added."""
        added = 0
        validators = self.validators
        for pubkey in pubkeys:
            if pubkey not in validators:
                history = ValidatorHistory()
                history.applied_sequence = sequence
                validators[pubkey] = history
                added += 1
        return added

    def apply_import_locked(
        self,
        pubkey: bytes,
        minimal: bool,
        imported: ValidatorHistory,
        commit_sequence: int,
        record_sequence: int,
    ) -> tuple[ImportStatus, tuple[Floors, Floors] | None]:
        """Applies one validator of an import: live right after its records are appended, and at replay of its
        commit, identically. `imported` is the staged history (StagedHistory.finish, or its log record), whose
        floors include the document's minima (EIP-3076 conditions apply per imported file): merging raises this
        key's floors to them whatever history it already had. Returns the key's status and, for a key that had
        history, its floors before and after (see `sidecar.local.imports` for how they read)."""
        history = self.validators.get(pubkey)
        existed = history is not None and bool(history.blocks or history.targets)
        floors_before = history.lower_bounds() if existed and history is not None else None
        if history is None:
            # A new key takes the staged history itself: what absorbing it into an empty history gives (see
            # ValidatorHistory.absorb), without building one. Its status is IMPORTED whatever follows.
            self.validators[pubkey] = history = imported
            outcome = MergeOutcome.ADDED
            before = None
        elif history.applied_sequence >= commit_sequence:
            return ImportStatus.UNCHANGED, None  # replay over a checkpoint that already holds this import
        else:
            before = history.fingerprint() if minimal else None
            outcome = history.absorb(imported)
        changed = outcome is not MergeOutcome.UNCHANGED
        if minimal:
            history.minify()
            # Minifying can change a history that every imported record already matched.
            changed = before is None or history.fingerprint() != before
        if self.window is not None:
            # Exactly to the window, without the decisions' slack: the staging pruned the document the same way,
            # and together they give what pruning the whole document once would (see StagedHistory).
            history.prune(self.window, slack_epochs=0)
        history.applied_sequence = max(history.applied_sequence, commit_sequence, record_sequence)
        floors = (floors_before, history.lower_bounds()) if floors_before is not None else None
        if outcome is MergeOutcome.CONFLICT:
            return ImportStatus.IMPORTED_SLASHABLE_DATA, floors
        if not changed:
            return (ImportStatus.UNCHANGED if existed else ImportStatus.IMPORTED), floors
        return (ImportStatus.MERGED if existed else ImportStatus.IMPORTED), floors

    def staged_v01_import(self, record: codec.ImportValidatorRecord) -> codec.ImportedValidator:
        """A v0.1 import record (type 4: every record of the document, no floors) as the history the live path
        would have staged from the same records, the document's minima as floors included (EIP-3076's conditions
        for that file, which v0.1 did not enforce: replay now does, which only refuses more)."""
        staged = StagedHistory(self.window, record.minimal)
        staged.add_blocks(record.blocks)
        staged.add_attestations(record.attestations)
        return codec.ImportedValidator(record.minimal, record.pubkey, staged.finish())


def summarize(pubkey: bytes, history: ValidatorHistory) -> ValidatorSummary:
    """Counts and bounds of one key, as an operator reads them (copy under the lock)."""
    return ValidatorSummary(
        pubkey=pubkey,
        block_count=len(history.blocks),
        attestation_count=history.attestation_count,
        lowest_slot=history.lowest_slot,
        highest_slot=history.highest_slot,
        lowest_source_epoch=history.lowest_source_epoch,
        highest_source_epoch=history.highest_source_epoch,
        lowest_target_epoch=history.targets[0] if history.targets else None,
        highest_target_epoch=history.targets[-1] if history.targets else None,
        slot_floor=None if history.slot_floor == SLOT_FLOOR_NONE else history.slot_floor,
        source_epoch_floor=(
            None if history.source_epoch_floor == SOURCE_FLOOR_NONE else history.source_epoch_floor
        ),
        target_epoch_floor=(
            None if history.target_epoch_floor == EPOCH_FLOOR_NONE else history.target_epoch_floor
        ),
        allowed_decisions=history.allowed_count,
        refused_decisions=history.refused_count,
        last_decision=decode_decision(history.last_decision_sequence, history.last_decision),
    )

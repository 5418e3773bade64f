"""The in-memory state of a data directory: one `ValidatorHistory` per registered key and the global high
watermark, and how a recorded decision, registration, import or watermark changes it.

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
    StagedHistory,
    ValidatorHistory,
)
from sidecar.import_merge import merge_imported
from sidecar.import_merge import summarize as shared_summarize
from sidecar.rules import HighWatermark, Reason

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
    """The histories of every registered key, the history window they are pruned to, and the high watermark in
    force (None: none).

    `validators` is the plain dict, read directly by the hot path (one probe per decision). `high_watermark` is
    replaced whole, never changed in place, so the hot path reads it once per lock hold.
    """

    __slots__ = ("high_watermark", "validators", "window")

    def __init__(self, window: int | None) -> None:
        self.validators: dict[bytes, ValidatorHistory] = {}
        self.window = window
        self.high_watermark: HighWatermark | None = None

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
    ) -> tuple[ImportStatus, str]:
        """Applies one validator of an import: live right after its records are appended, and at replay of its
        commit, identically. `imported` is the staged history (StagedHistory.finish, or its log record), whose
        floors include the document's minima (EIP-3076 conditions apply per imported file): merging raises this
        key's floors to them whatever history it already had. Returns the key's status and, for a key that had
        history, the bounds it raised as a sentence (see `sidecar.import_merge`)."""
        history = self.validators.get(pubkey)
        if history is not None and history.applied_sequence >= commit_sequence:
            return ImportStatus.UNCHANGED, ""  # replay over a checkpoint that already holds this import
        history, status, raised = merge_imported(history, imported, minimal, self.window)
        self.validators[pubkey] = history
        history.applied_sequence = max(history.applied_sequence, commit_sequence, record_sequence)
        return status, raised

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
    last_decision = decode_decision(history.last_decision_sequence, history.last_decision)
    return shared_summarize(pubkey, history, history.allowed_count, history.refused_count, last_decision)

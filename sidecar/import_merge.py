"""What every backend does the same way with a key's history, beside the rules: one source of truth, so that the
local data directory and the shared database agree on every EIP-3076 vector and every summary.

* `merge_imported`: the second half of an import (the first is `sidecar.import_staging`): a key's staged
  history merged into the one it has, floors raised to the document's minima (EIP-3076's conditions apply per
  imported file), minified in the minimal strategy, pruned to exactly the window; with the key's status and the
  bounds the import raised, as the operator reads them.
* `staged_status`, `count_import`: a key's final status and the document's result.
* `interchange_records`: one key's EIP-3076 entry, floors carried as records.
* `summarize`: one key's `ValidatorSummary`.
"""

from __future__ import annotations

import logging

from interchange import SignedAttestation, SignedBlock, ValidatorRecords
from sidecar.audit import DecisionRecord
from sidecar.backend import ImportResult, ImportStatus, ValidatorImportOutcome, ValidatorSummary
from sidecar.history import (
    EPOCH_FLOOR_NONE,
    SLOT_FLOOR_NONE,
    SOURCE_FLOOR_NONE,
    MergeOutcome,
    StagedHistory,
    ValidatorHistory,
)

__all__ = [
    "MAX_LISTED_IMPORT_RESULTS",
    "count_import",
    "interchange_records",
    "merge_imported",
    "staged_status",
    "summarize",
]

log = logging.getLogger("sidecar.store")

# Results listed per import response; the rest are counted (keeps a 1,000,000-key response far below 4 MiB).
MAX_LISTED_IMPORT_RESULTS = 1000

Bounds = tuple[int | None, int | None, int | None]


def merge_imported(
    history: ValidatorHistory | None, imported: ValidatorHistory, minimal: bool, window: int | None
) -> tuple[ValidatorHistory, ImportStatus, str]:
    """Merges one key's staged import (StagedHistory.finish, or its log record) into its history (None: the key
    is new). Returns the resulting history (`imported` itself for a new key: what absorbing it into an empty one
    gives, without building one), the key's status and, for a key that had history, the bounds the import raised
    as a sentence ("" when none rose)."""
    existed = history is not None and bool(history.blocks or history.targets)
    bounds_before = history.lower_bounds() if existed and history is not None else None
    before: tuple[object, ...] | None
    if history is None:
        history = imported
        outcome = MergeOutcome.ADDED
        before = None
    else:
        before = history.fingerprint() if minimal else None
        outcome = history.absorb(imported)
    changed = outcome is not MergeOutcome.UNCHANGED
    if minimal:
        history.minify()
        # Minifying can change a history that every imported record already matched.
        changed = before is None or history.fingerprint() != before
    if window is not None:
        # Exactly to the window, without the decisions' slack: the staging pruned the document the same way, and
        # together they give what pruning the whole document once would (see StagedHistory).
        history.prune(window, slack_epochs=0)
    raised = _raised_bounds_text(bounds_before, history.lower_bounds()) if bounds_before is not None else ""
    if outcome is MergeOutcome.CONFLICT:
        return history, ImportStatus.IMPORTED_SLASHABLE_DATA, raised
    if not changed:
        return history, (ImportStatus.UNCHANGED if existed else ImportStatus.IMPORTED), raised
    return history, (ImportStatus.MERGED if existed else ImportStatus.IMPORTED), raised


def staged_status(stage: StagedHistory, status: ImportStatus) -> ImportStatus:
    """A key's import status once what its staging saw is known: minified, or slashable within the document."""
    if stage.reduced and status in (ImportStatus.IMPORTED, ImportStatus.MERGED):
        return ImportStatus.MINIFIED
    if stage.slashable and status is ImportStatus.IMPORTED:
        # Merging into an empty history does not look for conflicts among the records; staging did.
        return ImportStatus.IMPORTED_SLASHABLE_DATA
    return status


def count_import(result: ImportResult, pubkey: bytes, status: ImportStatus, raised_bounds: str = "") -> None:
    """Counts one key into the document's result, listing it (with its message) unless it imported cleanly."""
    result.status_counts[status] = result.status_counts.get(status, 0) + 1
    if status is ImportStatus.IMPORTED:
        result.imported += 1
        return
    if len(result.results) >= MAX_LISTED_IMPORT_RESULTS:
        result.results_omitted += 1
        return
    message = _IMPORT_MESSAGES[status]
    result.results.append(
        ValidatorImportOutcome(pubkey, status, f"{message}; {raised_bounds}" if raised_bounds else message)
    )


_IMPORT_MESSAGES = {
    ImportStatus.MERGED: "merged with the history already recorded",
    ImportStatus.MINIFIED: "minimal strategy: kept the highest block and attestation only",
    ImportStatus.UNCHANGED: "every record was already known; nothing changed",
    ImportStatus.IMPORTED_SLASHABLE_DATA: (
        "the file holds slashable data (a double proposal, a double or surround vote, or a source above its "
        "target, within the file or against the recorded history); kept as it is, which only refuses more"
    ),
}

_BOUND_NAMES = ("slot", "source epoch", "target epoch")


def _raised_bounds_text(before: Bounds, after: Bounds) -> str:
    """The lower bounds an import raised, as the operator reads them: "raised the lower bounds: slot 6739 (was
    5701), ..." (a block needs a slot above it, an attestation a source at or above it and a target above it)."""
    raised = [
        f"{name} {new}" + ("" if old is None else f" (was {old})")
        for name, old, new in zip(_BOUND_NAMES, before, after, strict=True)
        if new != old
    ]
    return "raised the lower bounds: " + ", ".join(raised) if raised else ""


def interchange_records(pubkey: bytes, history: ValidatorHistory) -> ValidatorRecords:
    """One key's EIP-3076 entry, floors carried as records (see ValidatorHistory.export_*)."""
    blocks = history.export_blocks()
    attestations, minified = history.export_attestations()
    if minified:
        log.warning(
            "export of 0x%s: attestations minified to carry the lower bounds raised by pruning or repair",
            pubkey.hex(),
        )
    return ValidatorRecords(
        pubkey,
        tuple(SignedBlock(slot, root) for slot, root in blocks),
        tuple(SignedAttestation(a.source_epoch, a.target_epoch, a.signing_root) for a in attestations),
    )


def summarize(
    pubkey: bytes,
    history: ValidatorHistory,
    allowed_decisions: int,
    refused_decisions: int,
    last_decision: DecisionRecord | None,
) -> ValidatorSummary:
    """GetValidatorSummary's value for one key's history and decision counts."""
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
        source_epoch_floor=None if history.source_epoch_floor == SOURCE_FLOOR_NONE else history.source_epoch_floor,
        target_epoch_floor=None if history.target_epoch_floor == EPOCH_FLOOR_NONE else history.target_epoch_floor,
        allowed_decisions=allowed_decisions,
        refused_decisions=refused_decisions,
        last_decision=last_decision,
    )

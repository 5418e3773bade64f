"""Recovery: the newest checkpoint that verifies, then the log after it replayed into memory.

Shared by opening a directory (`recover`, which also repairs a torn tail) and by `repair` (`load_checkpoint` and
`replay`, which stops at the first damage and says how far it got). A checkpoint that does not verify is skipped
for an older one, saying so; any damage in the log other than a torn tail refuses, naming file and offset.

Replay re-applies recorded verdicts through `sidecar.local.state`, the same functions the live path uses, and
skips a record at or below its validator's applied sequence (a fuzzy checkpoint may already hold it). An import's
records change nothing until its commit, which names how many of the import records before it are its own.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import chain

from sidecar import records as codec
from sidecar.errors import DataDirError
from sidecar.local.layout import DataDirLayout
from sidecar.local.state import ValidatorStates, apply_attestation_locked, apply_block_locked
from sidecar.rules import Reason
from sidecar.storage import FileOps, LoadedCheckpoint, load_newest_valid_checkpoint, repair_torn_tail, scan_log

__all__ = ["Recovered", "RecoveryInfo", "load_checkpoint", "recover", "replay"]

log = logging.getLogger("sidecar.store")

_REASON_NUMBERS = frozenset(int(reason) for reason in Reason)
# A log line this often during a long recovery, so an operator sees it move.
RECOVERY_PROGRESS_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class RecoveryInfo:
    checkpoint_sequence: int
    replayed_records: int
    validators: int
    seconds: float
    repaired_torn_tail: bool
    problems: tuple[str, ...]


@dataclass(slots=True)
class Recovered:
    """State being recovered, and how far recovery got: `through` is the newest record read (the checkpoint's
    sequence before any), updated as replay goes, so a caller that stops at damage knows the last good one."""

    state: ValidatorStates
    checkpoint: LoadedCheckpoint | None
    problems: list[str] = field(default_factory=list)
    replayed: int = 0
    through: int = 0

    @property
    def checkpoint_sequence(self) -> int:
        return self.checkpoint.sequence if self.checkpoint is not None else 0


def load_checkpoint(
    layout: DataDirLayout, fileops: FileOps, genesis_validators_root: bytes, window: int | None
) -> Recovered:
    """Loads the newest checkpoint that verifies into a new state; says which newer ones were skipped.

    Raises DataDirError for a checkpoint of another chain or one that verifies but does not decode.
    """
    checkpoint_dir = layout.checkpoint_dir
    fileops.makedirs(checkpoint_dir)
    loaded, problems = load_newest_valid_checkpoint(checkpoint_dir, fileops)
    for problem in problems:
        log.warning("checkpoint skipped, falling back to an older one: %s", problem)
    recovered = Recovered(ValidatorStates(window), loaded, list(problems))
    if loaded is not None:
        if loaded.genesis_validators_root != genesis_validators_root:
            raise DataDirError(
                f"checkpoint {loaded.path} belongs to genesis validators root "
                f"0x{loaded.genesis_validators_root.hex()}, not this directory's"
            )
        validators = recovered.state.validators
        try:
            recovered.state.high_watermark = codec.decode_checkpoint_header(loaded.body).high_watermark
            for entry in codec.decode_checkpoint_body(loaded.body):
                validators[entry.pubkey] = entry.history
        except codec.CodecError as error:
            raise DataDirError(f"checkpoint {loaded.path} does not decode: {error}") from error
        recovered.through = loaded.sequence
    return recovered


def replay(recovered: Recovered, batches: Iterable[list[tuple[int, int, bytes]]]) -> None:
    """Applies log records in order, given in batches of `(sequence, record_type, payload)` as `LogScan.batches`
    yields them, counting them in `recovered.replayed` and following progress in `recovered.through`.

    Raises DataDirError for a record that does not decode, of an unknown type or reason, or an import commit for
    more records than precede it (and LogCorruptionError, from the scan, for damaged framing).
    """
    state = recovered.state
    pending_import: list[tuple[int, codec.ImportedValidator]] = []
    # Attestation decisions are nearly the whole log, and restart time is this loop: they take a path with no
    # record objects and no calls but the unpack and the apply, applied by the same function as live decisions.
    attestation_type = codec.ATTESTATION_DECISION
    unpack = codec.unpack_attestation_decision
    reasons = _REASON_NUMBERS
    apply = apply_attestation_locked
    get = state.validators.get
    window = state.window
    replayed = recovered.replayed
    next_report = time.monotonic() + RECOVERY_PROGRESS_SECONDS
    try:
        for sequence, record_type, payload in chain.from_iterable(batches):
            replayed += 1
            if not replayed % 65536 and time.monotonic() >= next_report:
                log.info("recovering: %d log records replayed so far (sequence %d)", replayed, sequence)
                next_report = time.monotonic() + RECOVERY_PROGRESS_SECONDS
            if record_type == attestation_type:
                try:
                    pubkey, source, target, root, reason, _, _ = unpack(payload)
                except struct.error:
                    raise DataDirError(
                        f"log record {sequence} does not decode: attestation payload size"
                    ) from None
                if reason not in reasons:
                    raise DataDirError(f"log record {sequence} has unknown reason {reason}")
                history = get(pubkey)
                if history is not None and sequence > history.applied_sequence:
                    apply(history, sequence, source, target, root, reason, payload, window)
                recovered.through = sequence
                continue
            try:
                if record_type == codec.IMPORT_PRUNED_VALIDATOR:
                    pending_import.append((sequence, codec.decode_import_pruned_validator(payload)))
                elif record_type == codec.IMPORT_VALIDATOR:
                    pending_import.append(
                        (sequence, state.staged_v01_import(codec.decode_import_validator(payload)))
                    )
                elif record_type == codec.IMPORT_COMMIT:
                    # Its records are the last `count` import records; any before are a crashed import's.
                    count = codec.decode_import_commit(payload)
                    if count > len(pending_import):
                        # Checkpoints wait for an import to commit, so its records are all in the tail: a commit
                        # for more is damage, and applying part of an acknowledged import would be unsafe.
                        raise DataDirError(
                            f"log record {sequence}: import commit for {count} validators follows only "
                            f"{len(pending_import)} import records"
                        )
                    for import_sequence, imported in pending_import[len(pending_import) - count :]:
                        state.apply_import_locked(
                            imported.pubkey, imported.minimal, imported.history, sequence, import_sequence
                        )
                    pending_import = []
                elif record_type == codec.BLOCK_DECISION:
                    block = codec.decode_block_decision(payload)
                    history = get(block.pubkey)
                    if history is not None and sequence > history.applied_sequence:
                        apply_block_locked(
                            history, sequence, block.slot, block.signing_root, block.reason, payload, window
                        )
                elif record_type == codec.REGISTER:
                    # Decisions and registrations may come between an import's records and its commit; they do
                    # not end it (see sidecar.records).
                    state.register_locked(codec.decode_register(payload), sequence)
                elif record_type == codec.HIGH_WATERMARK:
                    # Every one after the checkpoint is newer than the checkpoint's: the last one read wins.
                    state.high_watermark = codec.decode_high_watermark(payload)
                else:
                    raise DataDirError(
                        f"log record {sequence} has unknown type {record_type} (written by a newer sidecar, or "
                        "damaged: see `slashing-sidecar verify`)"
                    )
            except codec.CodecError as error:
                raise DataDirError(
                    f"log record {sequence} (type {record_type}) does not decode: {error}"
                ) from error
            recovered.through = sequence
    finally:
        recovered.replayed = replayed


def recover(
    layout: DataDirLayout, fileops: FileOps, genesis_validators_root: bytes, window: int | None
) -> tuple[Recovered, int, bool]:
    """What opening a directory does before the log takes appends: the checkpoint, the replay of the log after it
    and the repair of a torn tail. Returns the state, the next sequence number and whether a tail was repaired.
    Refuses (DataDirError, LogCorruptionError) on any other damage."""
    log_dir = layout.log_dir
    fileops.makedirs(log_dir)
    recovered = load_checkpoint(layout, fileops, genesis_validators_root, window)
    scan = scan_log(log_dir, fileops, after_sequence=recovered.checkpoint_sequence)
    replay(recovered, scan.batches())
    repaired = False
    if scan.torn_tail is not None:
        repair_torn_tail(scan.torn_tail, fileops)
        repaired = True
    return recovered, scan.next_sequence, repaired

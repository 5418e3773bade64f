"""The store: the one owner of the data directory, the decision log, the checkpoints and the in-memory state.

Layout of a data directory (created 0700, files 0600):

    DIR/LOCK                         OS lock held by the one process using DIR (sidecar.storage.dirlock)
    DIR/IDENTITY.json                {"format": 1, "genesis_validators_root": "0x.."}; written once, atomically
    DIR/log/%020d.log                decision log segments (sidecar.storage.log, payloads in state_codec)
    DIR/checkpoints/checkpoint-%020d.ckpt   checkpoints (sidecar.storage.checkpoint)
    DIR/archive/                     log segments covered by checkpoints, when the operator keeps an audit trail

Start = lock, identity, newest checkpoint that verifies (older ones if it does not, saying so), replay of the log
after it (a torn tail is repaired; any other damage refuses to start, naming file and offset).

Concurrency: one lock (`_lock`) guards the in-memory state and the order of log appends (an import's records,
which change nothing until its commit, are the one exception; see `import_interchange`). A decision holds it
for the rule check, the (non-blocking) append and the update of the history: a few microseconds, never an fsync.
Durability is waited for after the lock is released, through the log's group commit; a record is durable only
after every record before it is, so a decision taken against a not-yet-durable record is safe: if a crash loses
the earlier record, it loses the later one too, and neither was answered ALLOWED.

Checkpoints are fuzzy: validators are copied in chunks, releasing the lock between chunks so signing goes on. Each
validator carries the sequence number of the newest record applied to it; replay skips records at or below it.
The checkpoint file is written only once every record it includes is durable, so it never holds a decision the
log could lose.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import struct
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import BinaryIO, NamedTuple

from interchange import (
    InterchangeError,
    Metadata,
    SignedAttestation,
    SignedBlock,
    ValidatorRecords,
    write_interchange,
)
from sidecar.audit import DecisionRecord, decode_decision, read_decisions
from sidecar.backend import (
    SUMMARY_BOUNDS,
    SUMMARY_COUNTS,
    AttestationRequest,
    ImportResult,
    ImportStatus,
    Strategy,
    ValidatorImportOutcome,
    ValidatorSummary,
)
from sidecar.errors import (
    DataDirError,
    GenesisRootMismatchError,
    ImportRefusedError,
    InvalidRequestError,
    UnknownValidatorError,
)
from sidecar.history import (
    EPOCH_FLOOR_NONE,
    SLOT_FLOOR_NONE,
    SOURCE_FLOOR_NONE,
    MergeOutcome,
    StagedHistory,
    ValidatorHistory,
)
from sidecar.import_staging import stage_interchange
from sidecar.rules import Decision, Reason, check_attestation, check_block
from sidecar.storage import (
    DataDirLock,
    DecisionLog,
    FileOps,
    LoadedCheckpoint,
    LogCorruptionError,
    load_newest_valid_checkpoint,
    prune_checkpoints,
    repair_torn_tail,
    scan_log,
    write_checkpoint,
)
from sidecar.storage import state_codec as codec

# The value types are the seam's (sidecar.backend); re-exported for the local backend's callers.
__all__ = [
    "DEFAULT_HISTORY_WINDOW_EPOCHS",
    "SUMMARY_BOUNDS",
    "SUMMARY_COUNTS",
    "AttestationRequest",
    "ImportResult",
    "ImportStatus",
    "Store",
    "StoreOptions",
    "Strategy",
    "ValidatorImportOutcome",
    "ValidatorSummary",
    "count_import",
    "interchange_records",
    "merge_imported",
    "staged_status",
    "summarize",
]

log = logging.getLogger("sidecar.store")

IDENTITY_FILE = "IDENTITY.json"
_REASON_NUMBERS = frozenset(int(reason) for reason in Reason)
# Module constants rather than enum attributes: _apply_attestation runs once per replayed record.
_ALLOWED_NEW = int(Reason.ALLOWED_NEW)
_ALLOWED_REPEAT = int(Reason.ALLOWED_REPEAT)
IDENTITY_FORMAT = 1
PUBKEY_SIZE = 48
ROOT_SIZE = 32
# 64 epochs (~6.8 hours) of attestations per validator: about 4 KiB each, so 100,000 validators stay well under
# 1 GB. Pruning only ever adds refusals (see sidecar.history), so the window trades memory for the ability to
# sign old messages out of order, never safety.
DEFAULT_HISTORY_WINDOW_EPOCHS = 64
# Validators copied per lock hold while taking a checkpoint or an export: about a millisecond of encoding with
# a full history window, so a decision never waits long behind a checkpoint.
SNAPSHOT_CHUNK = 50
CHECKPOINT_PAUSE_SECONDS = 0.001
# A log line this often during a long recovery, so an operator sees it move.
RECOVERY_PROGRESS_SECONDS = 5.0
# Results listed per import response; the rest are counted (keeps a 1,000,000-key response far below 4 MiB).
MAX_LISTED_IMPORT_RESULTS = 1000
# An import's records go to the log in parts of about this size, each durable before the next is encoded.
IMPORT_PART_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class StoreOptions:
    strategy: Strategy = Strategy.COMPLETE
    history_window_epochs: int | None = DEFAULT_HISTORY_WINDOW_EPOCHS
    segment_bytes: int = 64 * 1024 * 1024
    checkpoint_keep: int = 3
    archive_segments: bool = False
    fileops: FileOps = field(default_factory=FileOps)
    clock_ns: Callable[[], int] = time.time_ns
    on_health_change: Callable[[bool], None] | None = None
    on_fsync: Callable[[float, int, int], None] | None = None


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    sequence: int
    validators: int
    path: Path
    seconds: float


@dataclass(frozen=True, slots=True)
class RecoveryInfo:
    checkpoint_sequence: int
    replayed_records: int
    validators: int
    seconds: float
    repaired_torn_tail: bool
    problems: tuple[str, ...]


class Store:
    """Owns DIR. Create with `Store.open_or_create`; every public method is thread-safe."""

    def __init__(
        self,
        data_dir: Path,
        genesis_validators_root: bytes,
        options: StoreOptions,
        dir_lock: DataDirLock,
    ) -> None:
        self.data_dir = data_dir
        self.genesis_validators_root = genesis_validators_root
        self.options = options
        self._dir_lock = dir_lock
        self._lock = threading.Lock()
        self._checkpoint_lock = threading.Lock()
        self._validators: dict[bytes, ValidatorHistory] = {}
        self._log: DecisionLog | None = None
        self._window = options.history_window_epochs
        self._now = options.clock_ns
        self.recovery: RecoveryInfo | None = None
        self._replayed_through = 0
        self._newest_in_checkpoint = 0
        self.last_checkpoint_unix: float | None = None
        self._closed = False

    # ---------------------------------------------------------------- opening

    @classmethod
    def open_or_create(
        cls,
        data_dir: Path,
        genesis_validators_root: bytes | None,
        options: StoreOptions | None = None,
    ) -> Store:
        """Locks DIR (creating it on first use), recovers its state and opens the log for appending.

        `genesis_validators_root` is required to create a directory and, when given for an existing one, must
        match the one it was created with.
        """
        options = options or StoreOptions()
        fileops = options.fileops
        started = time.monotonic()
        if genesis_validators_root is None and not fileops.exists(data_dir / IDENTITY_FILE):
            # Checked before the lock creates anything: a refused first start leaves no directory behind.
            raise DataDirError(
                f"{data_dir} is not a sidecar data directory yet: give --network or --genesis-validators-root "
                "to create it"
            )
        dir_lock = DataDirLock.acquire(data_dir, fileops=fileops)
        try:
            root = _open_identity(data_dir, genesis_validators_root, fileops)
            store = cls(data_dir, root, options, dir_lock)
            with bulk_loading():
                store._recover(started)
        except BaseException:
            dir_lock.release()
            raise
        return store

    def _recover(self, started: float) -> None:
        fileops = self.options.fileops
        log_dir = self.data_dir / "log"
        fileops.makedirs(log_dir)
        loaded, problems = self._load_checkpoint()
        covered = loaded.sequence if loaded is not None else 0
        scan = scan_log(log_dir, fileops, after_sequence=covered)
        replayed = self._replay(scan.batches())
        repaired = False
        if scan.torn_tail is not None:
            repair_torn_tail(scan.torn_tail, fileops)
            repaired = True
        self._log = DecisionLog.open(
            log_dir,
            fileops=fileops,
            next_sequence=scan.next_sequence,
            segment_bytes=self.options.segment_bytes,
            on_health_change=self.options.on_health_change,
            on_fsync=self.options.on_fsync,
        )
        if loaded is not None:
            self.last_checkpoint_unix = loaded.created_unix
        self.recovery = RecoveryInfo(
            checkpoint_sequence=covered,
            replayed_records=replayed,
            validators=len(self._validators),
            seconds=time.monotonic() - started,
            repaired_torn_tail=repaired,
            problems=tuple(problems),
        )

    def _load_checkpoint(self) -> tuple[LoadedCheckpoint | None, list[str]]:
        """Loads the newest checkpoint that verifies into memory; says which newer ones were skipped."""
        fileops = self.options.fileops
        checkpoint_dir = self.data_dir / "checkpoints"
        fileops.makedirs(checkpoint_dir)
        loaded, problems = load_newest_valid_checkpoint(checkpoint_dir, fileops)
        for problem in problems:
            log.warning("checkpoint skipped, falling back to an older one: %s", problem)
        if loaded is not None:
            if loaded.genesis_validators_root != self.genesis_validators_root:
                raise DataDirError(
                    f"checkpoint {loaded.path} belongs to genesis validators root "
                    f"0x{loaded.genesis_validators_root.hex()}, not this directory's"
                )
            try:
                for entry in codec.decode_checkpoint_body(loaded.body):
                    self._validators[entry.pubkey] = entry.history
            except codec.CodecError as error:
                raise DataDirError(f"checkpoint {loaded.path} does not decode: {error}") from error
            self._replayed_through = loaded.sequence
        return loaded, problems

    def _replay(self, batches: Iterable[list[tuple[int, int, bytes]]]) -> int:
        """Applies log records in order, given in batches of `(sequence, record_type, payload)` as
        `LogScan.batches` yields them; returns how many were read. `_replayed_through` follows progress, so a
        caller that stops at damage knows the last record read before it."""
        replayed = 0
        pending_import: list[tuple[int, codec.ImportedValidator]] = []
        # Attestation decisions are nearly the whole log, and restart time is this loop: they take a path with
        # no record objects, applied by the same function as live decisions.
        attestation_type = codec.ATTESTATION_DECISION
        unpack = codec.unpack_attestation_decision
        reasons = _REASON_NUMBERS
        apply = _apply_attestation
        get = self._validators.get
        window = self._window
        next_report = time.monotonic() + RECOVERY_PROGRESS_SECONDS
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
                self._replayed_through = sequence
                continue
            try:
                if record_type == codec.IMPORT_PRUNED_VALIDATOR:
                    pending_import.append((sequence, codec.decode_import_pruned_validator(payload)))
                elif record_type == codec.IMPORT_VALIDATOR:
                    pending_import.append(
                        (sequence, self._staged_v01_import(codec.decode_import_validator(payload)))
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
                        self._apply_import_locked(
                            imported.pubkey, imported.minimal, imported.history, sequence, import_sequence
                        )
                    pending_import = []
                else:
                    # Decisions and registrations may come between an import's records and its commit; they do
                    # not end it (see state_codec).
                    self._replay_record_locked(sequence, record_type, payload)
            except codec.CodecError as error:
                raise DataDirError(
                    f"log record {sequence} (type {record_type}) does not decode: {error}"
                ) from error
            self._replayed_through = sequence
        return replayed

    @classmethod
    def repair(
        cls, data_dir: Path, min_slot: int, min_epoch: int, options: StoreOptions | None = None
    ) -> list[str]:
        """The operator's way out of real damage. Returns the sentences saying exactly what was done.

        Keeps the newest checkpoint that verifies and every log record before the first damage, discards the
        rest (moved, not deleted, into DIR/damaged-<time>/ with the older checkpoints), raises every validator's
        floors so that blocks need a slot above `min_slot` and attestations a source epoch at or above
        `min_epoch` and a target epoch above it, and writes a checkpoint of the result. Nothing that might have
        been signed in the discarded part can then be signed again, provided the bounds are above it.
        """
        if min_slot < 0 or min_epoch < 0:
            raise InvalidRequestError("--min-slot and --min-epoch must not be negative")
        options = options or StoreOptions()
        fileops = options.fileops
        report: list[str] = []
        dir_lock = DataDirLock.acquire(data_dir, fileops=fileops)
        try:
            root = _open_identity(data_dir, None, fileops)
            store = cls(data_dir, root, options, dir_lock)
            loaded, problems = store._load_checkpoint()
            report.extend(f"skipped damaged checkpoint: {problem}" for problem in problems)
            covered = loaded.sequence if loaded is not None else 0
            report.append(
                f"kept checkpoint {loaded.path.name} (sequence {covered})"
                if loaded is not None
                else "no checkpoint verifies: starting from an empty state"
            )
            log_dir = data_dir / "log"
            replayed = 0
            try:
                scan = scan_log(log_dir, fileops, after_sequence=covered)
                replayed = store._replay(scan.batches())
                if scan.torn_tail is not None:
                    tail = scan.torn_tail
                    report.append(f"torn tail in {tail.path} at byte {tail.offset}: {tail.detail}")
                else:
                    report.append("no damage found in the log")
            except (LogCorruptionError, DataDirError) as error:
                report.append(f"damage: {error}")
            through = store._replayed_through
            report.append(f"kept {replayed} log records after the checkpoint, through sequence {through}")
            for history in store._validators.values():
                history.raise_floors(min_slot, min_epoch, min_epoch)
            report.append(
                f"raised the lower bounds of {len(store._validators)} validators: blocks need a slot above "
                f"{min_slot}; attestations need a source epoch of at least {min_epoch} and a target epoch above "
                f"{min_epoch}"
            )
            # The new checkpoint goes to disk before anything is moved: a crash in between leaves a directory
            # whose start refuses on the same damage, and running repair again finishes the job.
            path = write_checkpoint(
                data_dir / "checkpoints", fileops, through, root, store._checkpoint_chunks(list(store._validators))
            )
            report.append(f"wrote {path.name}")
            quarantine = data_dir / f"damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
            moved = store._quarantine_files(quarantine, keep=path)
            if moved:
                report.append(
                    f"moved {moved} log segments and older checkpoints to {quarantine} (nothing deleted); "
                    f"records after sequence {through} are discarded"
                )
            report.append(f"the log continues at sequence {through + 1}")
        finally:
            dir_lock.release()
        return report

    def _quarantine_files(self, quarantine: Path, keep: Path) -> int:
        """Moves every log segment and every checkpoint but `keep` into `quarantine`; returns how many moved."""
        fileops = self.options.fileops
        moved = 0
        for sub in ("log", "checkpoints"):
            directory = self.data_dir / sub
            if not fileops.is_dir(directory):
                continue
            names = sorted(name for name in fileops.listdir(directory) if directory / name != keep)
            if not names:
                continue
            fileops.makedirs(quarantine / sub)
            for name in names:
                fileops.rename(directory / name, quarantine / sub / name)
            fileops.fsync_dir(quarantine / sub)
            fileops.fsync_dir(directory)
            moved += len(names)
        return moved

    def _replay_record_locked(self, sequence: int, record_type: int, payload: bytes) -> None:
        # Attestation decisions never get here: _replay applies them inline.
        if record_type == codec.BLOCK_DECISION:
            block = codec.decode_block_decision(payload)
            history = self._validators.get(block.pubkey)
            if history is not None and sequence > history.applied_sequence:
                self._apply_block_locked(history, sequence, block.slot, block.signing_root, block.reason, payload)
        elif record_type == codec.REGISTER:
            self._apply_register_locked(codec.decode_register(payload), sequence)
        else:
            raise DataDirError(f"log record {sequence} has unknown type {record_type}")

    # ---------------------------------------------------------------- applying records (live and replay alike)

    def _apply_block_locked(
        self,
        history: ValidatorHistory,
        sequence: int,
        slot: int,
        signing_root: bytes,
        reason: Reason,
        payload: bytes,
    ) -> None:
        history.applied_sequence = sequence
        history.last_decision_sequence = sequence
        history.last_decision = payload
        if reason is Reason.ALLOWED_NEW:
            history.allowed_count += 1
            history.add_block(slot, signing_root)
            if self._window is not None:
                history.prune_blocks(self._window)
        elif reason is Reason.ALLOWED_REPEAT:
            history.allowed_count += 1
        else:
            history.refused_count += 1

    def _apply_register_locked(self, pubkeys: Iterable[bytes], sequence: int) -> int:
        added = 0
        validators = self._validators
        for pubkey in pubkeys:
            if pubkey not in validators:
                history = ValidatorHistory()
                history.applied_sequence = sequence
                validators[pubkey] = history
                added += 1
        return added

    def _apply_import_locked(
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
        history, the floors the import raised as a sentence ("" when none rose)."""
        history = self._validators.get(pubkey)
        if history is not None and history.applied_sequence >= commit_sequence:
            return ImportStatus.UNCHANGED, ""  # replay over a checkpoint that already holds this import
        history, status, raised = merge_imported(history, imported, minimal, self._window)
        self._validators[pubkey] = history
        history.applied_sequence = max(history.applied_sequence, commit_sequence, record_sequence)
        return status, raised

    def _staged_v01_import(self, record: codec.ImportValidatorRecord) -> codec.ImportedValidator:
        """A v0.1 import record (type 4: every record of the document, no floors) as the history the live path
        would have staged from the same records, the document's minima as floors included (EIP-3076's conditions
        for that file, which v0.1 did not enforce: replay now does, which only refuses more)."""
        staged = StagedHistory(self._window, record.minimal)
        staged.add_blocks(record.blocks)
        staged.add_attestations(record.attestations)
        return codec.ImportedValidator(record.minimal, record.pubkey, staged.finish())

    # ---------------------------------------------------------------- the hot path

    @property
    def log(self) -> DecisionLog:
        assert self._log is not None, "store used before recovery"
        return self._log

    def check_and_record_block(self, pubkey: bytes, slot: int, signing_root: bytes) -> tuple[Decision, int]:
        """Decides and records (non-durably) a block proposal. The caller waits for durability of the returned
        sequence number before answering ALLOWED. Raises LogUnavailableError when the log cannot take records.
        """
        with self._lock:
            history = self._validators.get(pubkey)
            decision = check_block(history, slot, signing_root)
            payload = codec.encode_block_decision(pubkey, slot, signing_root, decision.reason, self._now())
            sequence = self.log.append(codec.BLOCK_DECISION, payload)
            if history is not None:
                self._apply_block_locked(history, sequence, slot, signing_root, decision.reason, payload)
        return decision, sequence

    def check_and_record_attestations(
        self, requests: Sequence[tuple[bytes, int, int, bytes]]
    ) -> list[tuple[Decision, int]]:
        """Decides and records (non-durably) each (pubkey, source, target, root), in order, under one lock hold.

        The pubkeys must be distinct (the contract forbids one key twice in a batch), which makes the decisions
        independent: all are taken, then appended in one run of sequence numbers, then applied. This is the
        hot path: per item it is one dict probe, the rules, one struct pack and, when allowed, one append to the
        history's arrays.
        """
        now = self._now()
        encode = codec.encode_attestation_decision
        window = self._window
        with self._lock:
            get = self._validators.get
            histories = []
            decisions = []
            payloads = []
            for pubkey, source, target, root in requests:
                history = get(pubkey)
                decision = check_attestation(history, source, target, root)
                histories.append(history)
                decisions.append(decision)
                payloads.append(encode(pubkey, source, target, root, decision.reason, now))
            sequence = self.log.append_batch(codec.ATTESTATION_DECISION, payloads) - len(payloads)
            results = []
            for (_, source, target, root), history, decision, payload in zip(
                requests, histories, decisions, payloads, strict=True
            ):
                sequence += 1
                results.append((decision, sequence))
                if history is not None:
                    _apply_attestation(history, sequence, source, target, root, decision.reason, payload, window)
        return results

    # ---------------------------------------------------------------- registration

    def register_validators(self, pubkeys: list[bytes]) -> tuple[int, int, int]:
        """Registers keys; returns (newly registered, already registered before, sequence of the record or 0),
        counting each distinct key once."""
        for pubkey in pubkeys:
            if len(pubkey) != PUBKEY_SIZE:
                raise InvalidRequestError(f"pubkey must be {PUBKEY_SIZE} bytes, got {len(pubkey)}")
        distinct = list(dict.fromkeys(pubkeys))
        with self._lock:
            new = [pubkey for pubkey in distinct if pubkey not in self._validators]
            if not new:
                return 0, len(distinct), 0
            sequence = self.log.append(codec.REGISTER, codec.encode_register(new))
            self._apply_register_locked(new, sequence)
        return len(new), len(distinct) - len(new), sequence

    @property
    def validator_count(self) -> int:
        return len(self._validators)

    # ---------------------------------------------------------------- interchange

    def import_interchange(self, source: BinaryIO, progress: Callable[[int], None] | None = None) -> ImportResult:
        """Imports one EIP-3076 document, all or nothing, and waits until it is durable.

        The document is read whole before anything changes, each key's records pruned to the history window as
        they arrive (sidecar.import_staging), so memory follows the state the import leaves behind, not the size
        of the file. A bad document raises ImportRefusedError or GenesisRootMismatchError and changes nothing.
        `progress` is called with the number of entries read so far.
        """
        root = self.genesis_validators_root
        with bulk_loading():
            staged = stage_import(source, self.options, progress=progress, genesis_validators_root=root)
            return self.import_staged(staged)

    def import_staged(self, staged_import: StagedImport) -> ImportResult:
        """Applies a document read by `stage_import` (with this store's options), all or nothing, and waits until
        it is durable."""
        _check_import_root(staged_import.genesis_validators_root, self.genesis_validators_root, "this database's")
        if staged_import.window_epochs != self._window or staged_import.strategy is not self.options.strategy:
            raise ValueError("the document was staged for another history window or strategy")
        minimal = self.options.strategy is Strategy.MINIMAL
        staged = deque(staged_import.validators)
        count = len(staged)
        result = ImportResult(validators=count)
        record_sequences = array("Q")
        # The import's records are written before its commit, without the state lock (they change nothing until
        # the commit), a few MiB at a time, each part durable before the next is encoded: memory stays the staged
        # state plus one part, and signing goes on meanwhile. Checkpoints wait, so that none can cover some of
        # the records and not the commit; this also keeps imports one at a time, which is what lets replay take
        # the last `count` import records before a commit as this import's (see state_codec).
        with self._checkpoint_lock:
            part: list[tuple[int, bytes]] = []
            part_bytes = 0
            for index, (pubkey, stage) in enumerate(staged):
                payload = codec.encode_import_pruned_validator(minimal, pubkey, stage.history)
                part.append((codec.IMPORT_PRUNED_VALIDATOR, payload))
                part_bytes += len(payload)
                if part_bytes >= IMPORT_PART_BYTES or index == count - 1:
                    last = self.log.append_many(part)
                    record_sequences.extend(range(last - len(part) + 1, last + 1))
                    self.log.wait_durable(last)
                    part, part_bytes = [], 0
            with self._lock:
                last = self.log.append(codec.IMPORT_COMMIT, codec.encode_import_commit(count))
                for record_sequence in record_sequences:
                    # Popped as applied, so a staged history is freed once merged rather than at the end.
                    pubkey, stage = staged.popleft()
                    status, raised = self._apply_import_locked(
                        pubkey, minimal, stage.history, last, record_sequence
                    )
                    count_import(result, pubkey, staged_status(stage, status), raised)
        result.sequence = last
        self.log.wait_durable(last)
        return result

    def export_interchange(
        self, out: BinaryIO, pubkeys: list[bytes] | None = None, progress: Callable[[int], None] | None = None
    ) -> int:
        """Writes an EIP-3076 v5 document for the given keys (all when None); returns the number of keys.

        Floors raised by pruning or repair are carried as records (see ValidatorHistory.export_*), so an importer
        refuses at least what we refuse. Unknown keys raise UnknownValidatorError before anything is written.
        """
        with self._lock:
            if pubkeys is None:
                selected = sorted(self._validators)
            else:
                missing = [pk for pk in pubkeys if pk not in self._validators]
                if missing:
                    raise UnknownValidatorError(f"validator 0x{missing[0].hex()} is not registered")
                selected = sorted(set(pubkeys))
        write_interchange(out, self.genesis_validators_root, self._export_records(selected, progress))
        if progress is not None:
            progress(len(selected))
        return len(selected)

    def _export_records(
        self, pubkeys: list[bytes], progress: Callable[[int], None] | None = None
    ) -> Iterator[ValidatorRecords]:
        for start in range(0, len(pubkeys), SNAPSHOT_CHUNK):
            if progress is not None and start and not start % 1000:
                progress(start)
            chunk = []
            with self._lock:
                for pubkey in pubkeys[start : start + SNAPSHOT_CHUNK]:
                    chunk.append(interchange_records(pubkey, self._validators[pubkey]))
            yield from chunk

    # ---------------------------------------------------------------- operators

    def summary(self, pubkey: bytes) -> ValidatorSummary | None:
        """Counts and bounds of one key, copied under the lock; None when the key is not registered."""
        with self._lock:
            history = self._validators.get(pubkey)
            if history is None:
                return None
            return summarize(
                pubkey,
                history,
                history.allowed_count,
                history.refused_count,
                decode_decision(history.last_decision_sequence, history.last_decision),
            )

    def decisions(self, pubkey: bytes | None = None, since_sequence: int = 0) -> Iterator[DecisionRecord]:
        """Recorded decisions still held in the log (and archive), oldest first: the audit trail."""
        yield from read_decisions(self.data_dir, self.options.fileops, pubkey, since_sequence)

    def save_checkpoint(self, while_serving: bool = True) -> CheckpointInfo:
        """Writes a checkpoint of every validator, prunes old ones and the log segments they cover.

        Takes the state lock one chunk of validators at a time, so signing goes on while it runs; `while_serving`
        also pauses between chunks, trading checkpoint time for signing latency. The final checkpoint at close,
        with nothing left to sign, runs flat out.
        """
        with self._checkpoint_lock:
            started = time.monotonic()
            with self._lock:
                covered = self.log.last_sequence
                pubkeys = list(self._validators)
            self._newest_in_checkpoint = covered
            fileops = self.options.fileops
            checkpoint_dir = self.data_dir / "checkpoints"
            body = self._checkpoint_body(pubkeys, pause=while_serving)
            path = write_checkpoint(checkpoint_dir, fileops, covered, self.genesis_validators_root, body)
            kept = prune_checkpoints(checkpoint_dir, fileops, keep=self.options.checkpoint_keep)
            # Only log segments every kept checkpoint covers may go; if none verifies (the one just written was
            # damaged on its way to disk), the log is the only copy and stays whole.
            if kept:
                archive = self.data_dir / "archive" if self.options.archive_segments else None
                self.log.delete_segments_through(min(kept), archive_dir=archive)
            self.last_checkpoint_unix = time.time()
            return CheckpointInfo(covered, len(pubkeys), path, time.monotonic() - started)

    def _checkpoint_body(self, pubkeys: list[bytes], pause: bool) -> Iterator[bytes]:
        """The body, streamed to the file as it is encoded (never held whole: it is about the size of the state).
        Its end waits until everything it includes is durable in the log; the writer publishes the file (rename)
        only after the body has ended, so a checkpoint never holds a record the log could still lose."""
        yield from self._checkpoint_chunks(pubkeys, pause=pause)
        self.log.wait_durable(self._newest_in_checkpoint)

    def _checkpoint_chunks(self, pubkeys: list[bytes], pause: bool = False) -> Iterator[bytes]:
        """The checkpoint body: header, then each validator encoded under the lock, a chunk at a time, so that
        signing goes on between chunks. Tracks the newest record included in `_newest_in_checkpoint`."""
        yield codec.encode_checkpoint_header(len(pubkeys))
        encode = codec.encode_checkpoint_validator
        for start in range(0, len(pubkeys), SNAPSHOT_CHUNK):
            encoded = []
            with self._lock:
                for pubkey in pubkeys[start : start + SNAPSHOT_CHUNK]:
                    history = self._validators[pubkey]
                    encoded.append(encode(pubkey, history))
                    self._newest_in_checkpoint = max(self._newest_in_checkpoint, history.applied_sequence)
            yield b"".join(encoded)
            if pause:
                # A real pause, not just a yield: the signing path needs the GIL, not only the lock, and a
                # checkpoint can afford to take a little longer.
                time.sleep(CHECKPOINT_PAUSE_SECONDS)

    # ---------------------------------------------------------------- closing

    def close(self, final_checkpoint: bool = True) -> None:
        """Makes the log durable, writes a final checkpoint (by default) and releases DIR."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._log is not None:
                self._log.sync()
                if final_checkpoint:
                    self.save_checkpoint(while_serving=False)
        finally:
            if self._log is not None:
                self._log.close()
            self._dir_lock.release()


def _apply_attestation(
    history: ValidatorHistory,
    sequence: int,
    source_epoch: int,
    target_epoch: int,
    signing_root: bytes,
    reason: int,
    payload: bytes,
    window: int | None,
) -> None:
    """Applies one recorded attestation decision to its validator's history: live right after the decision, and
    at replay, identically (replay re-applies recorded verdicts; it never re-decides)."""
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


# ---------------------------------------------------------------- shared with every backend (one source of truth)


def merge_imported(
    history: ValidatorHistory | None, imported: ValidatorHistory, minimal: bool, window: int | None
) -> tuple[ValidatorHistory, ImportStatus, str]:
    """Merges one key's staged import (StagedHistory.finish, or its log record) into its history (None: the key
    is new) exactly as every backend must: records absorbed, floors raised to the document's minima (EIP-3076's
    conditions apply per imported file), minified in the minimal strategy, pruned to exactly the window. Returns
    the resulting history (`imported` itself for a new key: what absorbing it into an empty one gives), the key's
    status and, for a key that had history, the floors the import raised as a sentence ("" when none rose)."""
    existed = history is not None and bool(history.blocks or history.targets)
    floors_before = _floors_of(history) if existed and history is not None else None
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
    raised = _raised_floors_text(floors_before, _floors_of(history)) if floors_before is not None else ""
    if outcome is MergeOutcome.CONFLICT:
        return history, ImportStatus.IMPORTED_SLASHABLE_DATA, raised
    if not changed:
        return history, (ImportStatus.UNCHANGED if existed else ImportStatus.IMPORTED), raised
    return history, (ImportStatus.MERGED if existed else ImportStatus.IMPORTED), raised


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


@contextlib.contextmanager
def bulk_loading() -> Iterator[None]:
    """Spaces out the cyclic garbage collector's passes while a large state is built (recovery, an import): each
    pass scans every container created since the last, which made building 100,000 histories about 40% slower,
    and the objects built hold no cycles. Not switched off: its full passes also hand freed memory back (free
    lists), and without them a 1 GB import peaked 50% higher. Process-wide, so nested and concurrent uses
    restore the thresholds only when the last one ends."""
    global _bulk_loads
    with _bulk_lock:
        _bulk_loads += 1
        if _bulk_loads == 1:
            _saved_thresholds[:] = gc.get_threshold()
            gc.set_threshold(BULK_GC_THRESHOLD, 10, 10)
    try:
        yield
    finally:
        with _bulk_lock:
            _bulk_loads -= 1
            if _bulk_loads == 0:
                gc.set_threshold(*_saved_thresholds)


# Allocations between the collector's youngest-generation passes while bulk loading (the default is 700).
BULK_GC_THRESHOLD = 100_000
_bulk_lock = threading.Lock()
_bulk_loads = 0
_saved_thresholds: list[int] = []


class StagedImport(NamedTuple):
    """A whole EIP-3076 document, read and staged (see `stage_import`), ready for `Store.import_staged`."""

    genesis_validators_root: bytes
    strategy: Strategy
    window_epochs: int | None
    validators: list[tuple[bytes, StagedHistory]]


def stage_import(
    source: BinaryIO,
    options: StoreOptions,
    *,
    progress: Callable[[int], None] | None = None,
    genesis_validators_root: bytes | None = None,
) -> StagedImport:
    """Reads and stages a whole document for a store with `options`, without needing the store: what an import
    into a new directory does first, so that the directory is created only for a document that is valid whole,
    and the file is read once. With `genesis_validators_root`, a document for another root is refused as soon as
    its metadata is read. Raises ImportRefusedError or GenesisRootMismatchError; changes nothing anywhere."""
    roots: list[bytes] = []

    def on_metadata(metadata: Metadata) -> None:
        if genesis_validators_root is not None:
            _check_import_root(metadata.genesis_validators_root, genesis_validators_root, "the expected")
        roots.append(metadata.genesis_validators_root)

    try:
        validators = stage_interchange(
            source,
            window_epochs=options.history_window_epochs,
            minimal=options.strategy is Strategy.MINIMAL,
            max_records_per_validator=codec.MAX_IMPORT_RECORDS,
            on_metadata=on_metadata,
            progress=progress,
        )
    except InterchangeError as error:
        raise ImportRefusedError(f"interchange refused: {error}") from error
    return StagedImport(roots[0], options.strategy, options.history_window_epochs, validators)


def _check_import_root(document_root: bytes, expected_root: bytes, whose: str) -> None:
    if document_root != expected_root:
        raise GenesisRootMismatchError(
            f"interchange genesis_validators_root 0x{document_root.hex()} differs from {whose} "
            f"0x{expected_root.hex()}"
        )


def count_import(result: ImportResult, pubkey: bytes, status: ImportStatus, raised_floors: str = "") -> None:
    result.status_counts[status] = result.status_counts.get(status, 0) + 1
    if status is ImportStatus.IMPORTED:
        result.imported += 1
        return
    if len(result.results) >= MAX_LISTED_IMPORT_RESULTS:
        result.results_omitted += 1
        return
    message = _IMPORT_MESSAGES[status]
    result.results.append(
        ValidatorImportOutcome(pubkey, status, f"{message}; {raised_floors}" if raised_floors else message)
    )


def staged_status(stage: StagedHistory, status: ImportStatus) -> ImportStatus:
    """A key's import status once what its staging saw is known: minified, or slashable within the document."""
    if stage.reduced and status in (ImportStatus.IMPORTED, ImportStatus.MERGED):
        return ImportStatus.MINIFIED
    if stage.slashable and status is ImportStatus.IMPORTED:
        # Merging into an empty history does not look for conflicts among the records; staging did.
        return ImportStatus.IMPORTED_SLASHABLE_DATA
    return status


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


def _floors_of(history: ValidatorHistory) -> tuple[int | None, int | None, int | None]:
    return history.lower_bounds()


def _raised_floors_text(
    before: tuple[int | None, int | None, int | None], after: tuple[int | None, int | None, int | None]
) -> str:
    """The lower bounds an import raised, as the operator reads them: "raised the lower bounds: slot 6739 (was
    5701), ..." (a block needs a slot above it, an attestation a source at or above it and a target above it)."""
    raised = [
        f"{name} {new}" + ("" if old is None else f" (was {old})")
        for name, old, new in zip(_BOUND_NAMES, before, after, strict=True)
        if new != old
    ]
    return "raised the lower bounds: " + ", ".join(raised) if raised else ""


def _open_identity(data_dir: Path, genesis_validators_root: bytes | None, fileops: FileOps) -> bytes:
    """Reads DIR/IDENTITY.json, or writes it for a new directory. Returns the directory's root."""
    path = data_dir / IDENTITY_FILE
    raw = fileops.read_file_if_exists(path)
    if raw is None:
        if _has_files(data_dir, fileops):
            raise DataDirError(f"{data_dir} holds a log or checkpoints but no {IDENTITY_FILE}; refusing to guess")
        if genesis_validators_root is None:
            raise DataDirError(
                f"{data_dir} is a new data directory: give --network or --genesis-validators-root to create it"
            )
        document = {"format": IDENTITY_FORMAT, "genesis_validators_root": "0x" + genesis_validators_root.hex()}
        fileops.write_file_atomically(path, (json.dumps(document, indent=2) + "\n").encode())
        return genesis_validators_root
    try:
        document = json.loads(raw)
        if not isinstance(document, dict):
            raise ValueError("not a JSON object")
        if document.get("format") != IDENTITY_FORMAT:
            raise DataDirError(f"{path}: unknown identity format {document.get('format')!r}")
        root_text = str(document["genesis_validators_root"])
        root = bytes.fromhex(root_text[2:]) if root_text.startswith("0x") else b""
        if len(root) != ROOT_SIZE:
            raise ValueError("genesis_validators_root is not 0x-prefixed 32-byte hex")
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise DataDirError(f"{path} is damaged: {error}") from error
    if genesis_validators_root is not None and genesis_validators_root != root:
        raise GenesisRootMismatchError(
            f"{data_dir} was created for genesis validators root 0x{root.hex()}, not "
            f"0x{genesis_validators_root.hex()}"
        )
    return root


def _has_files(data_dir: Path, fileops: FileOps) -> bool:
    for sub in ("log", "checkpoints"):
        directory = data_dir / sub
        if fileops.is_dir(directory) and fileops.listdir(directory):
            return True
    return False

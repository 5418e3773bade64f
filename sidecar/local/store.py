"""The store: the one owner of a data directory while it is open. It holds the directory's lock, the state lock,
the hot path (check and record) and the lifecycle (open, checkpoint, close), and composes the package's parts:
`layout` (paths, identity), `recovery` (checkpoint + replay), `state` (applying records), `imports`, `export`,
`checkpoints`, `repair`.

Start = lock, identity, newest checkpoint that verifies (older ones if it does not, saying so), replay of the log
after it (a torn tail is repaired; any other damage refuses to start, naming file and offset).

Concurrency: one lock (`_lock`) guards the in-memory state and the order of log appends (an import's records,
which change nothing until its commit, are the one exception; see `sidecar.local.imports`). A decision holds it
for the rule check, the (non-blocking) append and the update of the history: a few microseconds, never an fsync.
Durability is waited for after the lock is released, through the log's group commit; a record is durable only
after every record before it is, so a decision taken against a not-yet-durable record is safe: if a crash loses
the earlier record, it loses the later one too, and neither was answered ALLOWED. The one wait for the disk
under the lock is an import's commit, once per import, so that a failed import can be retracted before anything
follows it (`sidecar.local.imports.commit_or_retract`). A second lock (`_checkpoint_lock`) keeps checkpoints and
imports one at a time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from sidecar import records as codec
from sidecar.audit import DecisionRecord, read_decisions
from sidecar.backend import ImportResult, ValidatorSummary
from sidecar.domain import Pubkey, SigningRoot
from sidecar.errors import DataDirError
from sidecar.local import checkpoints, export, imports, recovery
from sidecar.local.checkpoints import CheckpointInfo
from sidecar.local.gc import bulk_loading
from sidecar.local.imports import StagedImport, check_import_root, stage_import
from sidecar.local.layout import DataDirLayout, open_or_create_identity
from sidecar.local.options import StoreOptions
from sidecar.local.recovery import RecoveryInfo
from sidecar.local.repair import repair_data_dir
from sidecar.local.state import ValidatorStates, apply_attestation_locked, apply_block_locked, summarize
from sidecar.rules import Decision, HighWatermark, check_attestation, check_block
from sidecar.storage import DataDirLock, DecisionLog

__all__ = ["Store"]


class Store:
    """Owns DIR. Create with `Store.open_or_create`; every public method is thread-safe. Keys and roots arrive as
    `sidecar.domain`'s typed values, checked at the boundary (see `sidecar.backend`): the store trusts them."""

    def __init__(
        self,
        data_dir: Path,
        genesis_validators_root: bytes,
        options: StoreOptions,
        dir_lock: DataDirLock,
        state: ValidatorStates,
        log: DecisionLog,
        recovery: RecoveryInfo,
        last_checkpoint_unix: float | None,
    ) -> None:
        """Use `open_or_create`: this only assembles what it recovered."""
        self.data_dir = data_dir
        self.layout = DataDirLayout(data_dir)
        self.genesis_validators_root = genesis_validators_root
        self.options = options
        self._dir_lock = dir_lock
        self._lock = threading.Lock()
        self._checkpoint_lock = threading.Lock()
        self._state = state
        self._validators = state.validators  # the hot path's one probe per decision
        self._window = state.window
        self._log = log
        self._now = options.clock_ns
        self.recovery = recovery
        self.last_checkpoint_unix = last_checkpoint_unix
        self._opened_through = log.last_sequence
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
        layout = DataDirLayout(data_dir)
        started = time.monotonic()
        if genesis_validators_root is None and not fileops.exists(layout.identity_file):
            # Checked before the lock creates anything: a refused first start leaves no directory behind.
            raise DataDirError(
                f"{data_dir} is not a sidecar data directory yet: give --network or --genesis-validators-root "
                "to create it"
            )
        dir_lock = DataDirLock.acquire(data_dir, fileops=fileops)
        try:
            root = open_or_create_identity(layout, genesis_validators_root, fileops)
            with bulk_loading():
                recovered, next_sequence, repaired = recovery.recover(
                    layout, fileops, root, options.history_window_epochs
                )
            log = DecisionLog.open(
                layout.log_dir,
                fileops=fileops,
                next_sequence=next_sequence,
                segment_bytes=options.segment_bytes,
                on_health_change=options.on_health_change,
                on_fsync=options.on_fsync,
            )
            info = RecoveryInfo(
                checkpoint_sequence=recovered.checkpoint_sequence,
                replayed_records=recovered.replayed,
                validators=len(recovered.state),
                seconds=time.monotonic() - started,
                repaired_torn_tail=repaired,
                problems=tuple(recovered.problems),
            )
            checkpoint = recovered.checkpoint
            created_unix = checkpoint.created_unix if checkpoint is not None else None
            store = cls(data_dir, root, options, dir_lock, recovered.state, log, info, created_unix)
        except BaseException:
            dir_lock.release()
            raise
        return store

    @classmethod
    def repair(
        cls, data_dir: Path, min_slot: int, min_epoch: int, options: StoreOptions | None = None
    ) -> list[str]:
        """Offline repair of DIR; see `sidecar.local.repair.repair_data_dir`, which new code calls."""
        return repair_data_dir(data_dir, min_slot, min_epoch, options)

    # ---------------------------------------------------------------- the hot path

    @property
    def log(self) -> DecisionLog:
        return self._log

    def check_and_record_block(self, pubkey: Pubkey, slot: int, signing_root: SigningRoot) -> tuple[Decision, int]:
        """Decides and records (non-durably) a block proposal. The caller waits for durability of the returned
        sequence number before answering ALLOWED. Raises LogUnavailableError when the log cannot take records.
        """
        with self._lock:
            history = self._validators.get(pubkey)
            decision = check_block(history, slot, signing_root, self._state.high_watermark)
            payload = codec.encode_block_decision(pubkey, slot, signing_root, decision.reason, self._now())
            sequence = self._log.append(codec.BLOCK_DECISION, payload)
            if history is not None:
                apply_block_locked(history, sequence, slot, signing_root, decision.reason, payload, self._window)
        return decision, sequence

    def check_and_record_attestations(
        self, requests: Sequence[tuple[Pubkey, int, int, SigningRoot]]
    ) -> list[tuple[Decision, int]]:
        """Decides and records (non-durably) each (pubkey, source, target, root), in order, under one lock hold.

        The pubkeys must be distinct (the contract forbids one key twice in a batch), which makes the decisions
        independent: all are taken, then appended in one run of sequence numbers, then applied. This is the
        hot path: per item it is one dict probe, the rules, one struct pack and, when allowed, one append to the
        history's arrays.
        """
        now = self._now()
        encode = codec.encode_attestation_decision
        apply = apply_attestation_locked
        window = self._window
        with self._lock:
            get = self._validators.get
            high_watermark = self._state.high_watermark
            histories = []
            decisions = []
            payloads = []
            for pubkey, source, target, root in requests:
                history = get(pubkey)
                decision = check_attestation(history, source, target, root, high_watermark)
                histories.append(history)
                decisions.append(decision)
                payloads.append(encode(pubkey, source, target, root, decision.reason, now))
            sequence = self._log.append_batch(codec.ATTESTATION_DECISION, payloads) - len(payloads)
            results = []
            for (_, source, target, root), history, decision, payload in zip(
                requests, histories, decisions, payloads, strict=True
            ):
                sequence += 1
                results.append((decision, sequence))
                if history is not None:
                    apply(history, sequence, source, target, root, decision.reason, payload, window)
        return results

    # ---------------------------------------------------------------- registration

    def register_validators(self, pubkeys: list[Pubkey]) -> tuple[int, int, int]:
        """Registers keys; returns (newly registered, already registered before, sequence of the record or 0),
        counting each distinct key once."""
        distinct = list(dict.fromkeys(pubkeys))
        with self._lock:
            new = [pubkey for pubkey in distinct if pubkey not in self._validators]
            if not new:
                return 0, len(distinct), 0
            sequence = self._log.append(codec.REGISTER, codec.encode_register(new))
            self._state.register_locked(new, sequence)
        return len(new), len(distinct) - len(new), sequence

    @property
    def validator_count(self) -> int:
        return len(self._validators)

    # ---------------------------------------------------------------- the high watermark

    def record_high_watermark(self, high_watermark: HighWatermark | None) -> int:
        """Sets the high watermark (None: removes it) for every decision taken after this returns, and appends its
        record; returns the record's sequence number. Not durable yet: the caller waits for that sequence before
        saying it is done. The caller has checked the values (`sidecar.backend.valid_high_watermark`).

        Appended and applied under the lock, in the log's order: a decision recorded after the record was decided
        under it, and one recorded before it is durable before it (so before the caller returns)."""
        with self._lock:
            sequence = self._log.append(codec.HIGH_WATERMARK, codec.encode_high_watermark(high_watermark))
            self._state.high_watermark = high_watermark
        return sequence

    @property
    def high_watermark(self) -> HighWatermark | None:
        """The high watermark in force (the newest recorded, durable or about to be)."""
        return self._state.high_watermark

    # ---------------------------------------------------------------- interchange

    def import_interchange(self, source: BinaryIO, progress: Callable[[int], None] | None = None) -> ImportResult:
        """Imports one EIP-3076 document, all or nothing, and waits until it is durable (see
        `sidecar.local.imports`). A bad document raises ImportRefusedError or GenesisRootMismatchError and
        changes nothing. `progress` is called with the number of entries read so far.
        """
        root = self.genesis_validators_root
        with bulk_loading():
            staged = stage_import(source, self.options, progress=progress, genesis_validators_root=root)
            return self.import_staged(staged)

    def import_staged(self, staged_import: StagedImport) -> ImportResult:
        """Applies a document read by `stage_import` (with this store's options), all or nothing, and waits until
        it is durable."""
        check_import_root(staged_import.genesis_validators_root, self.genesis_validators_root, "this database's")
        if staged_import.window_epochs != self._window or staged_import.strategy is not self.options.strategy:
            raise ValueError("the document was staged for another history window or strategy")
        with self._checkpoint_lock:
            return imports.write_and_apply_locked(staged_import, self._log, self._state, self._lock)

    def export_interchange(
        self, out: BinaryIO, pubkeys: list[Pubkey] | None = None, progress: Callable[[int], None] | None = None
    ) -> int:
        """Writes an EIP-3076 v5 document for the given keys (all when None); returns the number of keys.
        Unknown keys raise UnknownValidatorError before anything is written."""
        return export.export_interchange(
            out, self.genesis_validators_root, self._validators, self._lock, pubkeys, progress
        )

    # ---------------------------------------------------------------- operators

    def summary(self, pubkey: Pubkey) -> ValidatorSummary | None:
        """Counts and bounds of one key, copied under the lock; None when the key is not registered."""
        with self._lock:
            history = self._validators.get(pubkey)
            return None if history is None else summarize(pubkey, history)

    def decisions(self, pubkey: Pubkey | None = None, since_sequence: int = 0) -> Iterator[DecisionRecord]:
        """Recorded decisions still held in the log (and archive), oldest first: the audit trail."""
        yield from read_decisions(self.data_dir, self.options.fileops, pubkey, since_sequence)

    def save_checkpoint(self, while_serving: bool = True) -> CheckpointInfo:
        """Writes a checkpoint of every validator, prunes old ones and the log segments they cover.

        Takes the state lock one chunk of validators at a time, so signing goes on while it runs; `while_serving`
        also pauses between chunks, trading checkpoint time for signing latency. The final checkpoint at close,
        with nothing left to sign, runs flat out.
        """
        with self._checkpoint_lock:
            info = checkpoints.save_checkpoint(
                layout=self.layout,
                fileops=self.options.fileops,
                log=self._log,
                genesis_validators_root=self.genesis_validators_root,
                state=self._state,
                lock=self._lock,
                keep=self.options.checkpoint_keep,
                archive_segments=self.options.archive_segments,
                pause=while_serving,
            )
            self.last_checkpoint_unix = time.time()
            return info

    # ---------------------------------------------------------------- closing

    def close(self, final_checkpoint: bool | None = None) -> None:
        """Makes the log durable, writes a final checkpoint and releases DIR.

        `final_checkpoint` None (the default) follows `StoreOptions.checkpoint_at_close`.
        """
        if self._closed:
            return
        self._closed = True
        if final_checkpoint is None:
            final_checkpoint = self.options.checkpoint_at_close or self._log.last_sequence != self._opened_through
        try:
            self._log.sync()
            if final_checkpoint:
                self.save_checkpoint(while_serving=False)
        finally:
            self._log.close()
            self._dir_lock.release()


def create_from_interchange(
    data_dir: Path,
    source: BinaryIO,
    options: StoreOptions,
    genesis_validators_root: bytes | None = None,
    progress: Callable[[int], None] | None = None,
) -> ImportResult:
    """Creates the data directory `data_dir` from an EIP-3076 document: the one local operation with no
    counterpart behind the seam, because the directory takes the document's genesis validators root (or refuses a
    document for another one than `genesis_validators_root`, when given).

    The whole document is staged first (one reading of the file), and the directory created only for a document
    that is valid whole: a refused import leaves nothing behind.
    """
    with bulk_loading():
        staged = stage_import(source, options, progress=progress, genesis_validators_root=genesis_validators_root)
        store = Store.open_or_create(data_dir, staged.genesis_validators_root, options)
        try:
            return store.import_staged(staged)
        finally:
            store.close()

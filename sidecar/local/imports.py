"""EIP-3076 import into a data directory: staging a document, writing its records and applying them, and the
result an operator reads.

An import is all or nothing. The document is read whole and staged before anything changes (`stage_import`,
each key's records pruned to the history window as they arrive, see `sidecar.import_staging`), so memory follows
the state the import leaves behind, not the size of the file. Its records then go to the log without the state
lock (they change nothing until the commit), a few MiB at a time, each part durable before the next is encoded;
the commit record is appended under the lock, and once it is durable every key is applied, still under the lock,
and the import answers. A commit that cannot be made durable is retracted, so a failed import changes nothing,
then or later. Replay applies the commit identically (`sidecar.local.recovery`).
"""

from __future__ import annotations

import threading
from array import array
from collections import deque
from collections.abc import Callable
from typing import BinaryIO, NamedTuple

from interchange import InterchangeError, Metadata
from sidecar import records as codec
from sidecar.backend import ImportResult, Strategy
from sidecar.errors import GenesisRootMismatchError, ImportRefusedError
from sidecar.history import StagedHistory
from sidecar.import_merge import count_import, staged_status
from sidecar.import_staging import stage_interchange
from sidecar.local.options import StoreOptions
from sidecar.local.state import ValidatorStates
from sidecar.storage import DecisionLog, LogUnavailableError

__all__ = [
    "IMPORT_PART_BYTES",
    "MAX_LISTED_IMPORT_RESULTS",
    "StagedImport",
    "check_import_root",
    "stage_import",
    "write_and_apply_locked",
]

# Results listed per import response; the rest are counted (keeps a 1,000,000-key response far below 4 MiB).
MAX_LISTED_IMPORT_RESULTS = 1000
# An import's records go to the log in parts of about this size, each durable before the next is encoded.
IMPORT_PART_BYTES = 2 * 1024 * 1024


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
            check_import_root(metadata.genesis_validators_root, genesis_validators_root, "the expected")
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


def check_import_root(document_root: bytes, expected_root: bytes, whose: str) -> None:
    if document_root != expected_root:
        raise GenesisRootMismatchError(
            f"interchange genesis_validators_root 0x{document_root.hex()} differs from {whose} "
            f"0x{expected_root.hex()}"
        )


def write_and_apply_locked(
    staged_import: StagedImport, log: DecisionLog, state: ValidatorStates, lock: threading.Lock
) -> ImportResult:
    """Writes a staged import's records, then its commit, applies it and waits until it is durable.

    The caller holds the store's checkpoint lock (`_locked`), not `lock`, the state lock: checkpoints wait, so
    that none can cover some of the records and not the commit. This also keeps imports one at a time, which is
    what lets replay take the last `count` import records before a commit as this import's (see sidecar.records).
    """
    minimal = staged_import.strategy is Strategy.MINIMAL
    staged = deque(staged_import.validators)
    count = len(staged)
    result = ImportResult(validators=count)
    record_sequences = array("Q")
    # Memory stays the staged state plus one part, and signing goes on meanwhile.
    part: list[tuple[int, bytes]] = []
    part_bytes = 0
    for index, (pubkey, stage) in enumerate(staged):
        payload = codec.encode_import_pruned_validator(minimal, pubkey, stage.history)
        part.append((codec.IMPORT_PRUNED_VALIDATOR, payload))
        part_bytes += len(payload)
        if part_bytes >= IMPORT_PART_BYTES or index == count - 1:
            last = log.append_many(part)
            record_sequences.extend(range(last - len(part) + 1, last + 1))
            log.wait_durable(last)
            part, part_bytes = [], 0
    commit = (codec.IMPORT_COMMIT, codec.encode_import_commit(count))
    with lock:
        last = log.append(*commit)
        # The one wait for the disk under the state lock (signing pauses for one fsync per import): the import is
        # applied only once its commit is durable, and a commit that failed is retracted before anything else is
        # appended, so that a failed import never takes effect later (see `commit_or_retract`).
        commit_or_retract(log, last, commit)
        for record_sequence in record_sequences:
            # Popped as applied, so a staged history is freed once merged rather than at the end.
            pubkey, stage = staged.popleft()
            status, raised = state.apply_import_locked(pubkey, minimal, stage.history, last, record_sequence)
            count_import(result, pubkey, staged_status(stage, status), raised)
    result.sequence = last
    return result


def commit_or_retract(log: DecisionLog, sequence: int, commit: tuple[int, bytes]) -> None:
    """Waits until the import commit at `sequence` is durable; if it cannot be, retracts it and raises.

    After a failed write the log rewrites every record that was not durable once the disk lets it (see
    sidecar.storage.writer), so a commit whose import was answered with an error would otherwise take effect after
    all. Retracting swaps it for a commit of no records (same length, same sequence), which replay reads as "the
    import records before me were a cut-short import's" and drops. If the log recovered and made the original
    durable first, the import did commit, and the caller applies it. The caller holds the state lock, so nothing
    is appended after the commit meanwhile.
    """
    try:
        log.wait_durable(sequence)
    except LogUnavailableError:
        if log.retract_last(sequence, commit, (codec.IMPORT_COMMIT, codec.encode_import_commit(0))):
            raise
        # Durable after all: the log recovered before the retraction.
        log.wait_durable(sequence)

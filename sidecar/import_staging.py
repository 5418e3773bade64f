"""The first half of an import: reading an EIP-3076 document into one staged, pruned history per key.

Nothing is applied here, and nothing here takes a lock or touches the data directory: the store applies the
result under its lock, all or nothing, once the whole document has been read and found valid (a refusal can come
at its very last byte, so nothing can be applied before).

Memory is why this is a step of its own. The document is read in parts (`interchange.stream_interchange_parts`:
at most `ParseLimits.part_records` records at a time, so not even one entry is held whole) and each key's records
go into a `StagedHistory`, which prunes them to the history window as they arrive and keeps what it dropped as
floors. What is held is therefore about a window of records per distinct key, which is the state the import
leaves behind, whatever the length of the file.

A key may appear in several entries of one document. Each entry is staged on its own (JSON leaves key order
free, so its pubkey may come after its records) and absorbed into the key's staging when the entry ends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import BinaryIO

from interchange import (
    DEFAULT_LIMITS,
    Metadata,
    ParseLimits,
    ValidatorEntryEnd,
    ValidatorRecordsPart,
    stream_interchange_parts,
)
from sidecar.errors import ImportRefusedError
from sidecar.history import StagedHistory

__all__ = ["DocumentStaging", "stage_interchange"]

# Progress is reported every this many entries (and once at the end).
PROGRESS_ENTRIES = 1000


class DocumentStaging:
    """The staged histories of one document, fed with what `stream_interchange_parts` yields.

    `max_records_per_validator` bounds what one key may hold inside its window (the most one log record can
    carry): a document over it is refused as soon as one key goes over, before it can grow further.
    """

    def __init__(self, window_epochs: int | None, minimal: bool, max_records_per_validator: int) -> None:
        self.window_epochs = window_epochs
        self.minimal = minimal
        self.max_records_per_validator = max_records_per_validator
        # Keys in the order of their first entry; the histories are spent by `finish`.
        self.validators: dict[bytes, StagedHistory] = {}
        self.entries = 0
        self._entry: StagedHistory | None = None

    def add(self, item: ValidatorRecordsPart | ValidatorEntryEnd) -> None:
        entry = self._entry
        if entry is None:
            entry = self._entry = StagedHistory(self.window_epochs, self.minimal)
        if isinstance(item, ValidatorRecordsPart):
            if item.signed_blocks:
                entry.add_blocks((block.slot, block.signing_root) for block in item.signed_blocks)
            if item.signed_attestations:
                entry.add_attestations(
                    (a.source_epoch, a.target_epoch, a.signing_root) for a in item.signed_attestations
                )
            self._check_size(entry, f"data[{item.index}]")
            return
        self._entry = None
        self.entries += 1
        staged = self.validators.get(item.pubkey)
        if staged is None:
            staged = self.validators[item.pubkey] = entry
        else:
            staged.absorb(entry)
            self._check_size(staged, f"data[{item.index}] (0x{item.pubkey.hex()}, with its earlier entries)")
        # Most keys are done now: hold them at their final size, and let the next entry reuse what they gave back.
        staged.settle()

    def staged_histories(self) -> list[StagedHistory]:
        """Every history staged so far, the entry being read included: what staging holds right now."""
        return [*self.validators.values(), *([self._entry] if self._entry is not None else [])]

    def finish(self) -> list[tuple[bytes, StagedHistory]]:
        """Every key with its finished staging (`StagedHistory.finish` has run), in the order of first appearance.
        Call only once the document has been read to its end."""
        staged = list(self.validators.items())
        self.validators = {}
        for _, history in staged:
            history.finish()
        return staged

    def _check_size(self, staged: StagedHistory, where: str) -> None:
        if staged.held_records > self.max_records_per_validator:
            raise ImportRefusedError(
                f"interchange refused: {where}: more than {self.max_records_per_validator:,} blocks and "
                "attestations inside the history window, more than one import record can hold"
            )


def stage_interchange(
    source: BinaryIO,
    *,
    window_epochs: int | None,
    minimal: bool,
    max_records_per_validator: int,
    on_metadata: Callable[[Metadata], None],
    progress: Callable[[int], None] | None = None,
    limits: ParseLimits = DEFAULT_LIMITS,
) -> list[tuple[bytes, StagedHistory]]:
    """Reads the whole document from `source` and returns every key's finished staging (see the module doc).

    `on_metadata` sees the metadata as soon as it is read and may refuse the document by raising. Raises
    `InterchangeError` for a document that is not valid, `ImportRefusedError` for one that is valid but cannot be
    imported; either way nothing has been applied anywhere.
    """
    staging = DocumentStaging(window_epochs, minimal, max_records_per_validator)
    for item in stream_interchange_parts(source, limits=limits):
        if isinstance(item, Metadata):
            on_metadata(item)
            continue
        staging.add(item)
        if progress is not None and isinstance(item, ValidatorEntryEnd) and not staging.entries % PROGRESS_ENTRIES:
            progress(staging.entries)
    if progress is not None:
        progress(staging.entries)
    return staging.finish()

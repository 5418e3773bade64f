"""The audit trail: recorded decisions read back from the log, as plain values.

Reading needs no lock and changes nothing, so `slashing-sidecar decisions` can read a directory a server holds;
a record being appended at that moment is simply not seen yet.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sidecar import records as codec
from sidecar.domain import PUBKEY_SIZE
from sidecar.local.layout import DataDirLayout
from sidecar.rules import Reason
from sidecar.storage import FileOps, read_records
from sidecar.vocabulary import ATTESTATION, BLOCK, spelling, verdict

__all__ = ["ATTESTATION", "BLOCK", "DecisionRecord", "decode_decision", "read_decisions"]


@dataclass(frozen=True, slots=True)
class DecisionRecord:
    sequence: int
    kind: str  # "block" or "attestation"
    pubkey: bytes
    slot: int | None
    source_epoch: int | None
    target_epoch: int | None
    signing_root: bytes
    reason: Reason
    unix_nanos: int

    @property
    def allowed(self) -> bool:
        return self.reason.allows

    def to_json(self) -> dict[str, object]:
        document: dict[str, object] = {
            "sequence": self.sequence,
            "kind": self.kind,
            "pubkey": "0x" + self.pubkey.hex(),
            "verdict": verdict(self.reason),
            "reason": spelling(self.reason),
            "signing_root": "0x" + self.signing_root.hex(),
            "recorded_at_unix_nanos": self.unix_nanos,
        }
        if self.kind == BLOCK:
            document["slot"] = self.slot
        else:
            document["source_epoch"] = self.source_epoch
            document["target_epoch"] = self.target_epoch
        return document


def decode_decision(sequence: int, payload: bytes | None) -> DecisionRecord | None:
    """A decision payload (either kind, told apart by length) as a record; None for no payload."""
    if payload is None:
        return None
    if codec.last_decision_type(payload) == codec.BLOCK_DECISION:
        block = codec.decode_block_decision(payload)
        return DecisionRecord(
            sequence,
            BLOCK,
            block.pubkey,
            block.slot,
            None,
            None,
            block.signing_root,
            block.reason,
            block.unix_nanos,
        )
    attestation = codec.decode_attestation_decision(payload)
    return DecisionRecord(
        sequence,
        ATTESTATION,
        attestation.pubkey,
        None,
        attestation.source_epoch,
        attestation.target_epoch,
        attestation.signing_root,
        attestation.reason,
        attestation.unix_nanos,
    )


def read_decisions(
    data_dir: Path, fileops: FileOps, pubkey: bytes | None = None, since_sequence: int = 0
) -> Iterator[DecisionRecord]:
    """Decisions with sequence > since_sequence (for one key, or all), from the archive and then the log, each
    once and in order: a power cut while segments move to the archive can leave a segment in both places."""
    newest = since_sequence
    layout = DataDirLayout(data_dir)
    for directory in layout.record_dirs:
        if not fileops.exists(directory):
            continue
        archive = directory == layout.archive_dir
        for sequence, record_type, payload in read_records(
            directory, fileops, after_sequence=newest, archive=archive
        ):
            if sequence <= newest:
                continue
            newest = sequence
            if record_type not in (codec.BLOCK_DECISION, codec.ATTESTATION_DECISION):
                continue
            if pubkey is not None and payload[:PUBKEY_SIZE] != pubkey:
                continue
            record = decode_decision(sequence, payload)
            if record is not None:
                yield record

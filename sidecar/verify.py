"""`verify` and `repair`: an operator's view of a data directory's integrity.

`verify` reads everything and changes nothing: the identity file, every checkpoint (container checksum and body
decoding), every log record (framing, checksums, sequence continuity, payload decoding) and whether the log
continues the newest checkpoint. It names the file and byte offset of any damage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sidecar import records as codec
from sidecar.errors import DataDirError
from sidecar.local.layout import IDENTITY_FILE, DataDirLayout, read_identity
from sidecar.local.repair import repair_data_dir as _repair
from sidecar.storage import (
    DataDirLock,
    DataDirLockedError,
    FileOps,
    LogCorruptionError,
    StorageError,
    list_checkpoints,
    read_checkpoint,
    read_records,
    scan_log,
)

__all__ = ["VerifyReport", "repair_data_dir", "verify_data_dir"]

_DECODERS = {
    codec.BLOCK_DECISION: codec.decode_block_decision,
    codec.ATTESTATION_DECISION: codec.decode_attestation_decision,
    codec.REGISTER: codec.decode_register,
    codec.IMPORT_VALIDATOR: codec.decode_import_validator,
    codec.IMPORT_COMMIT: codec.decode_import_commit,
    codec.IMPORT_PRUNED_VALIDATOR: codec.decode_import_pruned_validator,
    codec.HIGH_WATERMARK: codec.decode_high_watermark,
}


@dataclass
class VerifyReport:
    lines: list[str] = field(default_factory=list)
    ok: bool = True

    def good(self, line: str) -> None:
        self.lines.append(f"ok: {line}")

    def bad(self, line: str) -> None:
        self.lines.append(f"DAMAGE: {line}")
        self.ok = False


def verify_data_dir(data_dir: Path, fileops: FileOps | None = None) -> VerifyReport:
    fileops = fileops or FileOps()
    report = VerifyReport()
    if not fileops.is_dir(data_dir):
        raise DataDirError(f"{data_dir} is not a directory")
    try:
        lock = DataDirLock.acquire(data_dir, fileops=fileops)
    except DataDirLockedError as error:
        lock = None
        report.lines.append(f"note: {error}; the end of the newest log segment may be mid-write")
    try:
        _verify(data_dir, fileops, report)
    finally:
        if lock is not None:
            lock.release()
    report.lines.append("verified: no damage found" if report.ok else "verified: damage found (see above)")
    return report


def _verify(data_dir: Path, fileops: FileOps, report: VerifyReport) -> None:
    layout = DataDirLayout(data_dir)
    try:
        root = read_identity(layout, fileops)
        report.good(f"{IDENTITY_FILE}: genesis validators root 0x{root.hex()}")
    except DataDirError as error:
        report.bad(str(error))
        root = None
    newest_valid = None
    for checkpoint in list_checkpoints(layout.checkpoint_dir, fileops):
        try:
            loaded = read_checkpoint(checkpoint.path, fileops)
            count = sum(1 for _ in codec.decode_checkpoint_body(loaded.body))
            high_watermark = codec.decode_checkpoint_header(loaded.body).high_watermark
        except (StorageError, codec.CodecError) as error:
            report.bad(f"checkpoint {checkpoint.path}: {error}")
            continue
        if root is not None and loaded.genesis_validators_root != root:
            report.bad(f"checkpoint {checkpoint.path}: belongs to another genesis validators root")
            continue
        watermark = (
            ""
            if high_watermark is None
            else f", high watermark slot {high_watermark.slot} epoch {high_watermark.epoch}"
        )
        report.good(
            f"checkpoint {checkpoint.path.name}: {count} validators, sequence {loaded.sequence}{watermark}"
        )
        newest_valid = loaded.sequence if newest_valid is None else max(newest_valid, loaded.sequence)
    for directory in layout.record_dirs:
        if not fileops.is_dir(directory):
            continue
        scan = read_records(directory, fileops, archive=directory == layout.archive_dir)
        records = 0
        first = last = None
        try:
            for sequence, record_type, payload in scan:
                decoder = _DECODERS.get(record_type)
                if decoder is None:
                    report.bad(f"{directory}: record {sequence} has unknown type {record_type}")
                    continue
                try:
                    decoder(payload)
                except codec.CodecError as error:
                    report.bad(f"{directory}: record {sequence} does not decode: {error}")
                first = sequence if first is None else first
                last = sequence
                records += 1
        except LogCorruptionError as error:
            report.bad(str(error))
            continue
        if scan.torn_tail is not None:
            tail = scan.torn_tail
            report.bad(
                f"torn tail in {tail.path} at byte offset {tail.offset}: {tail.detail} "
                "(repaired automatically at the next start)"
            )
        span = f", sequences {first}..{last}" if records else ""
        report.good(f"{directory.name}/: {records} records in {len(scan.segments)} segments{span}")
    try:
        scan_log(layout.log_dir, fileops, after_sequence=newest_valid or 0).consume()
        report.good("the log continues the newest valid checkpoint")
    except LogCorruptionError as error:
        if not any(str(error) in line for line in report.lines):
            report.bad(str(error))


def repair_data_dir(data_dir: Path, min_slot: int, min_epoch: int) -> list[str]:
    if not data_dir.is_dir():
        raise DataDirError(f"{data_dir} is not a directory")
    return _repair(data_dir, min_slot, min_epoch)

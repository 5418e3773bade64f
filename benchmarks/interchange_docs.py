"""EIP-3076 (interchange format v5) documents for the benchmarks, written without building them in memory.

Three kinds:

- the operator's file: N keys, each with one signed block and one signed attestation (with signing roots), for
  the import and export timings;
- history pre-fill: sets of keys with attestations (t - 1, t) for t = 1..depth and no signing roots (an unknown
  root never matches, so it can never make a later attestation a repeat), which keeps a deep history small;
- a complete-history file (about 1 GB in full mode) for the import's peak memory: every key's whole history,
  written a key at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import GENESIS_VALIDATORS_ROOT_HEX, pubkey, signing_root

BLOCK_SLOT = 1_000
ATTESTATION_SOURCE_EPOCH = 30
ATTESTATION_TARGET_EPOCH = 31


def _header() -> str:
    metadata = {"interchange_format_version": "5", "genesis_validators_root": GENESIS_VALIDATORS_ROOT_HEX}
    return '{"metadata":' + json.dumps(metadata, separators=(",", ":")) + ',"data":['


def _keys_entries(first_validator: int, count: int) -> Iterator[str]:
    for index in range(first_validator, first_validator + count):
        yield (
            f'{{"pubkey":"0x{pubkey(index).hex()}",'
            f'"signed_blocks":[{{"slot":"{BLOCK_SLOT}","signing_root":"0x{signing_root(index, 0).hex()}"}}],'
            f'"signed_attestations":[{{"source_epoch":"{ATTESTATION_SOURCE_EPOCH}",'
            f'"target_epoch":"{ATTESTATION_TARGET_EPOCH}",'
            f'"signing_root":"0x{signing_root(index, ATTESTATION_TARGET_EPOCH).hex()}"}}]}}'
        )


def write_keys_document(path: Path, *, first_validator: int, count: int) -> int:
    """Writes the operator's file for ``count`` keys; returns its size in bytes."""
    with path.open("w") as out:
        out.write(_header())
        for position, entry in enumerate(_keys_entries(first_validator, count)):
            if position:
                out.write(",")
            out.write(entry)
        out.write("]}")
    return path.stat().st_size


@dataclass(frozen=True)
class HistorySet:
    first_validator: int
    count: int
    depth: int


def history_document(sets: Sequence[HistorySet]) -> bytes:
    """One document giving every validator of every set ``depth`` recorded attestations."""
    parts = [_header()]
    first_entry = True
    for history in sets:
        attestations = ",".join(
            f'{{"source_epoch":"{target - 1}","target_epoch":"{target}"}}'
            for target in range(1, history.depth + 1)
        )
        for index in range(history.first_validator, history.first_validator + history.count):
            if not first_entry:
                parts.append(",")
            first_entry = False
            parts.append(f'{{"pubkey":"0x{pubkey(index).hex()}","signed_blocks":[],"signed_attestations":[')
            parts.append(attestations)
            parts.append("]}")
    parts.append("]}")
    return "".join(parts).encode()


def count_validators(path: Path) -> int:
    """The number of entries in an EIP-3076 file's ``data`` (loads it whole)."""
    with path.open("rb") as source:
        return len(json.load(source)["data"])


@dataclass(frozen=True)
class CompleteHistory:
    """A complete-history file: every key signed one attestation per epoch, (t - 1, t) for t = 1..epochs, each
    with its signing root, and proposed one block every ``block_every_epochs`` epochs (slot 32 t + key % 32)."""

    first_validator: int
    keys: int
    epochs: int
    block_every_epochs: int = 16

    def block_epochs(self) -> range:
        return range(self.block_every_epochs, self.epochs + 1, self.block_every_epochs)


def block_root(validator_index: int, epoch: int) -> bytes:
    """The signing root of a complete-history file's block: unlike any attestation's root."""
    return signing_root(validator_index, BLOCK_ROOT_MARK | epoch)


BLOCK_ROOT_MARK = 1 << 63
# One attestation of a complete-history file as written, for sizing a file before writing it.
_ATTESTATION_BYTES = len('{"source_epoch":"99999","target_epoch":"100000","signing_root":"0x' + "00" * 32 + '"},')


def complete_history_for_size(target_bytes: int, keys: int) -> CompleteHistory:
    """The complete-history shape with ``keys`` keys whose file is about ``target_bytes`` long."""
    return CompleteHistory(
        first_validator=0, keys=keys, epochs=max(1, target_bytes // (keys * _ATTESTATION_BYTES))
    )


def write_complete_history_document(path: Path, history: CompleteHistory) -> int:
    """Writes a complete-history file a key at a time, a few thousand records per write (never the whole file in
    memory); returns its size in bytes."""
    with path.open("w") as out:
        out.write(_header())
        for index in range(history.first_validator, history.first_validator + history.keys):
            if index != history.first_validator:
                out.write(",")
            out.write(f'{{"pubkey":"0x{pubkey(index).hex()}","signed_blocks":[')
            out.write(
                ",".join(
                    f'{{"slot":"{epoch * 32 + index % 32}","signing_root":"0x{block_root(index, epoch).hex()}"}}'
                    for epoch in history.block_epochs()
                )
            )
            out.write('],"signed_attestations":[')
            for start in range(1, history.epochs + 1, 4096):
                if start != 1:
                    out.write(",")
                out.write(
                    ",".join(
                        f'{{"source_epoch":"{target - 1}","target_epoch":"{target}",'
                        f'"signing_root":"0x{signing_root(index, target).hex()}"}}'
                        for target in range(start, min(start + 4096, history.epochs + 1))
                    )
                )
            out.write("]}")
        out.write("]}")
    return path.stat().st_size

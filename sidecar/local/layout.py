"""The data directory: every path in it, and its identity file. The one module that spells them.

    DIR/LOCK                         OS lock held by the one process using DIR (sidecar.storage.dirlock)
    DIR/IDENTITY.json                {"format": 1, "genesis_validators_root": "0x.."}; written once, atomically
    DIR/log/%020d.log                decision log segments (sidecar.storage, payloads in sidecar.records)
    DIR/checkpoints/checkpoint-%020d.ckpt   checkpoints (sidecar.storage.checkpoint)
    DIR/archive/                     log segments covered by checkpoints, when the operator keeps an audit trail
    DIR/damaged-<UTC time>/          what `repair` moved aside (log/ and checkpoints/ beneath it); never read again

The directory is created 0700 and its files 0600 (by the storage layer). The names inside log/ and checkpoints/
are the storage layer's; this module names the folders.

The identity file ties a directory to one chain: format 1 is a JSON object with `format` (the integer 1) and
`genesis_validators_root` (0x-prefixed 32-byte hex). An unknown format, a damaged file, a log without an
identity file, or another chain's root: each refuses, never guesses.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from sidecar.domain import ROOT_SIZE
from sidecar.errors import DataDirError, GenesisRootMismatchError
from sidecar.storage import FileOps
from sidecar.storage.dirlock import LOCK_FILE_NAME

__all__ = [
    "IDENTITY_FILE",
    "IDENTITY_FORMAT",
    "ROOT_SIZE",
    "DataDirLayout",
    "open_or_create_identity",
    "read_identity",
]

IDENTITY_FILE = "IDENTITY.json"
IDENTITY_FORMAT = 1


@dataclass(frozen=True, slots=True)
class DataDirLayout:
    """The paths of one data directory. Pure: naming a path creates nothing."""

    root: Path

    @property
    def lock_file(self) -> Path:
        return self.root / LOCK_FILE_NAME

    @property
    def identity_file(self) -> Path:
        return self.root / IDENTITY_FILE

    @property
    def log_dir(self) -> Path:
        return self.root / "log"

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / "checkpoints"

    @property
    def archive_dir(self) -> Path:
        return self.root / "archive"

    @property
    def record_dirs(self) -> tuple[Path, Path]:
        """Where log records may be, oldest first: the archive, then the log."""
        return (self.archive_dir, self.log_dir)

    def damaged_dir(self, when: time.struct_time) -> Path:
        """Where `repair` moves what it discards; `when` in UTC (sortable, one per run)."""
        return self.root / f"damaged-{time.strftime('%Y%m%dT%H%M%SZ', when)}"

    def holds_state(self, fileops: FileOps) -> bool:
        """Whether the log or the checkpoints folder holds anything (then the directory is not new)."""
        for directory in (self.log_dir, self.checkpoint_dir):
            if fileops.is_dir(directory) and fileops.listdir(directory):
                return True
        return False


def open_or_create_identity(
    layout: DataDirLayout, genesis_validators_root: bytes | None, fileops: FileOps
) -> bytes:
    """Reads the identity file, or writes it for a new directory; returns the directory's root.

    With `genesis_validators_root`, an existing directory must have been created for it (else
    GenesisRootMismatchError). Without it, a directory that has no identity file yet is refused. Raises
    DataDirError for a damaged or unknown identity file, and for state without one.
    """
    path = layout.identity_file
    raw = fileops.read_file_if_exists(path)
    if raw is None:
        if layout.holds_state(fileops):
            raise DataDirError(
                f"{layout.root} holds a log or checkpoints but no {IDENTITY_FILE}; refusing to guess"
            )
        if genesis_validators_root is None:
            raise DataDirError(
                f"{layout.root} is a new data directory: give --network or --genesis-validators-root to create it"
            )
        document = {"format": IDENTITY_FORMAT, "genesis_validators_root": "0x" + genesis_validators_root.hex()}
        fileops.write_file_atomically(path, (json.dumps(document, indent=2) + "\n").encode())
        return genesis_validators_root
    root = _parse_identity(path, raw)
    if genesis_validators_root is not None and genesis_validators_root != root:
        raise GenesisRootMismatchError(
            f"{layout.root} was created for genesis validators root 0x{root.hex()}, not "
            f"0x{genesis_validators_root.hex()}"
        )
    return root


def read_identity(layout: DataDirLayout, fileops: FileOps) -> bytes:
    """The root of an existing directory; never writes. Raises DataDirError as `open_or_create_identity` does."""
    return open_or_create_identity(layout, None, fileops)


def _parse_identity(path: Path, raw: bytes) -> bytes:
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
    return root

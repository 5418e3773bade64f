"""Checkpoint files: a checksummed container around an opaque body, written atomically.

On-disk format, version 1. All integers are little-endian. File name ``checkpoint-%020d.ckpt`` (the sequence)::

    offset      size  field
    0           8     magic                    b"SIDECKPT"
    8           1     format version           1; a reader refuses any other value
    9           8     sequence                 u64, the last decision-log sequence whose effect the body holds
    17          8     created                  u64, Unix time in nanoseconds when the checkpoint was written
    25          32    genesis_validators_root  the data directory's chain identity
    57          n     body                     opaque bytes from the caller
    57+n        8     body length              u64, n
    65+n        4     CRC32C                   u32 over every byte before it (header, body, body length)

The body length sits after the body because the writer streams the body from an iterable of chunks whose
total it does not know in advance; the reader checks it against the file size, so truncation and appended
garbage are both detected even before the CRC is.

Writing (:func:`write_checkpoint`) goes to ``<name>.tmp``, fsyncs it, renames it into place and fsyncs the
directory. A crash at any point leaves either the previous set of checkpoints, or that set plus the complete
new file: a checkpoint name never holds a partial file. Leftover ``.tmp`` files are removed when the
directory is opened for recovery (:func:`load_newest_valid_checkpoint`).

Recovery uses the newest checkpoint that verifies; a damaged or unknown-version file is skipped with a
problem message naming it, and the caller falls back to the next older one (the decision log must still
hold everything after that older checkpoint: prune the log only through the oldest checkpoint kept).
"""

from __future__ import annotations

import logging
import re
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import crc32c

from sidecar.storage.errors import CheckpointError, StorageError
from sidecar.storage.fileio import FileOps

__all__ = [
    "CHECKPOINT_FORMAT_VERSION",
    "CHECKPOINT_MAGIC",
    "CheckpointFile",
    "LoadedCheckpoint",
    "checkpoint_name",
    "list_checkpoints",
    "load_newest_valid_checkpoint",
    "prune_checkpoints",
    "read_checkpoint",
    "remove_temporary_checkpoints",
    "verify_checkpoint",
    "write_checkpoint",
]

logger = logging.getLogger("sidecar.storage")

CHECKPOINT_MAGIC = b"SIDECKPT"
CHECKPOINT_FORMAT_VERSION = 1
# The header's genesis_validators_root field, a framing constant of this container: storage knows no domain sizes.
_ROOT_FIELD_SIZE = 32

_HEADER = struct.Struct("<8sBQQ32s")
_TRAILER = struct.Struct("<QI")
_NAME = re.compile(r"^checkpoint-(\d{20})\.ckpt$")
_TEMPORARY_SUFFIX = ".tmp"
_WRITE_BUFFER_BYTES = 1024 * 1024
_READ_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class CheckpointFile:
    """A checkpoint file found by name; not yet verified."""

    path: Path
    sequence: int


@dataclass(frozen=True, slots=True)
class LoadedCheckpoint:
    """A checkpoint whose magic, version, length and CRC all verified."""

    path: Path
    sequence: int
    genesis_validators_root: bytes
    created_unix: float
    body: bytes = field(repr=False)


def checkpoint_name(sequence: int) -> str:
    return f"checkpoint-{sequence:020d}.ckpt"


def write_checkpoint(
    directory: Path,
    fileops: FileOps,
    sequence: int,
    genesis_validators_root: bytes,
    body_chunks: Iterable[bytes],
    *,
    created_unix: float | None = None,
) -> Path:
    """Write a checkpoint covering log sequence ``sequence`` atomically and return its path.

    Creates ``directory`` (0700) if needed. The body is streamed from ``body_chunks`` (any sizes) and never
    held whole. A checkpoint with the same sequence is replaced. Failures raise :class:`CheckpointError` with
    the I/O error as its cause, and leave no partial file under the checkpoint's name.

    Contract for the caller: every record up to ``sequence`` must already be durable in the decision log,
    or a crash could leave a checkpoint covering records the log no longer has (recovery refuses that).
    """
    if len(genesis_validators_root) != _ROOT_FIELD_SIZE:
        raise ValueError(
            f"genesis_validators_root must be {_ROOT_FIELD_SIZE} bytes, got {len(genesis_validators_root)}"
        )
    if sequence < 0:
        raise ValueError(f"sequence must be >= 0, got {sequence}")
    directory = Path(directory)
    path = directory / checkpoint_name(sequence)
    temporary = path.with_name(path.name + _TEMPORARY_SUFFIX)
    created_nanos = int((time.time() if created_unix is None else created_unix) * 1_000_000_000)
    try:
        fileops.makedirs(directory)
        if fileops.exists(temporary):
            fileops.unlink(temporary)
        fd = fileops.create_exclusive(temporary)
        try:
            header = _HEADER.pack(
                CHECKPOINT_MAGIC,
                CHECKPOINT_FORMAT_VERSION,
                sequence,
                created_nanos,
                bytes(genesis_validators_root),
            )
            crc = crc32c.crc32c(header)
            pending = bytearray(header)
            body_length = 0
            for chunk in body_chunks:
                crc = crc32c.crc32c(chunk, crc)
                body_length += len(chunk)
                pending += chunk
                if len(pending) >= _WRITE_BUFFER_BYTES:
                    fileops.write(fd, pending)
                    pending.clear()
            length_field = struct.pack("<Q", body_length)
            crc = crc32c.crc32c(length_field, crc)
            pending += length_field + struct.pack("<I", crc)
            fileops.write(fd, pending)
            fileops.fsync(fd)
        finally:
            fileops.close(fd)
        fileops.rename(temporary, path)
        fileops.fsync_dir(directory)
    except StorageError as error:
        _unlink_quietly(fileops, temporary)
        raise CheckpointError(f"could not write checkpoint {path}: {error}") from error
    return path


def list_checkpoints(directory: Path, fileops: FileOps) -> list[CheckpointFile]:
    """Checkpoint files in ``directory`` by name, newest (highest sequence) first; unverified."""
    directory = Path(directory)
    if not fileops.is_dir(directory):
        return []
    found = []
    for name in fileops.listdir(directory):
        match = _NAME.match(name)
        if match is not None:
            found.append(CheckpointFile(directory / name, int(match.group(1))))
    found.sort(key=lambda checkpoint: checkpoint.sequence, reverse=True)
    return found


def read_checkpoint(path: Path, fileops: FileOps) -> LoadedCheckpoint:
    """Read and verify one checkpoint; raise :class:`CheckpointError` naming the file if it is not valid
    (or :class:`StorageIOError` if it cannot be read)."""
    return _read(Path(path), fileops, keep_body=True)


def verify_checkpoint(path: Path, fileops: FileOps | None = None) -> str | None:
    """``None`` if the checkpoint at ``path`` verifies, else a one-line problem naming the file.

    Streams the file: memory stays bounded whatever the body size.
    """
    try:
        _read(Path(path), fileops or FileOps(), keep_body=False)
    except CheckpointError as error:
        return str(error)
    except StorageError as error:
        return f"{path}: cannot be read: {error}"
    return None


def load_newest_valid_checkpoint(directory: Path, fileops: FileOps) -> tuple[LoadedCheckpoint | None, list[str]]:
    """Open the checkpoint directory for recovery and load the newest checkpoint that verifies.

    Removes leftover ``.tmp`` files and fsyncs the directory first (a killed predecessor may have renamed a
    checkpoint without making the rename durable). Returns the checkpoint (``None`` if no valid one exists)
    and one problem message per newer file that was skipped; the caller logs that it fell back.
    """
    directory = Path(directory)
    if not fileops.is_dir(directory):
        return None, []
    remove_temporary_checkpoints(directory, fileops)
    fileops.fsync_dir(directory)
    problems: list[str] = []
    for candidate in list_checkpoints(directory, fileops):
        try:
            loaded = _read(candidate.path, fileops, keep_body=True)
        except CheckpointError as error:
            problems.append(str(error))
            continue
        except StorageError as error:
            # An unreadable file is skipped like a damaged one: an older checkpoint may still be readable.
            problems.append(f"{candidate.path}: cannot be read: {error}")
            continue
        return loaded, problems
    return None, problems


def prune_checkpoints(directory: Path, fileops: FileOps, keep: int) -> list[int]:
    """Keep the ``keep`` newest checkpoints that verify and delete every checkpoint older than them.

    Damaged files newer than the oldest one kept are left in place for inspection (recovery skips them and
    says so). Returns the sequences kept, newest first: prune the decision log only through the smallest, so
    that falling back to any kept checkpoint still finds the log records after it. An empty list means no
    checkpoint verifies: nothing was deleted, and the log must not be pruned either. An I/O error raises
    (:class:`StorageIOError`) rather than counting as damage, so a failing disk never looks like "no valid
    checkpoint".
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    directory = Path(directory)
    kept: list[int] = []
    removed: list[Path] = []
    for candidate in list_checkpoints(directory, fileops):
        if len(kept) < keep:
            try:
                _read(candidate.path, fileops, keep_body=False)
            except CheckpointError:
                continue
            kept.append(candidate.sequence)
            continue
        fileops.unlink(candidate.path)
        removed.append(candidate.path)
    if removed:
        fileops.fsync_dir(directory)
        logger.info("pruned %d checkpoints older than sequence %d", len(removed), kept[-1])
    return kept


def remove_temporary_checkpoints(directory: Path, fileops: FileOps) -> list[Path]:
    """Delete ``.tmp`` files left by a crash during :func:`write_checkpoint`; fsync the directory if any."""
    directory = Path(directory)
    removed = []
    for name in fileops.listdir(directory):
        if name.startswith("checkpoint-") and name.endswith(".ckpt" + _TEMPORARY_SUFFIX):
            fileops.unlink(directory / name)
            removed.append(directory / name)
    if removed:
        fileops.fsync_dir(directory)
    return removed


def _read(path: Path, fileops: FileOps, *, keep_body: bool) -> LoadedCheckpoint:
    """Raise :class:`CheckpointError` for damaged content; I/O errors propagate as they are."""
    fd = fileops.open_read(path)
    try:
        return _read_open(path, fileops, fd, keep_body=keep_body)
    finally:
        fileops.close(fd)


def _read_open(path: Path, fileops: FileOps, fd: int, *, keep_body: bool) -> LoadedCheckpoint:
    size = fileops.fstat_size(fd)
    minimum = _HEADER.size + _TRAILER.size
    if size < minimum:
        raise CheckpointError(f"{path}: {size} bytes, shorter than the {minimum}-byte minimum")
    header = fileops.pread(fd, _HEADER.size, 0)
    magic, version, sequence, created_nanos, root = _HEADER.unpack(header)
    if magic != CHECKPOINT_MAGIC:
        raise CheckpointError(f"{path}: bad magic {magic!r}, not a checkpoint")
    if version != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: unsupported checkpoint format version {version} "
            f"(this build reads version {CHECKPOINT_FORMAT_VERSION})"
        )
    body_length, stored_crc = _TRAILER.unpack(fileops.pread(fd, _TRAILER.size, size - _TRAILER.size))
    if body_length != size - minimum:
        raise CheckpointError(
            f"{path}: trailer says the body is {body_length} bytes but the file holds {size - minimum} "
            "(truncated or extended)"
        )
    crc = crc32c.crc32c(header)
    body_parts: list[bytes] = []
    offset = _HEADER.size
    body_end = _HEADER.size + body_length
    # A body that is kept is held whole anyway: read it in one piece, so that it is not held twice while the
    # pieces are joined (a single piece is joined without a copy). Verification alone streams in chunks.
    read_size = body_length if keep_body else _READ_CHUNK_BYTES
    while offset < body_end:
        chunk = fileops.pread(fd, min(read_size, body_end - offset), offset)
        if not chunk:
            raise CheckpointError(f"{path}: ended at byte {offset} while reading the body")
        crc = crc32c.crc32c(chunk, crc)
        if keep_body:
            body_parts.append(chunk)
        offset += len(chunk)
    crc = crc32c.crc32c(struct.pack("<Q", body_length), crc)
    if crc != stored_crc:
        raise CheckpointError(f"{path}: checksum mismatch (stored {stored_crc:#010x}, computed {crc:#010x})")
    match = _NAME.match(path.name)
    if match is not None and int(match.group(1)) != sequence:
        raise CheckpointError(
            f"{path}: the file name says sequence {int(match.group(1))} but the header says {sequence}"
        )
    return LoadedCheckpoint(
        path=path,
        sequence=sequence,
        genesis_validators_root=bytes(root),
        created_unix=created_nanos / 1_000_000_000,
        body=b"".join(body_parts),
    )


def _unlink_quietly(fileops: FileOps, path: Path) -> None:
    try:
        if fileops.exists(path):
            fileops.unlink(path)
    except StorageError:
        logger.warning("could not remove temporary checkpoint %s", path)

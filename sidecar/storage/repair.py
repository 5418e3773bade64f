"""Repair of a torn tail: truncate the last segment to its last good record, keeping the torn bytes aside.

Only a :class:`~sidecar.storage.reader.TornTail` found by a scan is repaired; everything else the reader finds is
corruption and is never "repaired" here. A torn tail may hold intact records after the damage (the final write's
pages written back out of order, in segment format 2): they belong to the same write, never synced, and are
truncated with it (the argument is in :mod:`sidecar.storage.reader`). The original segment is kept as
``<segment>.broken`` (``.broken.2``, ... if that name is taken), made durable before the truncation, so a power
cut during repair never loses the only copy of the torn bytes.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sidecar.storage.errors import StorageError
from sidecar.storage.fileio import FileOps
from sidecar.storage.reader import TornTail
from sidecar.storage.segments import BROKEN_SUFFIX, READ_CHUNK_BYTES

__all__ = ["repair_torn_tail"]

logger = logging.getLogger("sidecar.storage")


def repair_torn_tail(torn_tail: TornTail, fileops: FileOps) -> Path:
    """Truncate the last segment to its last good record, keeping the original as ``<segment>.broken``.

    Refuses (``StorageError``) if the segment's size changed since the scan. The copy and its directory entry are
    made durable before the truncation, which is fsynced in turn. Returns the path of the copy.
    """
    path = torn_tail.path
    size = fileops.stat_size(path)
    if size != torn_tail.file_size:
        raise StorageError(
            f"{path} is {size} bytes, not the {torn_tail.file_size} it had when scanned; rescan first"
        )
    broken = path.with_name(path.name + BROKEN_SUFFIX)
    copy_number = 1
    while fileops.exists(broken):
        copy_number += 1
        broken = path.with_name(f"{path.name}{BROKEN_SUFFIX}.{copy_number}")
    _copy_file(fileops, path, broken)
    # The copy's name must be durable before the original loses its tail, or a power cut in between could keep
    # the truncation and lose the only copy of the torn bytes.
    fileops.fsync_dir(path.parent)
    fd = fileops.open_append(path)
    try:
        fileops.ftruncate(fd, torn_tail.offset)
        fileops.fsync(fd)
    finally:
        fileops.close(fd)
    fileops.fsync_dir(path.parent)
    logger.warning(
        "repaired torn tail of decision log segment %s: truncated to byte offset %d, dropping %d bytes (%s); "
        "last good sequence %s; original kept as %s",
        path,
        torn_tail.offset,
        size - torn_tail.offset,
        torn_tail.detail,
        torn_tail.last_good_sequence,
        broken.name,
    )
    return broken


def _copy_file(fileops: FileOps, source: Path, destination: Path) -> None:
    source_fd = fileops.open_read(source)
    try:
        destination_fd = fileops.create_exclusive(destination)
        try:
            offset = 0
            while chunk := fileops.pread(source_fd, READ_CHUNK_BYTES, offset):
                fileops.write(destination_fd, chunk)
                offset += len(chunk)
            fileops.fsync(destination_fd)
        finally:
            fileops.close(destination_fd)
    finally:
        fileops.close(source_fd)

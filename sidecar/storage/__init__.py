"""Storage for the slashing-protection sidecar: the decision log, checkpoints, the data-directory lock.

The modules are payload-agnostic containers and know nothing of slashing: what the bytes mean is the business
of ``sidecar.records``, above this package. Nothing here imports ``sidecar`` outside ``sidecar.storage`` except
the root of the error tree, ``sidecar.errors`` (``tests/storage/test_layering.py`` holds that).

* ``fileio``: :class:`FileOps`, the one seam through which every OS call goes (faults and power loss are
  simulated by substituting it in tests).
* ``framing``: the record and segment-header byte format (pure).
* ``segments``: the decision log's segment files: names, listing, headers, and the log directory's layout.
* ``reader``: scanning the log, with its three outcomes kept apart (clean end, torn tail, corruption).
* ``repair``: truncating a torn tail, keeping the torn bytes as ``.broken``.
* ``writer``: :class:`DecisionLog`: append, group commit, rotation, recovery from a failed fsync.
* ``checkpoint``: atomic, checksummed checkpoint files.
* ``dirlock``: one process per data directory.
* ``errors``: the :class:`StorageError` tree.
"""

from sidecar.storage.checkpoint import (
    CheckpointFile,
    LoadedCheckpoint,
    checkpoint_name,
    list_checkpoints,
    load_newest_valid_checkpoint,
    prune_checkpoints,
    read_checkpoint,
    remove_temporary_checkpoints,
    verify_checkpoint,
    write_checkpoint,
)
from sidecar.storage.dirlock import DataDirLock
from sidecar.storage.errors import (
    CheckpointError,
    DataDirLockedError,
    LogCorruptionError,
    LogUnavailableError,
    StorageError,
    StorageIOError,
    UnsafeDataDirError,
)
from sidecar.storage.fileio import FileOps
from sidecar.storage.framing import MAX_PAYLOAD_SIZE
from sidecar.storage.reader import LogRecord, LogScan, TornTail, read_records, scan_log
from sidecar.storage.repair import repair_torn_tail
from sidecar.storage.segments import SegmentInfo, list_segments, segment_name
from sidecar.storage.writer import DEFAULT_SEGMENT_BYTES, DecisionLog, DurableCallback

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "MAX_PAYLOAD_SIZE",
    "CheckpointError",
    "CheckpointFile",
    "DataDirLock",
    "DataDirLockedError",
    "DecisionLog",
    "DurableCallback",
    "FileOps",
    "LoadedCheckpoint",
    "LogCorruptionError",
    "LogRecord",
    "LogScan",
    "LogUnavailableError",
    "SegmentInfo",
    "StorageError",
    "StorageIOError",
    "TornTail",
    "UnsafeDataDirError",
    "checkpoint_name",
    "list_checkpoints",
    "list_segments",
    "load_newest_valid_checkpoint",
    "prune_checkpoints",
    "read_checkpoint",
    "read_records",
    "remove_temporary_checkpoints",
    "repair_torn_tail",
    "scan_log",
    "segment_name",
    "verify_checkpoint",
    "write_checkpoint",
]

"""Storage for the slashing-protection sidecar: the decision log, checkpoints, the data-directory lock.

The modules are payload-agnostic containers; what the bytes mean is ``state_codec``'s business.

* ``fileio``: :class:`FileOps`, the one seam through which every OS call goes (faults and power loss are
  simulated by substituting it in tests).
* ``framing``: the record and segment-header byte format (pure).
* ``log``: segments, recovery scanning and repair, and :class:`DecisionLog` with group commit.
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
from sidecar.storage.log import (
    DEFAULT_SEGMENT_BYTES,
    DecisionLog,
    DurableCallback,
    LogRecord,
    LogScan,
    SegmentInfo,
    TornTail,
    list_segments,
    read_records,
    repair_torn_tail,
    scan_log,
    segment_name,
)

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

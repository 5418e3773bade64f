"""The sidecar's error tree. Foreign exceptions are translated once, at the boundary that meets them: `OSError`
becomes a `StorageError` in `sidecar.storage`, interchange parse errors become `ImportRefusedError` in the store,
domain errors become gRPC statuses in the servicers, and the CLI turns any `SidecarError` into one line on stderr
and a non-zero exit.

    SidecarError
    ├── ConfigurationError          bad option or environment value (CLI: exit 2)
    ├── StorageError                (sidecar.storage.errors) the data directory could not be used
    │   ├── LogCorruptionError      damage inside the log: names the file and byte offset; refuses to start
    │   ├── LogUnavailableError     the log cannot be made durable right now       -> UNAVAILABLE
    │   ├── CheckpointError         no usable checkpoint, or one could not be written
    │   └── DataDirLockedError      another process holds the data directory
    ├── DataDirError                the directory is not ours, or is damaged outside log and checkpoints
    ├── DatabaseError               (sidecar.postgres) the shared database cannot be served from: a schema newer
    │   │                           than the code, not created yet, no root given to create it
    │   └── UnsafeDatabaseError     the database can lose a commit (fsync or synchronous_commit off): refused
    │                               unless --allow-unsafe-database
    ├── GenesisRootMismatchError    another chain's genesis validators root        -> FAILED_PRECONDITION
    ├── InvalidRequestError         malformed request                               -> INVALID_ARGUMENT
    ├── ImportRefusedError          interchange document refused whole; nothing changed -> INVALID_ARGUMENT
    ├── UnknownValidatorError       a named key is not registered                   -> NOT_FOUND
    ├── NotReadyError               not recovered yet, or shutting down             -> UNAVAILABLE
    └── BackendUnavailableError     the protection database cannot make a decision durable now (disk full, I/O
                                    error, database unreachable): the seam's word for it -> UNAVAILABLE
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "ConfigurationError",
    "DataDirError",
    "DatabaseError",
    "GenesisRootMismatchError",
    "ImportRefusedError",
    "InvalidRequestError",
    "NotReadyError",
    "SidecarError",
    "UnknownValidatorError",
    "UnsafeDatabaseError",
]


class SidecarError(Exception):
    """Base of every error the sidecar raises on purpose. `str(error)` is one sentence for an operator."""


class ConfigurationError(SidecarError):
    pass


class DataDirError(SidecarError):
    pass


class DatabaseError(SidecarError):
    pass


class UnsafeDatabaseError(DatabaseError):
    pass


class GenesisRootMismatchError(SidecarError):
    pass


class InvalidRequestError(SidecarError):
    pass


class ImportRefusedError(SidecarError):
    pass


class UnknownValidatorError(SidecarError):
    pass


class NotReadyError(SidecarError):
    pass


class BackendUnavailableError(SidecarError):
    """A backend could not make a decision durable, or cannot reach its storage: do not sign. Backends raise it
    from their own failures (chained), so the servicers need to know no log, file or database."""

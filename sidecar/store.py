"""Compatibility module: the local backend's store now lives in the package `sidecar.local`.

New code imports from there (`sidecar.local.store.Store`, `sidecar.local.options.StoreOptions`,
`sidecar.local.imports.stage_import`, `sidecar.local.gc.bulk_loading`, `sidecar.local.layout.IDENTITY_FILE`, and
the seam's value types from `sidecar.backend`). This module only re-exports the names callers used from here, so
that code written against it keeps working; it holds no code of its own.
"""

from sidecar.backend import (
    SUMMARY_BOUNDS,
    SUMMARY_COUNTS,
    AttestationRequest,
    ImportResult,
    ImportStatus,
    Strategy,
    ValidatorImportOutcome,
    ValidatorSummary,
)
from sidecar.local.checkpoints import CheckpointInfo
from sidecar.local.gc import BULK_GC_THRESHOLD, bulk_loading
from sidecar.local.imports import StagedImport, stage_import
from sidecar.local.layout import IDENTITY_FILE
from sidecar.local.options import DEFAULT_HISTORY_WINDOW_EPOCHS, StoreOptions
from sidecar.local.recovery import RecoveryInfo
from sidecar.local.store import Store

__all__ = [
    "BULK_GC_THRESHOLD",
    "DEFAULT_HISTORY_WINDOW_EPOCHS",
    "IDENTITY_FILE",
    "SUMMARY_BOUNDS",
    "SUMMARY_COUNTS",
    "AttestationRequest",
    "CheckpointInfo",
    "ImportResult",
    "ImportStatus",
    "RecoveryInfo",
    "StagedImport",
    "Store",
    "StoreOptions",
    "Strategy",
    "ValidatorImportOutcome",
    "ValidatorSummary",
    "bulk_loading",
    "stage_import",
]

"""What an operator chooses for a data directory (`StoreOptions`), and the test seams beside it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sidecar.backend import Strategy
from sidecar.storage import FileOps

__all__ = ["DEFAULT_HISTORY_WINDOW_EPOCHS", "StoreOptions"]

# 64 epochs (~6.8 hours) of attestations per validator: about 4 KiB each, so 100,000 validators stay well under
# 1 GB. Pruning only ever adds refusals (see sidecar.history), so the window trades memory for the ability to
# sign old messages out of order, never safety.
DEFAULT_HISTORY_WINDOW_EPOCHS = 64


@dataclass(frozen=True, slots=True)
class StoreOptions:
    strategy: Strategy = Strategy.COMPLETE
    history_window_epochs: int | None = DEFAULT_HISTORY_WINDOW_EPOCHS
    segment_bytes: int = 64 * 1024 * 1024
    checkpoint_keep: int = 3
    archive_segments: bool = False
    fileops: FileOps = field(default_factory=FileOps)
    clock_ns: Callable[[], int] = time.time_ns
    on_health_change: Callable[[bool], None] | None = None
    on_fsync: Callable[[float, int, int], None] | None = None

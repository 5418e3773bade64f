"""What an operator chooses for a data directory (`StoreOptions`), and the test seams beside it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sidecar.backend import Strategy
from sidecar.domain import DEFAULT_HISTORY_WINDOW_EPOCHS, DEFAULT_SEGMENT_BYTES
from sidecar.storage import FileOps

__all__ = ["DEFAULT_HISTORY_WINDOW_EPOCHS", "StoreOptions"]


@dataclass(frozen=True, slots=True)
class StoreOptions:
    strategy: Strategy = Strategy.COMPLETE
    history_window_epochs: int | None = DEFAULT_HISTORY_WINDOW_EPOCHS
    segment_bytes: int = DEFAULT_SEGMENT_BYTES
    checkpoint_keep: int = 3
    # A final checkpoint when the store closes: always (a server's stop, so the next start replays nothing), or
    # (False) only when something was recorded since it opened, so that a one-off command that only answered
    # questions (an offline `summary`, `export`, `watermark show`) leaves the directory as it found it.
    checkpoint_at_close: bool = True
    archive_segments: bool = False
    fileops: FileOps = field(default_factory=FileOps)
    clock_ns: Callable[[], int] = time.time_ns
    on_health_change: Callable[[bool], None] | None = None
    on_fsync: Callable[[float, int, int], None] | None = None

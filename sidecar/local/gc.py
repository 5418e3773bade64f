"""Process-wide tuning of the cyclic garbage collector while a large state is built (recovery, an import).

Why: each pass of the collector's youngest generation scans every container created since the last one, which
made building 100,000 histories about 40% slower, and the objects built (histories, their arrays and indexes)
hold no cycles. Why not switch it off: its full passes also hand freed memory back (free lists), and without
them a 1 GB import peaked 50% higher. The thresholds are the interpreter's, so this is process-wide: nested and
concurrent uses (a recovery and an import, two imports) restore them only when the last one ends.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

__all__ = ["BULK_GC_THRESHOLD", "bulk_loading"]

# Allocations between the collector's youngest-generation passes while bulk loading (the default is 700).
BULK_GC_THRESHOLD = 100_000

_bulk_lock = threading.Lock()
_bulk_loads = 0
_saved_thresholds: list[int] = []


@contextlib.contextmanager
def bulk_loading() -> Iterator[None]:
    """Spaces out the collector's passes for the duration (see the module doc); safe to nest and to overlap."""
    global _bulk_loads
    with _bulk_lock:
        _bulk_loads += 1
        if _bulk_loads == 1:
            _saved_thresholds[:] = gc.get_threshold()
            gc.set_threshold(BULK_GC_THRESHOLD, 10, 10)
    try:
        yield
    finally:
        with _bulk_lock:
            _bulk_loads -= 1
            if _bulk_loads == 0:
                gc.set_threshold(*_saved_thresholds)

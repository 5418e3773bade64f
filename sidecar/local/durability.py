"""Group commit meets the event loop: how the local backend waits for a decision to be durable.

Every signing call runs on the event loop thread: the store's check-and-record (a few microseconds under its
lock, no I/O), then a wait for the log's group commit, bridged from the flusher thread into an asyncio future.
Refusals of single calls do not wait for it (they ride the next flush); batches always do.

The loop's own appends do not wake the flusher each (`DecisionLog.defer_wakeups_on_this_thread`): it is woken
once per loop turn, after every call of the turn has appended, so they share one fsync. A lone call, with nothing
to share the fsync with, writes its record itself instead, which saves two thread handoffs on the latency a
single signer sees; not while fsyncs are slow, so a stalling disk never freezes the loop more than once. Released
calls come back in one wakeup (one `call_soon_threadsafe`) per group commit.
"""

from __future__ import annotations

import asyncio
import collections
import time

from sidecar.storage import DecisionLog

__all__ = ["LONE_CALL_GAP_S", "LONE_CALL_STREAK", "Durability", "LoneCallDetector"]

# A signing call that starts this long after the previous one ended, with none in flight, has no call queued
# behind it to share an fsync with.
LONE_CALL_GAP_S = 100e-6
LONE_CALL_STREAK = 16


class Durability:
    """Bridges one log's group commit and one event loop."""

    # Above this, the newest fsync says the disk is struggling: leave writes to the flusher thread.
    INLINE_FSYNC_LIMIT_S = 0.002

    def __init__(self, loop: asyncio.AbstractEventLoop, log: DecisionLog) -> None:
        self._loop = loop
        self._log = log
        self._released: collections.deque[tuple[asyncio.Future[None], BaseException | None]] = collections.deque()
        self._release_scheduled = False
        self._wake_scheduled = False
        # From here on this loop's appends wake the flusher through `wake_soon`, once per loop turn.
        log.defer_wakeups_on_this_thread()

    def wait(self, sequence: int, *, lone: bool = False) -> asyncio.Future[None]:
        """A future that completes once `sequence` is durable (or fails with the log's error)."""
        future: asyncio.Future[None] = self._loop.create_future()
        log = self._log
        if lone and log.durable_sequence < sequence and log.last_fsync_seconds < self.INLINE_FSYNC_LIMIT_S:
            log.flush_here()
        if log.durable_sequence >= sequence:
            future.set_result(None)
            return future

        def resolved(error: BaseException | None) -> None:  # on the flusher thread, usually
            self._released.append((future, error))
            # Ordering makes this safe without a lock: the loop clears the flag before it drains, so a release
            # that still sees the flag set is appended before that drain starts.
            if not self._release_scheduled:
                self._release_scheduled = True
                self._loop.call_soon_threadsafe(self._settle_released)

        log.add_durable_callback(sequence, resolved)
        self.wake_soon()
        return future

    def wake_soon(self) -> None:
        """Wake the flusher at the end of this loop turn, for whatever the turn appended (refusals included:
        they do not wait, but they go to disk with the next group commit)."""
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self._loop.call_soon(self._wake)

    def _wake(self) -> None:
        self._wake_scheduled = False
        self._log.wake()

    def _settle_released(self) -> None:
        self._release_scheduled = False
        released = self._released
        while released:
            future, error = released.popleft()
            if future.done():
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)


class LoneCallDetector:
    """Tells a lone signing call (see the module doc): no other call in flight, none ended just now, and the same
    for the previous LONE_CALL_STREAK calls. Calls queued behind each other start within a loop turn of the
    previous one's end, while a lone signer's next call comes at least a network round trip later; the streak
    keeps one quiet moment in a busy stream from blocking the loop. The thresholds were tuned on a 2-core
    machine; correctness never depends on them (both paths answer only after their own fsync)."""

    __slots__ = ("_in_flight", "_last_ended", "_solo_streak")

    def __init__(self) -> None:
        self._in_flight = 0
        self._last_ended = 0.0
        self._solo_streak = 0

    def enter(self) -> bool:
        """Counts a call in; returns whether it is alone. Every `enter` is paired with a `leave`."""
        self._in_flight += 1
        if self._in_flight > 1 or time.perf_counter() - self._last_ended <= LONE_CALL_GAP_S:
            self._solo_streak = 0
            return False
        self._solo_streak += 1
        return self._solo_streak > LONE_CALL_STREAK

    def leave(self) -> None:
        self._in_flight -= 1
        self._last_ended = time.perf_counter()

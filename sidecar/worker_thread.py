"""Long blocking jobs (an import's parsing, an export's writing) in a thread of their own, awaited from the event
loop: shared by every backend."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["run_in_own_thread"]

T = TypeVar("T")


def run_in_own_thread(function: Callable[[], T], name: str) -> asyncio.Future[T]:
    """Runs a long blocking job in a thread of its own (never the loop's shared executor, which the job's own
    feeding could then starve: an import reads its document from the loop) and returns a future for its result
    on the running loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)

    def run() -> None:
        outcome: tuple[Any, BaseException | None]
        try:
            outcome = (function(), None)
        except BaseException as error:  # handed to the loop, which re-raises it to the awaiting call
            outcome = (None, error)
        # The loop may be gone by now (server stopped while the job ran): then nobody is waiting.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, *outcome)

    # If the awaiting call goes away first (client cancelled), nobody retrieves the job's failure: mark it
    # retrieved so asyncio does not report it as lost.
    future.add_done_callback(lambda done: done.cancelled() or done.exception())
    threading.Thread(target=run, name=name, daemon=True).start()
    return future

"""Stopping background tasks for good."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

# Between repeated cancels of a task that has not ended.
_RECANCEL_S = 0.2


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any] | None]) -> None:
    """Cancels the tasks and returns once every one has ended. One cancel is not always enough: on
    Python 3.11, asyncio.wait_for swallows a cancellation that arrives as the call it waits on completes
    (cpython gh-86296), and a loop around it then simply goes on; so the cancel is repeated until the
    task is done. Whatever the tasks raised is dropped (they were being stopped), read here so that
    asyncio does not log it as never retrieved."""
    pending = {t for t in tasks if t is not None and not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        done, pending = await asyncio.wait(pending, timeout=_RECANCEL_S)
        for task in done:
            if not task.cancelled():
                task.exception()

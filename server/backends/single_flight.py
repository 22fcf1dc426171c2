"""Single-flight: one computation per key in flight per process, shared by everyone who asks meanwhile.

When a hot cache entry expires, every request that misses would otherwise recompute it at once (a
stampede) and hammer the store behind the cache. Here the first caller starts the computation and later
callers for the same key await the same result. The computation runs as its own task, so a leader whose
request is cancelled (its deadline passed) does not cancel the followers' shared work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._in_flight: dict[str, asyncio.Task[T]] = {}

    def in_flight(self, key: str) -> bool:
        return key in self._in_flight

    async def run(self, key: str, compute: Callable[[], Awaitable[T]]) -> T:
        """`compute()`'s result; started only if no computation for `key` is already running."""
        task = self._in_flight.get(key)
        if task is None:
            task = asyncio.ensure_future(compute())
            self._in_flight[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        # shield: a waiter that gives up (timeout, cancellation) leaves the shared task running.
        return await asyncio.shield(task)

    def _finished(self, key: str, task: asyncio.Task[T]) -> None:
        if self._in_flight.get(key) is task:
            del self._in_flight[key]
        # Retrieve the outcome so that a failure nobody waited for is not logged as "never retrieved".
        if not task.cancelled():
            task.exception()

"""Micro-batching: requests that arrive together are processed together in one call.

Used in front of the ranker (one scoring launch for many requests) and in front of the shards (one
Search per node for many queries). A batch closes when it is full, when the oldest request has waited
`max_wait_s`, or earlier if a request's deadline would otherwise pass while it waits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# A request with less time than this left is not held back for company.
_DEADLINE_MARGIN_S = 0.001


@dataclass(slots=True)
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[R]


class MicroBatcher(Generic[T, R]):
    """Collects submitted items into batches for `process`, which returns one result per item, in order.

    `process` is async (it may hand the work to a thread); several batches may be in flight at once, up
    to `max_in_flight`, so a slow batch does not stall the next one.
    """

    def __init__(
        self,
        process: Callable[[list[T]], Awaitable[list[R]]],
        max_batch: int,
        max_wait_s: float,
        max_in_flight: int = 4,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self._process = process
        self._max_batch = max_batch
        self._max_wait_s = max(0.0, max_wait_s)
        self._pending: list[_Pending[T, R]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: T, deadline: float | None = None) -> R:
        """Process `item` as part of a batch; `deadline` is a time.monotonic() instant."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append(_Pending(item, future))
        wait = self._max_wait_s
        if deadline is not None:
            wait = min(wait, max(0.0, deadline - time.monotonic() - _DEADLINE_MARGIN_S))
        if len(self._pending) >= self._max_batch or wait <= 0.0:
            self._flush()
        elif self._timer is None or self._timer.when() > loop.time() + wait:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = loop.call_later(wait, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._pending:
            batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[_Pending[T, R]]) -> None:
        live = [p for p in batch if not p.future.done()]
        if not live:
            return
        async with self._slots:
            try:
                results = await self._process([p.item for p in live])
            except Exception as exc:  # every waiter of the batch learns of the failure
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(exc)
                return
        if len(results) != len(live):
            error = RuntimeError(f"batch processor returned {len(results)} results for {len(live)} items")
            for p in live:
                if not p.future.done():
                    p.future.set_exception(error)
            return
        for p, result in zip(live, results, strict=True):
            if not p.future.done():
                p.future.set_result(result)

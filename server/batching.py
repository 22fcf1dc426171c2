"""Micro-batching: requests that arrive together are processed together in one call.

Used in front of the ranker (one scoring launch for many requests) and in front of the shards (one
Search per node for many queries). A batch closes when it is full, when the oldest request has waited
`max_wait_s`, or earlier if a request's deadline would otherwise pass while it waits.

When nothing is in flight the batch closes at the end of the current event-loop turn instead of waiting:
an idle system gains nothing from holding a request back, and under load batches form by themselves
while earlier batches are being processed. (A timer would also cost at least a millisecond: the loop's
poll timeout has millisecond resolution.)
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

    `process` is async (it may hand the work to a thread). At most `max_in_flight` batches run at once;
    while all are busy, new items wait and leave together as soon as one finishes, so batches grow with
    load and the fixed cost of a call is shared by more requests exactly when it matters.
    """

    def __init__(
        self,
        process: Callable[[list[T]], Awaitable[list[R]]],
        max_batch: int,
        max_wait_s: float,
        max_in_flight: int = 2,
    ) -> None:
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be >= 1")
        self._process = process
        self._max_batch = max_batch
        self._max_wait_s = max(0.0, max_wait_s)
        self._max_in_flight = max_in_flight
        self._pending: list[_Pending[T, R]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._flush_soon: asyncio.Handle | None = None
        self._in_flight = 0
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
        elif self._in_flight == 0:
            # Idle: go at the end of this loop turn, taking whatever else arrives in the same turn.
            if self._flush_soon is None:
                self._flush_soon = loop.call_soon(self._flush)
        elif self._timer is None or self._timer_at > loop.time() + wait:
            if self._timer is not None:
                self._timer.cancel()
            # The due time is kept here: not every event loop's handles expose it (uvloop's do not).
            self._timer_at = loop.time() + wait
            self._timer = loop.call_later(wait, self._flush)
        return await future

    def _flush(self) -> None:
        if self._flush_soon is not None:
            self._flush_soon.cancel()
            self._flush_soon = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # With every slot busy, the next finishing batch flushes what is pending.
        while self._pending and self._in_flight < self._max_in_flight:
            batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[_Pending[T, R]]) -> None:
        try:
            await self._run_batch(batch)
        finally:
            self._in_flight -= 1
            if self._pending:
                self._flush()

    async def _run_batch(self, batch: list[_Pending[T, R]]) -> None:
        live = [p for p in batch if not p.future.done()]
        if not live:
            return
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

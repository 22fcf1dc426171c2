"""Work handed off the request path and done in batches by a task of its own.

Callers `put` and never wait: the exposure log queues answers served, attribution queues interactions
recorded. A task started on first use takes everything queued every `interval_s` and hands it to
`process` in one call, so the store sees one write per interval instead of one per request. The queue is
bounded (`queue_max`): past it, items are dropped and counted, rather than memory growing while the store
is slow. Items queued or being processed stay visible (`pending`) until `process` returns.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from server.tasks import cancel_and_wait

log = logging.getLogger(__name__)

T = TypeVar("T")


class BatchQueue(Generic[T]):
    def __init__(
        self,
        process: Callable[[list[T]], Awaitable[None]],
        interval_s: float,
        queue_max: int,
        on_drop: Callable[[int], None],
        name: str,
    ) -> None:
        """`process` must not raise for a batch it could not handle (it counts and logs that itself):
        a raise is logged here and the batch is lost."""
        self._process = process
        self._interval_s = interval_s
        self._queue_max = queue_max
        self._on_drop = on_drop
        self._name = name
        self._queue: list[T] = []
        self._taken: list[T] = []  # being processed
        self._idle = asyncio.Event()  # set while no batch is being processed
        self._idle.set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def put(self, item: T) -> None:
        if self._closed:
            return
        if len(self._queue) >= self._queue_max:
            self._on_drop(1)
            return
        self._queue.append(item)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self._name)
        self._wake.set()

    def pending(self) -> list[T]:
        """Items queued or being processed, oldest first."""
        return self._taken + self._queue

    def drop(self, unwanted: Callable[[T], bool]) -> None:
        """Removes queued items (not those being processed)."""
        self._queue = [item for item in self._queue if not unwanted(item)]

    async def settled(self, unwanted: Callable[[T], bool]) -> None:
        """Returns once no batch holding an `unwanted` item is being processed."""
        while any(unwanted(item) for item in self._taken):
            await self._idle.wait()

    async def flush(self) -> None:
        """Processes everything queued now, after the batch in progress (tests, reports, shutdown)."""
        while self._queue or not self._idle.is_set():
            if not self._idle.is_set():
                await self._idle.wait()  # the task's batch; it may take the queue next
            else:
                await self._handle(self._take())

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._interval_s > 0:
                await asyncio.sleep(self._interval_s)  # let a batch gather
            if self._queue and self._idle.is_set():
                await self._handle(self._take())

    def _take(self) -> list[T]:
        batch, self._queue = self._queue, []
        self._taken = batch
        self._idle.clear()
        return batch

    async def _handle(self, batch: list[T]) -> None:
        try:
            await self._process(batch)
        except Exception:
            log.exception("%s: a batch of %d was lost", self._name, len(batch))
        finally:
            self._taken = []
            self._idle.set()

    async def close(self) -> None:
        """Processes what is queued (and a batch the stop interrupted), then stops taking items."""
        self._closed = True
        interrupted = self._taken  # processed again: the stores dedupe what was written twice
        await cancel_and_wait([self._task])
        self._task = None
        if interrupted:
            await self._handle(interrupted)
        await self.flush()

"""Warming the request path: at start, and again once a burst of catalogue writes has gone quiet.

The first Recommend after a bulk load was reported coming back with `coverage 0/20, degraded ann`: a
cold first search ran past the ANN budget. Whatever a first search pays for after many writes (search
threads, hnswlib's per-thread visited lists, which a resize replaces, first touches of grown tables, the
popularity orders that the writes made stale), it is paid here instead, off the request path: batched
searches of every shard with real item vectors at the Recommend's shard k and ef, and a rebuild of the
popularity orders (at start, the rankers too).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from server.tasks import cancel_and_wait

log = logging.getLogger(__name__)


class Warmer:
    """`poke()` after each write; the warm-up runs once writes have been quiet for `quiet_s`."""

    def __init__(self, warm: Callable[[], Awaitable[None]], quiet_s: float = 0.5) -> None:
        self._warm = warm
        self._quiet_s = quiet_s
        self._task: asyncio.Task[None] | None = None
        self._poked = False
        self.runs = 0

    def poke(self) -> None:
        self._poked = True
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._after_quiet())

    async def _after_quiet(self) -> None:
        while self._poked:
            self._poked = False
            await asyncio.sleep(self._quiet_s)
        try:
            await self._warm()
            self.runs += 1
        except Exception as exc:
            # Warming is an optimisation: a failure here must never reach a writer or a caller.
            log.warning("warming the request path failed: %r", exc)

    async def close(self) -> None:
        await cancel_and_wait([self._task])

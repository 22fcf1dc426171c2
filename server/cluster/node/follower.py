"""A shard node following a polled layout store (ScyllaDB): every interval it reads the stored layout and,
when its epoch is newer than the node's, hands it to the node.

The handing-over goes through the node's own SetLayout (`apply`), like a layout an operator hands it, so
writes the node already admitted finish before the new epoch fences the next ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from server.cluster.layout import Layout
from server.cluster.layout_store.base import LayoutStore

log = logging.getLogger(__name__)


class LayoutFollower:
    def __init__(
        self,
        store: LayoutStore,
        epoch: Callable[[], int],
        apply: Callable[[Layout], Awaitable[object]],
        interval_s: float,
        name: str = "",
    ) -> None:
        """`epoch`: the epoch the node follows now; `apply`: hands the node a newer layout."""
        self._store = store
        self._epoch = epoch
        self._apply = apply
        self._interval_s = interval_s
        self._name = name
        self._failing = False

    async def step(self) -> bool:
        """One read of the store; True if the node was handed a newer layout."""
        stored = await self._store.read()
        if stored is None or stored.epoch <= self._epoch():
            return False
        await self._apply(stored)
        log.info("%s: following the stored layout, epoch %d (%s)", self._name, stored.epoch, stored.phase)
        return True

    async def run(self) -> None:
        while True:
            try:
                await self.step()
                if self._failing:
                    log.info("%s: the layout store answers again", self._name)
                self._failing = False
            except Exception as exc:  # the store or the node is away for a moment: try again next round
                if not self._failing:
                    log.warning("%s: cannot follow the layout store: %s", self._name, exc)
                self._failing = True
            await asyncio.sleep(self._interval_s)

"""This frontend's catalogue replica, kept in step with every shard through the shards' change feeds.

Each frontend holds the whole catalogue (ids, metadata, the FP16 table and, through the ItemStore's
listeners, the GPU table). The shards' write-ahead logs are the truth; a write acknowledged through any
frontend reaches every frontend here, a delete included, so no source (ANN, graph, popular) serves it.

One task per logical shard follows one replica, chosen by the router's read preference. The first read
(cursor 0) and any read the replica cannot serve (another replica, a restarted node, a follower further
behind than the shard keeps) answer with a reset: the shard is re-read with a scan from that replica,
the catalogue's items of that shard that the scan did not return are deleted, and the feed continues
from the position the reset named (shards/changes.py explains why nothing is missed). A replica that
fails is left for the next one after `retry_s`.

Resharding moves items between logical shards: the new shards are followed as soon as reads switch to
them (the shard count is watched), and a delete from a shard that the item no longer belongs to (the
rebalance's clean-up of a moved item, done a grace period after reads switched) is not a delete of the
item, so it is not applied.

The frontend that took a write also applies it itself when it is acknowledged (read-your-writes), and
again when the feed brings it: upserts and deletes are idempotent. Two writes of one item in quick
succession through one frontend can show the older one for the moment between the feed's two changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from server import metrics
from server.catalog.item_store import ItemStore
from server.catalog.payload import decode_metadata
from shards.changes import Change
from shards.client import ShardClient
from shards.records import RecordBatch

log = logging.getLogger(__name__)

Cursor = tuple[int, int]  # (incarnation, position) in one replica's feed


class FeedSources(Protocol):
    """What the follower needs of the router."""

    @property
    def shard_count(self) -> int: ...

    def readable_replicas(self, shard: int) -> list[tuple[str, ShardClient]]: ...

    def shard_of(self, item_ids: Sequence[str]) -> npt.NDArray[np.uint32]: ...


def apply_records(items: ItemStore, batch: RecordBatch) -> None:
    """Upserts shard records (a scan's or a feed's) into the catalogue replica."""
    if len(batch.item_ids) == 0:
        return
    meta = [decode_metadata(p) for p in batch.payloads]
    items.upsert(batch.item_ids, batch.labels, batch.vectors, meta)


class CatalogueFeed:
    def __init__(
        self,
        sources: FeedSources,
        items: ItemStore,
        retry_s: float = 0.2,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sources = sources
        self._items = items
        self._retry_s = retry_s
        self._clock = clock
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._watch: asyncio.Task[None] | None = None
        self._synced: dict[int, asyncio.Event] = {}
        self._cursors: dict[int, Cursor] = {}

    # --- life cycle -----------------------------------------------------------------------------------
    async def start(self, timeout_s: float) -> int:
        """Starts following every shard and waits for each one's first sync (the start-up scan), or the
        timeout: a shard with no live replica then fills in once one comes back. Returns the items held."""
        started = time.monotonic()
        self._synced = {}
        self._follow_shards(self._sources.shard_count)
        self._watch = asyncio.create_task(self._watch_shard_count(), name="feed-shards")
        waits = [asyncio.create_task(event.wait()) for event in self._synced.values()]
        _, pending = await asyncio.wait(waits, timeout=timeout_s)
        for wait in pending:
            wait.cancel()
        if pending:
            log.warning(
                "catalogue feed: %d of %d shards not synced after %.0fs; serving, they follow when a "
                "replica answers",
                len(pending),
                len(waits),
                timeout_s,
            )
        log.info("catalogue synced: %d items in %.1fs", len(self._items), time.monotonic() - started)
        metrics.ITEMS.set(len(self._items))
        return len(self._items)

    async def close(self) -> None:
        tasks = [*self._tasks.values(), *([self._watch] if self._watch is not None else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks, self._watch = {}, None

    def _follow_shards(self, count: int) -> None:
        """A follower for each of the first `count` shards, none for the others."""
        for shard in [s for s in self._tasks if s >= count]:
            self._tasks.pop(shard).cancel()
            self._synced.pop(shard, None)
            self._cursors.pop(shard, None)
        for shard in range(count):
            if shard not in self._tasks:
                self._synced[shard] = asyncio.Event()
                self._tasks[shard] = asyncio.create_task(self._follow(shard), name=f"feed-{shard}")

    async def _watch_shard_count(self) -> None:
        while True:
            await asyncio.sleep(max(self._retry_s, 0.05) * 5)
            count = self._sources.shard_count
            if count != len(self._tasks):
                log.info("catalogue feed: the shard count is now %d; following accordingly", count)
                self._follow_shards(count)

    @property
    def synced_shards(self) -> int:
        return sum(1 for event in self._synced.values() if event.is_set())

    def cursor(self, shard: int) -> Cursor:
        return self._cursors.get(shard, (0, 0))

    # --- following ------------------------------------------------------------------------------------
    async def _follow(self, shard: int) -> None:
        failures = 0
        while True:
            replicas = self._sources.readable_replicas(shard)
            if not replicas:  # no placement for it yet (or any more)
                await asyncio.sleep(self._retry_s)
                continue
            node, client = replicas[failures % len(replicas)]
            try:
                await self._follow_replica(shard, node, client)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a replica down, moved or restarted: the next one, after a pause
                failures += 1
                metrics.FEED_ERRORS.inc()
                log.info("catalogue feed: shard %d from %s: %s; trying the next replica", shard, node, exc)
                await asyncio.sleep(self._retry_s)

    async def _follow_replica(self, shard: int, node: str, client: ShardClient) -> None:
        """Follows until the replica resets the cursor (then it resyncs and returns) or fails (raises)."""
        incarnation, position = self.cursor(shard)
        async for read in client.follow(shard, incarnation, position):
            if read.reset:
                await self._resync(shard, node, client)
                self._cursors[shard] = (read.incarnation, read.position)
                self._synced[shard].set()
                return
            self._apply(shard, read.changes)
            self._cursors[shard] = (read.incarnation, read.position)
        raise ConnectionError("the feed ended without a reset")

    async def _resync(self, shard: int, node: str, client: ShardClient) -> None:
        first = not self._synced[shard].is_set() and shard not in self._cursors
        before = set() if first else self._held_labels(shard)
        scanned = 0
        async for batch in client.scan(shard, 4096):
            apply_records(self._items, batch)
            before.difference_update(batch.labels.tolist())
            scanned += len(batch)
        if before:
            self._apply_deletes(shard, np.fromiter(before, dtype=np.uint64, count=len(before)))
        metrics.FEED_RESYNCS.inc()
        metrics.ITEMS.set(len(self._items))
        log.log(
            logging.DEBUG if first else logging.INFO,
            "catalogue feed: shard %d re-read from %s: %d items, %d gone",
            shard,
            node,
            scanned,
            len(before),
        )

    def _apply_deletes(self, shard: int, labels: npt.NDArray[np.uint64]) -> None:
        rows = self._items.lookup_labels(labels)
        rows = rows[rows >= 0]
        if not len(rows):
            return
        ids = [self._items.item_id(row) for row in rows.tolist()]
        owned = self._sources.shard_of(ids) == shard
        self._items.delete([i for i, mine in zip(ids, owned.tolist(), strict=True) if mine])

    def _held_labels(self, shard: int) -> set[int]:
        """Labels of the live items this replica holds for one shard."""
        rows = np.flatnonzero(self._items.alive_column())
        if not len(rows):
            return set()
        ids = [self._items.item_id(row) for row in rows.tolist()]
        mine = self._sources.shard_of(ids) == shard
        return set(self._items.labels(rows[mine]).tolist())

    def _apply(self, shard: int, changes: Iterable[Change]) -> None:
        now = self._clock()
        touched = False
        for change in changes:
            if change.upserts is not None:
                apply_records(self._items, change.upserts)
            elif change.deletes is not None:
                self._apply_deletes(shard, change.deletes)
            if change.applied_at > 0:
                metrics.FEED_LAG.observe(max(0.0, now - change.applied_at))
            touched = True
        if touched:
            metrics.ITEMS.set(len(self._items))

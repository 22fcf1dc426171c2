"""A scriptable shard node for router tests: answers from an in-process host, or fails, or is late; and a
router over a few of them, placed as a cluster layout places them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from server.cluster.layout import Layout, Placement, node_name
from server.routing.hedging import HedgePolicy
from server.routing.router import ShardRouter
from server.routing.topology import RoutingPolicy, topology_of
from shards.client import InProcessShardClient
from shards.host import ShardHost
from shards.records import (
    ErrorKind,
    IndexParams,
    NodeLayout,
    NodeStats,
    QueryFilter,
    RecordBatch,
    ShardError,
    ShardHits,
)

DIM = 16


class FakeNode:
    def __init__(self, name: str, shard_ids: Sequence[int]) -> None:
        self.name = name
        self.host = ShardHost(IndexParams(dim=DIM, initial_capacity=256), None, shard_ids)
        self.inner = InProcessShardClient(self.host)
        self.down = False
        self.delay_s = 0.0
        self.stale = 0  # writes to refuse with STALE_LAYOUT
        self.fail_scan_after: int | None = None  # batches a scan yields before the connection breaks
        self.searches: list[list[int]] = []
        self.writes = 0

    def _check(self) -> None:
        if self.down:
            raise ShardError(f"{self.name}: connection refused", ErrorKind.UNAVAILABLE)

    async def search(
        self,
        queries: NDArray[np.float32],
        shard_ids: Sequence[int],
        k: int,
        ef: int = 0,
        exclude: Sequence[NDArray[np.uint64]] | None = None,
        timeout_s: float | None = None,
        *,
        filters: Sequence[QueryFilter | None] | None = None,
    ) -> dict[int, ShardHits | ShardError]:
        self.searches.append(list(shard_ids))
        if self.down:
            error = ShardError(f"{self.name}: connection refused", ErrorKind.UNAVAILABLE)
            return dict.fromkeys(shard_ids, error)
        if self.delay_s:
            try:
                await asyncio.wait_for(asyncio.sleep(self.delay_s), timeout_s)
            except TimeoutError:
                error = ShardError(f"{self.name}: deadline", ErrorKind.DEADLINE_EXCEEDED)
                return dict.fromkeys(shard_ids, error)
        return await self.inner.search(queries, shard_ids, k, ef, exclude, timeout_s, filters=filters)

    async def upsert(
        self,
        batches: Mapping[int, RecordBatch],
        timeout_s: float | None = None,
        *,
        layout_epoch: int = 0,
        backfill: bool = False,
    ) -> int:
        self._check()
        if self.stale:
            self.stale -= 1
            raise ShardError("stale", ErrorKind.STALE_LAYOUT)
        self.writes += 1
        return await self.inner.upsert(batches, timeout_s, backfill=backfill)

    async def delete(
        self,
        shard_id: int,
        labels: NDArray[np.uint64] | Sequence[int],
        timeout_s: float | None = None,
        *,
        layout_epoch: int = 0,
    ) -> int:
        self._check()
        return await self.inner.delete(shard_id, labels, timeout_s)

    async def fetch(
        self, shard_id: int, labels: NDArray[np.uint64] | Sequence[int], timeout_s: float | None = None
    ) -> RecordBatch:
        self._check()
        return await self.inner.fetch(shard_id, labels, timeout_s)

    async def scan(self, shard_id: int, batch_size: int = 1024) -> AsyncIterator[RecordBatch]:
        self._check()
        sent = 0
        async for batch in self.inner.scan(shard_id, batch_size):
            if self.fail_scan_after is not None and sent >= self.fail_scan_after:
                raise ShardError(f"{self.name}: connection reset", ErrorKind.UNAVAILABLE)
            sent += 1
            yield batch

    async def stats(self, timeout_s: float | None = None) -> NodeStats:
        self._check()
        return await self.inner.stats(timeout_s)

    async def get_layout(self, timeout_s: float | None = None) -> NodeLayout:
        self._check()
        return NodeLayout(0, "", self.host.shard_ids, self.name)

    async def set_layout(
        self, layout_json: str, drop_unplaced: bool = False, timeout_s: float | None = None
    ) -> NodeLayout:
        raise ShardError("not here", ErrorKind.INVALID_ARGUMENT)

    async def close(self) -> None:
        await self.inner.close()


class Hooks:
    def __init__(self) -> None:
        self.refreshes = 0
        self.closed = False

    async def ensure_started(self) -> None:
        return None

    async def refresh_layout(self) -> bool:
        self.refreshes += 1
        return False

    async def close(self) -> None:
        self.closed = True


def fake_cluster(
    nodes: int = 4,
    replication: int = 2,
    shards: int = 20,
    *,
    hedge: HedgePolicy | None = None,
    write_acks: int = 0,
    breaker_failures: int = 3,
    breaker_open_s: float = 1.0,
    hint_max_items: int = 200_000,
) -> tuple[ShardRouter, dict[str, FakeNode], Layout, Hooks]:
    names = tuple(node_name(i) for i in range(nodes))
    placement = Placement(shards, names, replication, 256)
    layout = Layout(1, placement, {n: f"127.0.0.1:{i + 1}" for i, n in enumerate(names)})
    fakes = {n: FakeNode(n, placement.shards_of(n)) for n in names}
    hooks = Hooks()
    policy = RoutingPolicy(
        write_acks=write_acks,
        hedge=hedge or HedgePolicy("off"),
        breaker_failures=breaker_failures,
        breaker_open_s=breaker_open_s,
        hint_max_items=hint_max_items,
        # Tests replay by hand (router.replay_hints) so they see each step; the background round waits.
        hint_replay_interval_s=3600.0,
    )
    router = ShardRouter.for_cluster(DIM, topology_of(layout), fakes, policy, hooks)  # type: ignore[arg-type]
    return router, fakes, layout, hooks


def unit_vectors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)

"""The whole cluster seen as one shard host, for the frontend code that walks `router.nodes`.

Start-up hydration scans every shard once, stats report every shard once, and close closes everything:
each through a live replica, so a node that is down at start costs nothing while its shards have another
replica.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from server.errors import BackendError
from shards.records import (
    ErrorKind,
    NodeLayout,
    NodeStats,
    QueryFilter,
    RecordBatch,
    ShardError,
    ShardHits,
    ShardStats,
    as_labels,
)

if TYPE_CHECKING:
    from server.shard_router import ShardRouter


class ClusterView:
    def __init__(self, router: ShardRouter) -> None:
        self._router = router

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
        """Per shard, from its first live replica (no hedging: the router's search does that)."""
        await self._router.ensure_started()
        routing = self._router.topology.read

        async def one(shard: int) -> ShardHits | ShardError:
            for node in self._router.replica_order(routing, shard):
                result = await self._router.client(node).search(
                    queries, [shard], k, ef, exclude, timeout_s, filters=filters
                )
                if isinstance(result[shard], ShardHits):
                    return result[shard]
            return ShardError(f"shard {shard}: no replica answered", ErrorKind.UNAVAILABLE)

        wanted = list(dict.fromkeys(shard_ids))
        return dict(zip(wanted, await asyncio.gather(*(one(s) for s in wanted)), strict=True))

    async def upsert(
        self,
        batches: Mapping[int, RecordBatch],
        timeout_s: float | None = None,
        *,
        layout_epoch: int = 0,
        backfill: bool = False,
    ) -> int:
        """Routes by item id like any write; the shard ids given are not trusted."""
        batch = RecordBatch.concat(list(batches.values()), self._router.dim)
        return await self._router.upsert(batch, timeout_s or 30.0)

    async def delete(
        self,
        shard_id: int,
        labels: NDArray[np.uint64] | Sequence[int],
        timeout_s: float | None = None,
        *,
        layout_epoch: int = 0,
    ) -> int:
        raise ShardError("delete through the router, which knows item ids", ErrorKind.INVALID_ARGUMENT)

    async def fetch(
        self, shard_id: int, labels: NDArray[np.uint64] | Sequence[int], timeout_s: float | None = None
    ) -> RecordBatch:
        await self._router.ensure_started()
        routing = self._router.topology.read
        arr = as_labels(labels)
        errors = []
        for node in self._router.replica_order(routing, shard_id):
            try:
                return await self._router.client(node).fetch(shard_id, arr, timeout_s)
            except ShardError as exc:
                errors.append(f"{node}: {exc}")
        raise ShardError(f"fetch of shard {shard_id}: {'; '.join(errors)}", ErrorKind.UNAVAILABLE)

    async def scan(self, shard_id: int, batch_size: int = 1024) -> AsyncIterator[RecordBatch]:
        """One replica's items; if it fails part-way, the next replica's from the start (the caller
        upserts what it gets, so items seen twice do no harm)."""
        await self._router.ensure_started()
        routing = self._router.topology.read
        errors: list[str] = []
        for node in self._router.replica_order(routing, shard_id):
            try:
                async for batch in self._router.client(node).scan(shard_id, batch_size):
                    yield batch
                return
            except ShardError as exc:
                errors.append(f"{node}: {exc}")
        raise BackendError("shards", f"scan of shard {shard_id}: no replica answered: {'; '.join(errors)}")

    async def stats(self, timeout_s: float | None = None) -> NodeStats:
        router = self._router
        await router.ensure_started()
        routing = router.topology.read
        names = router.node_names
        answers = await asyncio.gather(
            *(router.client(n).stats(timeout_s) for n in names), return_exceptions=True
        )
        by_node = {n: a for n, a in zip(names, answers, strict=True) if isinstance(a, NodeStats)}
        shards: list[ShardStats] = []
        for shard in range(routing.shard_count):
            for node in routing.replicas[shard]:
                stats = by_node.get(node)
                found = [s for s in stats.shards if s.shard_id == shard] if stats else []
                if found:
                    shards.append(found[0])
                    break
        return NodeStats(router.dim, shards, "cluster", router.epoch)

    async def get_layout(self, timeout_s: float | None = None) -> NodeLayout:
        return NodeLayout(self._router.epoch, "", list(range(self._router.shard_count)), "cluster")

    async def set_layout(
        self, layout_json: str, drop_unplaced: bool = False, timeout_s: float | None = None
    ) -> NodeLayout:
        raise ShardError("set layouts on the nodes (recd shards rebalance)", ErrorKind.INVALID_ARGUMENT)

    async def close(self) -> None:
        await self._router.close()

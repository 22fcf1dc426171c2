"""Neighbour lists of single items cached in front of a remote item graph (Neo4j).

A graph query costs a network round trip and a traversal; the neighbours of one item change only when
its edges do. So each seed's neighbour list is cached on its own (the cache is shared by frontends when it
is Redis), a request's seeds are answered from the cache where possible, and only the missing seeds go to
the graph, concurrently (the Neo4j backend merges them into one query) with one computation per seed in
flight per process. Merging per-seed answers by best score and dropping the seeds gives the same result
as one multi-seed traversal: a path's best score does not depend on which other seeds were asked for.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Sequence

from server import metrics
from server.backends.base import Cache, ItemGraph, neighbours_each
from server.backends.single_flight import SingleFlight
from server.domain import Edge


def neighbour_key(item_id: str, hops: int, limit_per_hop: int, min_score: float) -> str:
    return f"recd:nb1:{hops}:{limit_per_hop}:{min_score:g}:{item_id}"


class CachedNeighbours:
    """An ItemGraph whose `neighbours` reads per-item lists through a cache; writes invalidate them."""

    def __init__(
        self, graph: ItemGraph, cache: Cache, ttl_s: float, hops: int, limit_per_hop: int, min_score: float
    ) -> None:
        self._graph = graph
        self._cache = cache
        self._ttl_s = ttl_s
        self._flights: SingleFlight[dict[str, float]] = SingleFlight()
        # The request path's shape, so writes know which keys to invalidate.
        self._shape = (hops, limit_per_hop, min_score)

    async def neighbours_many(
        self,
        seed_lists: Sequence[Sequence[str]],
        hops: int,
        limit_per_hop: int,
        min_score: float,
        timeout_s: float,
    ) -> list[dict[str, float]]:
        return await neighbours_each(self, seed_lists, hops, limit_per_hop, min_score, timeout_s)

    async def neighbours(
        self, item_ids: Sequence[str], hops: int, limit_per_hop: int, min_score: float, timeout_s: float
    ) -> dict[str, float]:
        seeds = list(dict.fromkeys(item_ids))
        keys = [neighbour_key(s, hops, limit_per_hop, min_score) for s in seeds]
        cached = await self._cache.get_many(keys)
        per_seed: list[dict[str, float]] = []
        missing = []
        for seed, key, value in zip(seeds, keys, cached, strict=True):
            if value is None:
                missing.append((seed, key))
            else:
                per_seed.append(json.loads(value))
        metrics.CACHE_REQUESTS.labels("neighbours", "hit").inc(len(seeds) - len(missing))
        metrics.CACHE_REQUESTS.labels("neighbours", "miss").inc(len(missing))

        async def fetch(seed: str, key: str) -> dict[str, float]:
            found = await self._graph.neighbours([seed], hops, limit_per_hop, min_score, timeout_s)
            await self._cache.set(key, json.dumps(found, separators=(",", ":")).encode(), self._ttl_s)
            return found

        per_seed += await asyncio.gather(
            *(self._flights.run(key, functools.partial(fetch, s, key)) for s, key in missing)
        )
        best: dict[str, float] = {}
        for found in per_seed:
            for item_id, score in found.items():
                if score > best.get(item_id, float("-inf")):
                    best[item_id] = score
        for seed in seeds:
            best.pop(seed, None)
        return best

    async def upsert_edges(self, edges: Sequence[Edge]) -> None:
        await self._graph.upsert_edges(edges)
        # A changed edge changes the lists of its source (one hop) and, within two hops, of items that
        # reach the source; those expire with the TTL, which bounds how stale a two-hop answer can be.
        hops, limit, min_score = self._shape
        await self._cache.delete(
            list(
                {neighbour_key(e.src_item_id, h, limit, min_score) for e in edges for h in range(1, hops + 1)}
            )
        )

    async def count_edges(self) -> int:
        return await self._graph.count_edges()

    async def close(self) -> None:
        await self._graph.close()

"""Graph candidates: SIMILAR_TO neighbours (1-2 hops, bounded) of the user's recent items."""

from __future__ import annotations

import heapq

import numpy as np

from server.backends.base import ItemGraph
from server.catalog.item_store import ItemStore
from server.domain import Source
from server.pipeline.context import RequestContext, SourceHits


class GraphSource:
    name = "graph"
    awaits_io = True

    def __init__(
        self,
        graph: ItemGraph,
        items: ItemStore,
        seeds: int,
        hops: int,
        limit_per_hop: int,
        min_score: float,
        max_results: int = 100,
    ) -> None:
        self._graph = graph
        self._items = items
        self._seeds = seeds
        self._hops = hops
        self._limit_per_hop = limit_per_hop
        self._min_score = min_score
        # Two hops fan out to thousands of paths; the best few hundred are all ranking can use.
        self._max_results = max_results

    def applies(self, ctx: RequestContext) -> bool:
        return bool(ctx.graph_seed_ids)

    async def fetch(self, ctx: RequestContext, timeout_s: float) -> SourceHits:
        neighbours = await self._graph.neighbours(
            ctx.graph_seed_ids[: self._seeds], self._hops, self._limit_per_hop, self._min_score, timeout_s
        )
        if len(neighbours) > self._max_results:
            neighbours = dict(heapq.nlargest(self._max_results, neighbours.items(), key=lambda kv: kv[1]))
        rows, scores = [], []
        for item_id, score in neighbours.items():
            row = self._items.row_of(item_id)
            if row is not None:
                rows.append(row)
                scores.append(score)
        return SourceHits(Source.GRAPH, np.asarray(rows, np.int64), np.asarray(scores, np.float32))

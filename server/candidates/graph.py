"""Graph candidates: SIMILAR_TO neighbours (1-2 hops, bounded) of the user's recent items."""

from __future__ import annotations

import numpy as np

from server.backends.base import ItemGraph
from server.catalog.item_store import ItemStore
from server.domain import Source
from server.pipeline.context import RequestContext, SourceHits


class GraphSource:
    name = "graph"

    def __init__(
        self, graph: ItemGraph, items: ItemStore, seeds: int, hops: int, limit_per_hop: int, min_score: float
    ) -> None:
        self._graph = graph
        self._items = items
        self._seeds = seeds
        self._hops = hops
        self._limit_per_hop = limit_per_hop
        self._min_score = min_score

    def applies(self, ctx: RequestContext) -> bool:
        return bool(ctx.graph_seed_ids)

    async def fetch(self, ctx: RequestContext, timeout_s: float) -> SourceHits:
        neighbours = await self._graph.neighbours(
            ctx.graph_seed_ids[: self._seeds], self._hops, self._limit_per_hop, self._min_score, timeout_s
        )
        rows, scores = [], []
        for item_id, score in neighbours.items():
            row = self._items.row_of(item_id)
            if row is not None:
                rows.append(row)
                scores.append(score)
        return SourceHits(Source.GRAPH, np.asarray(rows, np.int64), np.asarray(scores, np.float32))

"""Graph candidates: SIMILAR_TO neighbours (1-2 hops, bounded) of each request's recent items."""

from __future__ import annotations

import heapq

import numpy as np
import numpy.typing as npt

from server.backends.base import ItemGraph
from server.candidates.base import answered
from server.catalog.item_store import ItemStore
from server.domain import Source
from server.pipeline.stages import Hydrated, Ragged, SourceHits


class GraphSource:
    name = "graph"
    source = Source.GRAPH
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

    def applies(self, hydrated: Hydrated) -> npt.NDArray[np.bool_]:
        seeded = np.fromiter((bool(s) for s in hydrated.graph_seeds), np.bool_, len(hydrated.graph_seeds))
        return seeded & answered(hydrated)

    async def fetch(self, hydrated: Hydrated, applies: npt.NDArray[np.bool_], timeout_s: float) -> SourceHits:
        members = np.flatnonzero(applies).tolist()
        found = await self._graph.neighbours_many(
            [hydrated.graph_seeds[i][: self._seeds] for i in members],
            self._hops,
            self._limit_per_hop,
            self._min_score,
            timeout_s,
        )
        n = len(hydrated.batch)
        ids: list[list[str]] = [[] for _ in range(n)]
        scores: list[list[float]] = [[] for _ in range(n)]
        for i, neighbours in zip(members, found, strict=True):
            if len(neighbours) > self._max_results:
                neighbours = dict(heapq.nlargest(self._max_results, neighbours.items(), key=lambda kv: kv[1]))
            ids[i] = list(neighbours)
            scores[i] = list(neighbours.values())
        flat_ids = [item for per in ids for item in per]
        rows = self._items.rows_or_missing(flat_ids)
        flat_scores = np.fromiter((s for per in scores for s in per), np.float32, len(flat_ids))
        owners = np.repeat(np.arange(n), [len(per) for per in ids])
        known = rows >= 0
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(np.bincount(owners[known], minlength=n), out=offsets[1:])
        return SourceHits(Source.GRAPH, Ragged(rows[known], offsets), flat_scores[known])

"""ANN candidates: the request's vector searched over every shard, micro-batched across requests.

With an attribute filter the shards apply it inside their search (adaptive over-fetch); when the filter
is selective (the catalogue's value counts estimate at most `exact_filter_max_items` matches) the
matching items are scored exactly instead (server/candidates/exact.py). `ctx.retrieval` says which ran.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from server import metrics
from server.batching import MicroBatcher
from server.candidates.exact import ExactFilteredSearch
from server.catalog.item_store import ItemStore
from server.domain import Retrieval, Source
from server.errors import BackendError
from server.pipeline.context import RequestContext, SourceHits
from server.pipeline.exclusions import excluded_labels
from server.shard_router import ShardRouter
from shards.records import NO_LABEL


@dataclass(slots=True)
class AnnQuery:
    vector: npt.NDArray[np.float32]
    exclude: npt.NDArray[np.uint64]
    k: int
    ef: int
    deadline: float
    # attribute -> allowed values, applied inside the shards' search; None: no filter.
    filter: Mapping[str, frozenset[str]] | None = None


@dataclass(slots=True)
class AnnAnswer:
    labels: npt.NDArray[np.uint64]
    scores: npt.NDArray[np.float32]
    shards_total: int
    shards_ok: int


class AnnSearcher:
    """Concurrent queries that arrive together go to the shards as one batch: one call per node."""

    def __init__(self, router: ShardRouter, shard_k_factor: float, max_batch: int, max_wait_s: float) -> None:
        self._router = router
        self._shard_k_factor = shard_k_factor
        self._batcher: MicroBatcher[AnnQuery, AnnAnswer] = MicroBatcher(
            self._search_batch, max_batch=max_batch, max_wait_s=max_wait_s, max_in_flight=1
        )

    @property
    def shard_count(self) -> int:
        return self._router.shard_count

    async def search(self, query: AnnQuery) -> AnnAnswer:
        return await self._batcher.submit(query, query.deadline)

    async def _search_batch(self, queries: list[AnnQuery]) -> list[AnnAnswer]:
        metrics.SEARCH_BATCH.observe(len(queries))
        answers: list[AnnAnswer | None] = [None] * len(queries)
        by_ef: dict[int, list[int]] = defaultdict(list)
        for i, q in enumerate(queries):
            by_ef[q.ef].append(i)
        for ef, members in by_ef.items():
            group = [queries[i] for i in members]
            k = max(q.k for q in group)
            timeout_s = max(0.0, min(q.deadline for q in group) - time.monotonic())
            result = await self._router.search(
                np.stack([q.vector for q in group]).astype(np.float32, copy=False),
                k=k,
                per_shard_k=self._router.per_shard_k(k, self._shard_k_factor),
                ef=ef,
                exclude=[q.exclude for q in group],
                timeout_s=timeout_s,
                # Each query carries its own filter (or None): one batch mixes them freely.
                filters=[q.filter for q in group] if any(q.filter for q in group) else None,
            )
            if result.shards_ok == 0:
                raise BackendError("shards", "; ".join(result.errors[:3]) or "no shard answered")
            metrics.COVERAGE.observe(result.shards_ok / result.shards_total)
            for j, i in enumerate(members):
                answers[i] = AnnAnswer(
                    result.labels[j, : queries[i].k],
                    result.scores[j, : queries[i].k],
                    result.shards_total,
                    result.shards_ok,
                )
        return [a for a in answers if a is not None]


class AnnSource:
    name = "ann"
    awaits_io = True

    def __init__(
        self,
        searcher: AnnSearcher,
        items: ItemStore,
        k: int,
        ef: int,
        exact: ExactFilteredSearch | None = None,
    ) -> None:
        self._searcher = searcher
        self._items = items
        self._k = k
        self._ef = ef
        self._exact = exact

    def applies(self, ctx: RequestContext) -> bool:
        return ctx.query_vector is not None

    async def fetch(self, ctx: RequestContext, timeout_s: float) -> SourceHits:
        assert ctx.query_vector is not None
        exclude = excluded_labels(ctx)
        if self._exact is not None and self._exact.applies(ctx.filter):
            rows, scores = await self._exact.search(ctx.query_vector, ctx.filter, exclude, self._k)
            # The catalogue replica holds every shard's items: the answer is complete.
            ctx.coverage.shards_total = ctx.coverage.shards_ok = self._searcher.shard_count
            ctx.retrieval = Retrieval.EXACT_FILTERED
            return SourceHits(Source.ANN, rows, scores)
        answer = await self._searcher.search(
            AnnQuery(
                ctx.query_vector,
                exclude,
                self._k,
                # ef bounds each shard's search, which returns only its share of k (the router raises
                # ef to at least that share), so the global k must not inflate it.
                self._ef,
                min(ctx.deadline, time.monotonic() + timeout_s),
                ctx.filter or None,
            )
        )
        ctx.coverage.shards_total = answer.shards_total
        ctx.coverage.shards_ok = answer.shards_ok
        ctx.retrieval = Retrieval.HNSW_FILTERED if ctx.filter else Retrieval.HNSW
        valid = answer.labels != NO_LABEL
        rows = self._items.lookup_labels(answer.labels[valid].tolist())
        known = rows >= 0
        return SourceHits(Source.ANN, rows[known], answer.scores[valid][known])

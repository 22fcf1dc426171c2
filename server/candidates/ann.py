"""ANN candidates: the request's vector searched over every shard, micro-batched across requests."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from server import _core, metrics
from server.batching import MicroBatcher
from server.catalog.item_store import ItemStore
from server.domain import Source
from server.errors import BackendError
from server.pipeline.context import RequestContext, SourceHits
from server.shard_router import ShardRouter
from shards.records import NO_LABEL


@dataclass(slots=True)
class AnnQuery:
    vector: npt.NDArray[np.float32]
    exclude: npt.NDArray[np.uint64]
    k: int
    ef: int
    deadline: float


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

    def __init__(self, searcher: AnnSearcher, items: ItemStore, k: int, ef: int) -> None:
        self._searcher = searcher
        self._items = items
        self._k = k
        self._ef = ef

    def applies(self, ctx: RequestContext) -> bool:
        return ctx.query_vector is not None

    async def fetch(self, ctx: RequestContext, timeout_s: float) -> SourceHits:
        assert ctx.query_vector is not None
        excluded = list(ctx.exclude_item_ids)
        if not ctx.include_seen:
            excluded.extend(ctx.seen_item_ids)
        if ctx.seed_item_id is not None:
            excluded.append(ctx.seed_item_id)
        exclude = _core.stable_hash64(excluded) if excluded else np.empty(0, np.uint64)
        answer = await self._searcher.search(
            AnnQuery(
                ctx.query_vector,
                exclude,
                self._k,
                # ef bounds each shard's search, which returns only its share of k (the router raises
                # ef to at least that share), so the global k must not inflate it.
                self._ef,
                min(ctx.deadline, time.monotonic() + timeout_s),
            )
        )
        ctx.coverage.shards_total = answer.shards_total
        ctx.coverage.shards_ok = answer.shards_ok
        valid = answer.labels != NO_LABEL
        rows = self._items.lookup_labels(answer.labels[valid].tolist())
        known = rows >= 0
        return SourceHits(Source.ANN, rows[known], answer.scores[valid][known])

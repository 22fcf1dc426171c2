"""ANN candidates: every request's vector searched over every shard, the whole batch in one router call.

With an attribute filter the shards apply it inside their search (adaptive over-fetch); when the filter
is selective (the catalogue's value counts estimate at most `exact_filter_max_items` matches) the
matching items are scored exactly instead (server/candidates/exact.py). The coverage says which ran.
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt

from server import metrics
from server.candidates.base import answered
from server.candidates.exact import ExactFilteredSearch
from server.catalog.item_store import ItemStore
from server.domain import Retrieval, Source
from server.errors import BackendError
from server.pipeline.stages import Hydrated, Ragged, ShardCoverage, SourceHits
from server.routing.router import ShardRouter
from shards.records import NO_LABEL

log = logging.getLogger(__name__)


class AnnSource:
    name = "ann"
    source = Source.ANN
    awaits_io = True

    def __init__(
        self,
        router: ShardRouter,
        items: ItemStore,
        k: int,
        ef: int,
        per_shard_k: int,
        exact: ExactFilteredSearch | None = None,
        exact_max_items: int = 0,
    ) -> None:
        self._router = router
        self._items = items
        self._k = k
        # ef bounds each shard's search, which returns only its share of k (the shard raises ef to at
        # least that share), so the global k must not inflate it.
        self._ef = ef
        self._per_shard_k = per_shard_k
        self.exact_filter = exact
        # Filters estimated to match at most this many items are scored exactly by `exact` (0: never).
        self.exact_max_items = exact_max_items

    def applies(self, hydrated: Hydrated) -> npt.NDArray[np.bool_]:
        return hydrated.has_vector & answered(hydrated)

    async def fetch(self, hydrated: Hydrated, applies: npt.NDArray[np.bool_], timeout_s: float) -> SourceHits:
        n = len(hydrated.batch)
        requests = hydrated.batch.requests
        rows: list[npt.NDArray[np.int64]] = [np.empty(0, np.int64)] * n
        scores: list[npt.NDArray[np.float32]] = [np.empty(0, np.float32)] * n
        total = np.zeros(n, np.int32)
        ok = np.zeros(n, np.int32)
        retrieval = np.full(n, Retrieval.UNSPECIFIED, np.uint8)
        members = np.flatnonzero(applies).tolist()
        exact = [
            i
            for i in members
            if self.exact_filter is not None
            and self.exact_filter.applies(requests[i].filter, self.exact_max_items)
        ]
        searched = [i for i in members if i not in exact] if exact else members
        failed: npt.NDArray[np.bool_] | None = None
        if searched:
            filters = [requests[i].filter or None for i in searched]
            result = await self._router.search(
                np.ascontiguousarray(hydrated.vectors[searched]),
                k=self._k,
                per_shard_k=self._per_shard_k,
                ef=self._ef,
                exclude=[hydrated.excluded.row(i) for i in searched],
                timeout_s=timeout_s,
                # Each query carries its own filter (or None): one batch mixes them freely.
                filters=filters if any(filters) else None,
            )
            if result.shards_ok == 0:
                error = BackendError("shards", "; ".join(result.errors[:3]) or "no shard answered")
                if not exact:
                    raise error
                # The exact-filter requests need no shard: they are still answered.
                log.warning("ann: %s; answering the %d exact-filter requests only", error, len(exact))
                failed = np.zeros(n, np.bool_)
                failed[searched] = True
                searched = []
            else:
                metrics.SEARCH_BATCH.observe(len(searched))
                metrics.COVERAGE.observe(result.shards_ok / result.shards_total)
        if searched:
            valid = result.labels != NO_LABEL
            found = self._items.lookup_labels(result.labels[valid])
            per_query = np.split(found, np.cumsum(valid.sum(axis=1))[:-1])
            per_score = np.split(result.scores[valid], np.cumsum(valid.sum(axis=1))[:-1])
            for j, i in enumerate(searched):
                known = per_query[j] >= 0
                rows[i] = per_query[j][known]
                scores[i] = per_score[j][known]
                total[i] = result.shards_total
                ok[i] = result.shards_ok
                retrieval[i] = Retrieval.HNSW_FILTERED if requests[i].filter else Retrieval.HNSW
        for i in exact:
            assert self.exact_filter is not None
            rows[i], scores[i] = await self.exact_filter.search(
                hydrated.vectors[i],
                requests[i].filter,
                hydrated.excluded.row(i),
                self._k,
            )
            # The catalogue replica holds every shard's items: the answer is complete.
            total[i] = ok[i] = self._router.shard_count
            retrieval[i] = Retrieval.EXACT_FILTERED
        return SourceHits(
            Source.ANN,
            Ragged.of(rows, np.int64),
            np.concatenate(scores).astype(np.float32, copy=False),
            ShardCoverage(total, ok, retrieval),
            failed,
        )

"""ANN candidates: every request's vector searched over every shard, the whole batch in one router call
(one per set of parameters, where an experiment variant's requests carry their own).

With an attribute filter the shards apply it inside their search (adaptive over-fetch); when the filter
is selective (the catalogue's value counts estimate at most `exact_filter_max_items` matches) the
matching items are scored exactly instead (server/candidates/exact.py). The coverage says which ran.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import numpy.typing as npt

from server import metrics
from server.candidates.base import answered
from server.candidates.exact import ExactFilteredSearch
from server.catalog.item_store import ItemStore
from server.domain import Retrieval, Source
from server.errors import BackendError
from server.pipeline.stages import AnnParams, Hydrated, Ragged, ShardCoverage, SourceHits
from server.routing.router import ShardRouter
from server.routing.search import SearchResult
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
        # ef bounds each shard's search, which returns only its share of k (the shard raises ef to at
        # least that share), so the global k must not inflate it. Filters estimated to match at most
        # exact_max_items items are scored exactly by `exact` (0: never). A request may carry its own
        # (an experiment variant's, Request.ann).
        self.params = AnnParams(k, per_shard_k, ef, exact_max_items)
        self.exact_filter = exact

    def applies(self, hydrated: Hydrated) -> npt.NDArray[np.bool_]:
        return hydrated.has_vector & answered(hydrated)

    async def fetch(self, hydrated: Hydrated, applies: npt.NDArray[np.bool_], timeout_s: float) -> SourceHits:
        n = len(hydrated.batch)
        requests = hydrated.batch.requests
        params = [r.ann or self.params for r in requests]
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
            and self.exact_filter.applies(requests[i].filter, params[i].exact_max_items)
        ]
        # One search per set of parameters: every request of the batch but those of a variant with
        # parameters of its own go in one.
        groups: dict[AnnParams, list[int]] = {}
        scored_exactly = set(exact)
        for i in members:
            if i not in scored_exactly:
                groups.setdefault(params[i], []).append(i)
        results = await asyncio.gather(
            *(self._search(hydrated, group, p, timeout_s) for p, group in groups.items())
        )
        failed: npt.NDArray[np.bool_] | None = None
        errors: list[str] = []
        for group, result in zip(groups.values(), results, strict=True):
            if result.shards_ok == 0:
                errors.append("; ".join(result.errors[:3]) or "no shard answered")
                if failed is None:
                    failed = np.zeros(n, np.bool_)
                failed[group] = True
                continue
            metrics.SEARCH_BATCH.observe(len(group))
            metrics.COVERAGE.observe(result.shards_ok / result.shards_total)
            valid = result.labels != NO_LABEL
            found = self._items.lookup_labels(result.labels[valid])
            per_query = np.split(found, np.cumsum(valid.sum(axis=1))[:-1])
            per_score = np.split(result.scores[valid], np.cumsum(valid.sum(axis=1))[:-1])
            for j, i in enumerate(group):
                known = per_query[j] >= 0
                rows[i] = per_query[j][known]
                scores[i] = per_score[j][known]
                total[i] = result.shards_total
                ok[i] = result.shards_ok
                retrieval[i] = Retrieval.HNSW_FILTERED if requests[i].filter else Retrieval.HNSW
        if errors:
            error = BackendError("shards", "; ".join(errors))
            if failed is not None and not exact and bool(failed[members].all()):
                raise error
            # What needs no shard (exact-filter requests), or another search that succeeded, still answers.
            log.warning("ann: %s; answering the other requests only", error)
        for i in exact:
            assert self.exact_filter is not None
            rows[i], scores[i] = await self.exact_filter.search(
                hydrated.vectors[i],
                requests[i].filter,
                hydrated.excluded.row(i),
                params[i].k,
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

    async def _search(
        self, hydrated: Hydrated, group: list[int], p: AnnParams, timeout_s: float
    ) -> SearchResult:
        requests = hydrated.batch.requests
        filters = [requests[i].filter or None for i in group]
        return await self._router.search(
            np.ascontiguousarray(hydrated.vectors[group]),
            k=p.k,
            per_shard_k=p.per_shard_k,
            ef=p.ef,
            exclude=[hydrated.excluded.row(i) for i in group],
            timeout_s=timeout_s,
            # Each query carries its own filter (or None): one batch mixes them freely.
            filters=filters if any(filters) else None,
        )

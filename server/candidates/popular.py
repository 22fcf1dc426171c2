"""Popular candidates: the fallback for cold-start users and the floor under degraded answers."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from server.candidates.base import answered
from server.catalog.item_store import ItemStore
from server.domain import Source
from server.pipeline.stages import Hydrated, Kind, Ragged, Request, SourceHits
from shards.records import is_excluded


class PopularSource:
    name = "popular"
    source = Source.POPULAR
    awaits_io = False

    def __init__(self, items: ItemStore, k_cold: int, k_warm: int, list_name: str | None = None) -> None:
        self._items = items
        self._k_cold = k_cold
        self._k_warm = k_warm
        # The popularity list (config popularity.popular_list) the candidates are ordered by.
        self._list = list_name

    def applies(self, hydrated: Hydrated) -> npt.NDArray[np.bool_]:
        kinds = np.fromiter((r.kind is Kind.RECOMMEND for r in hydrated.batch.requests), np.bool_)
        return kinds & answered(hydrated)

    async def fetch(self, hydrated: Hydrated, applies: npt.NDArray[np.bool_], timeout_s: float) -> SourceHits:
        n = len(hydrated.batch)
        requests = hydrated.batch.requests
        rows: list[npt.NDArray[np.int64]] = [np.empty(0, np.int64)] * n
        members = np.flatnonzero(applies).tolist()
        wants = {i: self._k_cold if not hydrated.has_vector[i] else self._k_warm for i in members}
        plain = [i for i in members if not requests[i].filter and not self._steer(requests[i])]
        if plain:
            # Every unfiltered request reads the same head of the list, taken once for the batch: long
            # enough for the one that must skip the most of it.
            depth = max(wants[i] + len(hydrated.excluded.row(i)) for i in plain)
            head = self._items.popular(depth, None, self._list)
            head_labels = self._items.labels(head)
            for i in plain:
                excluded = hydrated.excluded.row(i)
                reach = wants[i] + len(excluded)
                if len(excluded):
                    window = head[:reach]
                    rows[i] = window[~is_excluded(head_labels[:reach], excluded)][: wants[i]]
                else:
                    rows[i] = head[: wants[i]]
        for i in members:
            if i not in plain:
                rows[i] = self._narrowed(requests[i], wants[i], hydrated.excluded.row(i))
        hits = Ragged.of(rows, np.int64)
        return SourceHits(Source.POPULAR, hits, self._items.popularity_feature(hits.values))

    def _steer(self, request: Request) -> dict[str, frozenset[str]]:
        # Context values that name item attributes (e.g. {"lang": "de"}) narrow the popular list to items
        # that fit the situation, as long as enough of them exist; otherwise the global list fills up.
        return {
            name: frozenset([v]) for name, v in request.context.items() if self._items.has_attribute(name)
        }

    def _narrowed(self, request: Request, k: int, excluded: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        steer = self._steer(request)
        rows = (
            self._items.popular(k, {**steer, **request.filter}, self._list, excluded)
            if steer
            else np.empty(0, np.int64)
        )
        if len(rows) < request.k:
            extra = self._items.popular(k, request.filter or None, self._list, excluded)
            rows = np.concatenate([rows, extra[~np.isin(extra, rows)]])
        return rows

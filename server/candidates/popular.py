"""Popular candidates: the fallback for cold-start users and the floor under degraded answers."""

from __future__ import annotations

import numpy as np

from server.catalog.item_store import ItemStore
from server.domain import Source
from server.pipeline.context import RequestContext, SourceHits
from server.pipeline.exclusions import excluded_labels


class PopularSource:
    name = "popular"
    awaits_io = False

    def __init__(self, items: ItemStore, k_cold: int, k_warm: int, list_name: str | None = None) -> None:
        self._items = items
        self._k_cold = k_cold
        self._k_warm = k_warm
        # The popularity list (config popularity.popular_list) the candidates are ordered by.
        self._list = list_name

    def applies(self, ctx: RequestContext) -> bool:
        return ctx.seed_item_id is None

    async def fetch(self, ctx: RequestContext, timeout_s: float) -> SourceHits:
        k = self._k_cold if ctx.query_vector is None else self._k_warm
        excluded = excluded_labels(ctx)
        # Context values that name item attributes (e.g. {"lang": "de"}) narrow the popular list to items
        # that fit the situation, as long as enough of them exist; otherwise the global list fills up.
        steer = {name: frozenset([v]) for name, v in ctx.context.items() if self._items.has_attribute(name)}
        rows = (
            self._items.popular(k, {**steer, **ctx.filter}, self._list, excluded)
            if steer
            else np.empty(0, np.int64)
        )
        if len(rows) < ctx.k:
            extra = self._items.popular(k, ctx.filter or None, self._list, excluded)
            rows = np.concatenate([rows, extra[~np.isin(extra, rows)]])
        return SourceHits(Source.POPULAR, rows, self._items.popularity_feature(rows))

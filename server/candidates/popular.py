"""Popular candidates: the fallback for cold-start users and the floor under degraded answers."""

from __future__ import annotations

import numpy as np

from server.catalog.item_store import ItemStore
from server.domain import Source
from server.pipeline.context import RequestContext, SourceHits


class PopularSource:
    name = "popular"

    def __init__(self, items: ItemStore, k_cold: int, k_warm: int) -> None:
        self._items = items
        self._k_cold = k_cold
        self._k_warm = k_warm

    def applies(self, ctx: RequestContext) -> bool:
        return ctx.seed_item_id is None

    async def fetch(self, ctx: RequestContext, timeout_s: float) -> SourceHits:
        k = self._k_cold if ctx.query_vector is None else self._k_warm
        k += len(ctx.exclude_item_ids)
        rows = self._items.popular(k, ctx.filter or None)
        # Context values that name item attributes (e.g. {"lang": "de"}) steer the popular list: half of
        # it comes from items that match the context, so a cold-start answer still fits the situation.
        steer = {name: frozenset([v]) for name, v in ctx.context.items() if self._items.has_attribute(name)}
        if steer:
            matching = self._items.popular(k // 2, {**steer, **(ctx.filter or {})})
            rows = np.concatenate([matching, rows])
            rows = rows[np.sort(np.unique(rows, return_index=True)[1])]
        return SourceHits(Source.POPULAR, rows, self._items.popularity_feature(rows))

"""Step 7: the final k: MMR diversity when asked, and each item's provenance and score parts."""

from __future__ import annotations

import numpy as np

from server import _core
from server.catalog.item_store import ItemStore
from server.domain import ScoreComponents, ScoredItem, Source
from server.pipeline.context import RequestContext
from server.ranking.model import RankingModel

_SOURCES = tuple(Source)


class SelectItems:
    name = "select"
    # What coverage.degraded_reasons says when this step fails open.
    degraded_reason = "select"
    awaits_io = False

    def __init__(self, items: ItemStore, model: RankingModel) -> None:
        self._items = items
        self._model = model

    async def run(self, ctx: RequestContext) -> None:
        ranked = ctx.ranked
        if ranked is None or len(ranked.rows) == 0:
            ctx.items = []
            return
        order = np.arange(min(ctx.k, len(ranked.rows)))
        if ctx.diversity > 0 and len(ranked.rows) > 1:
            vectors = self._items.vectors(ranked.rows)
            order = _core.mmr(np.ascontiguousarray(ranked.scores, np.float32), vectors, ctx.k, ctx.diversity)
        w_side = self._model.side_weights
        items = []
        for i in order.tolist():
            row = int(ranked.rows[i])
            bits = int(ranked.source_bits[i])
            side = ranked.side[i]
            items.append(
                ScoredItem(
                    item_id=self._items.item_id(row),
                    score=float(ranked.scores[i]),
                    sources=tuple(s for s in _SOURCES if bits & (1 << int(s))),
                    components=ScoreComponents(
                        similarity=float(ranked.similarity[i]) * self._model.similarity_weight,
                        graph=float(side[0]) * w_side[0],
                        popularity=float(side[1]) * w_side[1],
                        freshness=float(side[2]) * w_side[2],
                    ),
                )
            )
        ctx.items = items

    def on_failure(self, ctx: RequestContext) -> None:
        return None

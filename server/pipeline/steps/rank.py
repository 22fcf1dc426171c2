"""Step 6: score every candidate with the ranking model (micro-batched FP16 scoring)."""

from __future__ import annotations

import time

import numpy as np

from server.catalog.item_store import ItemStore
from server.pipeline.context import RankedCandidates, RequestContext
from server.ranking.model import RankingModel
from server.ranking.service import RankRequest, RankService


class RankCandidates:
    name = "rank"
    # What coverage.degraded_reasons says when this step fails open.
    degraded_reason = "rank"
    awaits_io = True

    def __init__(self, service: RankService, items: ItemStore, model: RankingModel, mmr_pool: int):
        self._service = service
        self._items = items
        self._model = model
        self._mmr_pool = mmr_pool

    def side_features(self, ctx: RequestContext) -> np.ndarray:
        rows = ctx.candidates.rows
        side = np.empty((len(rows), 3), dtype=np.float32)
        side[:, 0] = ctx.candidates.graph_scores
        side[:, 1] = self._items.popularity_feature(rows)
        side[:, 2] = self._items.freshness_feature(
            rows, int(time.time() * 1000), self._model.freshness_half_life_s
        )
        return side

    async def run(self, ctx: RequestContext) -> None:
        candidates = ctx.candidates
        if len(candidates.rows) == 0:
            ctx.ranked = _ranked_by_prior(ctx)
            return
        side = self.side_features(ctx)
        query = ctx.query_vector
        if query is None:  # cold start: similarity contributes nothing, side features decide
            query = np.zeros(self._items.dim, dtype=np.float32)
        want = max(2 * ctx.k, self._mmr_pool) if ctx.diversity > 0 else ctx.k
        ranked = await self._service.rank(
            RankRequest(query=query, rows=candidates.rows, side=side, k=min(want, len(candidates.rows))),
            deadline=ctx.deadline,
        )
        p = ranked.positions
        ctx.ranked = RankedCandidates(
            rows=candidates.rows[p],
            source_bits=candidates.source_bits[p],
            scores=ranked.scores,
            similarity=ranked.similarity,
            side=side[p],
        )

    def on_failure(self, ctx: RequestContext) -> None:
        # The answer still goes out, ordered by graph score then popularity, and says it was not ranked.
        ctx.ranked = _ranked_by_prior(ctx, self._items)


def _ranked_by_prior(ctx: RequestContext, items: ItemStore | None = None) -> RankedCandidates:
    c = ctx.candidates
    popularity = items.popularity_feature(c.rows) if items is not None else np.zeros(len(c.rows), np.float32)
    order = np.lexsort((-popularity, -c.graph_scores))
    side = np.zeros((len(order), 3), np.float32)
    side[:, 0] = c.graph_scores[order]
    side[:, 1] = popularity[order]
    prior = (c.graph_scores + popularity)[order].astype(np.float32)
    return RankedCandidates(
        c.rows[order], c.source_bits[order], prior, np.zeros(len(order), np.float32), side
    )

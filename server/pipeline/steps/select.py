"""The final k of each request: MMR diversity when asked, and each item's provenance and score parts."""

from __future__ import annotations

import numpy as np

from server import _core
from server.catalog.item_store import ItemStore
from server.domain import ScoreComponents, ScoredItem, Source
from server.pipeline.stages import Ranked, Selected

_SOURCES = tuple(Source)
# Source tuples by bit pattern: built once, not per item.
_SOURCES_OF_BITS = tuple(tuple(s for s in _SOURCES if bits & (1 << int(s))) for bits in range(256))


class SelectItems:
    name = "select"
    degraded_reason = "select"
    reads = Ranked
    produces = Selected
    awaits_io = False

    def __init__(self, items: ItemStore, similarity_weight: float, side_weights: tuple[float, float, float]):
        self._items = items
        self._w_sim = similarity_weight
        self._w_side = side_weights

    async def run(self, ranked: Ranked, deadline: float) -> Selected:
        requests = ranked.filtered.hydrated.batch.requests
        # Positions (into the ranked arrays) each request answers with, best first.
        picks = []
        for i, r in enumerate(requests):
            lo, hi = int(ranked.rows.offsets[i]), int(ranked.rows.offsets[i + 1])
            if r.diversity > 0 and hi - lo > 1:
                vectors = self._items.vectors(ranked.rows.values[lo:hi])
                order = _core.mmr(np.ascontiguousarray(ranked.scores[lo:hi]), vectors, r.k, r.diversity)
                picks.append(lo + order)
            else:
                picks.append(np.arange(lo, min(hi, lo + r.k)))
        flat = np.concatenate(picks) if picks else np.empty(0, np.int64)
        rows = ranked.rows.values[flat].tolist()
        bits = ranked.bits[flat].tolist()
        scores = ranked.scores[flat].tolist()
        # The weights of the model that ranked each request, so score parts add up to its scores.
        weights = [ranked.model_for(i) for i in range(len(requests))]
        w_sim = np.asarray([self._w_sim if m is None else m.similarity_weight for m in weights], np.float64)
        w_side = np.asarray([self._w_side if m is None else m.side_weights for m in weights], np.float64)
        owner = np.repeat(np.arange(len(picks)), [len(p) for p in picks])
        similarity = (ranked.similarity[flat].astype(np.float64) * w_sim[owner]).tolist()
        side = (ranked.side[flat].astype(np.float64) * w_side[owner]).tolist()
        item_id = self._items.item_id
        items = [
            ScoredItem(
                item_id=item_id(row),
                score=score,
                sources=_SOURCES_OF_BITS[b],
                components=ScoreComponents(similarity=sim, graph=g, popularity=p, freshness=f),
            )
            for row, b, score, sim, (g, p, f) in zip(rows, bits, scores, similarity, side, strict=True)
        ]
        out = []
        start = 0
        for p in picks:
            out.append(tuple(items[start : start + len(p)]))
            start += len(p)
        return Selected(ranked, tuple(out))

    def fallback(self, ranked: Ranked) -> Selected:
        return Selected(ranked, tuple(() for _ in ranked.filtered.hydrated.batch.requests))

"""Step 5: one deduplicated candidate set without seen, excluded or filtered-out items."""

from __future__ import annotations

import numpy as np

from server.catalog.item_store import ItemStore
from server.domain import Source
from server.pipeline.context import CandidateSet, RequestContext
from server.pipeline.exclusions import excluded_labels
from shards.records import is_excluded

_POPULAR_BIT = np.uint8(1 << int(Source.POPULAR))


class FilterCandidates:
    name = "filter"
    # What coverage.degraded_reasons says when this step fails open.
    degraded_reason = "filter"
    awaits_io = False

    def __init__(self, items: ItemStore, popular_as_fallback: bool = False) -> None:
        self._items = items
        # Warm users' popular-only candidates are dropped while ANN and graph found k (config
        # pipeline.candidates.popular_for_warm_users): popularity then ranks within their tastes.
        self._popular_as_fallback = popular_as_fallback

    async def run(self, ctx: RequestContext) -> None:
        if not ctx.hits:
            ctx.candidates = CandidateSet.empty()
            return
        rows = np.concatenate([h.rows for h in ctx.hits])
        bits = np.concatenate([np.full(len(h.rows), 1 << int(h.source), np.uint8) for h in ctx.hits])
        graph = np.concatenate(
            [h.scores if h.source == Source.GRAPH else np.zeros(len(h.rows), np.float32) for h in ctx.hits]
        )
        unique, inverse = np.unique(rows, return_inverse=True)
        merged_bits = np.zeros(len(unique), np.uint8)
        np.bitwise_or.at(merged_bits, inverse, bits)
        merged_graph = np.zeros(len(unique), np.float32)
        np.maximum.at(merged_graph, inverse, graph)
        keep = self._items.filter_mask(unique, ctx.filter) if ctx.filter else self._items.alive_mask(unique)
        # Every source is checked, not only ANN: graph neighbours and popular items are often seen ones.
        banned = excluded_labels(ctx)
        if len(banned):
            keep &= ~is_excluded(self._items.labels(unique), banned)
        if self._popular_as_fallback and ctx.query_vector is not None:
            personalised = (merged_bits & ~_POPULAR_BIT) != 0
            if np.count_nonzero(keep & personalised) >= ctx.k:
                keep &= personalised
        ctx.candidates = CandidateSet(unique[keep], merged_bits[keep], merged_graph[keep])

    def on_failure(self, ctx: RequestContext) -> None:
        return None

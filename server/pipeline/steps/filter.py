"""One deduplicated candidate set per request without deleted, seen, excluded or filtered-out items."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from server import _core
from server.catalog.item_store import ItemStore
from server.domain import Source
from server.pipeline.stages import Candidates, Filtered, Ragged, ragged_offsets

_POPULAR_BIT = np.uint8(1 << int(Source.POPULAR))


class FilterCandidates:
    name = "filter"
    degraded_reason = "filter"
    reads = Candidates
    produces = Filtered
    awaits_io = False

    def __init__(self, items: ItemStore, popular_as_fallback: bool = False) -> None:
        self._items = items
        # Warm users' popular-only candidates are dropped while ANN and graph found k (config
        # pipeline.candidates.popular_for_warm_users): popularity then ranks within their tastes.
        self._popular_as_fallback = popular_as_fallback

    async def run(self, candidates: Candidates, deadline: float) -> Filtered:
        hydrated = candidates.hydrated
        n = len(hydrated.batch)
        if not candidates.hits:
            return _empty(candidates)
        # Every source's hits of request i, side by side: concatenated per request in one pass.
        owners = np.concatenate([h.rows.owners() for h in candidates.hits])
        order = np.argsort(owners, kind="stable")
        rows = np.concatenate([h.rows.values for h in candidates.hits])[order]
        bits = np.concatenate(
            [np.full(len(h.rows.values), 1 << int(h.source), np.uint8) for h in candidates.hits]
        )[order]
        graph = np.concatenate(
            [
                h.scores if h.source == Source.GRAPH else np.zeros(len(h.scores), np.float32)
                for h in candidates.hits
            ]
        )[order].astype(np.float32, copy=False)
        offsets = ragged_offsets(np.bincount(owners, minlength=n))
        # Dedup, deleted items and every request's exclusions (all sources are checked, not only ANN:
        # graph neighbours and popular items are often seen ones), natively, once for the batch.
        merged_rows, merged_bits, merged_graph, merged_offsets = _core.merge_candidates(
            np.ascontiguousarray(rows, np.int64),
            np.ascontiguousarray(bits),
            np.ascontiguousarray(graph),
            offsets,
            self._items.label_column(),
            self._items.alive_column(),
            np.ascontiguousarray(hydrated.excluded.values, np.uint64),
            hydrated.excluded.offsets,
        )
        keep = np.ones(len(merged_rows), np.bool_)
        requests = hydrated.batch.requests
        for i, r in enumerate(requests):
            if r.filter:
                lo, hi = merged_offsets[i], merged_offsets[i + 1]
                keep[lo:hi] = self._items.filter_mask(merged_rows[lo:hi], r.filter)
        if self._popular_as_fallback:
            keep &= self._personal_when_enough(
                merged_bits, merged_offsets, keep, hydrated.has_vector, requests
            )
        kept = _keep_ragged(merged_offsets, keep)
        return Filtered(candidates, Ragged(merged_rows[keep], kept), merged_bits[keep], merged_graph[keep])

    @staticmethod
    def _personal_when_enough(
        bits: npt.NDArray[np.uint8],
        offsets: npt.NDArray[np.int64],
        keep: npt.NDArray[np.bool_],
        warm: npt.NDArray[np.bool_],
        requests: tuple,  # type: ignore[type-arg]
    ) -> npt.NDArray[np.bool_]:
        """Drops popular-only candidates of warm requests that have k personalised ones."""
        personal = (bits & ~_POPULAR_BIT) != 0
        counts = np.add.reduceat(
            np.append(keep & personal, False).astype(np.int64), np.minimum(offsets[:-1], len(bits))
        )
        counts[offsets[:-1] == offsets[1:]] = 0
        ks = np.fromiter((r.k for r in requests), np.int64, len(requests))
        drop_popular = warm & (counts >= ks)
        owners = np.repeat(np.arange(len(requests)), np.diff(offsets))
        return personal | ~drop_popular[owners]

    def fallback(self, candidates: Candidates) -> Filtered:
        return _empty(candidates)


def _keep_ragged(offsets: npt.NDArray[np.int64], keep: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    running = np.concatenate([[0], np.cumsum(keep)])
    return running[offsets]


def _empty(candidates: Candidates) -> Filtered:
    n = len(candidates.hydrated.batch)
    return Filtered(candidates, Ragged.empty(n, np.int64), np.empty(0, np.uint8), np.empty(0, np.float32))

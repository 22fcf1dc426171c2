"""Exact retrieval for selective filters: every matching item scored against the query vector.

A filter that matches few items makes HNSW a poor tool: each shard must over-fetch about k / selectivity
hits (most of its graph, for a 0.1% filter) to find k that pass. Scoring the matching items directly is
both exact and cheaper, since there are few of them (as Vespa falls back to exact search for restrictive
filters). The ANN source takes this path when the catalogue's value counts estimate fewer matches than
`pipeline.candidates.exact_filter_max_items`.

The matching rows of a filter are cached (with their labels, sorted, for the exclusions) until the next
catalogue write. Scoring runs in the Rust core against the catalogue's FP16 table, or on the GPU ranker's
table where the GPU ranker runs (through the Ranker interface, with no side features, so its order is
the similarity order).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from server import _core
from server.catalog.item_store import ItemStore, Rows
from server.ranking.base import RankBatch, Ranker
from shards.records import is_excluded

log = logging.getLogger(__name__)

FilterKey = tuple[tuple[str, frozenset[str]], ...]
# Below this many matching rows scoring is cheaper than a hop to a worker thread: it runs inline.
_INLINE_ROWS = 4096
# About 32 bytes a cached row (row, label, sorting position, sorted label): 64 MiB at most.
_MAX_CACHED_ROWS = 2_000_000


@dataclass(frozen=True, slots=True)
class _Matching:
    version: int
    rows: Rows  # live rows passing the filter, ascending
    labels: npt.NDArray[np.uint64]  # their labels, aligned with rows
    by_label: npt.NDArray[np.int64]  # positions into rows/labels that sort the labels
    sorted_labels: npt.NDArray[np.uint64]  # labels[by_label]


def filter_key(allowed: Mapping[str, frozenset[str]]) -> FilterKey:
    return tuple(sorted((name, frozenset(values)) for name, values in allowed.items()))


class ExactFilteredSearch:
    """Top-k rows by similarity among the live items passing a filter, minus excluded labels."""

    def __init__(
        self,
        items: ItemStore,
        ranker: Ranker | None = None,
        max_cached_rows: int = _MAX_CACHED_ROWS,
    ) -> None:
        """`ranker`: a GPU ranker to score on (its table mirrors the catalogue); None scores on the CPU.
        `max_cached_rows`: the cache keeps the most recently used filters up to this many rows in all."""
        self._items = items
        self._ranker = ranker
        self._max_cached_rows = max_cached_rows
        self._cached_rows = 0
        self._cache: OrderedDict[FilterKey, _Matching] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._version = 0
        items.add_listener(self._on_write)

    def _on_write(self, rows: Rows, vectors: npt.NDArray[np.float32] | None) -> None:
        # Any write may change which items a filter matches (attributes, deletes): drop every entry lazily.
        self._version += 1

    def applies(self, allowed: Mapping[str, frozenset[str]], max_items: int) -> bool:
        """Whether the filter is selective enough to score its matching items exactly: estimated to
        match at most `max_items` (pipeline.candidates.exact_filter_max_items; 0: never)."""
        return bool(allowed) and self._items.estimate_matches(allowed) <= max_items

    def matching(self, allowed: Mapping[str, frozenset[str]]) -> _Matching:
        """The filter's matching rows, from the cache while no write happened since they were found."""
        key = filter_key(allowed)
        version = self._version
        with self._cache_lock:
            found = self._cache.get(key)
            if found is not None and found.version == version:
                self._cache.move_to_end(key)
                return found
        rows = self._items.matching_rows(allowed)
        labels = self._items.labels(rows)
        order = np.argsort(labels)
        entry = _Matching(version, rows, labels, order, labels[order])
        with self._cache_lock:
            old = self._cache.pop(key, None)
            self._cached_rows += len(rows) - (len(old.rows) if old is not None else 0)
            self._cache[key] = entry
            while self._cached_rows > self._max_cached_rows and len(self._cache) > 1:
                _, evicted = self._cache.popitem(last=False)
                self._cached_rows -= len(evicted.rows)
        return entry

    async def search(
        self,
        query: npt.NDArray[np.float32],
        allowed: Mapping[str, frozenset[str]],
        exclude: npt.NDArray[np.uint64],
        k: int,
    ) -> tuple[Rows, npt.NDArray[np.float32]]:
        """(rows, similarities), best first, at most k. `exclude`: sorted, unique labels."""
        found = self.matching(allowed)
        if not len(found.rows):
            return np.empty(0, np.int64), np.empty(0, np.float32)
        keep = _not_excluded(found, exclude)
        if len(found.rows) <= _INLINE_ROWS and self._ranker is None:
            return self._top_k(query, found.rows, keep, k)
        return await asyncio.to_thread(self._top_k, query, found.rows, keep, k)

    def _top_k(
        self, query: npt.NDArray[np.float32], rows: Rows, keep: npt.NDArray[np.bool_] | None, k: int
    ) -> tuple[Rows, npt.NDArray[np.float32]]:
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        if self._ranker is not None:
            try:
                return self._top_k_ranker(self._ranker, q, rows, keep, k)
            except Exception:
                log.exception("exact search on the %s ranker failed; scoring on the CPU", self._ranker.name)
        scores = self._items.table.score(q, np.ascontiguousarray(rows, dtype=np.int64).reshape(1, -1))
        if keep is not None:
            scores[0, ~keep] = -np.inf
        positions, top = _core.topk_rows(scores, min(k, len(rows)))
        valid = positions[0] >= 0
        return rows[positions[0, valid]], top[0, valid]

    @staticmethod
    def _top_k_ranker(
        ranker: Ranker, q: npt.NDArray[np.float32], rows: Rows, keep: npt.NDArray[np.bool_] | None, k: int
    ) -> tuple[Rows, npt.NDArray[np.float32]]:
        # Zero side features: the ranker orders by weight x similarity, i.e. by similarity.
        candidates = rows if keep is None else np.where(keep, rows, -1)
        batch = RankBatch(
            queries=q,
            rows=np.ascontiguousarray(candidates, dtype=np.int64).reshape(1, -1),
            side=np.zeros((1, len(rows), 3), dtype=np.float32),
            k=min(k, len(rows)),
        )
        result = ranker.rank(batch)
        positions = result.positions[0]
        valid = positions >= 0
        return rows[positions[valid]], result.similarity[0, valid]


def _not_excluded(found: _Matching, exclude: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_] | None:
    """Mask over found.rows of those not excluded (None: nothing is), searching from the smaller side."""
    if not len(exclude):
        return None
    if len(found.labels) <= len(exclude):
        excluded = is_excluded(found.labels, exclude)
    else:
        ordered = found.sorted_labels
        at = np.minimum(np.searchsorted(ordered, exclude), len(ordered) - 1)
        excluded = np.zeros(len(found.labels), dtype=np.bool_)
        excluded[found.by_label[at[ordered[at] == exclude]]] = True
    return None if not excluded.any() else ~excluded

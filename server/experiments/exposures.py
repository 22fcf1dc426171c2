"""The exposure log's writer: answers served, written to the profile store off the request path.

A Recommend only appends its answer to a queue (microseconds, server/experiments/batches.py); what
gathered is written every `exposures.flush_interval_ms` in one store call, after computing each answer's
diversity for the whole batch at once. Past `exposures.queue_max` waiting, answers are dropped and
counted rather than held without bound. An answer not yet written
is still visible to this process (`pending`), so an interaction that follows its answer within the
flush interval through the same frontend is attributed all the same.

The per-variant counters (answers, impressions, latency) are counted at serve time, diversity at write
time: each frontend exports its own, and Prometheus adds them up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from server import metrics
from server.backends.base import ProfileStore
from server.catalog.item_store import ItemStore
from server.config import ExposuresConfig
from server.domain import Exposure
from server.experiments.assignment import Arm, parse_tag
from server.experiments.batches import BatchQueue

log = logging.getLogger(__name__)


class ExposureLog:
    def __init__(
        self,
        store: ProfileStore,
        items: ItemStore,
        config: ExposuresConfig,
        wall_clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._store = store
        self._items = items
        self._config = config
        self._now_ms = wall_clock_ms
        self._batches: BatchQueue[Exposure] = BatchQueue(
            self._write,
            config.flush_interval_ms / 1000.0,
            config.queue_max,
            metrics.EXPOSURES_LOGGED.labels("dropped").inc,
            "exposure-log",
        )
        self._children: dict[str, list[tuple[Any, Any, Any]]] = {}

    @property
    def write_back(self) -> bool:
        return self._config.write_back

    def log(self, user_id: str, item_ids: Sequence[str], arm: Arm, latency_s: float) -> None:
        """One answer served (called for answers inside an experiment, and for every one with
        write_back). Never blocks, never raises."""
        for answers, impressions, latency in self._counters(arm):
            answers.inc()
            impressions.inc(len(item_ids))
            latency.observe(latency_s)
        self._batches.put(
            Exposure(user_id, self._now_ms(), tuple(item_ids), arm.tag, latency_s * 1000.0, 0.0)
        )

    def _counters(self, arm: Arm) -> list[tuple[Any, Any, Any]]:
        # Label lookups cost more than the counting itself: each arm's children are bound once.
        found = self._children.get(arm.tag)
        if found is None:
            found = self._children[arm.tag] = [
                (
                    metrics.EXPERIMENT_ANSWERS.labels(experiment, variant),
                    metrics.EXPERIMENT_IMPRESSIONS.labels(experiment, variant),
                    metrics.EXPERIMENT_LATENCY.labels(experiment, variant),
                )
                for experiment, variant in arm.pairs
            ]
        return found

    def pending(self, user_ids: Sequence[str]) -> dict[str, list[Exposure]]:
        """Answers of these users not yet acknowledged by the store, newest first."""
        wanted = set(user_ids)
        found: dict[str, list[Exposure]] = {}
        for e in reversed(self._batches.pending()):
            if e.user_id in wanted:
                found.setdefault(e.user_id, []).append(e)
        return found

    async def flush(self) -> None:
        """Writes everything queued now (tests, reports, shutdown)."""
        await self._batches.flush()

    async def forget(self, user_ids: Sequence[str]) -> None:
        """Before an erasure: these users' answers still queued are dropped, and a write holding some of
        them is waited for, so that none lands in the store after the erasure."""
        users = set(user_ids)
        self._batches.drop(lambda e: e.user_id in users)
        await self._batches.settled(lambda e: e.user_id in users)

    async def _write(self, batch: list[Exposure]) -> None:
        try:
            batch = with_diversity(batch, self._items)
            for e in batch:
                for experiment, variant in parse_tag(e.arm):
                    metrics.EXPERIMENT_DIVERSITY.labels(experiment, variant).observe(e.diversity)
            c = self._config
            await self._store.record_exposures(batch, c.keep_per_user, c.ttl_s)
            metrics.EXPOSURES_LOGGED.labels("written").inc(len(batch))
        except Exception:
            metrics.EXPOSURES_LOGGED.labels("failed").inc(len(batch))
            log.warning("exposure log: %d answers not written", len(batch), exc_info=True)

    async def close(self) -> None:
        """Writes what is queued, then stops."""
        await self._batches.close()


def with_diversity(batch: Sequence[Exposure], items: ItemStore) -> list[Exposure]:
    """Each answer with its intra-list diversity: the mean cosine distance over its pairs of items that
    the catalogue still holds. The whole batch in one padded array: (answers, longest answer, dim)."""
    if not batch:
        return []
    lengths = np.fromiter((len(e.item_ids) for e in batch), np.int64, len(batch))
    width = max(1, int(lengths.max()))
    rows = items.rows_or_missing([i for e in batch for i in e.item_ids])
    owner = np.repeat(np.arange(len(batch)), lengths)
    column = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    found = rows >= 0
    vectors = np.zeros((len(batch), width, items.dim), np.float32)
    if found.any():
        vectors[owner[found], column[found]] = items.vectors(rows[found])
    norms = np.linalg.norm(vectors, axis=2, keepdims=True)
    vectors = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    m = (norms[:, :, 0] > 0).sum(axis=1).astype(np.float64)
    # Over i != j of 1 - cos: m(m - 1) - (sum of the Gram matrix - its trace m) = m^2 - sum.
    gram_sum = np.einsum("bkd,bld->b", vectors, vectors, dtype=np.float64)
    diversity = np.where(m >= 2, (m * m - gram_sum) / np.maximum(m * (m - 1), 1), 0.0)
    return [
        Exposure(e.user_id, e.served_at_ms, e.item_ids, e.arm, e.latency_ms, float(d))
        for e, d in zip(batch, diversity.tolist(), strict=True)
    ]

"""Ranking for the request path: requests are micro-batched into one launch of the active ranker.

If the primary ranker (the GPU) fails at run time, the batch is scored by the fallback (the CPU ranker)
and a metric says so; the request itself does not fail.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from server import metrics
from server.batching import MicroBatcher
from server.ranking.base import RankBatch, Ranker, RankResult

log = logging.getLogger(__name__)


@dataclass(slots=True)
class RankRequest:
    query: npt.NDArray[np.float32]  # (dim,)
    rows: npt.NDArray[np.int64]  # (C,)
    side: npt.NDArray[np.float32]  # (C, 3)
    k: int


@dataclass(slots=True)
class Ranked:
    positions: npt.NDArray[np.int64]  # (k',) indices into the request's rows, best first
    scores: npt.NDArray[np.float32]
    similarity: npt.NDArray[np.float32]
    ranker: str


class RankService:
    def __init__(
        self,
        primary: Ranker,
        fallback: Ranker | None,
        max_batch: int,
        max_wait_s: float,
        threads: int = 2,
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rank")
        self._batcher: MicroBatcher[RankRequest, Ranked] = MicroBatcher(
            self._rank_batch, max_batch=max_batch, max_wait_s=max_wait_s, max_in_flight=threads
        )

    @property
    def active(self) -> str:
        return self.primary.name

    async def rank(self, request: RankRequest, deadline: float | None = None) -> Ranked:
        return await self._batcher.submit(request, deadline)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _rank_batch(self, requests: list[RankRequest]) -> list[Ranked]:
        batch = stack_requests(requests)
        loop = asyncio.get_running_loop()
        ranker = self.primary
        try:
            result = await loop.run_in_executor(self._executor, ranker.rank, batch)
        except Exception:
            if self.fallback is None:
                raise
            log.exception("ranker %s failed; scoring the batch with %s", ranker.name, self.fallback.name)
            metrics.RANK_FALLBACKS.labels(ranker.name).inc()
            ranker = self.fallback
            result = await loop.run_in_executor(self._executor, ranker.rank, batch)
        metrics.RANK_BATCH.labels(ranker.name).observe(len(requests))
        return split_result(result, requests, ranker.name)


def stack_requests(requests: list[RankRequest]) -> RankBatch:
    """Pads every request's candidates to the batch's widest, with row -1."""
    width = max(1, max(len(r.rows) for r in requests))
    dim = requests[0].query.shape[0]
    n = len(requests)
    queries = np.empty((n, dim), dtype=np.float32)
    rows = np.full((n, width), -1, dtype=np.int64)
    side = np.zeros((n, width, 3), dtype=np.float32)
    for i, r in enumerate(requests):
        queries[i] = r.query
        rows[i, : len(r.rows)] = r.rows
        side[i, : len(r.rows)] = r.side
    k = min(width, max(r.k for r in requests))
    return RankBatch(queries=queries, rows=rows, side=side, k=k)


def split_result(result: RankResult, requests: list[RankRequest], ranker: str) -> list[Ranked]:
    out = []
    for i, r in enumerate(requests):
        positions = result.positions[i, : r.k]
        keep = positions >= 0
        out.append(
            Ranked(
                positions=positions[keep],
                scores=result.scores[i, : r.k][keep],
                similarity=result.similarity[i, : r.k][keep],
                ranker=ranker,
            )
        )
    return out

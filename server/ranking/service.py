"""Ranking for the request path: one ranker call per batch of requests.

The pipeline batches requests before they reach this point, so a batch arrives here whole. The CPU ranker
runs inline (its Rust scoring takes tens of microseconds and releases the GIL; a hop to a thread would
cost more); the GPU ranker waits on its device in a worker thread, so the event loop keeps serving. If the
primary ranker (the GPU) fails at run time, the batch is scored by the fallback (the CPU ranker) and a
metric says so; the requests themselves do not fail.

Model versions: `models` (server.ranking.registry) holds every loaded version. A batch is ranked by one
model, resolved once when it starts and passed down to the ranker, so a hot reload between batches
never changes a batch in flight.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from server import metrics
from server.ranking.base import RankBatch, Ranker, RankResult
from server.ranking.model import RankingModel
from server.ranking.registry import ModelRegistry

log = logging.getLogger(__name__)


class RankService:
    def __init__(
        self, primary: Ranker, fallback: Ranker | None, threads: int = 2, models: ModelRegistry | None = None
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self.models = models if models is not None else ModelRegistry(primary.model)
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rank")

    @property
    def active(self) -> str:
        return self.primary.name

    async def rank(
        self, batch: RankBatch, requests: int, version: str | None = None, model: RankingModel | None = None
    ) -> tuple[RankResult, str, RankingModel]:
        """The batch ranked, the name of the ranker that did it and the model it used: `model`, else
        the loaded `version` (UnknownModelVersion if it is not loaded), else the default one.
        `requests` is for the metric."""
        if model is None:
            model = self.models.get(version)
        ranker = self.primary
        try:
            result = await self._call(ranker, batch, model)
        except Exception:
            if self.fallback is None:
                raise
            log.exception("ranker %s failed; scoring the batch with %s", ranker.name, self.fallback.name)
            metrics.RANK_FALLBACKS.labels(ranker.name).inc()
            ranker = self.fallback
            result = await self._call(ranker, batch, model)
        metrics.RANK_BATCH.labels(ranker.name).observe(requests)
        return result, ranker.name, model

    async def _call(self, ranker: Ranker, batch: RankBatch, model: RankingModel) -> RankResult:
        if ranker.name == "cpu":
            return ranker.rank(batch, model)
        return await asyncio.get_running_loop().run_in_executor(self._executor, ranker.rank, batch, model)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

"""The CPU ranker: FP16 gather-and-dot in the Rust core, side features and top-k in one pass each."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from server import _core
from server.ranking.base import RankBatch, RankResult
from server.ranking.model import RankingModel


class CpuRanker:
    """Reads the item table it shares with the catalogue, so it needs no copy of its own."""

    name = "cpu"

    def __init__(self, table: _core.F16Table, model: RankingModel) -> None:
        self._table = table
        self.model = model

    def rank(self, batch: RankBatch, model: RankingModel | None = None) -> RankResult:
        # The weights are read per call: a model swap needs nothing from this ranker.
        model = model or self.model
        similarity = self._table.score(batch.queries, batch.rows)
        total = similarity * np.float32(model.similarity_weight)
        total += batch.side @ model.side_weight_vector
        # The table scores padding -inf, but a zero or negative similarity weight would turn that into NaN
        # or +inf: mask padding after weighting.
        total[batch.rows < 0] = -np.inf
        positions, scores = _core.topk_rows(np.ascontiguousarray(total, dtype=np.float32), batch.k)
        picked = np.take_along_axis(similarity, np.maximum(positions, 0), axis=1)
        picked[positions < 0] = 0.0
        return RankResult(positions=positions, scores=scores, similarity=picked)

    def upsert_rows(self, rows: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> None:
        return None

    def clear_rows(self, rows: npt.NDArray[np.int64]) -> None:
        return None

    def warm_up(self) -> None:
        dim = self._table.dim
        rows = np.full((1, 1), -1, dtype=np.int64)
        self.rank(RankBatch(np.zeros((1, dim), np.float32), rows, np.zeros((1, 1, 3), np.float32), 1))

"""The ranker interface: score a batch of requests' candidates and keep each request's top k."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from server.ranking.model import RankingModel


@dataclass(slots=True)
class RankBatch:
    """Requests stacked for one scoring launch.

    queries: (B, dim) float32 user vectors; rows: (B, C) int64 item-table rows, -1 = padding;
    side: (B, C, 3) float32 side features in SIDE_FEATURES order; k: results wanted per request.
    """

    queries: npt.NDArray[np.float32]
    rows: npt.NDArray[np.int64]
    side: npt.NDArray[np.float32]
    k: int


@dataclass(slots=True)
class RankResult:
    """positions: (B, k) int64 indices into the batch's C axis, -1 = nothing; scores and similarity (B, k)."""

    positions: npt.NDArray[np.int64]
    scores: npt.NDArray[np.float32]
    similarity: npt.NDArray[np.float32]


class Ranker(Protocol):
    name: str
    model: RankingModel  # what rank() scores with when not given a model

    def rank(self, batch: RankBatch, model: RankingModel | None = None) -> RankResult:
        """Blocking; called from a worker thread, never on the event loop. `model` supplies the weights
        of this batch (several versions may rank at once: the registry's hot reload)."""
        ...

    def upsert_rows(self, rows: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> None:
        """Keeps the ranker's copy of item embeddings current (a no-op for rankers reading the item table)."""
        ...

    def clear_rows(self, rows: npt.NDArray[np.int64]) -> None: ...

    def warm_up(self) -> None: ...

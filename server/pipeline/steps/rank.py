"""Score every request's candidates with the ranking model: the whole batch in one ranker call."""

from __future__ import annotations

import logging
import time

import numpy as np
import numpy.typing as npt

from server.catalog.item_store import ItemStore
from server.pipeline.stages import Filtered, Ragged, Ranked, ragged_offsets
from server.ranking.base import RankBatch, RankResult
from server.ranking.model import RankingModel
from server.ranking.registry import UnknownModelVersion
from server.ranking.service import RankService

log = logging.getLogger(__name__)


class RankCandidates:
    name = "rank"
    degraded_reason = "rank"
    reads = Filtered
    produces = Ranked
    awaits_io = True

    def __init__(self, service: RankService, items: ItemStore, mmr_pool: int):
        self._service = service
        self._items = items
        self._mmr_pool = mmr_pool

    def model(self, version: str | None = None) -> RankingModel:
        """The model of `version` (None: the default one). A variant's version that a reload has since
        removed ranks with the default one (logged): the answer still says which version ranked it."""
        if version is None:
            return self._service.models.default
        try:
            return self._service.models.get(version)
        except UnknownModelVersion:
            log.warning("model version %s is no longer loaded; ranking with the default", version)
            return self._service.models.default

    def side_features(
        self, rows: npt.NDArray[np.int64], graph: npt.NDArray[np.float32], model: RankingModel
    ) -> npt.NDArray[np.float32]:
        side = np.empty((len(rows), 3), dtype=np.float32)
        side[:, 0] = graph
        side[:, 1] = self._items.popularity_feature(rows)
        side[:, 2] = self._items.freshness_feature(rows, int(time.time() * 1000), model.freshness_half_life_s)
        return side

    def wanted(self, filtered: Filtered) -> npt.NDArray[np.int64]:
        """How many ranked candidates each request keeps: k, or the MMR pool when it asks for diversity."""
        requests = filtered.hydrated.batch.requests
        want = np.fromiter(
            (max(2 * r.k, self._mmr_pool) if r.diversity > 0 else r.k for r in requests),
            np.int64,
            len(requests),
        )
        return np.minimum(want, filtered.rows.lengths)

    async def run(self, filtered: Filtered, deadline: float) -> Ranked:
        rows = filtered.rows
        if len(rows.values) == 0:
            return self.fallback(filtered)
        requests = filtered.hydrated.batch.requests
        # Each version's model resolved once for the whole batch, features and scores alike: a reload
        # swaps the default for the next batch, never in the middle of this one.
        versions = [r.model_version for r in requests]
        models = {v: self.model(v) for v in dict.fromkeys(versions)}
        n = len(rows)
        lengths = rows.lengths
        width = int(lengths.max())
        owners = rows.owners()
        column = np.arange(len(rows.values)) - rows.offsets[owners]
        groups = _members_by_version(versions)
        if len(groups) == 1:
            side = self.side_features(rows.values, filtered.graph, models[versions[0]])
        else:
            side = np.empty((len(rows.values), 3), np.float32)
            of_request = np.asarray([list(models).index(v) for v in versions])[owners]
            for g, version in enumerate(models):
                mine = of_request == g
                side[mine] = self.side_features(rows.values[mine], filtered.graph[mine], models[version])
        padded = np.full((n, width), -1, np.int64)
        padded[owners, column] = rows.values
        padded_side = np.zeros((n, width, 3), np.float32)
        padded_side[owners, column] = side
        want = self.wanted(filtered)
        k = max(1, int(want.max()))
        # Cold starts search with a zero vector: similarity contributes nothing, side features decide.
        vectors = filtered.hydrated.vectors
        if len(groups) == 1:
            version = versions[0]
            result, ranker, model = await self._service.rank(
                RankBatch(vectors, padded, padded_side, k), n, model=models[version]
            )
            per_request: tuple[RankingModel, ...] = ()
        else:
            # One ranker call per version: a variant's model shares the batch with the default one
            # instead of a batch of its own.
            result, rankers = (
                RankResult(
                    np.full((n, k), -1, np.int64), np.zeros((n, k), np.float32), np.zeros((n, k), np.float32)
                ),
                [],
            )
            for version, members in groups.items():
                part, name, _ = await self._service.rank(
                    RankBatch(vectors[members], padded[members], padded_side[members], k),
                    len(members),
                    model=models[version],
                )
                result.positions[members], result.scores[members] = part.positions, part.scores
                result.similarity[members] = part.similarity
                rankers.append(name)
            ranker = "+".join(sorted(set(rankers)))
            model = models[versions[0]]
            per_request = tuple(models[v] for v in versions)
        # The first want[i] positions of each row, valid ones only, flattened back to ragged arrays.
        take = (np.arange(k)[None, :] < want[:, None]) & (result.positions >= 0)
        member, slot = np.nonzero(take)
        position = result.positions[member, slot]
        flat = rows.offsets[member] + position
        return Ranked(
            filtered,
            Ragged(rows.values[flat], ragged_offsets(take.sum(axis=1))),
            filtered.bits[flat],
            result.scores[member, slot],
            result.similarity[member, slot],
            side[flat],
            ranker,
            model,
            per_request,
        )

    def fallback(self, filtered: Filtered) -> Ranked:
        """Ordered by graph score, then popularity, and marked as not ranked by the model."""
        rows = filtered.rows
        popularity = self._items.popularity_feature(rows.values)
        owners = rows.owners()
        order = np.lexsort((-popularity, -filtered.graph, owners))
        want = self.wanted(filtered)
        rank_in_row = np.arange(len(order)) - rows.offsets[owners[order]]
        order = order[rank_in_row < want[owners[order]]]
        side = np.zeros((len(order), 3), np.float32)
        side[:, 0] = filtered.graph[order]
        side[:, 1] = popularity[order]
        return Ranked(
            filtered,
            Ragged(rows.values[order], ragged_offsets(want)),
            filtered.bits[order],
            (filtered.graph + popularity)[order].astype(np.float32),
            np.zeros(len(order), np.float32),
            side,
            "prior",
            self.model(),
        )


def _members_by_version(versions: list[str | None]) -> dict[str | None, npt.NDArray[np.int64]]:
    """The requests of each model version, in the order the versions first appear."""
    members: dict[str | None, list[int]] = {}
    for i, v in enumerate(versions):
        members.setdefault(v, []).append(i)
    return {v: np.asarray(m, np.int64) for v, m in members.items()}

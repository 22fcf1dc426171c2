"""The exact offline computation of the Recommend pipeline: what the served answer would be if candidate
retrieval were exhaustive.

It reads the pieces of a live, in-process server (`Recd`), so that it differs from the served answer
only in retrieval: the user vector and recent items come from `recd.users.compute` over what the
server's profile store holds, the graph scores from `recd.graph.neighbours` with the pipeline's graph
parameters, the similarity from the server's FP16 item table, the popularity and freshness features from
its item store; seen items are excluded. Every live item of the catalogue is scored (a brute-force dot
product in batches of users) instead of the ANN, graph and popular candidates. The graph feature is the
whole bounded traversal's answer, not only the best `max_results` that the graph source passes on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from server import _core
from server.ranking.model import RankingModel
from server.tools.evaluation.split import HeldOut

if TYPE_CHECKING:
    from server.runtime import Recd

Positions = npt.NDArray[np.int64]
# Scores per batch of users are (users x catalogue) float32: about 16 MB a batch.
_BATCH_CELLS = 1 << 22


@dataclass
class UserInputs:
    """Per evaluated user, what the pipeline knows before retrieval, in catalogue positions."""

    user_ids: list[str]
    vectors: npt.NDArray[np.float32]  # (users, dim); zero rows for cold-start users
    graph: list[tuple[Positions, npt.NDArray[np.float32]]]
    seen: list[Positions]
    relevant: list[Positions]


@dataclass
class PoolFeatures:
    """Features of a candidate pool per user (padded to one width), for re-scoring many weightings."""

    features: npt.NDArray[np.float32]  # (users, pool, 4): similarity, graph, popularity, freshness
    valid: npt.NDArray[np.bool_]  # (users, pool)
    relevant: npt.NDArray[np.bool_]  # (users, pool)
    relevant_count: npt.NDArray[np.int64]  # (users,): all relevant items, in the pool or not


def weight_vector(model: RankingModel) -> npt.NDArray[np.float32]:
    return np.asarray([model.similarity_weight, *model.side_weights], dtype=np.float32)


class ExactPipeline:
    def __init__(self, recd: Recd, item_ids: Sequence[str], now_ms: int | None = None) -> None:
        self._recd = recd
        self.rows = np.unique(recd.items.rows_of(item_ids))
        self.vectors = recd.items.vectors(self.rows)
        self.popularity = recd.items.popularity_feature(self.rows)
        self._now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        self._freshness: dict[float, npt.NDArray[np.float32]] = {}

    def __len__(self) -> int:
        return len(self.rows)

    def positions(self, item_ids: Sequence[str] | frozenset[str]) -> Positions:
        rows = self._recd.items.rows_of(item_ids)
        pos = np.searchsorted(self.rows, rows)
        inside = pos < len(self.rows)
        pos = pos[inside]
        return np.unique(pos[self.rows[pos] == rows[inside]])

    def freshness(self, half_life_s: float) -> npt.NDArray[np.float32]:
        if half_life_s not in self._freshness:
            self._freshness[half_life_s] = self._recd.items.freshness_feature(
                self.rows, self._now_ms, half_life_s
            )
        return self._freshness[half_life_s]

    async def user_inputs(self, users: Sequence[HeldOut], concurrency: int = 16) -> UserInputs:
        recd = self._recd
        c = recd.config.pipeline.candidates
        gate = asyncio.Semaphore(concurrency)
        timeout_s = 30.0

        async def one(user: HeldOut) -> tuple[npt.NDArray[np.float32] | None, dict[str, float]]:
            async with gate:
                profile, history = await asyncio.gather(
                    recd.profiles.get_profile(user.user_id, timeout_s),
                    recd.profiles.recent_interactions(user.user_id, c.history_limit, timeout_s),
                )
                state = recd.users.compute(user.user_id, profile, history)
                seeds = list(state.recent_item_ids[: c.graph_seeds])
                neighbours = (
                    await recd.graph.neighbours(
                        seeds, c.graph_hops, c.graph_limit_per_hop, c.graph_min_score, timeout_s
                    )
                    if seeds
                    else {}
                )
                return state.vector, neighbours

        answers = await asyncio.gather(*(one(u) for u in users))
        vectors = np.zeros((len(users), recd.items.dim), dtype=np.float32)
        graph = []
        for i, (vector, neighbours) in enumerate(answers):
            if vector is not None:
                vectors[i] = vector
            ids = list(neighbours)
            positions, known = self._aligned_positions(ids)
            scores = np.asarray([neighbours[item] for item in ids], dtype=np.float32)
            graph.append((positions[known], scores[known]))
        return UserInputs(
            user_ids=[u.user_id for u in users],
            vectors=vectors,
            graph=graph,
            seen=[self.positions(u.seen) for u in users],
            relevant=[self.positions(u.relevant) for u in users],
        )

    def _aligned_positions(self, item_ids: list[str]) -> tuple[Positions, npt.NDArray[np.bool_]]:
        """Catalogue positions aligned with `item_ids`, and where the id is a live catalogue item."""
        row_of = self._recd.items.row_of
        rows = np.asarray([-1 if (r := row_of(i)) is None else r for i in item_ids], dtype=np.int64)
        if not item_ids:
            return np.empty(0, np.int64), np.empty(0, np.bool_)
        pos = np.minimum(np.searchsorted(self.rows, rows), max(len(self.rows) - 1, 0))
        known = (rows >= 0) & (self.rows[pos] == rows) if len(self.rows) else rows < -1
        return pos.astype(np.int64), known

    def _batches(self, users: int) -> list[slice]:
        size = max(1, min(512, _BATCH_CELLS // max(len(self.rows), 1)))
        return [slice(start, min(start + size, users)) for start in range(0, users, size)]

    def _scores(
        self, inputs: UserInputs, batch: slice, model: RankingModel
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """(total, similarity) for a batch of users over the whole catalogue; seen items at -inf."""
        similarity = inputs.vectors[batch] @ self.vectors.T
        w_graph, w_pop, w_fresh = model.side_weights
        prior = w_pop * self.popularity + w_fresh * self.freshness(model.freshness_half_life_s)
        total = model.similarity_weight * similarity + prior[None, :]
        for j, i in enumerate(range(batch.start, batch.stop)):
            positions, scores = inputs.graph[i]
            total[j, positions] += w_graph * scores
            total[j, inputs.seen[i]] = -np.inf
        return total.astype(np.float32, copy=False), similarity

    def top_k(self, inputs: UserInputs, model: RankingModel, k: int) -> dict[str, list[str]]:
        lists: dict[str, list[str]] = {}
        for batch in self._batches(len(inputs.user_ids)):
            total, _ = self._scores(inputs, batch, model)
            for j, best in enumerate(_top_positions(total, k)):
                user_id = inputs.user_ids[batch.start + j]
                lists[user_id] = [self._recd.items.item_id(int(self.rows[p])) for p in best]
        return lists

    def pool(self, inputs: UserInputs, model: RankingModel, size: int) -> PoolFeatures:
        """Per user, the union of the top `size` by `model`'s score and by similarity, the graph
        neighbours, and the top `size` by popularity and by freshness; seen items left out. It holds the
        exact top-k of `model` and of every weighting near it, so re-scoring it stands in for a full scan
        while weights are searched."""
        fresh = self.freshness(model.freshness_half_life_s)
        global_top = np.unique(np.concatenate([_top_k_1d(self.popularity, size), _top_k_1d(fresh, size)]))
        pools: list[Positions] = []
        sims: list[npt.NDArray[np.float32]] = []
        for batch in self._batches(len(inputs.user_ids)):
            total, similarity = self._scores(inputs, batch, model)
            by_total = _top_positions(total, size)
            masked = np.where(np.isfinite(total), similarity, -np.inf)
            by_similarity = _top_positions(masked, size)
            for j, i in enumerate(range(batch.start, batch.stop)):
                parts = [by_total[j], by_similarity[j], inputs.graph[i][0], global_top]
                pool = np.unique(np.concatenate(parts))
                pool = pool[~np.isin(pool, inputs.seen[i])]
                pools.append(pool)
                sims.append(similarity[j, pool])
        width = max((len(p) for p in pools), default=0)
        users = len(pools)
        features = np.zeros((users, width, 4), dtype=np.float32)
        valid = np.zeros((users, width), dtype=np.bool_)
        relevant = np.zeros((users, width), dtype=np.bool_)
        for i, pool in enumerate(pools):
            n = len(pool)
            features[i, :n, 0] = sims[i]
            positions, scores = inputs.graph[i]
            graph = np.zeros(n, dtype=np.float32)
            where = np.searchsorted(pool, positions)
            hit = where < n
            hit[hit] = pool[where[hit]] == positions[hit]
            graph[where[hit]] = scores[hit]
            features[i, :n, 1] = graph
            features[i, :n, 2] = self.popularity[pool]
            features[i, :n, 3] = fresh[pool]
            valid[i, :n] = True
            relevant[i, :n] = np.isin(pool, inputs.relevant[i])
        counts = np.asarray([len(r) for r in inputs.relevant], dtype=np.int64)
        return PoolFeatures(features, valid, relevant, counts)


def _top_k_1d(values: npt.NDArray[np.float32], k: int) -> Positions:
    k = min(k, len(values))
    if k == 0:
        return np.empty(0, np.int64)
    return np.argpartition(-values, k - 1)[:k].astype(np.int64)


def _top_positions(scores: npt.NDArray[np.float32], k: int) -> list[Positions]:
    """Per row, the positions of the k best finite scores, best first (the Rust core's top-k)."""
    k = min(k, scores.shape[1])
    if k == 0:
        return [np.empty(0, np.int64) for _ in range(scores.shape[0])]
    positions, _ = _core.topk_rows(np.ascontiguousarray(scores, dtype=np.float32), k)
    return [row[row >= 0] for row in positions]

"""The CPU ranker against a NumPy reference: FP16-rounded gather + dot, side features, padding, top-k."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from server import _core
from server.ranking.base import RankBatch, RankResult
from server.ranking.cpu import CpuRanker
from server.ranking.model import RankingModel

MODEL = RankingModel(
    version="test", similarity_weight=1.0, side_weights=(0.35, 0.08, 0.05), freshness_half_life_s=86400.0
)


def make_table(rng: np.random.Generator, n_rows: int, dim: int) -> tuple[_core.F16Table, np.ndarray]:
    """A table of unit rows and its FP16-rounded values as float64 (what the ranker really stores)."""
    vectors = rng.normal(size=(n_rows, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    table = _core.F16Table(dim, 16)
    table.set_rows(np.arange(n_rows, dtype=np.int64), vectors)
    return table, vectors.astype(np.float16).astype(np.float64)


def make_batch(
    rng: np.random.Generator, n_rows: int, dim: int, batch: int, cands: int, k: int, pad: float = 0.1
) -> RankBatch:
    queries = rng.normal(size=(batch, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    rows = rng.integers(0, n_rows, size=(batch, cands), dtype=np.int64)
    rows[rng.random(size=rows.shape) < pad] = -1
    side = rng.random(size=(batch, cands, 3), dtype=np.float32)
    return RankBatch(queries=queries, rows=rows, side=side, k=k)


def reference_totals(
    table64: np.ndarray, batch: RankBatch, model: RankingModel
) -> tuple[np.ndarray, np.ndarray]:
    """(total, similarity) in float64; padding and rows outside the table are -inf."""
    n_rows = len(table64)
    valid = (batch.rows >= 0) & (batch.rows < n_rows)
    gathered = table64[np.where(valid, batch.rows, 0)]
    sim = np.einsum("bd,bcd->bc", batch.queries.astype(np.float64), gathered)
    sim[~valid] = -np.inf
    total = sim * model.similarity_weight + batch.side.astype(np.float64) @ np.asarray(model.side_weights)
    total[~valid] = -np.inf
    return total, sim


def reference_topk(total: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Descending by score, ties to the lower position; -inf and NaN never picked; -1 / -inf padding."""
    batch = len(total)
    positions = np.full((batch, k), -1, dtype=np.int64)
    scores = np.full((batch, k), -np.inf)
    for b in range(batch):
        keep = np.flatnonzero(np.isfinite(total[b]) | (total[b] == np.inf))
        order = keep[np.lexsort((keep, -total[b, keep]))][:k]
        positions[b, : len(order)] = order
        scores[b, : len(order)] = total[b, order]
    return positions, scores


def assert_matches_reference(
    result: RankResult, total: np.ndarray, sim: np.ndarray, k: int, tol: float
) -> None:
    """Same top-k as the reference up to near-ties (scores within `tol`), similarity of each pick."""
    ref_pos, ref_scores = reference_topk(total, k)
    assert result.positions.shape == result.scores.shape == result.similarity.shape == ref_pos.shape
    np.testing.assert_array_equal(result.positions < 0, ref_pos < 0)
    picked = result.positions >= 0
    np.testing.assert_allclose(result.scores[picked], ref_scores[picked], rtol=0, atol=tol)
    assert np.all(result.scores[~picked] == -np.inf)
    # Where a position differs from the reference, the two candidates' true scores are a near-tie.
    rows = np.arange(len(total))[:, None]
    got_true = total[rows, np.maximum(result.positions, 0)]
    np.testing.assert_allclose(got_true[picked], ref_scores[picked], rtol=0, atol=2 * tol)
    assert all(len(set(p[p >= 0])) == int((p >= 0).sum()) for p in result.positions), (
        "a position picked twice"
    )
    np.testing.assert_allclose(
        result.similarity[picked], sim[rows, np.maximum(result.positions, 0)][picked], rtol=0, atol=tol
    )
    assert np.all(result.similarity[~picked] == 0.0)


CASES = [
    # name, table rows, dim, batch, candidates, k
    ("small", 50, 16, 3, 20, 5),
    ("dim 64", 2000, 64, 8, 300, 20),
    ("dim 100 (not a multiple of 8)", 1000, 100, 4, 257, 17),
    ("dim 128", 5000, 128, 16, 1000, 100),
    ("k equals candidates", 100, 32, 2, 40, 40),
    ("k beyond candidates pads", 100, 32, 2, 10, 25),
    ("one request", 300, 1024, 1, 500, 10),
]


@pytest.mark.parametrize(("name", "n_rows", "dim", "batch", "cands", "k"), CASES, ids=[c[0] for c in CASES])
def test_matches_numpy_reference(name: str, n_rows: int, dim: int, batch: int, cands: int, k: int) -> None:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    table, table64 = make_table(rng, n_rows, dim)
    ranker = CpuRanker(table, MODEL)
    rank_batch = make_batch(rng, n_rows, dim, batch, cands, k)
    total, sim = reference_totals(table64, rank_batch, MODEL)
    assert_matches_reference(ranker.rank(rank_batch), total, sim, k, tol=1e-5)


def test_padding_and_rows_outside_the_table_are_never_picked() -> None:
    rng = np.random.default_rng(1)
    table, table64 = make_table(rng, 10, 8)
    batch = make_batch(rng, 10, 8, 3, 6, 6, pad=0.0)
    batch.rows[0] = -1  # a request with nothing to rank
    batch.rows[1, :3] = [-1, 10, 1 << 35]  # padding and rows never set
    result = CpuRanker(table, MODEL).rank(batch)
    total, sim = reference_totals(table64, batch, MODEL)
    assert_matches_reference(result, total, sim, 6, tol=1e-5)
    assert np.all(result.positions[0] == -1)
    assert set(result.positions[1][result.positions[1] >= 0]) == {3, 4, 5}


def test_ties_go_to_the_lower_position() -> None:
    rng = np.random.default_rng(2)
    table, _ = make_table(rng, 4, 16)
    rows = np.array([[2, 1, 2, 3, 2, 1]], dtype=np.int64)
    side = np.zeros((1, 6, 3), np.float32)
    query = table.get_rows(np.array([2], dtype=np.int64))
    result = CpuRanker(table, MODEL).rank(RankBatch(query, rows, side, 4))
    assert result.positions[0, :3].tolist() == [0, 2, 4]


def test_nan_queries_pick_nothing() -> None:
    rng = np.random.default_rng(3)
    table, _ = make_table(rng, 20, 8)
    batch = make_batch(rng, 20, 8, 2, 10, 3, pad=0.0)
    batch.queries[1, 0] = np.nan
    result = CpuRanker(table, MODEL).rank(batch)
    assert np.all(result.positions[0] >= 0)
    assert np.all(result.positions[1] == -1)

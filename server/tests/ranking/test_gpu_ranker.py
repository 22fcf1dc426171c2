"""The GPU ranker against the CPU ranker: same top-k (ties aside), scores within FP16 tolerance.

Needs CuPy and a CUDA device; where there is none (CI) every test but the first is skipped, saying why.
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass

import numpy as np
import pytest

from server import _core
from server.catalog.item_store import ItemStore
from server.catalog.payload import ItemMetadata
from server.ranking import gpu
from server.ranking.base import RankBatch, RankResult
from server.ranking.cpu import CpuRanker
from server.ranking.model import RankingModel

REASON = gpu.unavailable_reason()
needs_gpu = pytest.mark.skipif(
    REASON is not None, reason=f"CuPy with a CUDA device is not available: {REASON}"
)

MODEL = RankingModel(
    version="test", similarity_weight=1.0, side_weights=(0.35, 0.08, 0.05), freshness_half_life_s=86400.0
)
# Scores are unit-vector dots plus side features of at most 0.48: f32 sums in another order differ by ~1e-6.
TOL = 1e-4


@dataclass
class Items:
    """The part of an ItemStore the rankers read."""

    table: _core.F16Table
    dim: int


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_items(rng: np.random.Generator, n_rows: int, dim: int) -> Items:
    table = _core.F16Table(dim, 16)
    table.set_rows(np.arange(n_rows, dtype=np.int64), unit(rng, n_rows, dim))
    return Items(table, dim)


def make_batch(
    rng: np.random.Generator, n_rows: int, dim: int, batch: int, cands: int, k: int, pad: float = 0.1
) -> RankBatch:
    rows = rng.integers(0, n_rows, size=(batch, cands), dtype=np.int64)
    rows[rng.random(size=rows.shape) < pad] = -1
    side = rng.random(size=(batch, cands, 3), dtype=np.float32)
    return RankBatch(queries=unit(rng, batch, dim), rows=rows, side=side, k=k)


def cpu_scores(table: _core.F16Table, batch: RankBatch) -> tuple[np.ndarray, np.ndarray]:
    """(total, similarity) exactly as the CPU ranker computes them."""
    sim = table.score(batch.queries, batch.rows)
    total = sim * np.float32(MODEL.similarity_weight) + batch.side @ MODEL.side_weight_vector
    total[batch.rows < 0] = -np.inf
    return total, sim


def assert_same_ranking(got: RankResult, table: _core.F16Table, batch: RankBatch) -> None:
    want = CpuRanker(table, MODEL).rank(batch)
    total, sim = cpu_scores(table, batch)
    assert got.positions.shape == got.scores.shape == got.similarity.shape == want.positions.shape
    assert got.positions.dtype == np.int64 and got.scores.dtype == got.similarity.dtype == np.float32
    np.testing.assert_array_equal(got.positions < 0, want.positions < 0)
    picked = got.positions >= 0
    np.testing.assert_allclose(got.scores[picked], want.scores[picked], rtol=0, atol=TOL)
    assert np.all(got.scores[~picked] == -np.inf) and np.all(got.similarity[~picked] == 0.0)
    # A position may differ from the CPU's only where the two candidates' scores are a near-tie.
    rows = np.arange(len(total))[:, None]
    at = np.maximum(got.positions, 0)
    np.testing.assert_allclose(total[rows, at][picked], want.scores[picked], rtol=0, atol=2 * TOL)
    np.testing.assert_allclose(got.similarity[picked], sim[rows, at][picked], rtol=0, atol=TOL)
    assert all(len(set(p[p >= 0])) == int((p >= 0).sum()) for p in got.positions), "a position picked twice"
    if picked.any():
        assert (got.positions == want.positions)[picked].mean() > 0.98


def test_available_never_raises() -> None:
    assert gpu.available() is (REASON is None)


CASES = [
    # name, table rows, dim, batch, candidates, k
    ("small", 50, 16, 3, 20, 5),
    ("dim 64", 20_000, 64, 32, 1000, 50),
    ("dim 100: scalar path", 3000, 100, 8, 257, 17),
    ("dim 128", 20_000, 128, 64, 1000, 100),
    ("dim 1024", 20_000, 1024, 16, 1000, 10),
    ("k equals candidates", 100, 32, 2, 40, 40),
    ("k beyond candidates pads", 100, 32, 2, 10, 25),
    ("sort in shared memory", 5000, 32, 4, 1500, 200),
    ("one full-width sort", 5000, 32, 2, 8192, 300),
    ("wide: top-k in tile passes", 5000, 32, 3, 20_000, 64),
    ("wide with a large k: library sort", 5000, 32, 2, 9000, 5000),
]


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize(("name", "n_rows", "dim", "batch", "cands", "k"), CASES, ids=[c[0] for c in CASES])
def test_matches_cpu_ranker(name: str, n_rows: int, dim: int, batch: int, cands: int, k: int) -> None:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    items = make_items(rng, n_rows, dim)
    ranker = gpu.GpuRanker(items, MODEL)
    for _ in range(2):  # fresh inputs through the same (now warm) buffers
        rank_batch = make_batch(rng, n_rows, dim, batch, cands, k)
        assert_same_ranking(ranker.rank(rank_batch), items.table, rank_batch)


@needs_gpu
@pytest.mark.gpu
def test_padding_nan_and_rows_outside_the_table() -> None:
    rng = np.random.default_rng(1)
    items = make_items(rng, 10, 8)
    ranker = gpu.GpuRanker(items, MODEL)
    batch = make_batch(rng, 10, 8, 4, 6, 6, pad=0.0)
    batch.rows[0] = -1  # nothing to rank
    batch.rows[1, :3] = [-1, 10, 1 << 35]  # padding and rows never set
    batch.queries[2, 0] = np.nan  # NaN scores are never picked
    result = ranker.rank(batch)
    assert_same_ranking(result, items.table, batch)
    assert np.all(result.positions[0] == -1) and np.all(result.positions[2] == -1)
    assert set(result.positions[1][result.positions[1] >= 0]) == {3, 4, 5}
    assert np.all(result.positions[3] >= 0)


@needs_gpu
@pytest.mark.gpu
def test_ties_go_to_the_lower_position() -> None:
    rng = np.random.default_rng(2)
    items = make_items(rng, 4, 16)
    ranker = gpu.GpuRanker(items, MODEL)
    rows = np.array([[2, 1, 2, 3, 2, 1]], dtype=np.int64)
    query = items.table.get_rows(np.array([2], dtype=np.int64))
    batch = RankBatch(query, rows, np.zeros((1, 6, 3), np.float32), 6)
    result = ranker.rank(batch)
    np.testing.assert_array_equal(result.positions, CpuRanker(items.table, MODEL).rank(batch).positions)
    assert result.positions[0, :3].tolist() == [0, 2, 4]


def upsert(store: ItemStore, rng: np.random.Generator, ids: list[str]) -> np.ndarray:
    labels = np.asarray([zlib.crc32(i.encode()) for i in ids], dtype=np.uint64)
    meta = [ItemMetadata(attributes={}, popularity=1.0, created_at_ms=0) for _ in ids]
    return store.upsert(ids, labels, unit(rng, len(ids), store.dim), meta)


@needs_gpu
@pytest.mark.gpu
def test_follows_upserts_deletes_and_growth() -> None:
    rng = np.random.default_rng(3)
    dim = 32
    store = ItemStore(dim, capacity=100)
    upsert(store, rng, [f"a{i}" for i in range(100)])
    ranker = gpu.GpuRanker(store, MODEL, chunk_rows=64)  # small chunks: growth adds many
    store.add_listener(ranker.on_catalogue_change)
    assert ranker.table_rows == 100 and ranker.table_capacity == 128

    batch = make_batch(rng, 100, dim, 8, 200, 20)
    assert_same_ranking(ranker.rank(batch), store.table, batch)

    # Growth past the initial capacity, and past the chunk-pointer array's first 256 chunks.
    for start in range(100, 20_100, 5000):
        upsert(store, rng, [f"a{i}" for i in range(start, start + 5000)])
        batch = make_batch(rng, store.table.rows, dim, 8, 500, 20)
        assert_same_ranking(ranker.rank(batch), store.table, batch)
    assert ranker.table_rows == 20_100 and ranker.table_capacity >= 20_100

    # New vectors for existing items (a row given twice keeps its last vector).
    rows = upsert(store, rng, [f"a{i}" for i in (5, 17, 5, 19_000)])
    batch = RankBatch(
        unit(rng, 2, dim), np.tile(rows, (2, 1)), rng.random(size=(2, 4, 3), dtype=np.float32), 4
    )
    assert_same_ranking(ranker.rank(batch), store.table, batch)

    # Deleted rows are zeroed on the GPU (the catalogue filters them out before ranking anyway).
    deleted = store.delete([f"a{i}" for i in (7, 8, 20_000)])
    batch = RankBatch(unit(rng, 1, dim), deleted[None, :], np.zeros((1, 3, 3), np.float32), 3)
    result = ranker.rank(batch)
    assert sorted(result.positions[0].tolist()) == [0, 1, 2]
    assert np.all(result.scores == 0.0) and np.all(result.similarity == 0.0)

    # Upserting a deleted item again brings its row back.
    upsert(store, rng, ["a7"])
    batch = make_batch(rng, store.table.rows, dim, 4, 300, 30, pad=0.0)
    batch.rows[np.isin(batch.rows, deleted)] = -1  # still deleted: zero on the GPU, stale on the CPU
    batch.rows[:, 0] = store.row_of("a7")
    assert_same_ranking(ranker.rank(batch), store.table, batch)


@needs_gpu
@pytest.mark.gpu
def test_concurrent_ranks_alongside_writes() -> None:
    rng = np.random.default_rng(4)
    dim = 64
    items = make_items(rng, 5000, dim)
    ranker = gpu.GpuRanker(items, MODEL, slots=2, chunk_rows=1024)
    batches = [make_batch(rng, 5000, dim, 16, 700, 25) for _ in range(6)]
    wanted = [CpuRanker(items.table, MODEL).rank(b) for b in batches]
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            for i in range(30):
                j = (seed + i) % len(batches)
                got = ranker.rank(batches[j])
                np.testing.assert_allclose(got.scores, wanted[j].scores, rtol=0, atol=TOL)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for start in range(5000, 20_000, 1000):  # rows the batches never read, growing the table meanwhile
        ranker.upsert_rows(np.arange(start, start + 1000, dtype=np.int64), unit(rng, 1000, dim))
    for t in threads:
        t.join()
    assert not errors, errors[0]


@needs_gpu
@pytest.mark.gpu
def test_warm_up_compiles_every_kernel() -> None:
    rng = np.random.default_rng(5)
    ranker = gpu.GpuRanker(make_items(rng, 1000, 128), MODEL)
    ranker.warm_up()
    registers = ranker.kernel_registers()
    assert registers and all(n > 0 for n in registers.values())


@needs_gpu
@pytest.mark.gpu
def test_bad_shapes_are_rejected() -> None:
    rng = np.random.default_rng(6)
    ranker = gpu.GpuRanker(make_items(rng, 10, 8), MODEL)
    batch = make_batch(rng, 10, 8, 2, 5, 3)
    with pytest.raises(ValueError, match="queries"):
        ranker.rank(RankBatch(batch.queries[:, :4], batch.rows, batch.side, 3))
    with pytest.raises(ValueError, match="k must be"):
        ranker.rank(RankBatch(batch.queries, batch.rows, batch.side, 0))
    empty = ranker.rank(RankBatch(batch.queries, batch.rows[:, :0], batch.side[:, :0], 3))
    assert np.all(empty.positions == -1)


@needs_gpu
@pytest.mark.gpu
def test_batches_of_several_model_versions_in_flight_at_once() -> None:
    """Hot reload: each batch ranks with the model it is given (weights are launch arguments), while
    batches of another version run beside it on the same device buffers."""
    rng = np.random.default_rng(8)
    dim = 64
    items = make_items(rng, 3000, dim)
    other = RankingModel("other", -0.5, (0.1, 1.5, 0.2), 86400.0)
    ranker = gpu.GpuRanker(items, MODEL, slots=2)
    batches = [make_batch(rng, 3000, dim, 8, 500, 20) for _ in range(4)]
    wanted = {m.version: [CpuRanker(items.table, m).rank(b) for b in batches] for m in (MODEL, other)}
    assert not np.array_equal(wanted["test"][0].positions, wanted["other"][0].positions)
    errors: list[BaseException] = []

    def worker(model: RankingModel) -> None:
        try:
            for i in range(40):
                j = i % len(batches)
                got = ranker.rank(batches[j], model)
                np.testing.assert_allclose(got.scores, wanted[model.version][j].scores, rtol=0, atol=TOL)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(m,)) for m in (MODEL, other, MODEL, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    np.testing.assert_allclose(ranker.rank(batches[0]).scores, wanted["test"][0].scores, rtol=0, atol=TOL)

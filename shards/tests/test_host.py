from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shards.host import ShardHost
from shards.records import NO_LABEL, ErrorKind, IndexParams, ShardError, ShardHits
from shards.tests.helpers import batch_of, clustered, exact_top_k, recall, unit

SHARDS = 20


def split_by_shard(labels: np.ndarray, vectors: np.ndarray, shards: int) -> dict[int, object]:
    owner = labels % shards
    return {s: batch_of(labels[owner == s], vectors[owner == s]) for s in range(shards)}


@pytest.fixture(scope="module")
def sharded() -> tuple[ShardHost, np.ndarray, np.ndarray]:
    data, queries = clustered(20_000, 64, clusters=50, seed=4, n_queries=200)
    host = ShardHost(IndexParams(dim=64), None, range(SHARDS))
    assert host.upsert(split_by_shard(np.arange(len(data)), data, SHARDS)) == len(data)  # type: ignore[arg-type]
    yield host, data, queries
    host.close()


def merge(results: dict[int, ShardHits | ShardError], k: int) -> np.ndarray:
    """The frontend's job (a Rust k-way merge there); NumPy here."""
    hits = [r for r in results.values() if isinstance(r, ShardHits)]
    labels = np.concatenate([h.labels for h in hits], axis=1)
    scores = np.concatenate([h.scores for h in hits], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(labels, order, axis=1)


def test_search_all_shards_and_merge_has_high_recall(
    sharded: tuple[ShardHost, np.ndarray, np.ndarray],
) -> None:
    host, data, queries = sharded
    results = host.search(queries, list(range(SHARDS)), k=10, ef=100)
    assert list(results) == list(range(SHARDS))
    assert all(isinstance(r, ShardHits) and r.labels.shape == (200, 10) for r in results.values())
    exact = exact_top_k(data, queries, 10).astype(np.uint64)
    assert recall(merge(results, 10), exact) >= 0.95
    for shard, hits in results.items():
        assert isinstance(hits, ShardHits)
        assert (hits.labels % SHARDS == shard).all(), "each shard returns only its own items"


def test_unknown_shard_fails_alone(sharded: tuple[ShardHost, np.ndarray, np.ndarray]) -> None:
    host, _, queries = sharded
    results = host.search(queries[:3], [5, 99, 6], k=4)
    assert list(results) == [5, 99, 6]
    error = results[99]
    assert isinstance(error, ShardError) and error.kind is ErrorKind.NOT_FOUND and not error.transient
    assert isinstance(results[5], ShardHits) and isinstance(results[6], ShardHits)


def test_slow_shard_misses_the_deadline_alone(sharded: tuple[ShardHost, np.ndarray, np.ndarray]) -> None:
    host, _, queries = sharded
    blocked = host.shard(7)
    blocked._lock.acquire_write()  # as if a long write held it
    try:
        results = host.search(queries[:2], [6, 7, 8], k=3, timeout_s=0.2)
    finally:
        blocked._lock.release_write()
    error = results[7]
    assert isinstance(error, ShardError) and error.kind is ErrorKind.DEADLINE_EXCEEDED and error.transient
    assert isinstance(results[6], ShardHits) and isinstance(results[8], ShardHits)


def test_bad_search_input_raises(sharded: tuple[ShardHost, np.ndarray, np.ndarray]) -> None:
    host, _, queries = sharded
    with pytest.raises(ShardError) as err:
        host.search(queries[:, :10], [0], k=5)
    assert err.value.kind is ErrorKind.INVALID_ARGUMENT and "dim" in err.value.message


def test_writes_route_to_their_shard_and_survive_a_restart(tmp_path: Path) -> None:
    data = unit(np.random.default_rng(0).normal(size=(600, 8)))
    labels = np.arange(600, dtype=np.uint64)
    host = ShardHost(IndexParams(dim=8), tmp_path, range(3))
    assert host.upsert(split_by_shard(labels, data, 3)) == 600  # type: ignore[arg-type]
    assert host.delete(1, [1, 4, 5]) == 2, "label 5 lives in shard 2"
    with pytest.raises(ShardError) as err:
        host.upsert({0: batch_of([600], data[:1]), 9: batch_of([601], data[:1])})
    assert err.value.kind is ErrorKind.NOT_FOUND
    assert len(host.fetch(0, [600])) == 0, "nothing is written when any shard is unknown"
    with pytest.raises(ShardError):
        host.fetch(9, [1])
    before = [(s.items, s.deleted) for s in host.stats().shards]
    assert before == [(200, 0), (198, 2), (200, 0)]
    snapshots = host.snapshot_all()
    assert all(lsn is not None for lsn in snapshots.values())
    host.upsert({2: batch_of([602], data[:1])})
    host.close()
    with ShardHost(IndexParams(dim=8), tmp_path, range(3)) as reopened:
        assert [(s.items, s.deleted) for s in reopened.stats().shards] == [(200, 0), (198, 2), (201, 0)]
        hits = reopened.search(data[:1], [0, 1, 2], k=1)
        assert isinstance(hits[2], ShardHits) and hits[2].labels[0, 0] == 602
        scanned = [b for s in range(3) for b in reopened.scan(s, 50)]
        assert sum(len(b) for b in scanned) == 599
        assert NO_LABEL not in np.concatenate([b.labels for b in scanned])

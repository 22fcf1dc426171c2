from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from shards.index import ShardIndex
from shards.records import NO_LABEL, ErrorKind, IndexParams, RecordBatch, ShardError
from shards.tests.helpers import batch_of, clustered, exact_top_k, recall, unit

DIM = 16


@pytest.fixture(scope="module")
def big() -> tuple[ShardIndex, np.ndarray, np.ndarray]:
    data, queries = clustered(20_000, 64, clusters=50, seed=1, n_queries=200)
    index = ShardIndex(0, IndexParams(dim=64))
    index.upsert(batch_of(np.arange(len(data)), data))
    return index, data, queries


def small_data(n: int = 2000, seed: int = 2) -> np.ndarray:
    return unit(np.random.default_rng(seed).normal(size=(n, DIM)))


def small_index(n: int = 2000, data_dir: Path | None = None, **kwargs: int) -> tuple[ShardIndex, np.ndarray]:
    data = small_data(n)
    index = ShardIndex(3, IndexParams(dim=DIM, ef_search=200), data_dir, **kwargs)
    index.upsert(batch_of(np.arange(n), data))
    return index, data


def test_recall_against_brute_force(big: tuple[ShardIndex, np.ndarray, np.ndarray]) -> None:
    index, data, queries = big
    hits = index.search(queries, k=10, ef=100)
    exact = exact_top_k(data, queries, 10).astype(np.uint64)
    assert recall(hits.labels, exact) >= 0.95
    # Scores are inner products, best first.
    expected = np.einsum("qd,qkd->qk", queries, data[hits.labels.astype(np.int64)])
    np.testing.assert_allclose(hits.scores, expected, atol=1e-5)
    assert (np.diff(hits.scores, axis=1) <= 1e-6).all()


def test_ef_per_request_under_concurrency(big: tuple[ShardIndex, np.ndarray, np.ndarray]) -> None:
    """hnswlib's ef is global to the index; concurrent searches at different ef must each get their own."""
    index, _, queries = big
    reference = {ef: index.search(queries, k=10, ef=ef).labels for ef in (10, 300)}
    assert not np.array_equal(reference[10], reference[300]), "test data too easy to tell the efs apart"
    errors: list[str] = []

    def searcher(ef: int) -> None:
        for _ in range(15):
            got = index.search(queries, k=10, ef=ef).labels
            if not np.array_equal(got, reference[ef]):
                errors.append(f"ef={ef} returned another ef's results")

    threads = [threading.Thread(target=searcher, args=(ef,)) for ef in (10, 300, 10, 300)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_k_larger_than_ef_still_returns_k(big: tuple[ShardIndex, np.ndarray, np.ndarray]) -> None:
    index, data, queries = big
    hits = index.search(queries[:20], k=200, ef=10)
    assert hits.labels.shape == (20, 200)
    assert (hits.labels != NO_LABEL).all()
    assert recall(hits.labels, exact_top_k(data, queries[:20], 200).astype(np.uint64)) >= 0.9


def test_upsert_replaces() -> None:
    index, data = small_index(500)
    new_vector = unit(-data[7])
    index.upsert(RecordBatch(np.array([7], np.uint64), ["renamed"], new_vector[None], [b"new"]))
    fetched = index.fetch([7])
    assert fetched.item_ids == ["renamed"] and fetched.payloads == [b"new"]
    np.testing.assert_array_equal(fetched.vectors[0], new_vector)
    assert index.search(new_vector[None], k=1).labels[0, 0] == 7
    assert index.search(data[7][None], k=5).labels[0].tolist().count(7) == 0
    assert index.stats().items == 500


def test_delete_hides_and_upsert_revives() -> None:
    index, data = small_index(500)
    assert index.delete([3, 4, 999_999]) == 2
    assert index.delete([3]) == 0
    hits = index.search(data[[3, 4]], k=20)
    assert not np.isin(hits.labels, [3, 4]).any()
    assert len(index.fetch([3, 4, 5])) == 1
    stats = index.stats()
    assert (stats.items, stats.deleted) == (498, 2)
    index.upsert(batch_of([3], data[[3]]))
    assert index.search(data[[3]], k=1).labels[0, 0] == 3
    assert (index.stats().items, index.stats().deleted) == (499, 1)


def test_exclusions_are_honoured_per_query() -> None:
    index, data = small_index(2000)
    queries = small_data(8, seed=9)
    exact = exact_top_k(data, queries, 30)
    exclude = [exact[i, : i * 2].astype(np.uint64) for i in range(8)]  # query i loses its top 2i
    hits = index.search(queries, k=10, exclude=exclude)
    for i in range(8):
        assert not np.isin(hits.labels[i], exclude[i]).any()
        np.testing.assert_array_equal(hits.labels[i], exact[i, i * 2 : i * 2 + 10])


def test_short_results_are_padded() -> None:
    index, data = small_index(5)
    hits = index.search(data[:2], k=8)
    assert (hits.labels[:, :5] != NO_LABEL).all()
    assert (hits.labels[:, 5:] == NO_LABEL).all() and np.isneginf(hits.scores[:, 5:]).all()
    excluded = index.search(data[:1], k=8, exclude=[np.arange(5, dtype=np.uint64)])
    assert (excluded.labels == NO_LABEL).all()
    empty = ShardIndex(0, IndexParams(dim=DIM))
    assert (empty.search(data[:3], k=4).labels == NO_LABEL).all()


def test_capacity_grows_by_doubling() -> None:
    index = ShardIndex(0, IndexParams(dim=DIM, initial_capacity=16))
    index.upsert(batch_of(np.arange(100), small_data(100)))
    assert index.stats().capacity == 128
    assert len(index.fetch(np.arange(100))) == 100


def _bad_batch(**change: object) -> RecordBatch:
    batch = batch_of([1, 2], small_data(2))
    for key, value in change.items():
        setattr(batch, key, value)
    return batch


@pytest.mark.parametrize(
    ("batch", "field"),
    [
        (_bad_batch(vectors=np.ones((2, DIM + 1), np.float32)), "vectors"),
        (_bad_batch(vectors=np.full((2, DIM), np.nan, np.float32)), "vectors"),
        (_bad_batch(labels=np.array([1, 2**64 - 1], np.uint64)), "labels"),
        (_bad_batch(labels=np.array([5, 5], np.uint64)), "labels"),
        (_bad_batch(item_ids=["only one"]), "batch"),
        (_bad_batch(item_ids=["x" * 2000, "y"]), "item_ids"),
    ],
    ids=["wrong dim", "nan", "reserved label", "duplicate labels", "ragged", "long id"],
)
def test_bad_batches_are_refused_before_logging(tmp_path: Path, batch: RecordBatch, field: str) -> None:
    index = ShardIndex(0, IndexParams(dim=DIM), tmp_path)
    with pytest.raises(ShardError) as err:
        index.upsert(batch)
    assert err.value.kind is ErrorKind.INVALID_ARGUMENT and not err.value.transient
    assert field in err.value.message
    assert index.stats().wal_bytes == 0
    index.close()


@pytest.mark.parametrize(
    ("queries", "k", "exclude", "field"),
    [
        (np.ones((2, DIM + 1), np.float32), 5, None, "dim"),
        (np.ones(DIM, np.float32), 5, None, "dim"),
        (np.ones((2, DIM), np.float32), 0, None, "k"),
        (np.ones((2, DIM), np.float32), 10_001, None, "k"),
        (np.ones((2, DIM), np.float32), 5, [np.array([1], np.uint64)], "exclude"),
    ],
)
def test_bad_searches_are_refused(queries: np.ndarray, k: int, exclude: object, field: str) -> None:
    index, _ = small_index(10)
    with pytest.raises(ShardError) as err:
        index.search(queries, k=k, exclude=exclude)  # type: ignore[arg-type]
    assert err.value.kind is ErrorKind.INVALID_ARGUMENT
    assert err.value.message.startswith(field)


def _state(index: ShardIndex, labels: np.ndarray, queries: np.ndarray) -> tuple[object, ...]:
    fetched = index.fetch(labels)
    hits = index.search(queries, k=10)
    stats = index.stats()
    return (
        fetched.labels.tolist(),
        fetched.item_ids,
        fetched.payloads,
        fetched.vectors.tobytes(),
        hits.labels.tolist(),
        (stats.items, stats.deleted),
    )


def test_snapshot_reopen_and_replay_equal_the_state_before(tmp_path: Path) -> None:
    data = small_data(3000)
    queries = small_data(20, seed=5)
    index = ShardIndex(1, IndexParams(dim=DIM), tmp_path, snapshot_every_records=10**9)
    index.upsert(batch_of(np.arange(1500), data[:1500]))
    index.delete(np.arange(0, 1500, 7))
    assert index.snapshot() is not None
    # After the snapshot: more upserts, replacements, deletes and revivals, only in the WAL.
    index.upsert(batch_of(np.arange(1500, 3000), data[1500:]))
    index.upsert(batch_of(np.arange(0, 100), data[2000:2100], tag="-v2"))
    index.delete(np.arange(1500, 3000, 5))
    before = _state(index, np.arange(3000), queries)
    assert len(list(tmp_path.glob("snapshot-*"))) == 1

    crashed = ShardIndex(1, IndexParams(dim=DIM), tmp_path)  # as if the first one had died: no close
    assert _state(crashed, np.arange(3000), queries) == before
    crashed.close()  # takes a final snapshot
    reopened = ShardIndex(1, IndexParams(dim=DIM), tmp_path)
    assert _state(reopened, np.arange(3000), queries) == before
    assert len(list(tmp_path.glob("snapshot-*"))) == 1, "older snapshots are removed"
    assert sum(1 for _ in (tmp_path / "wal").glob("wal-*.log")) == 1, "WAL below the snapshot is dropped"
    reopened.close()


def test_background_snapshots_bound_the_wal(tmp_path: Path) -> None:
    data = small_data(1200)
    index = ShardIndex(1, IndexParams(dim=DIM), tmp_path, snapshot_every_records=300)
    for start in range(0, 1200, 100):
        index.upsert(batch_of(np.arange(start, start + 100), data[start : start + 100]))
    background = index._background
    assert background is not None
    background.join(10)
    assert list(tmp_path.glob("snapshot-*")), "a snapshot was taken without anyone asking"
    index.close()
    reopened = ShardIndex(1, IndexParams(dim=DIM), tmp_path)
    assert len(reopened) == 1200
    reopened.close()


def test_concurrent_ingest_and_search(tmp_path: Path) -> None:
    data = small_data(4000, seed=11)
    index = ShardIndex(2, IndexParams(dim=DIM), tmp_path, snapshot_every_records=1500, add_chunk=64)
    acknowledged: list[np.ndarray] = []
    stop = threading.Event()
    failures: list[BaseException] = []

    def writer(part: int) -> None:
        try:
            for start in range(part * 2000, part * 2000 + 2000, 250):
                labels = np.arange(start, start + 250)
                index.upsert(batch_of(labels, data[labels]))
                acknowledged.append(labels)
        except BaseException as exc:
            failures.append(exc)

    def searcher(ef: int) -> None:
        try:
            while not stop.is_set():
                hits = index.search(data[:16], k=10, ef=ef)
                assert hits.labels.shape == (16, 10)
        except BaseException as exc:
            failures.append(exc)

    writers = [threading.Thread(target=writer, args=(p,)) for p in range(2)]
    searchers = [threading.Thread(target=searcher, args=(ef,)) for ef in (50, 120)]
    for t in writers + searchers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in searchers:
        t.join()
    assert failures == []
    labels = np.concatenate(acknowledged)
    assert len(labels) == 4000
    assert len(index.fetch(labels)) == 4000
    top1 = index.search(data[labels], k=1, ef=100).labels[:, 0]
    assert (top1 == labels.astype(np.uint64)).mean() >= 0.999
    index.close()
    reopened = ShardIndex(2, IndexParams(dim=DIM), tmp_path)
    assert len(reopened.fetch(labels)) == 4000
    reopened.close()


def test_scan_returns_every_live_item() -> None:
    index, data = small_index(1000)
    index.delete(np.arange(0, 1000, 3))
    batches = list(index.scan(batch_size=128))
    assert all(len(b) <= 128 for b in batches)
    labels = np.concatenate([b.labels for b in batches])
    assert sorted(labels.tolist()) == [i for i in range(1000) if i % 3]
    merged = RecordBatch.concat(batches, DIM)
    np.testing.assert_array_equal(merged.vectors, data[merged.labels.astype(np.int64)])
    with pytest.raises(ShardError):
        index.scan(batch_size=0)


def test_closed_index_is_unavailable(tmp_path: Path) -> None:
    index, data = small_index(10, tmp_path)
    index.close()
    with pytest.raises(ShardError) as err:
        index.search(data[:1], k=1)
    assert err.value.transient


def _churn(
    index: ShardIndex, data: np.ndarray, live: list[int], rounds: int, step: int, seed: int
) -> list[int]:
    """Each round deletes the `step` oldest live labels and upserts `step` labels never seen before, with
    fresh vectors written into `data` (indexed by label)."""
    rng = np.random.default_rng(seed)
    next_label = max(live) + 1
    for _ in range(rounds):
        gone, live = live[:step], live[step:]
        assert index.delete(gone) == step
        new = list(range(next_label, next_label + step))
        next_label += step
        data[new] = unit(rng.normal(size=(step, data.shape[1])))
        index.upsert(batch_of(new, data[new]))
        live += new
    return live


def test_deleted_slots_are_reused_so_churn_keeps_the_index_bounded(tmp_path: Path) -> None:
    n, step = 600, 60
    data = np.zeros((n * 12, DIM), np.float32)
    data[:n] = small_data(n, seed=5)
    index = ShardIndex(3, IndexParams(dim=DIM, ef_search=200, initial_capacity=1024), tmp_path)
    index.upsert(batch_of(np.arange(n), data[:n]))
    live = _churn(index, data, list(range(n)), rounds=10 * n // step, step=step, seed=6)  # 10x the size
    stats = index.stats()
    assert stats.items == n and stats.capacity == 1024  # never grew: the deleted slots were reused
    assert stats.deleted <= step
    assert len(index._deleted) <= 2 * step + 1024  # the stale labels are pruned
    labels = np.array(live, np.uint64)
    queries = unit(np.random.default_rng(7).normal(size=(100, DIM)))
    exact = labels[exact_top_k(data[labels], queries, 10)]
    assert recall(index.search(queries, k=10).labels, exact) >= 0.95
    # Deleted labels are gone; a label deleted long ago (its slot reused by now) can come back.
    assert not len(index.fetch(np.arange(n)))
    index.upsert(batch_of([0, live[0]], data[[0, live[0]]]))
    assert len(index.fetch([0])) == 1 and len(index) == n + 1
    np.testing.assert_allclose(index.fetch([0]).vectors[0], data[0], atol=1e-6)
    # A snapshot and a reopen keep the live set and the vacant slots, and replay reuses them too.
    index.snapshot()
    index.delete([0])
    index.close()
    reopened = ShardIndex(3, IndexParams(dim=DIM, ef_search=200, initial_capacity=1024), tmp_path)
    try:
        assert len(reopened) == n and sorted(reopened._records) == sorted(live)
        live = _churn(reopened, data, live, rounds=n // step, step=step, seed=8)
        assert reopened.stats().capacity == 1024 and len(reopened) == n
        labels = np.array(live, np.uint64)
        exact = labels[exact_top_k(data[labels], queries, 10)]
        assert recall(reopened.search(queries, k=10).labels, exact) >= 0.95
    finally:
        reopened.close()


def test_a_live_label_keeps_its_slot_when_vacant_slots_exist() -> None:
    """hnswlib's replace_deleted is for new labels only: a live label updated while slots are vacant
    must be updated in place, not moved (the old slot would stay in the graph, unlabelled)."""
    index, _ = small_index(200)
    index.delete(np.arange(100))
    moved = unit(np.random.default_rng(9).normal(size=(50, DIM)))
    index.upsert(batch_of(np.arange(100, 150), moved))
    assert index.stats().deleted == 100 and index._index.get_current_count() == 200
    np.testing.assert_allclose(index.fetch(np.arange(100, 150)).vectors, moved, atol=1e-6)
    hits = index.search(moved, k=1)
    assert hits.labels[:, 0].tolist() == list(range(100, 150))

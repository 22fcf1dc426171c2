"""Filtered search and large exclusion lists inside a shard, against an exact brute-force oracle."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import pytest

from shards import index as index_module
from shards.attributes import AttributeTable
from shards.index import ShardIndex, first_fetch
from shards.payload import ItemMetadata, encode_metadata
from shards.records import (
    NO_LABEL,
    AttributeFilter,
    ErrorKind,
    IndexParams,
    RecordBatch,
    ShardError,
    check_exclude,
    is_excluded,
)
from shards.tests.helpers import clustered

DIM = 16
N = 4000
# value -> share of the catalogue: the selectivities the issue names, plus the rest
SHARES = {"p50": 0.5, "p10": 0.1, "p1": 0.01, "p01": 0.001}


def random_labels(rng: np.random.Generator, n: int) -> np.ndarray:
    """n distinct labels spread over the whole uint64 range, like the frontend's hashes; sorted."""
    labels = np.unique(rng.integers(0, 2**64 - 1, size=2 * n, dtype=np.uint64))
    return np.sort(rng.permutation(labels)[:n])


def payload(attributes: dict[str, str]) -> bytes:
    return encode_metadata(ItemMetadata(attributes, 0.0, 0))


def tiers(n: int, seed: int = 0) -> np.ndarray:
    """One value per item with the shares of SHARES (exact counts), shuffled."""
    values = []
    for value, share in SHARES.items():
        values += [value] * max(1, round(share * n))
    values += ["rest"] * (n - len(values))
    return np.random.default_rng(seed).permutation(np.array(values[:n]))


class Catalogue:
    def __init__(self, n: int = N, seed: int = 4, ef: int = 100) -> None:
        self.data, self.queries = clustered(n, DIM, clusters=20, seed=seed, n_queries=16)
        rng = np.random.default_rng(seed)
        self.labels = random_labels(rng, n)  # sorted, so a label's row is a binary search away
        self.tier = tiers(n, seed)
        self.colour = rng.choice(np.array(["red", "blue"]), size=n)
        self.index = ShardIndex(0, IndexParams(dim=DIM, ef_search=ef))
        self.index.upsert(self.batch(np.arange(n)))

    def batch(self, rows: np.ndarray) -> RecordBatch:
        return RecordBatch(
            self.labels[rows],
            [f"item-{r}" for r in rows.tolist()],
            self.data[rows],
            [payload({"tier": str(self.tier[r]), "colour": str(self.colour[r])}) for r in rows.tolist()],
        )

    def oracle(self, q: np.ndarray, k: int, allowed: np.ndarray, exclude: np.ndarray) -> np.ndarray:
        eligible = allowed & ~np.isin(self.labels, exclude)
        rows = np.flatnonzero(eligible)
        order = np.argsort(-(self.data[rows] @ q), kind="stable")[:k]
        return self.labels[rows[order]]


@pytest.fixture(scope="module")
def cat() -> Catalogue:
    return Catalogue()


def got(labels: np.ndarray) -> list[int]:
    return [label for label in labels.tolist() if label != int(NO_LABEL)]


def overlap(a: list[int], b: np.ndarray) -> float:
    return len(set(a) & set(b.tolist())) / max(1, len(b))


@pytest.mark.parametrize("value", list(SHARES))
@pytest.mark.parametrize("excluded_share", [0.0, 0.3])
def test_filtered_hits_pass_and_match_the_oracle(cat: Catalogue, value: str, excluded_share: float) -> None:
    k = 10
    rng = np.random.default_rng(7)
    exclude = [
        np.sort(rng.choice(cat.labels, size=int(excluded_share * N), replace=False))
        for _ in range(len(cat.queries))
    ]
    hits = cat.index.search(cat.queries, k, exclude=exclude, filters=[{"tier": [value]}] * len(cat.queries))
    allowed = cat.tier == value
    recalls = []
    for i, q in enumerate(cat.queries):
        found = got(hits.labels[i])
        expected = cat.oracle(q, k, allowed, exclude[i])
        rows = np.searchsorted(cat.labels, np.array(found, dtype=np.uint64))
        assert (cat.tier[rows] == value).all()  # every hit passes the filter
        assert not np.isin(found, exclude[i]).any()  # and none is excluded
        assert len(found) == min(k, len(expected))  # k hits whenever the shard holds k eligible
        if len(expected) < k:
            assert set(found) == set(expected.tolist())  # short: exactly every eligible item
        scores = hits.scores[i, : len(found)]
        assert (np.diff(scores) <= 1e-6).all()
        recalls.append(overlap(found, expected))
    assert np.mean(recalls) >= 0.95


def test_several_attributes_and_values(cat: Catalogue) -> None:
    wanted = {"tier": ["p10", "p1"], "colour": ["red"]}
    hits = cat.index.search(cat.queries, 10, filters=[wanted] * len(cat.queries))
    allowed = np.isin(cat.tier, ["p10", "p1"]) & (cat.colour == "red")
    for i, q in enumerate(cat.queries):
        found = got(hits.labels[i])
        assert len(found) == 10
        assert overlap(found, cat.oracle(q, 10, allowed, np.zeros(0, np.uint64))) >= 0.9
        rows = np.searchsorted(cat.labels, np.array(found, dtype=np.uint64))
        assert allowed[rows].all()


def test_queries_of_one_batch_carry_their_own_filters(cat: Catalogue) -> None:
    filters: list[dict[str, list[str]] | None] = [
        {"tier": ["p1"]},
        None,
        {"colour": ["blue"]},
        {"tier": ["x"]},
    ]
    hits = cat.index.search(cat.queries[:4], 5, filters=filters)
    assert (cat.tier[np.searchsorted(cat.labels, hits.labels[0])] == "p1").all()
    plain = cat.index.search(cat.queries[1:2], 5)
    np.testing.assert_array_equal(hits.labels[1], plain.labels[0])
    assert (cat.colour[np.searchsorted(cat.labels, hits.labels[2])] == "blue").all()
    assert (hits.labels[3] == NO_LABEL).all() and np.isneginf(hits.scores[3]).all()  # unknown value


def test_unknown_attribute_or_opaque_payloads_match_nothing() -> None:
    data, queries = clustered(200, DIM, seed=3, n_queries=2)
    index = ShardIndex(0, IndexParams(dim=DIM))
    index.upsert(
        RecordBatch(np.arange(200, dtype=np.uint64), [f"i{i}" for i in range(200)], data, [b"\x00\xff"] * 200)
    )
    assert (index.search(queries, 5, filters=[{"tier": ["p1"]}] * 2).labels == NO_LABEL).all()
    assert (index.search(queries, 5).labels != NO_LABEL).all()


def test_an_estimate_that_is_far_off_is_corrected_by_searching_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two attributes that are each half the items but rarely together: taken as independent, the first
    fetch expects a quarter to pass when about 1% do, so the shard must search again, larger."""
    n = 4000
    data, queries = clustered(n, DIM, seed=5, n_queries=8)
    rng = np.random.default_rng(5)
    a = rng.random(n) < 0.5
    b = ~a
    both = rng.choice(n, size=40, replace=False)
    b[both] = True
    a[both] = True
    payloads = [payload({"a": "1" if a[i] else "0", "b": "1" if b[i] else "0"}) for i in range(n)]
    index = ShardIndex(0, IndexParams(dim=DIM, ef_search=100))
    index.upsert(RecordBatch(np.arange(n, dtype=np.uint64), [f"i{i}" for i in range(n)], data, payloads))
    sizes: list[int] = []
    knn = index._knn

    def spy(q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sizes.append(k)
        return knn(q, k)

    monkeypatch.setattr(index, "_knn", spy)
    hits = index.search(queries, 10, filters=[{"a": ["1"], "b": ["1"]}] * len(queries))
    allowed = a & b
    for i, q in enumerate(queries):
        expected = np.arange(n)[allowed][np.argsort(-(data[allowed] @ q))[:10]]
        assert overlap(got(hits.labels[i]), expected.astype(np.uint64)) >= 0.9
    assert sizes[0] == first_fetch(10, a.mean() * b.mean(), 0, n) and len(sizes) > 1
    assert all(b in (a * index_module.OVERFETCH_GROWTH, n) for a, b in itertools.pairwise(sizes))


def test_a_query_whose_neighbourhood_is_all_excluded_still_gets_k(cat: Catalogue) -> None:
    q = cat.queries[:1]
    nearest = np.argsort(-(cat.data @ q[0]))
    exclude = [np.sort(cat.labels[nearest[:300]])]  # the 300 nearest are seen: far beyond a first fetch
    hits = cat.index.search(q, 10, exclude=exclude)
    found = got(hits.labels[0])
    assert len(found) == 10 and not np.isin(found, exclude[0]).any()
    assert overlap(found, cat.labels[nearest[300:310]]) >= 0.9


def test_exclusions_over_fetch_a_little_then_by_what_the_shard_holds(
    cat: Catalogue, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = cat.queries[:2]
    nearest = np.argsort(-(cat.data @ q[0]))
    elsewhere = np.setdiff1d(random_labels(np.random.default_rng(9), 5000), cat.labels)  # other shards'
    exclude = [np.union1d(cat.labels[nearest[:300]], elsewhere), np.sort(elsewhere)]
    assert cat.index._attributes.count_held(exclude[0]) == 300
    assert cat.index._attributes.count_held(exclude[1]) == 0
    sizes: list[int] = []
    knn = cat.index._knn

    def spy(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sizes.append(k)
        return knn(queries, k)

    monkeypatch.setattr(cat.index, "_knn", spy)
    hits = cat.index.search(q, 10, exclude=exclude)
    # One search for the batch at k + at most k, then one for the query left short, by all 300 it holds.
    assert sizes == [20, 310]
    assert not np.isin(got(hits.labels[0]), exclude[0]).any() and len(got(hits.labels[0])) == 10
    assert overlap(got(hits.labels[0]), cat.labels[nearest[300:310]]) >= 0.9
    plain = cat.index.search(q[1:], 10)  # the second holds none of its exclusions: a plain answer
    assert overlap(got(hits.labels[1]), plain.labels[0]) >= 0.9


def test_exclusions_held_far_from_the_query_cost_one_small_search(
    cat: Catalogue, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = cat.queries[:1]
    farthest = np.argsort(cat.data @ q[0])[:300]  # seen, but nowhere near what this query wants
    exclude = [np.sort(cat.labels[farthest])]
    sizes: list[int] = []
    knn = cat.index._knn
    monkeypatch.setattr(cat.index, "_knn", lambda qs, k: (sizes.append(k), knn(qs, k))[1])
    hits = cat.index.search(q, 10, exclude=exclude)
    assert sizes == [20]  # k + at most k, not k + all 300 held here
    assert len(got(hits.labels[0])) == 10 and not np.isin(got(hits.labels[0]), exclude[0]).any()


def test_an_excluding_search_still_short_after_its_refetch_takes_the_general_path(
    cat: Catalogue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hnswlib may return fewer hits than asked (after many deletions); simulated here by blanking the
    second half of every row of a fetch smaller than the shard."""
    q = cat.queries[:3]
    live = len(cat.index)
    exclude = [np.sort(cat.labels[np.argsort(-(cat.data @ x))[:5]]) for x in q]  # each one's 5 nearest
    sizes: list[int] = []
    knn = cat.index._knn

    def short_rows(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        sizes.append(k)
        labels, distances = knn(queries, k)
        if k < live:
            labels, distances = labels.copy(), distances.copy()
            labels[:, k // 2 :] = NO_LABEL
            distances[:, k // 2 :] = np.inf
        return labels, distances

    monkeypatch.setattr(cat.index, "_knn", short_rows)
    hits = cat.index.search(q, 10, exclude=exclude)
    # k + 5 first, k + the 5 held here again for the three left short, then the general path's growth.
    assert sizes[:2] == [15, 15] and len(sizes) > 2 and sizes[2] >= 15
    for i in range(len(q)):
        found = got(hits.labels[i])
        assert len(found) == 10 and not np.isin(found, exclude[i]).any()
        assert overlap(found, cat.oracle(q[i], 10, np.ones(len(cat.labels), bool), exclude[i])) >= 0.9


def test_ten_thousand_exclusions_are_cheap_and_honoured() -> None:
    data, queries = clustered(20_000, DIM, seed=6, n_queries=64)
    labels = random_labels(np.random.default_rng(6), 20_000)
    index = ShardIndex(0, IndexParams(dim=DIM))
    index.upsert(RecordBatch(labels, [f"i{i}" for i in range(20_000)], data, [b""] * 20_000))
    rng = np.random.default_rng(1)
    # Half of each list is held here (the shard's share of a heavy user's seen set), half elsewhere.
    exclude = [
        np.unique(np.concatenate([rng.choice(labels, 5000, replace=False), random_labels(rng, 5000)]))
        for _ in range(len(queries))
    ]
    index.search(queries, 20, exclude=exclude)  # warm
    started = time.perf_counter()
    hits = index.search(queries, 20, exclude=exclude)
    elapsed = time.perf_counter() - started
    for i in range(len(queries)):
        found = got(hits.labels[i])
        assert len(found) == 20 and not np.isin(found, exclude[i]).any()
    # Not a timing assertion of the product (benchmarks measure that): a guard against a per-label
    # Python loop over 64 x 10,000 labels creeping back in, with a wide margin for slow machines.
    assert elapsed < 2.0


@pytest.mark.parametrize(
    ("k", "selectivity", "held", "live", "expected"),
    [
        (10, 1.0, 0, 1000, 10),
        (10, 1.0, 7, 1000, 17),  # unfiltered: exactly the excluded items held here on top of k
        (10, 1.0, 5000, 1000, 20),  # at most k more at first: held items are mostly far away
        (10, 0.1, 0, 1000, 150),
        (10, 0.01, 0, 1000, 1000),  # more than the shard holds: all of it
        (10, 0.0, 0, 1000, 1000),
        (20, 0.5, 20, 100, 80),
    ],
)
def test_first_fetch_is_sized_from_the_selectivity(
    k: int, selectivity: float, held: int, live: int, expected: int
) -> None:
    assert first_fetch(k, selectivity, held, live) == expected


def test_exclusion_lists_are_sorted_and_unique_after_checking() -> None:
    (checked,) = check_exclude([np.array([5, 1, 5, 3], np.uint64)], 1) or []
    np.testing.assert_array_equal(checked, [1, 3, 5])
    assert is_excluded(np.array([1, 2, 5, 9], np.uint64), checked).tolist() == [True, False, True, False]


def test_checked_exclusions_are_also_one_csr_for_the_core() -> None:
    checked = check_exclude([[9, 4], [], np.array([7, 7, 2], np.int64)], 3)
    assert checked is not None and len(checked) == 3 and checked.longest == 2
    assert [e.tolist() for e in checked] == [[4, 9], [], [2, 7]]
    assert checked.labels.dtype == np.uint64 and checked.labels.tolist() == [4, 9, 2, 7]
    assert checked.offsets.dtype == np.int64 and checked.offsets.tolist() == [0, 2, 2, 4]
    taken = checked.take(np.array([2, 0]))
    assert taken.labels.tolist() == [2, 7, 4, 9] and taken.offsets.tolist() == [0, 2, 4]
    assert check_exclude([[], []], 2) is None


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        ([{"tier": "p1"}], "filters[0]"),  # a bare string is not a collection of values
        ([{"": ["x"]}], "filters[0]"),
        ([{"tier": ["p1"]}, None], "filters"),  # one per query
    ],
)
def test_bad_filters_are_refused(cat: Catalogue, filters: list[object], field: str) -> None:
    with pytest.raises(ShardError) as err:
        cat.index.search(cat.queries[:1], 5, filters=filters)  # type: ignore[arg-type]
    assert err.value.kind is ErrorKind.INVALID_ARGUMENT and err.value.message.startswith(field)


def _tier_filter(value: str) -> AttributeFilter:
    return AttributeFilter.of({"tier": [value]})


def test_attribute_codes_follow_upserts_deletes_and_revivals() -> None:
    table = AttributeTable()
    table.set(
        [10, 20, 30], [payload({"tier": "a"}), payload({"tier": "b"}), payload({"tier": "a", "x": "1"})]
    )
    assert table.value_counts("tier") == {"a": 2, "b": 1}
    table.set([30], [payload({"tier": "b"})])  # replaced: its old values no longer count, "x" is gone
    assert table.value_counts("tier") == {"a": 1, "b": 2} and table.value_counts("x") == {}
    freed = table.slots_of(np.array([20], np.uint64))[0]
    table.remove([20, 99])
    assert table.value_counts("tier") == {"a": 1, "b": 1}
    compiled = table.compile(_tier_filter("b"))
    assert compiled.count() == 1
    slots = table.slots_of(np.array([10, 20, 30, 40], np.uint64))
    assert slots[1] == -1 and slots[3] == -1  # a removed label has no slot, like an unknown one
    assert compiled.matches(slots).tolist() == [False, False, True, False]
    table.set([20], [payload({"tier": "c"})])  # revived with new values, in the freed slot
    assert table.slots_of(np.array([20], np.uint64))[0] == freed
    assert table.value_counts("tier") == {"a": 1, "b": 1, "c": 1}
    assert table.slot_capacity == 3


def test_attribute_slots_are_reused_under_churn() -> None:
    table = AttributeTable()
    live = list(range(100))
    table.set(live, [payload({"tier": str(label % 3)}) for label in live])
    for round_ in range(1, 11):  # ten times the table's size, through upserts of new labels and deletes
        gone, live = live[:100], live[100:] + list(range(100 * round_, 100 * round_ + 100))
        table.remove(gone)
        table.set(live[-100:], [payload({"tier": str(label % 3)}) for label in live[-100:]])
    assert table.slot_capacity == 100 and table.live_count == 100
    assert sum(table.value_counts("tier").values()) == 100
    slots = table.slots_of(np.array(live, np.uint64))
    assert sorted(slots.tolist()) == list(range(100))
    assert table.compile(_tier_filter("0")).count() == sum(1 for label in live if label % 3 == 0)
    assert table.compile(_tier_filter("nope")).bound == 0


def test_filters_survive_snapshot_and_replay(tmp_path: Path) -> None:
    cat = Catalogue(n=600, seed=8)
    index = ShardIndex(1, IndexParams(dim=DIM), tmp_path, snapshot_every_records=10**9)
    index.upsert(cat.batch(np.arange(300)))
    index.snapshot()
    index.upsert(cat.batch(np.arange(300, 600)))  # only in the WAL
    index.delete(cat.labels[:50])
    filters = [{"tier": ["p10"]}] * 4
    before = index.search(cat.queries[:4], 10, filters=filters)
    index.close()
    reopened = ShardIndex(1, IndexParams(dim=DIM), tmp_path)
    after = reopened.search(cat.queries[:4], 10, filters=filters)
    for i in range(4):
        assert overlap(got(after.labels[i]), before.labels[i]) >= 0.9
    assert not np.isin(after.labels, cat.labels[:50]).any()
    rows = np.searchsorted(cat.labels, got(after.labels.ravel()))
    assert (cat.tier[rows] == "p10").all()
    reopened.close()

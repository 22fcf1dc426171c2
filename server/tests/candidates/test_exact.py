"""Exact retrieval of filtered items: the same top-k as brute force, exclusions honoured, cache kept
current by catalogue writes; the value counts that choose the path."""

from __future__ import annotations

import numpy as np
import pytest

from server import _core
from server.candidates.exact import ExactFilteredSearch
from server.catalog.item_store import ItemStore
from server.catalog.payload import ItemMetadata
from server.ranking import gpu
from server.ranking.model import RankingModel

DIM = 16
N = 3000
GPU_REASON = gpu.unavailable_reason()


def build(n: int = N, seed: int = 0) -> tuple[ItemStore, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    tier = rng.choice(np.array(["a", "b", "c"]), size=n, p=[0.89, 0.1, 0.01])
    colour = rng.choice(np.array(["red", "blue"]), size=n)
    ids = [f"i{i}" for i in range(n)]
    items = ItemStore(DIM, capacity=64)
    meta = [
        ItemMetadata({"tier": str(t), "colour": str(c)}, 1.0, 0) for t, c in zip(tier, colour, strict=True)
    ]
    items.upsert(ids, _core.stable_hash64(ids), vectors, meta)
    return items, vectors, tier, colour


def brute_force(
    items: ItemStore,
    vectors: np.ndarray,
    allowed: np.ndarray,
    query: np.ndarray,
    k: int,
    exclude_rows: set[int],
) -> list[int]:
    """The oracle: scores from the same FP16 table the search reads, ties to the lower row."""
    rows = [r for r in np.flatnonzero(allowed).tolist() if r not in exclude_rows]
    if not rows:
        return []
    scores = items.table.score(query[None, :], np.asarray(rows, dtype=np.int64)[None, :])[0]
    order = np.lexsort((np.asarray(rows), -scores))[:k]
    return [rows[i] for i in order]


def exclusion(items: ItemStore, rows: list[int], extra: int = 0) -> np.ndarray:
    labels = items.labels(np.asarray(rows, dtype=np.int64))
    foreign = np.random.default_rng(9).integers(0, 2**63, size=extra, dtype=np.uint64)
    return np.unique(np.concatenate([labels, foreign]))


@pytest.mark.parametrize(
    ("allowed", "n_excluded", "foreign"),
    [
        ({"tier": frozenset({"c"})}, 0, 0),
        ({"tier": frozenset({"b"})}, 20, 0),  # few exclusions: looked up in the matching labels
        ({"tier": frozenset({"c"})}, 5, 10_000),  # exclusions outnumber the matching items
        ({"tier": frozenset({"b", "c"}), "colour": frozenset({"red"})}, 30, 100),
    ],
)
async def test_exact_search_equals_brute_force(
    allowed: dict[str, frozenset[str]], n_excluded: int, foreign: int
) -> None:
    items, vectors, tier, colour = build()
    search = ExactFilteredSearch(items)
    passing = np.isin(tier, sorted(allowed["tier"]))
    if "colour" in allowed:
        passing &= np.isin(colour, sorted(allowed["colour"]))
    rng = np.random.default_rng(3)
    for query in vectors[rng.choice(N, size=5, replace=False)] + 0.1:
        query = query.astype(np.float32)
        # Exclude some of the best matches: they must not come back, the next ones take their place.
        top = brute_force(items, vectors, passing, query, n_excluded, set())
        exclude = exclusion(items, top, foreign)
        rows, scores = await search.search(query, allowed, exclude, k=25)
        expected = brute_force(items, vectors, passing, query, 25, set(top))
        assert rows.tolist() == expected
        assert (np.diff(scores) <= 0).all()
        assert not set(rows.tolist()) & set(top)


async def test_the_cache_follows_catalogue_writes() -> None:
    items, vectors, tier, _ = build()
    search = ExactFilteredSearch(items)
    allowed = {"tier": frozenset({"c"})}
    before = search.matching(allowed)
    assert search.matching(allowed) is before  # cached
    rare = np.flatnonzero(tier == "c")
    items.delete([f"i{rare[0]}"])
    items.upsert(["new"], _core.stable_hash64(["new"]), vectors[:1], [ItemMetadata({"tier": "c"}, 1.0, 0)])
    after = search.matching(allowed)
    assert rare[0] not in after.rows.tolist() and items.row_of("new") in after.rows.tolist()
    assert len(after.rows) == len(before.rows)
    rows, _ = await search.search(vectors[0], allowed, np.zeros(0, np.uint64), k=1000)
    assert sorted(rows.tolist()) == sorted(after.rows.tolist())  # fewer than k: every matching item


async def test_no_match_gives_nothing() -> None:
    items, vectors, _, _ = build(200)
    rows, scores = await ExactFilteredSearch(items).search(
        vectors[0], {"tier": frozenset({"zzz"})}, np.zeros(0, np.uint64), 10
    )
    assert len(rows) == 0 and len(scores) == 0


def test_value_counts_estimate_matches() -> None:
    items, _, tier, colour = build()
    assert items.estimate_matches({"tier": frozenset({"c"})}) == int((tier == "c").sum())
    assert items.estimate_matches({"tier": frozenset({"b", "c"})}) == int(np.isin(tier, ["b", "c"]).sum())
    assert items.estimate_matches({"tier": frozenset({"nope"})}) == 0
    assert items.estimate_matches({"missing": frozenset({"x"})}) == 0
    both = items.estimate_matches({"tier": frozenset({"b"}), "colour": frozenset({"red"})})
    assert both == round((tier == "b").sum() * (colour == "red").sum() / N)  # independence
    first_c = f"i{np.flatnonzero(tier == 'c')[0]}"
    items.delete([first_c])
    assert items.estimate_matches({"tier": frozenset({"c"})}) == int((tier == "c").sum()) - 1
    row = items.row_of(f"i{np.flatnonzero(tier == 'a')[0]}")
    assert row is not None
    items.upsert(  # an "a" item becomes "c"
        [items.item_id(row)], items.labels(np.array([row])), items.vectors(np.array([row])),
        [ItemMetadata({"tier": "c"}, 1.0, 0)],
    )  # fmt: skip
    assert items.estimate_matches({"tier": frozenset({"c"})}) == int((tier == "c").sum())
    assert items.estimate_matches({"tier": frozenset({"a"})}) == int((tier == "a").sum()) - 1
    items.upsert([first_c], _core.stable_hash64([first_c]), np.ones((1, DIM), np.float32), [
        ItemMetadata({"tier": "c"}, 1.0, 0)
    ])  # fmt: skip
    assert items.estimate_matches({"tier": frozenset({"c"})}) == int((tier == "c").sum()) + 1


@pytest.mark.gpu
@pytest.mark.skipif(GPU_REASON is not None, reason=f"CuPy with a CUDA device is not available: {GPU_REASON}")
async def test_exact_search_on_the_gpu_ranker_equals_the_cpu() -> None:
    items, vectors, tier, _ = build(20_000, seed=1)
    model = RankingModel(
        version="t", similarity_weight=1.0, side_weights=(0.3, 0.1, 0.1), freshness_half_life_s=86400.0
    )
    ranker = gpu.GpuRanker(items, model)
    items.add_listener(ranker.on_catalogue_change)
    on_gpu = ExactFilteredSearch(items, ranker)
    on_cpu = ExactFilteredSearch(items)
    allowed = {"tier": frozenset({"b"})}
    passing = np.flatnonzero(tier == "b")
    exclude = exclusion(items, passing[:50].tolist())
    for query in vectors[:8]:
        gpu_rows, gpu_scores = await on_gpu.search(query, allowed, exclude, 100)
        cpu_rows, cpu_scores = await on_cpu.search(query, allowed, exclude, 100)
        assert len(set(gpu_rows.tolist()) & set(cpu_rows.tolist())) >= 98  # ties aside
        np.testing.assert_allclose(gpu_scores, cpu_scores, atol=1e-4)
        assert not set(gpu_rows.tolist()) & set(passing[:50].tolist())


def test_the_cache_is_bounded_by_rows() -> None:
    items, _, tier, _ = build()
    search = ExactFilteredSearch(items, max_cached_rows=int((tier == "b").sum()) + 5)
    rare = {"tier": frozenset({"c"})}
    common = {"tier": frozenset({"b"})}
    first = search.matching(rare)
    search.matching(common)  # pushes the older entry out: together they exceed the bound
    assert search.matching(rare) is not first
    again = search.matching(rare)
    assert search.matching(rare) is again  # the newest entry stays; the older one made room

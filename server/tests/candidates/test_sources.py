"""The candidate sources over a hydrated batch: popular (cold and warm depth, exclusions that skip the
head, filters and context steering), graph (neighbours mapped to rows, unknown ones dropped) and ANN
(exact-filter and HNSW requests of one batch, each with its retrieval path and shard coverage)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from server import _core
from server.backends.memory_graph import InMemoryItemGraph
from server.candidates.ann import AnnSource
from server.candidates.exact import ExactFilteredSearch
from server.candidates.graph import GraphSource
from server.candidates.popular import PopularSource
from server.catalog.item_store import ItemStore
from server.catalog.writes import ItemWriter
from server.domain import Edge, ItemRecord, Retrieval, Source
from server.errors import BackendError, not_found
from server.pipeline.stages import AnnParams, Hydrated, Kind
from server.routing.router import ShardRouter
from server.routing.search import SearchResult
from server.tests.conftest import ToyCatalogue, make_catalogue, make_config
from server.tests.pipeline.stagekit import hydrated, make_items, per_request, request, seen
from server.validation import Limits
from server.wiring import build_router
from shards.records import NO_LABEL

NONE = int(NO_LABEL)  # the shards' padding label

# --- popular -------------------------------------------------------------------------------------------
K_COLD, K_WARM = 5, 3


@pytest.fixture
def popular_items() -> ItemStore:
    # i0 is the most popular, i19 the least; even rows "de", odd rows "en", except i19: "fr".
    langs = ["fr" if n == 19 else ("de" if n % 2 == 0 else "en") for n in range(20)]
    return make_items(
        np.ones((20, 2), np.float32),
        [{"lang": lang} for lang in langs],
        popularity=[20.0 - n for n in range(20)],
    )


def popular_batch(cases: Sequence[dict[str, Any]]) -> Hydrated:
    """Each case: request fields plus "warm" (has a vector) and "seen" (a seen set)."""
    requests, vectors, seen_sets = [], [], []
    for case in cases:
        fields = dict(case)
        vectors.append([1.0, 0.0] if fields.pop("warm", False) else None)
        seen_sets.append(fields.pop("seen", seen()))
        requests.append(request(**fields))
    return hydrated(requests, 2, vectors=vectors, seen_sets=seen_sets)


def excluding(*rows: int) -> frozenset[str]:
    return frozenset(f"i{r}" for r in rows)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        pytest.param({}, [0, 1, 2, 3, 4], id="cold-k"),
        pytest.param({"warm": True}, [0, 1, 2], id="warm-k"),
        pytest.param({"exclude_item_ids": excluding(0, 2)}, [1, 3, 4, 5, 6], id="exclusions-skip-the-head"),
        pytest.param(
            {"exclude_item_ids": excluding(0, 1, 2, 3, 4)}, [5, 6, 7, 8, 9], id="whole-head-excluded"
        ),
        pytest.param({"warm": True, "seen": seen("i1")}, [0, 2, 3], id="seen-skipped"),
        pytest.param({"warm": True, "seen": seen("i1"), "include_seen": True}, [0, 1, 2], id="include_seen"),
        pytest.param({"filter": {"lang": frozenset({"en"})}}, [1, 3, 5, 7, 9], id="filter"),
        pytest.param(
            {"filter": {"lang": frozenset({"en"})}, "exclude_item_ids": excluding(1)},
            [3, 5, 7, 9, 11],
            id="filter+exclusions",
        ),
        # Context naming an attribute steers the list while enough items fit (request k = 2)...
        pytest.param({"k": 2, "context": {"lang": "de"}}, [0, 2, 4, 6, 8], id="steered"),
        pytest.param(
            {"k": 2, "context": {"lang": "de"}, "exclude_item_ids": excluding(0)},
            [2, 4, 6, 8, 10],
            id="steered+exclusions",
        ),
        # ... and the global list fills up when too few do.
        pytest.param({"k": 3, "context": {"lang": "fr"}}, [19, 0, 1, 2, 3, 4], id="steered-too-few"),
        pytest.param({"k": 3, "context": {"device": "ios"}}, [0, 1, 2, 3, 4], id="context-not-an-attribute"),
    ],
)
async def test_popular_source(popular_items: ItemStore, case: dict[str, Any], expected: list[int]) -> None:
    source = PopularSource(popular_items, K_COLD, K_WARM)
    h = popular_batch([case])
    applies = source.applies(h)
    assert applies.tolist() == [True]
    found = await source.fetch(h, applies, 1.0)
    assert found.source is Source.POPULAR and found.coverage is None
    assert per_request(found.rows) == [expected]
    np.testing.assert_allclose(found.scores, popular_items.popularity_feature(np.asarray(expected, np.int64)))


async def test_popular_requests_of_one_batch_each_skip_their_own_exclusions(popular_items: ItemStore) -> None:
    source = PopularSource(popular_items, K_COLD, K_WARM)
    h = popular_batch(
        [
            {"exclude_item_ids": excluding(0, 1, 2, 3, 4)},
            {"warm": True},
            {},
            {"warm": True, "seen": seen("i0")},
            {"filter": {"lang": frozenset({"de"})}},
            {"warm": True, "exclude_item_ids": excluding(7), "seen": seen("i2", "i5")},
        ]
    )
    found = await source.fetch(h, source.applies(h), 1.0)
    assert per_request(found.rows) == [
        [5, 6, 7, 8, 9],
        [0, 1, 2],
        [0, 1, 2, 3, 4],
        [1, 2, 3],
        [0, 2, 4, 6, 8],
        [0, 1, 3],
    ]


async def test_popular_applies_to_recommend_requests_not_yet_answered(popular_items: ItemStore) -> None:
    source = PopularSource(popular_items, K_COLD, K_WARM)
    requests = [request(), request(kind=Kind.SIMILAR, seed_item_id="i1"), request(), request()]
    h = hydrated(requests, 2, rejected={2: not_found("no such user")})
    applies = source.applies(h)
    assert applies.tolist() == [True, False, False, True]
    found = await source.fetch(h, applies, 1.0)
    assert per_request(found.rows) == [[0, 1, 2, 3, 4], [], [], [0, 1, 2, 3, 4]]


# --- graph ---------------------------------------------------------------------------------------------
@pytest.fixture
async def graph() -> AsyncIterator[InMemoryItemGraph]:
    g = InMemoryItemGraph(None)
    await g.upsert_edges(
        [
            Edge("i0", "i1", 0.9),
            Edge("i0", "i2", 0.8),
            Edge("i0", "ghost", 0.95),  # an item the catalogue does not hold
            Edge("i1", "i3", 0.7),
            Edge("i4", "i5", 0.9),
            Edge("i4", "i6", 0.8),
            Edge("i4", "i7", 0.7),
            Edge("i8", "i9", 0.05),
        ]
    )
    yield g
    await g.close()


@pytest.fixture
def graph_items() -> ItemStore:
    return make_items(np.ones((10, 2), np.float32))


def graph_batch(seeds: Sequence[Sequence[str]], rejected: Sequence[int] = ()) -> Hydrated:
    requests = [request() for _ in seeds]
    return hydrated(requests, 2, graph_seeds=seeds, rejected={i: not_found("x") for i in rejected})


@dataclass
class GraphCase:
    seeds: list[list[str]]
    expected: list[dict[int, float]]
    hops: int = 1
    max_seeds: int = 2
    max_results: int = 100
    min_score: float = 0.0
    rejected: tuple[int, ...] = ()


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(GraphCase([["i0"]], [{1: 0.9, 2: 0.8}]), id="unknown-neighbour-dropped"),
        pytest.param(GraphCase([["i0"]], [{1: 0.9, 2: 0.8, 3: 0.63}], hops=2), id="two-hops"),
        pytest.param(
            GraphCase([["i4", "i0"]], [{5: 0.9, 6: 0.8, 7: 0.7}], max_seeds=1), id="first-seeds-only"
        ),
        pytest.param(
            GraphCase([["i4", "i0"]], [{1: 0.9, 2: 0.8, 5: 0.9, 6: 0.8, 7: 0.7}]), id="several-seeds"
        ),
        pytest.param(GraphCase([["i4"]], [{5: 0.9, 6: 0.8}], max_results=2), id="best-results-only"),
        pytest.param(GraphCase([["i8"]], [{}], min_score=0.1), id="below-min-score"),
        pytest.param(
            GraphCase(
                [["i0"], [], ["i4"], ["i1"]],
                [{1: 0.9, 2: 0.8}, {}, {5: 0.9, 6: 0.8, 7: 0.7}, {}],
                rejected=(3,),
            ),
            id="batch-with-unseeded-and-rejected",
        ),
    ],
)
async def test_graph_source(graph: InMemoryItemGraph, graph_items: ItemStore, case: GraphCase) -> None:
    source = GraphSource(graph, graph_items, case.max_seeds, case.hops, 10, case.min_score, case.max_results)
    h = graph_batch(case.seeds, case.rejected)
    applies = source.applies(h)
    assert applies.tolist() == [bool(s) and i not in case.rejected for i, s in enumerate(case.seeds)]
    found = await source.fetch(h, applies, 1.0)
    assert found.source is Source.GRAPH and found.coverage is None
    assert len(found.rows) == len(case.seeds)
    for i, want in enumerate(case.expected):
        lo, hi = found.rows.offsets[i], found.rows.offsets[i + 1]
        got = dict(zip(found.rows.values[lo:hi].tolist(), found.scores[lo:hi].tolist(), strict=True))
        assert got == pytest.approx(want), i


async def test_graph_drops_deleted_items(graph: InMemoryItemGraph, graph_items: ItemStore) -> None:
    graph_items.delete(["i2"])
    source = GraphSource(graph, graph_items, 2, 1, 10, 0.0)
    h = graph_batch([["i0"]])
    found = await source.fetch(h, source.applies(h), 1.0)
    assert per_request(found.rows) == [[1]]


# --- ANN -----------------------------------------------------------------------------------------------
SHARDS = 4
ANN_K = 20


@dataclass
class Loaded:
    router: ShardRouter
    items: ItemStore
    toy: ToyCatalogue


@pytest.fixture
async def loaded() -> AsyncIterator[Loaded]:
    config = make_config()
    config.shards.count = SHARDS
    router = build_router(config)
    items = ItemStore(config.dim)
    toy = make_catalogue(n_items=600, clusters=10)
    records = [
        ItemRecord(toy.item_ids[i], toy.vectors[i], toy.attributes[i], float(toy.popularity[i]), 1)
        for i in range(len(toy.item_ids))
    ]
    await ItemWriter(router, items, Limits(config.dim, 10_000)).upsert(records)
    try:
        yield Loaded(router, items, toy)
    finally:
        await router.close()


def brute_force(
    items: ItemStore,
    query: npt.NDArray[np.float32],
    allowed: dict[str, frozenset[str]] | None,
    excluded: set[int],
    k: int,
) -> list[int]:
    rows = np.arange(len(items), dtype=np.int64)
    if allowed:
        rows = rows[items.filter_mask(rows, allowed)]
    rows = np.asarray([r for r in rows.tolist() if r not in excluded], np.int64)
    scores = items.vectors(rows).astype(np.float64) @ query.astype(np.float64)
    return rows[np.argsort(-scores, kind="stable")[:k]].tolist()


async def test_requests_with_retrieval_parameters_of_their_own_are_searched_apart_in_the_one_batch(
    loaded: Loaded, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An experiment variant's requests carry their own k, per-shard k, ef and exact threshold
    (Request.ann): one search per set of parameters, each request answered by its own."""
    router, items, toy = loaded.router, loaded.items, loaded.toy
    exact = ExactFilteredSearch(items)
    source = AnnSource(router, items, 5, 16, router.per_shard_k(5, 2.0), exact, exact_max_items=0)
    wide = AnnParams(30, router.per_shard_k(30, 2.0), 64, 100)  # and c3 (~60 items) scored exactly
    searched: list[tuple[int, int]] = []
    search = router.search

    async def spying(queries: Any, *args: Any, **kwargs: Any) -> SearchResult:
        searched.append((len(queries), kwargs["k"]))
        return await search(queries, *args, **kwargs)

    monkeypatch.setattr(router, "search", spying)
    centre = toy.centres[3]
    requests = [
        request(),
        request(ann=wide),
        request(),
        request(ann=wide, filter={"category": frozenset({"c3"})}),
        request(filter={"category": frozenset({"c3"})}),
    ]
    h = hydrated(requests, items.dim, vectors=[centre] * len(requests))
    found = await source.fetch(h, source.applies(h), 10.0)
    assert sorted(searched) == [(1, 30), (3, 5)]  # the default's three in one call, the variant's one
    rows = per_request(found.rows)
    assert [len(r) for r in rows] == [5, 30, 5, 30, 5]
    assert rows[0] == rows[2] == brute_force(items, centre, None, set(), 5)
    assert len(set(rows[1]) & set(brute_force(items, centre, None, set(), 30))) >= 27
    assert found.coverage is not None
    assert found.coverage.retrieval.tolist() == [
        Retrieval.HNSW,
        Retrieval.HNSW,
        Retrieval.HNSW,
        Retrieval.EXACT_FILTERED,  # the variant's threshold
        Retrieval.HNSW_FILTERED,  # the default's (0: never exact)
    ]
    assert rows[3] == brute_force(items, centre, {"category": frozenset({"c3"})}, set(), 30)


async def test_ann_source_batch_mixes_exact_and_hnsw_requests(loaded: Loaded) -> None:
    router, items, toy = loaded.router, loaded.items, loaded.toy
    # category c3 holds ~60 items: scored exactly; lang en ~200: filtered inside the shards' HNSW.
    exact = ExactFilteredSearch(items)
    assert exact.applies({"category": frozenset({"c3"})}, 100)
    assert not exact.applies({"lang": frozenset({"en"})}, 100)
    source = AnnSource(router, items, ANN_K, 64, router.per_shard_k(ANN_K, 2.0), exact, exact_max_items=100)
    centre = toy.centres[3]
    best = brute_force(items, centre, None, set(), 5)
    requests = [
        request(),
        request(filter={"category": frozenset({"c3"})}),
        request(filter={"lang": frozenset({"en"})}),
        request(),  # a cold start
        request(exclude_item_ids=frozenset(items.item_id(r) for r in best)),
        request(kind=Kind.SIMILAR, seed_item_id="nope"),  # rejected
        request(
            filter={"category": frozenset({"c3"})}, exclude_item_ids=frozenset(items.item_id(r) for r in best)
        ),
    ]
    vectors: list[Any] = [centre, centre, centre, None, centre, None, centre]
    h = hydrated(requests, items.dim, vectors=vectors, rejected={5: not_found("nope")})
    applies = source.applies(h)
    assert applies.tolist() == [True, True, True, False, True, False, True]

    found = await source.fetch(h, applies, 10.0)

    assert found.source is Source.ANN and found.coverage is not None
    cov = found.coverage
    assert cov.retrieval.tolist() == [
        Retrieval.HNSW,
        Retrieval.EXACT_FILTERED,
        Retrieval.HNSW_FILTERED,
        Retrieval.UNSPECIFIED,
        Retrieval.HNSW,
        Retrieval.UNSPECIFIED,
        Retrieval.EXACT_FILTERED,
    ]
    assert cov.total.tolist() == [SHARDS, SHARDS, SHARDS, 0, SHARDS, 0, SHARDS]
    assert cov.ok.tolist() == cov.total.tolist()
    rows = per_request(found.rows)
    assert rows[3] == [] and rows[5] == []
    assert all(0 < len(r) <= ANN_K for i, r in enumerate(rows) if i not in (3, 5))
    for i, r in enumerate(rows):
        # Scores are the similarity to the request's vector, best first.
        lo, hi = found.rows.offsets[i], found.rows.offsets[i + 1]
        scores = found.scores[lo:hi]
        assert np.all(np.diff(scores) <= 1e-5), i
        np.testing.assert_allclose(scores, items.vectors(np.asarray(r, np.int64)) @ centre, atol=1e-2)
    c3, en = {"category": frozenset({"c3"})}, {"lang": frozenset({"en"})}
    assert items.filter_mask(np.asarray(rows[1], np.int64), c3).all()
    assert items.filter_mask(np.asarray(rows[2], np.int64), en).all()
    assert items.filter_mask(np.asarray(rows[6], np.int64), c3).all()
    assert not set(best) & set(rows[4]) and not set(best) & set(rows[6])
    # Exact requests equal brute force; HNSW ones find nearly all of it.
    assert set(rows[1]) == set(brute_force(items, centre, c3, set(), ANN_K))
    assert set(rows[6]) == set(brute_force(items, centre, c3, set(best), ANN_K))
    for i, allowed, excluded in [(0, None, set()), (2, en, set()), (4, None, set(best))]:
        truth = set(brute_force(items, centre, allowed, excluded, ANN_K))
        assert len(truth & set(rows[i])) >= 0.9 * ANN_K, i


class FakeRouter:
    """A router whose search answers what the test says, for the edge cases of the ANN source."""

    def __init__(self, labels: list[list[int]], shards_total: int, shards_ok: int) -> None:
        self.shard_count = shards_total
        self._labels = labels
        self._total = shards_total
        self._ok = shards_ok
        self.calls: list[dict[str, Any]] = []

    async def search(self, queries: npt.NDArray[np.float32], **kwargs: Any) -> SearchResult:
        self.calls.append({"queries": queries, **kwargs})
        labels = np.asarray(self._labels, np.uint64).reshape(len(queries), -1)
        scores = np.where(labels == NO_LABEL, -np.inf, 0.5).astype(np.float32)
        return SearchResult(
            labels, scores, self._total, self._ok, ["shard 1: down"] * (self._total - self._ok)
        )


async def test_ann_drops_labels_the_catalogue_does_not_hold_and_reports_partial_coverage() -> None:
    items = make_items(np.eye(3, dtype=np.float32))
    known = [int(x) for x in _core.stable_hash64(["i2", "i0"])]
    router = FakeRouter([[known[0], 12345, known[1], NONE], [NONE] * 4], shards_total=5, shards_ok=3)
    source = AnnSource(router, items, 4, 16, 2)  # type: ignore[arg-type]
    h = hydrated([request(), request(filter={"x": frozenset({"y"})})], 3, vectors=[[1, 0, 0], [0, 1, 0]])
    found = await source.fetch(h, source.applies(h), 1.0)
    assert per_request(found.rows) == [[2, 0], []]
    assert found.coverage is not None
    assert found.coverage.total.tolist() == [5, 5] and found.coverage.ok.tolist() == [3, 3]
    assert found.coverage.retrieval.tolist() == [Retrieval.HNSW, Retrieval.HNSW_FILTERED]
    # One router call for the batch, each query with its own filter and exclusions.
    (call,) = router.calls
    assert call["filters"] == [None, {"x": frozenset({"y"})}]
    assert len(call["exclude"]) == 2


async def test_ann_with_no_shard_answering_fails() -> None:
    items = make_items(np.eye(3, dtype=np.float32))
    source = AnnSource(FakeRouter([[NONE]], 4, 0), items, 1, 16, 1)  # type: ignore[arg-type]
    h = hydrated([request()], 3, vectors=[[1, 0, 0]])
    with pytest.raises(BackendError):
        await source.fetch(h, source.applies(h), 1.0)


async def test_ann_is_not_called_when_it_applies_to_no_request() -> None:
    items = make_items(np.eye(3, dtype=np.float32))
    router = FakeRouter([[NONE]], 4, 4)
    source = AnnSource(router, items, 1, 16, 1)  # type: ignore[arg-type]
    h = hydrated([request(), request()], 3)
    applies = source.applies(h)
    assert applies.tolist() == [False, False]
    found = await source.fetch(h, applies, 1.0)
    assert router.calls == [] and per_request(found.rows) == [[], []]
    assert found.coverage is not None and found.coverage.total.tolist() == [0, 0]


async def test_a_shard_outage_does_not_take_exact_filter_requests_down_with_it() -> None:
    """BUG (server/candidates/ann.py, AnnSource.fetch): exact-filter requests are scored on the
    catalogue replica and never need a shard ("the answer is complete"), yet when no shard answers the
    HNSW requests of the same batch, fetch raises BackendError before scoring them, so the whole ANN
    source fails for the batch: whether an exact-filter request gets ANN candidates depends on which
    requests it was batched with (in the previous per-request design it never depended on the shards).
    Suggested fix: score the exact requests first (or regardless), and when shards_ok == 0 raise only
    if there are no exact requests; otherwise return their hits and record the searched requests as
    failed for this source (e.g. a per-request failure mask on SourceHits that Pipeline.answers reads
    together with `applied`), instead of failing the whole batch."""
    items = make_items(
        np.eye(3, dtype=np.float32), [{"tier": "rare"}, {"tier": "common"}, {"tier": "common"}]
    )
    exact = ExactFilteredSearch(items)
    router = FakeRouter([[NONE]], shards_total=4, shards_ok=0)
    source = AnnSource(router, items, 2, 16, 1, exact, exact_max_items=1)  # type: ignore[arg-type]
    alone = hydrated([request(filter={"tier": frozenset({"rare"})})], 3, vectors=[[1, 0, 0]])
    by_itself = await source.fetch(alone, source.applies(alone), 1.0)
    assert per_request(by_itself.rows) == [[0]]  # no shard needed

    mixed = hydrated(
        [request(filter={"tier": frozenset({"rare"})}), request()], 3, vectors=[[1, 0, 0], [0, 1, 0]]
    )
    found = await source.fetch(mixed, source.applies(mixed), 1.0)
    assert per_request(found.rows)[0] == [0]
    assert found.coverage is not None
    assert found.coverage.retrieval[0] == Retrieval.EXACT_FILTERED
    assert (found.coverage.total[0], found.coverage.ok[0]) == (4, 4)

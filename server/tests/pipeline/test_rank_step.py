"""The rank step: the whole batch scored in one ranker call, each request's best candidates first, as a
brute-force NumPy oracle orders them; k (or the MMR pool) per request; the prior order when it fails."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest

from server.catalog.item_store import ItemStore
from server.domain import Source
from server.pipeline.stages import Filtered, Ragged, Ranked, Request
from server.pipeline.steps.rank import RankCandidates
from server.ranking.cpu import CpuRanker
from server.ranking.model import RankingModel
from server.ranking.service import RankService
from server.tests.pipeline.stagekit import FAR, candidates, hydrated, make_items, per_request, request

DIM = 8
N_ITEMS = 40
DAY_MS = 86_400_000
MODEL = RankingModel("test", 1.0, (0.35, 0.08, 0.05), 30 * 86400.0)
ANN_BIT = 1 << int(Source.ANN)
GRAPH_BIT = 1 << int(Source.GRAPH)


@pytest.fixture(scope="module")
def items() -> ItemStore:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(N_ITEMS, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    now = int(time.time() * 1000)
    return make_items(
        vectors,
        popularity=(rng.pareto(1.5, N_ITEMS) * 10).tolist(),
        created_at_ms=(now - rng.integers(0, 90, N_ITEMS) * DAY_MS).tolist(),
    )


@pytest.fixture
def service(items: ItemStore) -> Iterator[RankService]:
    s = RankService(CpuRanker(items.table, MODEL), None)
    yield s
    s.close()


def step(service: RankService, items: ItemStore, mmr_pool: int = 6) -> RankCandidates:
    return RankCandidates(service, items, mmr_pool)


@dataclass
class Spec:
    """One request of a test batch: its k and diversity, whether it has a vector, how many candidates."""

    k: int
    candidates: int
    warm: bool = True
    diversity: float = 0.0


def build(
    items: ItemStore, specs: list[Spec], seed: int = 0, versions: list[str | None] | None = None
) -> Filtered:
    rng = np.random.default_rng(seed)
    versions = versions or [None] * len(specs)
    requests: list[Request] = [
        request(k=s.k, diversity=s.diversity, model_version=v) for s, v in zip(specs, versions, strict=True)
    ]
    vectors = []
    for s in specs:
        q = rng.normal(size=DIM).astype(np.float32)
        vectors.append((q / np.linalg.norm(q)).tolist() if s.warm else None)
    rows = [np.sort(rng.choice(N_ITEMS, size=s.candidates, replace=False)).astype(np.int64) for s in specs]
    ragged = Ragged.of(rows, np.int64)
    n = len(ragged.values)
    has_graph = rng.random(n) < 0.5
    graph = np.where(has_graph, rng.random(n), 0.0).astype(np.float32)
    bits = np.where(has_graph, ANN_BIT | GRAPH_BIT, ANN_BIT).astype(np.uint8)
    return Filtered(candidates(hydrated(requests, DIM, vectors=vectors), []), ragged, bits, graph)


def oracle(
    items: ItemStore, filtered: Filtered, i: int, want: int, model: RankingModel = MODEL
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Request i's best `want` rows by w_sim * dot + side @ w_side, in float64 (ties: lower row)."""
    lo, hi = filtered.rows.offsets[i], filtered.rows.offsets[i + 1]
    rows = np.asarray(filtered.rows.values[lo:hi], np.int64)
    query = filtered.hydrated.vectors[i].astype(np.float64)
    similarity = items.vectors(rows).astype(np.float64) @ query
    side = np.stack(
        [
            filtered.graph[lo:hi].astype(np.float64),
            items.popularity_feature(rows).astype(np.float64),
            items.freshness_feature(rows, int(time.time() * 1000), model.freshness_half_life_s).astype(
                np.float64
            ),
        ],
        axis=1,
    )
    score = model.similarity_weight * similarity + side @ np.asarray(model.side_weights)
    order = np.lexsort((rows, -score))[:want]
    return rows[order], score[order], similarity[order], side[order]


def assert_matches_oracle(items: ItemStore, filtered: Filtered, ranked: Ranked, wants: list[int]) -> None:
    assert per_request(ranked.rows) == [
        oracle(items, filtered, i, w)[0].tolist() for i, w in enumerate(wants)
    ], "order differs from the brute-force oracle"
    for i, w in enumerate(wants):
        rows, score, similarity, side = oracle(items, filtered, i, w)
        lo, hi = ranked.rows.offsets[i], ranked.rows.offsets[i + 1]
        np.testing.assert_allclose(ranked.scores[lo:hi], score, atol=2e-4)
        np.testing.assert_allclose(ranked.similarity[lo:hi], similarity, atol=2e-4)
        np.testing.assert_allclose(ranked.side[lo:hi], side, atol=1e-5)
        # Each row keeps the source bits it came with.
        flo = filtered.rows.offsets[i]
        source_bits = dict(
            zip(
                filtered.rows.row(i).tolist(),
                filtered.bits[flo : flo + len(filtered.rows.row(i))].tolist(),
                strict=True,
            )
        )
        assert ranked.bits[lo:hi].tolist() == [source_bits[r] for r in rows.tolist()]


@pytest.mark.parametrize(
    ("specs", "mmr_pool", "wants"),
    [
        pytest.param([Spec(3, 10)], 6, [3], id="top-k"),
        pytest.param([Spec(1, 8), Spec(3, 2), Spec(5, 10)], 6, [1, 2, 5], id="k-per-request"),
        pytest.param([Spec(2, 10, diversity=0.5)], 6, [6], id="mmr-pool"),
        pytest.param([Spec(2, 10, diversity=0.5)], 3, [4], id="mmr-pool-at-least-2k"),
        pytest.param([Spec(2, 5, diversity=0.5)], 50, [5], id="mmr-pool-capped-by-candidates"),
        pytest.param([Spec(4, 10, warm=False)], 6, [4], id="cold-start-by-side-features"),
        pytest.param(
            [Spec(2, 6), Spec(3, 0), Spec(2, 9, warm=False), Spec(1, 12, diversity=0.3), Spec(4, 3)],
            5,
            [2, 0, 2, 5, 3],
            id="mixed-batch",
        ),
    ],
)
async def test_rank_matches_the_oracle(
    items: ItemStore, service: RankService, specs: list[Spec], mmr_pool: int, wants: list[int]
) -> None:
    filtered = build(items, specs)
    ranked = await step(service, items, mmr_pool).run(filtered, time.monotonic() + FAR)
    assert isinstance(ranked, Ranked) and ranked.filtered is filtered
    assert ranked.ranker == "cpu"
    assert ranked.rows.lengths.tolist() == wants
    assert_matches_oracle(items, filtered, ranked, wants)


POPULARITY_FIRST = RankingModel("popularity-first", 0.1, (0.0, 1.0, 0.2), 3 * 86400.0)


async def test_requests_of_two_model_versions_share_a_batch_each_ranked_by_its_own(
    items: ItemStore, service: RankService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Experiment variants that differ only in the model share one batch: one ranker call per version,
    every request ranked (features too: another freshness half-life) as its own model ranks it alone."""
    service.models.replace(None, POPULARITY_FIRST, make_default=False)
    calls: list[int] = []
    rank = service.rank

    async def counting(batch: object, requests: int, *args: object, **kwargs: object) -> object:
        calls.append(requests)
        return await rank(batch, requests, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(service, "rank", counting)
    specs = [Spec(3, 10), Spec(3, 10), Spec(2, 8, warm=False), Spec(4, 12)]
    versions: list[str | None] = [None, "popularity-first", None, "popularity-first"]
    filtered = build(items, specs, seed=9, versions=versions)
    ranked = await step(service, items).run(filtered, time.monotonic() + FAR)
    assert sorted(calls) == [2, 2]
    for i, (spec, version) in enumerate(zip(specs, versions, strict=True)):
        model = POPULARITY_FIRST if version else MODEL
        assert ranked.model_for(i) == model
        rows, score, similarity, side = oracle(items, filtered, i, spec.k, model)
        np.testing.assert_allclose(
            ranked.similarity[ranked.rows.offsets[i] : ranked.rows.offsets[i + 1]], similarity, atol=2e-4
        )
        assert ranked.rows.row(i).tolist() == rows.tolist()
        lo, hi = ranked.rows.offsets[i], ranked.rows.offsets[i + 1]
        np.testing.assert_allclose(ranked.scores[lo:hi], score, atol=2e-4)
        np.testing.assert_allclose(ranked.side[lo:hi], side, atol=1e-5)
    # On these candidates the two models disagree, so a request ranked by the wrong one would show.
    assert any(
        oracle(items, filtered, i, spec.k, MODEL)[0].tolist()
        != oracle(items, filtered, i, spec.k, POPULARITY_FIRST)[0].tolist()
        for i, spec in enumerate(specs)
        if versions[i]
    )


async def test_a_cold_start_has_no_similarity(items: ItemStore, service: RankService) -> None:
    filtered = build(items, [Spec(5, 12, warm=False)], seed=3)
    ranked = await step(service, items).run(filtered, time.monotonic() + FAR)
    assert not ranked.similarity.any()
    side_scores = ranked.side.astype(np.float64) @ np.asarray(MODEL.side_weights)
    assert np.all(np.diff(side_scores) <= 1e-6)  # best first by side features alone
    np.testing.assert_allclose(ranked.scores, side_scores, atol=1e-5)


@pytest.mark.parametrize(
    ("specs", "mmr_pool", "wants"),
    [
        pytest.param([Spec(3, 10)], 6, [3], id="top-k"),
        pytest.param([Spec(2, 10, diversity=0.5), Spec(1, 4)], 6, [6, 1], id="mmr-pool"),
        pytest.param([Spec(2, 0), Spec(4, 3)], 6, [0, 3], id="fewer-than-k"),
    ],
)
def test_fallback_orders_by_graph_then_popularity(
    items: ItemStore, service: RankService, specs: list[Spec], mmr_pool: int, wants: list[int]
) -> None:
    filtered = build(items, specs, seed=5)
    ranked = step(service, items, mmr_pool).fallback(filtered)
    assert ranked.ranker == "prior"
    assert ranked.rows.lengths.tolist() == wants
    assert not ranked.similarity.any()
    for i, w in enumerate(wants):
        lo = filtered.rows.offsets[i]
        rows = filtered.rows.row(i)
        graph = filtered.graph[lo : lo + len(rows)]
        popularity = items.popularity_feature(np.asarray(rows, np.int64))
        order = np.lexsort((-popularity, -graph))[:w]
        assert ranked.rows.row(i).tolist() == rows[order].tolist()
        rlo, rhi = ranked.rows.offsets[i], ranked.rows.offsets[i + 1]
        np.testing.assert_allclose(ranked.side[rlo:rhi, 0], graph[order])
        np.testing.assert_allclose(ranked.side[rlo:rhi, 1], popularity[order])
        np.testing.assert_allclose(ranked.scores[rlo:rhi], (graph + popularity)[order], rtol=1e-6)


async def test_a_graph_score_lifts_an_item(items: ItemStore, service: RankService) -> None:
    filtered = build(items, [Spec(1, 6)], seed=11)
    before = await step(service, items).run(filtered, time.monotonic() + FAR)
    last = int(np.asarray(oracle(items, filtered, 0, 6)[0])[-1])  # the worst candidate
    boosted = filtered.graph.copy()
    boosted[filtered.rows.values.tolist().index(last)] = 100.0
    lifted = Filtered(filtered.candidates, filtered.rows, filtered.bits, boosted)
    after = await step(service, items).run(lifted, time.monotonic() + FAR)
    assert before.rows.values.tolist() != [last]
    assert after.rows.values.tolist() == [last]


async def test_no_candidates_at_all(items: ItemStore, service: RankService) -> None:
    filtered = build(items, [Spec(3, 0), Spec(2, 0)])
    s = step(service, items)
    for ranked in (await s.run(filtered, time.monotonic() + FAR), s.fallback(filtered)):
        assert per_request(ranked.rows) == [[], []]
        assert len(ranked.scores) == len(ranked.bits) == len(ranked.similarity) == 0
        assert ranked.side.shape == (0, 3)


def test_step_declaration(items: ItemStore, service: RankService) -> None:
    s = step(service, items)
    assert (s.name, s.degraded_reason, s.reads, s.produces, s.awaits_io) == (
        "rank",
        "rank",
        Filtered,
        Ranked,
        True,
    )

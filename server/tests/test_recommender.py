"""The Recommender side end to end in-process: concurrent requests share pipeline batches, each request of
a batch is answered on its own (errors included), and one past its deadline does not wait for its batch."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from server.backends.memory_graph import InMemoryItemGraph
from server.domain import Interaction, ItemRecord, RecommendQuery, SimilarQuery
from server.errors import ErrorKind, RecdError
from server.pipeline.stages import Batch
from server.runtime import Recd
from server.tests.conftest import ToyCatalogue, make_config
from server.wiring import build_recd


def query(user: str, k: int = 10) -> RecommendQuery:
    return RecommendQuery(user, k, {}, frozenset(), {}, 0.0, False)


@pytest.fixture
async def recd(toy: ToyCatalogue) -> AsyncIterator[Recd]:
    recd = build_recd(make_config())
    records = [
        ItemRecord(item_id, toy.vectors[i], toy.attributes[i], float(toy.popularity[i]), 1_700_000_000_000)
        for i, item_id in enumerate(toy.item_ids)
    ]
    for start in range(0, len(records), 500):
        await recd.catalog.upsert_items(records[start : start + 500])
    history = [
        Interaction(
            f"u{u}", toy.item_ids[(u * 37 + j) % len(toy.item_ids)], "view", 1.0, 1_700_000_000_000 + j
        )
        for u in range(40)
        for j in range(5)
    ]
    await recd.recommender.record_interactions(history)
    yield recd
    await recd.close()


def batch_sizes(recd: Recd, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Records the size of every recommend batch the pipeline runs."""
    sizes: list[int] = []
    pipeline = recd.recommender.recommend_pipeline
    run = pipeline.run

    async def counting(batch: Batch, *args: Any) -> Any:
        sizes.append(len(batch))
        return await run(batch, *args)

    monkeypatch.setattr(pipeline, "run", counting)
    return sizes


async def test_concurrent_requests_share_batches(recd: Recd, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = batch_sizes(recd, monkeypatch)
    answers = await asyncio.gather(*(recd.recommender.recommend(query(f"u{u}")) for u in range(40)))
    assert all(len(a.items) == 10 for a in answers)
    assert sum(sizes) == 40
    # An idle server starts the first request at once; the rest gather while it runs.
    assert len(sizes) < 40 and max(sizes) > 1


async def test_alone_a_request_is_not_held_back(recd: Recd, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = batch_sizes(recd, monkeypatch)
    for u in range(3):
        await recd.recommender.recommend(query(f"u{u}"))
    assert sizes == [1, 1, 1]


async def test_a_mixed_batch_answers_each_request_on_its_own(recd: Recd, toy: ToyCatalogue) -> None:
    r = recd.recommender
    calls = [
        r.recommend(query("u1")),
        r.recommend(query("u2", k=5000)),  # bad: k over the limit
        r.recommend(query("")),  # bad: no user id
        r.recommend(query("u3", k=3)),
        r.similar_items(SimilarQuery(toy.item_ids[0], 4, {})),
        r.similar_items(SimilarQuery("no-such-item", 4, {})),
        r.similar_items(SimilarQuery(toy.item_ids[1], 2, {})),
    ]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    kinds = [o.kind if isinstance(o, RecdError) else None for o in outcomes]
    assert kinds == [
        None,
        ErrorKind.INVALID_ARGUMENT,
        ErrorKind.INVALID_ARGUMENT,
        None,
        None,
        ErrorKind.NOT_FOUND,
        None,
    ]
    sizes = [len(o.items) for o in outcomes if not isinstance(o, BaseException)]
    assert sizes == [10, 3, 4, 2]
    assert "k must be between 1 and" in str(outcomes[1])


async def test_a_request_past_its_deadline_does_not_wait_for_its_batch(
    recd: Recd, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A graph that answers after 0.6 s, within the graph step's (test) budget.
    original = InMemoryItemGraph.neighbours_many

    async def slow(self: InMemoryItemGraph, seed_lists: Sequence[Sequence[str]], *args: Any) -> Any:
        await asyncio.sleep(0.6)
        return await original(self, seed_lists, *args)

    monkeypatch.setattr(InMemoryItemGraph, "neighbours_many", slow)
    seen = {x.item_id for x in await recd.profiles.recent_interactions("u5", 100, 1.0)}
    started = time.monotonic()
    hurried, patient = await asyncio.gather(
        recd.recommender.recommend(query("u5"), caller_deadline=time.monotonic() + 0.2),
        recd.recommender.recommend(query("u6"), caller_deadline=time.monotonic() + 5.0),
    )
    # The hurried request is answered at its deadline from the popular list, minus what it has seen.
    assert hurried.coverage.degraded == ["deadline"]
    assert len(hurried.items) == 10 and not {i.item_id for i in hurried.items} & seen
    assert all(len(i.sources) == 1 and i.sources[0].name == "POPULAR" for i in hurried.items)
    # The other one waited for the graph and got the whole answer.
    assert time.monotonic() - started >= 0.6
    assert patient.coverage.degraded == [] and len(patient.items) == 10


def test_a_pipeline_shared_by_arms_is_built_without_their_per_request_overrides(recd: Recd) -> None:
    """Arms with the same pipeline overrides share one pipeline, whatever their per-request ones (which
    ride on their requests): the pipeline's own retrieval parameters stay the configured ones, or the
    requests of an arm without retrieval overrides would search with another arm's."""
    from server.experiments.assignment import Arm

    deeper = Arm((("e", "x"),), {"popular_k": 40, "ef_search": 99, "model_version": "m"})
    plain = Arm((("f", "y"),), {"popular_k": 40})
    shared = recd.recommender._set(deeper)
    assert recd.recommender._set(plain) is shared
    assert shared.pipelines.ann.params == recd.recommender.ann.params
    assert shared is not recd.recommender._set(Arm(()))


def test_variants_never_share_a_cache_key(recd: Recd) -> None:
    """The same user, query and model under two variants (or none) gets three keys."""
    keys = {recd.recommender.cache_key(query("u1"), "m1", arm) for arm in ("", "e=a", "e=b")}
    assert len(keys) == 3

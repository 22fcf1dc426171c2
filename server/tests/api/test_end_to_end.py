"""The public API over real gRPC against a server on an ephemeral port, on embedded backends."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.client import RecdClient
from server.domain import Edge, Interaction, ItemRecord, UserProfile
from server.gen.recd.v1 import catalog_pb2
from server.ranking.model import load_model
from server.tests.conftest import TEST_MODEL_FILE, ToyCatalogue

GRAPH_WEIGHT = load_model(TEST_MODEL_FILE).side_weights[0]


async def load_toy(client: RecdClient, toy: ToyCatalogue) -> None:
    records = [
        ItemRecord(
            item_id, toy.vectors[i] * 3.0, toy.attributes[i], float(toy.popularity[i]), 1_700_000_000_000
        )
        for i, item_id in enumerate(toy.item_ids)
    ]
    for start in range(0, len(records), 500):
        assert await client.upsert_items(records[start : start + 500]) == len(records[start : start + 500])


def cluster_items(toy: ToyCatalogue, cluster: int, n: int) -> list[str]:
    return [toy.item_ids[i] for i in np.flatnonzero(toy.cluster_of == cluster)[:n]]


@pytest.fixture
async def client(server_address: str, toy: ToyCatalogue) -> RecdClient:
    c = RecdClient(server_address, timeout_s=20.0)
    await load_toy(c, toy)
    yield c  # type: ignore[misc]
    await c.close()


async def test_recommend_follows_the_users_history(client: RecdClient, toy: ToyCatalogue) -> None:
    history = cluster_items(toy, 2, 8)
    await client.record_interactions([Interaction("alice", item, "click", 1.0, 0) for item in history])
    response = await client.recommend("alice", k=10)
    assert len(response.items) == 10
    got = [toy.item_ids.index(i.item_id) for i in response.items]
    # the history is all cluster 2, so the answer should be mostly cluster 2 and never what was seen
    assert np.mean(toy.cluster_of[got] == 2) >= 0.8
    assert not set(history) & {i.item_id for i in response.items}
    assert response.coverage.shards_total == 20 and response.coverage.shards_ok == 20
    assert not response.coverage.partial and list(response.coverage.degraded_reasons) == []
    assert response.model_version and response.cache_key.startswith("rec:v3:")
    assert all(1 in item.sources for item in response.items[:3])  # ANN proposed the best ones
    scores = [i.score for i in response.items]
    assert scores == sorted(scores, reverse=True)


async def test_next_recommend_reflects_new_interactions(client: RecdClient, toy: ToyCatalogue) -> None:
    await client.record_interactions(
        [Interaction("bob", i, "view", 1.0, 0) for i in cluster_items(toy, 1, 5)]
    )
    before = await client.recommend("bob", k=10)
    assert np.mean(toy.cluster_of[[toy.item_ids.index(i.item_id) for i in before.items]] == 1) >= 0.8
    # bob now engages heavily with cluster 7: the very next call must move there
    await client.record_interactions(
        [Interaction("bob", i, "purchase", 5.0, 0) for i in cluster_items(toy, 7, 30)]
    )
    after = await client.recommend("bob", k=10)
    assert np.mean(toy.cluster_of[[toy.item_ids.index(i.item_id) for i in after.items]] == 7) >= 0.6


async def test_unknown_user_gets_popular_items(client: RecdClient, toy: ToyCatalogue) -> None:
    response = await client.recommend("nobody-knows-me", k=5)
    assert len(response.items) == 5
    assert all(list(item.sources) == [3] for item in response.items)
    top = set(np.asarray(toy.item_ids)[np.argsort(-toy.popularity)[:5]])
    assert {i.item_id for i in response.items} == top


async def test_context_steers_a_cold_start(client: RecdClient, toy: ToyCatalogue) -> None:
    response = await client.recommend("new-user", k=5, context={"lang": "de"})
    langs = [toy.attributes[toy.item_ids.index(i.item_id)]["lang"] for i in response.items]
    assert langs.count("de") >= 3


async def test_filter_and_exclusions_are_honoured(client: RecdClient, toy: ToyCatalogue) -> None:
    await client.record_interactions(
        [Interaction("carol", i, "view", 1.0, 0) for i in cluster_items(toy, 4, 5)]
    )
    first = await client.recommend("carol", k=5)
    excluded = [first.items[0].item_id, first.items[1].item_id]
    response = await client.recommend("carol", k=20, filter_={"lang": ["fr"]}, exclude=excluded)
    assert len(response.items) == 20
    for item in response.items:
        assert toy.attributes[toy.item_ids.index(item.item_id)]["lang"] == "fr"
        assert item.item_id not in excluded


async def test_diversity_spreads_the_answer(client: RecdClient, toy: ToyCatalogue) -> None:
    await client.record_interactions(
        [Interaction("dave", i, "view", 1.0, 0) for i in cluster_items(toy, 3, 6) + cluster_items(toy, 5, 2)]
    )
    plain = await client.recommend("dave", k=10)
    diverse = await client.recommend("dave", k=10, diversity=0.9)
    spread = lambda r: len({toy.cluster_of[toy.item_ids.index(i.item_id)] for i in r.items})
    assert spread(diverse) > spread(plain)


async def test_graph_neighbours_become_candidates(client: RecdClient, toy: ToyCatalogue) -> None:
    seed = cluster_items(toy, 0, 1)[0]
    far = cluster_items(toy, 9, 3)  # vectors far from the seed: only the graph can propose them
    await client.upsert_edges([Edge(seed, f, 0.9) for f in far])
    await client.record_interactions([Interaction("erin", seed, "view", 1.0, 0)])
    # k=1000 returns every candidate: the far items are there, proposed by the graph alone
    response = await client.recommend("erin", k=1000)
    by_id = {i.item_id: i for i in response.items}
    assert set(far) <= set(by_id)
    assert all(2 in by_id[f].sources and by_id[f].components.graph > 0 for f in far), [by_id[f] for f in far]
    # the graph score enters the score with the model's weight, and every score is the sum of its parts
    for f in far:
        assert by_id[f].components.graph == pytest.approx(0.9 * GRAPH_WEIGHT, rel=1e-3)
    for item in response.items:
        c = item.components
        assert item.score == pytest.approx(c.similarity + c.graph + c.popularity + c.freshness, abs=2e-3)


async def test_similar_items(client: RecdClient, toy: ToyCatalogue) -> None:
    seed = cluster_items(toy, 6, 1)[0]
    response = await client.similar(seed, k=10)
    assert len(response.items) == 10 and seed not in {i.item_id for i in response.items}
    assert np.mean(toy.cluster_of[[toy.item_ids.index(i.item_id) for i in response.items]] == 6) >= 0.8
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await client.similar("no-such-item", k=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_catalogue_reads_and_deletes(client: RecdClient, toy: ToyCatalogue) -> None:
    ids = toy.item_ids[:3]
    got = await client.catalog.GetItems(catalog_pb2.GetItemsRequest(item_ids=[*ids, "missing"]))
    assert [i.item_id for i in got.items] == ids and list(got.missing_item_ids) == ["missing"]
    # stored unit-normalised (we sent 3x the unit vector)
    np.testing.assert_allclose(np.asarray(got.items[0].embedding), toy.vectors[0], atol=1e-5)
    assert dict(got.items[1].attributes) == toy.attributes[1]

    similar_before = await client.similar(ids[0], k=5)
    victim = similar_before.items[0].item_id
    deleted = await client.catalog.DeleteItems(catalog_pb2.DeleteItemsRequest(item_ids=[victim]))
    assert deleted.deleted == 1
    similar_after = await client.similar(ids[0], k=5)
    assert victim not in {i.item_id for i in similar_after.items}

    stats = await client.stats()
    assert stats.items == len(toy.item_ids) - 1
    assert len(stats.shards) == 20 and sum(s.items for s in stats.shards) == stats.items
    assert stats.dimension == 16 and stats.index.m == 16


async def test_user_embedding_is_used(client: RecdClient, toy: ToyCatalogue) -> None:
    await client.upsert_users([UserProfile("frank", toy.centres[8].astype(np.float32), {"tier": "gold"})])
    response = await client.recommend("frank", k=10)
    assert np.mean(toy.cluster_of[[toy.item_ids.index(i.item_id) for i in response.items]] == 8) >= 0.8


async def test_health_and_reflection(server_address: str) -> None:
    async with grpc.aio.insecure_channel(server_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "recd.v1.Recommender", "recd.v1.Catalog"):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def ask() -> list[str]:
            request = reflection_pb2.ServerReflectionRequest(list_services="")
            async for reply in stub.ServerReflectionInfo(iter([request])):
                return [s.name for s in reply.list_services_response.service]
            return []

        names = await ask()
        assert {"recd.v1.Recommender", "recd.v1.Catalog", "grpc.health.v1.Health"} <= set(names)


async def test_concurrent_recommends_all_succeed(client: RecdClient, toy: ToyCatalogue) -> None:
    await client.record_interactions(
        [Interaction(f"u{i}", toy.item_ids[i * 7], "view", 1.0, 0) for i in range(50)]
    )
    responses = await asyncio.gather(*(client.recommend(f"u{i}", k=10) for i in range(50)))
    assert all(len(r.items) == 10 for r in responses)

"""The edge over real gRPC: in front of a real frontend, and in front of a fake origin for coalescing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.client import RecdClient
from server.domain import Interaction
from server.edge.cache import EdgeCache
from server.edge.server import EdgeServer, build_edge
from server.gen.recd.v1 import catalog_pb2, recommender_pb2, recommender_pb2_grpc
from server.tests.api.test_end_to_end import cluster_items, load_toy
from server.tests.conftest import ToyCatalogue
from server.tests.edge.fakes import FakeOrigin, edge_config


@pytest.fixture
async def edge(server_address: str) -> AsyncIterator[EdgeServer]:
    server = build_edge(edge_config(origins=[server_address]))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_writes_through_the_edge_show_in_the_next_recommend_through_it(
    edge: EdgeServer, toy: ToyCatalogue
) -> None:
    client = RecdClient(edge.address, timeout_s=20.0)
    try:
        await load_toy(client, toy)  # Catalog.UpsertItems passes through
        stats = await client.stats()
        assert stats.items == len(toy.item_ids)

        cold = await client.recommend("carol", k=10)
        again = await client.recommend("carol", k=10)
        assert again == cold and edge.cache.origin_calls == 1  # the second one was a hit

        history = cluster_items(toy, 2, 8)
        await client.record_interactions([Interaction("carol", i, "click", 1.0, 0) for i in history])
        warm = await client.recommend("carol", k=10)
        assert edge.cache.origin_calls == 2
        got = [toy.item_ids.index(i.item_id) for i in warm.items]
        assert np.mean(toy.cluster_of[got] == 2) >= 0.8
        assert not set(history) & {i.item_id for i in warm.items}
    finally:
        await client.close()


async def test_other_users_stay_cached_after_a_write(edge: EdgeServer, toy: ToyCatalogue) -> None:
    client = RecdClient(edge.address, timeout_s=20.0)
    try:
        await load_toy(client, toy)
        await client.recommend("dave", k=5)
        await client.recommend("erin", k=5)
        await client.record_interactions([Interaction("dave", toy.item_ids[0], "view", 1.0, 0)])
        await client.recommend("erin", k=5)
        assert edge.cache.origin_calls == 2
        await client.recommend("dave", k=5)
        assert edge.cache.origin_calls == 3
    finally:
        await client.close()


async def test_origin_errors_pass_through_with_their_status(edge: EdgeServer) -> None:
    async with grpc.aio.insecure_channel(edge.address) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.Recommend(recommender_pb2.RecommendRequest(user_id="", k=10), timeout=10)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.SimilarItems(recommender_pb2.SimilarItemsRequest(item_id="nope", k=5), timeout=10)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_health_and_reflection(edge: EdgeServer) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with grpc.aio.insecure_channel(edge.address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name async for r in responses for s in r.list_services_response.service}
        assert {"recd.v1.Recommender", "recd.v1.Catalog"} <= names


async def test_1000_concurrent_identical_requests_over_grpc_make_one_origin_call() -> None:
    origin = FakeOrigin(gate=asyncio.Event())
    config = edge_config()
    server = EdgeServer(config, EdgeCache(config, origin), origin, None)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            req = recommender_pb2.RecommendRequest(user_id="hot", k=10)
            calls = [asyncio.ensure_future(stub.Recommend(req, timeout=20)) for _ in range(1000)]
            while origin.recommend_calls == 0:
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.2)  # let the rest arrive and join the fill in flight
            origin.gate.set()  # type: ignore[union-attr]
            answers = await asyncio.gather(*calls)
        assert origin.recommend_calls == 1
        assert {a.items[0].item_id for a in answers} == {"hot#1"}
    finally:
        await server.stop()


async def test_upsert_users_through_the_edge_invalidates_them() -> None:
    origin = FakeOrigin()
    config = edge_config()
    server = EdgeServer(config, EdgeCache(config, origin), origin, None)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            req = recommender_pb2.RecommendRequest(user_id="frank", k=10)
            first = await stub.Recommend(req, timeout=5)
            await channel.unary_unary("/recd.v1.Catalog/UpsertUsers")(
                catalog_pb2.UpsertUsersRequest(users=[catalog_pb2.User(user_id="frank")]).SerializeToString(),
                timeout=5,
            )
            assert await stub.Recommend(req, timeout=5) != first
    finally:
        await server.stop()

"""Bytes that are no request, and requests past the limits, are refused by the edge itself: INVALID_ARGUMENT,
and nothing reaches an origin."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from server.edge.cache import EdgeCache
from server.edge.server import EdgeServer
from server.gen.recd.v1 import catalog_pb2, common_pb2, recommender_pb2, recommender_pb2_grpc
from server.tests.edge.fakes import FakeOrigin, edge_config

UNARY = [
    f"/{service.full_name}/{method.name}"
    for module, name in ((recommender_pb2, "Recommender"), (catalog_pb2, "Catalog"))
    for service in [module.DESCRIPTOR.services_by_name[name]]
    for method in service.methods
    if not method.server_streaming
]


@pytest.fixture
async def edge() -> AsyncIterator[tuple[EdgeServer, FakeOrigin]]:
    origin = FakeOrigin()
    config = edge_config()
    server = EdgeServer(config, EdgeCache(config, origin), origin, None)
    await server.start()
    try:
        yield server, origin
    finally:
        await server.stop()


@pytest.mark.parametrize("path", UNARY, ids=[p.rsplit("/", 1)[-1] for p in UNARY])
@pytest.mark.parametrize(
    "raw", [b"\xff\xff\xff\xff", b"\x0a\x05ab", b"\x0b"], ids=["corrupt", "truncated", "group"]
)
async def test_undecodable_bytes_are_refused_at_the_edge(
    edge: tuple[EdgeServer, FakeOrigin], path: str, raw: bytes
) -> None:
    server, origin = edge
    async with grpc.aio.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await channel.unary_unary(path)(raw, timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert origin.calls == []
        # still serving
        reply = await recommender_pb2_grpc.RecommenderStub(channel).Recommend(
            recommender_pb2.RecommendRequest(user_id="u", k=3), timeout=5
        )
        assert reply.items


async def test_non_utf8_user_id_is_refused_at_the_edge(edge: tuple[EdgeServer, FakeOrigin]) -> None:
    server, origin = edge
    async with grpc.aio.insecure_channel(server.address) as channel:
        for path in ("/recd.v1.Recommender/Recommend", "/recd.v1.Catalog/GetItems"):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await channel.unary_unary(path)(b"\x0a\x02\xc3\x28", timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "bad UTF-8" in (err.value.details() or "")
    assert origin.calls == []


async def test_a_recommend_past_the_size_limits_is_refused_before_the_cache(
    edge: tuple[EdgeServer, FakeOrigin],
) -> None:
    server, origin = edge
    huge = {f"a{n}": common_pb2.AllowedValues(values=["x"]) for n in range(100_000)}
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Recommend(recommender_pb2.RecommendRequest(user_id="u", filter=huge), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "filter has 100000 attributes; the limit is 32 (server.limits.max_filter_attributes)" in (
            err.value.details() or ""
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Recommend(
                recommender_pb2.RecommendRequest(user_id="u", context={f"k{n}": "v" for n in range(65)}),
                timeout=10,
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert origin.calls == []
    assert server.cache.origin_calls == 0

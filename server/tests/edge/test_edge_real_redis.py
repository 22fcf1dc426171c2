"""Two edge replicas sharing a real Redis: answers and invalidations travel between them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from server.config import CacheConfig
from server.edge.cache import EdgeCache
from server.edge.shared import FailOpen, open_shared_cache
from server.tests.backends.real_backends import redis_config
from server.tests.edge.fakes import FakeOrigin, edge_config, item_of, request

pytestmark = pytest.mark.real


@pytest.fixture
async def shared_config() -> AsyncIterator[CacheConfig]:
    import redis.asyncio as aioredis

    config = redis_config()  # skips when RECD_TEST_REDIS_URL is unset
    yield config
    client = aioredis.Redis.from_url(config.url)
    try:
        keys = [k async for k in client.scan_iter(match=config.key_prefix + "*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def replica(config: CacheConfig, origin: FakeOrigin) -> tuple[EdgeCache, FailOpen]:
    shared = open_shared_cache(config)
    assert shared is not None
    return EdgeCache(edge_config(cache=config, user_version_refresh_s=0.0), origin, shared), shared


async def test_replicas_share_answers_and_invalidations(shared_config: CacheConfig) -> None:
    origin = FakeOrigin()
    a, shared_a = await replica(shared_config, origin)
    b, shared_b = await replica(shared_config, origin)
    try:
        first = await a.recommend(request("alice"))
        await a.drain()
        await b.recommend(request("someone-else"))  # b learns the model version from its own first answer
        assert await b.recommend(request("alice")) == first
        assert origin.recommend_calls == 2

        await a.invalidate_users(["alice"])
        fresh = await b.recommend(request("alice"))
        assert fresh != first and item_of(fresh) == "alice#3"
    finally:
        for edge, shared in ((a, shared_a), (b, shared_b)):
            await edge.close()
            await shared.close()


async def test_a_shared_answer_holding_a_deleted_item_is_fetched_again(shared_config: CacheConfig) -> None:
    origin = FakeOrigin()
    a, shared_a = await replica(shared_config, origin)
    b, shared_b = await replica(shared_config, origin)
    try:
        await a.recommend(request("bob"))
        await a.drain()
        await b.recommend(request("someone-else"))
        assert item_of(await b.recommend(request("bob"))) == "bob#1"  # from Redis
        b.deletes.add(["bob#1"])  # b hears of the delete; the entry in Redis predates it
        b.l1.clear()
        assert item_of(await b.recommend(request("bob"))) == "bob#3"
        assert origin.recommend_calls == 3
    finally:
        for edge, shared in ((a, shared_a), (b, shared_b)):
            await edge.close()
            await shared.close()

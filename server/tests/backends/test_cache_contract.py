"""The Cache contract: every implementation must pass these, using only the Protocol's methods.

To cover another implementation, add one line to FACTORIES: an async factory that takes a fresh
temporary directory and returns an empty cache (a real backend would mark itself `pytest.mark.real`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from server.backends.base import Cache
from server.backends.memory_cache import InMemoryCache
from server.tests.backends.real_backends import redis_cache
from server.tests.workers.state_stores import cache_on_state_node

CacheFactory = Callable[[Path], Awaitable[Cache]]


async def memory_cache(tmp_path: Path) -> Cache:
    return InMemoryCache(1 << 20)


async def state_node_cache(tmp_path: Path) -> Cache:
    # What a worker of `recd serve --workers N` uses: the in-process cache, behind a state node.
    return await cache_on_state_node(1 << 20)


FACTORIES = [
    pytest.param(memory_cache, id="memory"),
    pytest.param(state_node_cache, id="state-node"),
    pytest.param(redis_cache, id="redis", marks=pytest.mark.real),
]


@pytest.fixture(params=FACTORIES)
async def cache(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Cache]:
    factory: CacheFactory = request.param
    instance = await factory(tmp_path)
    try:
        yield instance
    finally:
        await instance.close()


async def test_missing_key_is_none(cache: Cache) -> None:
    assert await cache.get("absent") is None


async def test_set_then_get(cache: Cache) -> None:
    await cache.set("k", b"value", ttl_s=60)
    assert await cache.get("k") == b"value"


async def test_get_many_keeps_order_and_reports_misses(cache: Cache) -> None:
    await cache.set("a", b"1", ttl_s=60)
    await cache.set("c", b"3", ttl_s=60)
    assert await cache.get_many(["c", "b", "a", "c"]) == [b"3", None, b"1", b"3"]
    assert await cache.get_many([]) == []


async def test_set_overwrites(cache: Cache) -> None:
    await cache.set("k", b"one", ttl_s=60)
    await cache.set("k", b"two", ttl_s=60)
    assert await cache.get("k") == b"two"


async def test_binary_and_empty_values(cache: Cache) -> None:
    await cache.set("bin", bytes(range(256)), ttl_s=60)
    await cache.set("empty", b"", ttl_s=60)
    assert await cache.get("bin") == bytes(range(256))
    assert await cache.get("empty") == b""


async def test_delete_removes_several_keys_and_ignores_absent_ones(cache: Cache) -> None:
    for key in ("a", "b", "c"):
        await cache.set(key, key.encode(), ttl_s=60)
    await cache.delete(["a", "c", "never-set"])
    await cache.delete([])
    assert await cache.get("a") is None
    assert await cache.get("b") == b"b"
    assert await cache.get("c") is None


async def test_entries_expire_after_their_ttl(cache: Cache) -> None:
    await cache.set("short", b"x", ttl_s=0.1)
    await cache.set("long", b"y", ttl_s=60)
    await asyncio.sleep(0.25)
    assert await cache.get("short") is None
    assert await cache.get("long") == b"y"

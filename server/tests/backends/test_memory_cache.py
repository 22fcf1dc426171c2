"""What only the embedded cache promises: an injected clock, the byte bound, LRU order, counters."""

from __future__ import annotations

import pytest

from server.backends.memory_cache import InMemoryCache


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def test_ttl_expiry_follows_the_clock(clock: FakeClock) -> None:
    cache = InMemoryCache(1000, clock=clock)
    await cache.set("k", b"v", ttl_s=10)
    clock.now += 9.9
    assert await cache.get("k") == b"v"
    clock.now += 0.1
    assert await cache.get("k") is None
    assert cache.expirations == 1
    assert cache.bytes_used == 0 and len(cache) == 0


async def test_non_positive_ttl_stores_nothing(clock: FakeClock) -> None:
    cache = InMemoryCache(1000, clock=clock)
    await cache.set("k", b"old", ttl_s=10)
    await cache.set("k", b"new", ttl_s=0)
    assert await cache.get("k") is None


async def test_bytes_of_keys_and_values_are_bounded(clock: FakeClock) -> None:
    cache = InMemoryCache(100, clock=clock)
    for k in range(10):
        await cache.set(f"key{k}", b"x" * 16, ttl_s=60)  # 4 + 16 = 20 bytes each
    assert cache.bytes_used == 100
    assert len(cache) == 5
    assert cache.evictions == 5
    assert [await cache.get(f"key{k}") is not None for k in range(10)] == [False] * 5 + [True] * 5


async def test_key_bytes_count_as_utf8(clock: FakeClock) -> None:
    cache = InMemoryCache(100, clock=clock)
    await cache.set("é", b"abc", ttl_s=60)
    assert cache.bytes_used == 2 + 3


async def test_least_recently_used_goes_first(clock: FakeClock) -> None:
    cache = InMemoryCache(60, clock=clock)
    for key in ("a", "b", "c"):
        await cache.set(key, b"x" * 19, ttl_s=60)  # 20 bytes each: full
    assert await cache.get("a") == b"x" * 19  # a is now the most recent
    await cache.set("d", b"x" * 19, ttl_s=60)
    assert await cache.get("b") is None
    assert await cache.get("a") is not None
    assert await cache.get("c") is not None
    assert await cache.get("d") is not None


async def test_overwrite_updates_the_byte_count(clock: FakeClock) -> None:
    cache = InMemoryCache(100, clock=clock)
    await cache.set("k", b"x" * 50, ttl_s=60)
    await cache.set("k", b"x" * 10, ttl_s=60)
    assert cache.bytes_used == 11
    await cache.delete(["k"])
    assert cache.bytes_used == 0


async def test_a_value_larger_than_the_cache_is_not_stored_and_evicts_nothing(clock: FakeClock) -> None:
    cache = InMemoryCache(100, clock=clock)
    await cache.set("small", b"x", ttl_s=60)
    await cache.set("huge", b"x" * 200, ttl_s=60)
    assert await cache.get("huge") is None
    assert await cache.get("small") == b"x"
    assert cache.evictions == 0


async def test_hits_and_misses_are_counted(clock: FakeClock) -> None:
    cache = InMemoryCache(100, clock=clock)
    await cache.set("k", b"v", ttl_s=60)
    await cache.get("k")
    await cache.get("k")
    await cache.get("other")
    assert (cache.hits, cache.misses) == (2, 1)


def test_max_bytes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        InMemoryCache(0)

"""RedisCache beyond the Cache contract: fail-open within the timeout, the circuit breaker.

Tests marked `real` use the Redis that deploy/scripts/stack.sh starts; the others need no server
(a refused port, or a local listener that never answers, stands in for a dead or hung Redis).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from server import metrics
from server.backends.redis_cache import CircuitBreaker, RedisCache
from server.config import CacheConfig
from server.tests.backends.real_backends import redis_cache, redis_config
from server.tests.backends.tcp_proxy import TcpProxy


def counter(outcome: str) -> float:
    return metrics.CACHE_REQUESTS.labels("redis", outcome)._value.get()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def hung_server() -> AsyncIterator[int]:
    """A port that accepts connections and never answers (a hung or blackholed Redis)."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for w in held:
            w.close()
        server.close()


def cache_at(port: int, clock: Callable[[], float] = time.monotonic, **overrides: Any) -> RedisCache:
    settings: dict[str, Any] = {"timeout_ms": 30.0, "breaker_failures": 3, "breaker_open_s": 1.0}
    settings.update(overrides)
    return RedisCache(CacheConfig(backend="redis", url=f"redis://127.0.0.1:{port}/0", **settings), clock)


# --- fail-open, without a server ---------------------------------------------------------------------
@pytest.mark.parametrize("outage", ["refused", "hung"])
async def test_an_unreachable_redis_is_a_miss_within_the_timeout(outage: str, hung_server: int) -> None:
    port = closed_port() if outage == "refused" else hung_server
    cache = cache_at(port, breaker_failures=100)  # the breaker would hide the timeouts being measured
    errors = counter("error")
    try:
        for _ in range(3):
            started = time.monotonic()
            assert await cache.get("k") is None
            await cache.set("k", b"v", ttl_s=60)
            await cache.delete(["k", "j"])
            # Three calls of at most 30 ms each, with room for a slow, shared test machine.
            assert time.monotonic() - started < 3 * 0.030 + 0.1
        assert counter("error") - errors == 9
    finally:
        await cache.close()


async def test_the_breaker_skips_redis_after_consecutive_failures(hung_server: int) -> None:
    clock = FakeClock()
    cache = cache_at(hung_server, clock, timeout_ms=50.0, breaker_failures=3, breaker_open_s=1.0)
    try:
        for _ in range(3):  # each of these waits the full timeout
            assert await cache.get("k") is None
        assert cache.breaker_state == "open"
        started = time.monotonic()
        for _ in range(20):
            assert await cache.get("k") is None
        # Skipped, not waited for: 20 calls in far less than one timeout.
        assert time.monotonic() - started < 0.05
        clock.now += 1.0
        assert cache.breaker_state == "half-open"
        started = time.monotonic()
        assert await cache.get("k") is None  # the probe: waits the timeout, fails, opens again
        assert time.monotonic() - started >= 0.04
        assert cache.breaker_state == "open"
    finally:
        await cache.close()


def test_breaker_state_machine() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failures=2, open_s=1.0, clock=clock)
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.record_success()  # a success resets the count: failures must be consecutive
    breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow()
    clock.now += 0.999
    assert not breaker.allow()
    clock.now += 0.001
    assert breaker.allow()  # one probe...
    assert not breaker.allow()  # ...at a time
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow()
    breaker.record_failure()
    breaker.record_failure()
    clock.now += 1.0
    assert breaker.allow()
    breaker.record_failure()  # a failed probe opens it again at once
    assert breaker.state == "open" and not breaker.allow()


# --- against the real Redis -------------------------------------------------------------------------------
@pytest.fixture
async def cache() -> AsyncIterator[RedisCache]:
    instance = await redis_cache()
    try:
        yield instance
    finally:
        await instance.close()


@pytest.mark.real
async def test_hits_and_misses_are_counted(cache: RedisCache) -> None:
    hits, misses = counter("hit"), counter("miss")
    await cache.get("absent")
    await cache.set("present", b"x", 60)
    await cache.get("present")
    assert (counter("hit") - hits, counter("miss") - misses) == (1, 1)


@pytest.mark.real
async def test_keys_carry_the_prefix_and_a_millisecond_ttl(cache: RedisCache) -> None:
    import redis.asyncio as aioredis

    await cache.set("k", b"v", ttl_s=30)
    raw = aioredis.Redis.from_url(cache.config.url)
    try:
        assert await raw.get(cache.config.key_prefix + "k") == b"v"
        assert 29_000 < await raw.pttl(cache.config.key_prefix + "k") <= 30_000
        assert await raw.get("k") is None
    finally:
        await raw.aclose()


@pytest.mark.real
async def test_redis_outage_fails_open_and_recovery_needs_no_restart() -> None:
    url = redis_config().url
    host, port = url.removeprefix("redis://").split("/")[0].split(":")
    proxy = await TcpProxy(host, int(port)).start()
    cache = await redis_cache(url=f"redis://{proxy.address}/0", timeout_ms=50.0, breaker_open_s=0.2)
    try:
        await cache.set("k", b"v", 60)
        assert await cache.get("k") == b"v"
        for fault in ("blackhole", "down"):
            if fault == "blackhole":
                proxy.blackhole()
            else:
                await proxy.down()
            started = time.monotonic()
            for _ in range(20):
                assert await cache.get("k") is None
                await cache.set("k2", b"x", 60)
            # 40 calls: only the first few (until the breaker opens) may wait for the 50 ms timeout.
            assert time.monotonic() - started < 1.0
            await proxy.up()
            deadline = time.monotonic() + 3.0
            while await cache.get("k") != b"v":
                assert time.monotonic() < deadline, f"redis not used again after {fault}"
                await asyncio.sleep(0.05)
            assert cache.breaker_state == "closed"
    finally:
        await cache.close()
        await proxy.close()

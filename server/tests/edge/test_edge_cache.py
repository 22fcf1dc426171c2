"""The edge's Recommend path against a fake origin and a settable clock: hits, misses, invalidation,
stale-while-revalidate, coalescing, and the shared level failing open."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from server.backends.memory_cache import InMemoryCache
from server.backends.redis_cache import RedisCache
from server.config import CacheConfig
from server.edge.cache import EdgeCache
from server.edge.origin import OriginError
from server.edge.shared import FailOpen
from server.gen.recd.v1 import common_pb2
from server.tests.edge.fakes import BrokenCache, FakeClock, FakeOrigin, edge_config, item_of, request
from server.tools.bench.serverproc import free_port


def make_edge(
    origin: FakeOrigin | None = None, clock: FakeClock | None = None, shared: object = None, **config: object
) -> tuple[EdgeCache, FakeOrigin, FakeClock]:
    origin = origin or FakeOrigin()
    clock = clock or FakeClock()
    return EdgeCache(edge_config(**config), origin, shared, clock=clock), origin, clock  # type: ignore[arg-type]


async def test_second_identical_request_is_a_hit() -> None:
    edge, origin, _ = make_edge()
    first = await edge.recommend(request("u1"))
    assert await edge.recommend(request("u1")) == first
    assert origin.recommend_calls == 1
    assert edge.model_version == "m1"


async def test_different_requests_are_different_entries() -> None:
    edge, origin, _ = make_edge()
    await edge.recommend(request("u1"))
    await edge.recommend(request("u1", k=5))
    await edge.recommend(request("u2"))
    await edge.recommend(request("u1", filter={"lang": common_pb2.AllowedValues(values=["en"])}))
    assert origin.recommend_calls == 4


async def test_fresh_for_the_origins_ttl_then_refetched() -> None:
    edge, origin, clock = make_edge(FakeOrigin(ttl_s=30), stale_grace_s=0.0)
    await edge.recommend(request())
    clock.advance(29.9)
    await edge.recommend(request())
    assert origin.recommend_calls == 1
    clock.advance(0.2)
    await edge.recommend(request())
    assert origin.recommend_calls == 2


async def test_ttl_is_capped_and_zero_means_do_not_cache() -> None:
    edge, origin, clock = make_edge(FakeOrigin(ttl_s=10_000), max_ttl_s=60.0, stale_grace_s=0.0)
    await edge.recommend(request())
    clock.advance(61)
    await edge.recommend(request())
    assert origin.recommend_calls == 2

    edge, origin, _ = make_edge(FakeOrigin(ttl_s=0))
    await edge.recommend(request())
    await edge.recommend(request())
    assert origin.recommend_calls == 2 and len(edge.l1) == 0


async def test_degraded_answers_are_kept_only_briefly() -> None:
    edge, origin, clock = make_edge(
        FakeOrigin(ttl_s=60, degraded=True), degraded_ttl_s=2.0, stale_grace_s=0.0
    )
    await edge.recommend(request())
    clock.advance(1)
    await edge.recommend(request())
    assert origin.recommend_calls == 1
    clock.advance(1.5)
    await edge.recommend(request())
    assert origin.recommend_calls == 2


async def test_user_version_bump_invalidates_only_that_user() -> None:
    edge, origin, _ = make_edge()
    before = {u: await edge.recommend(request(u)) for u in ("alice", "bob")}
    await edge.invalidate_users(["alice"])
    after_alice = await edge.recommend(request("alice"))
    after_bob = await edge.recommend(request("bob"))
    assert after_alice != before["alice"]
    assert after_bob == before["bob"]
    assert origin.recommend_calls == 3


async def test_a_new_model_version_is_learned_and_used_in_keys() -> None:
    origin = FakeOrigin(model_version="m1", ttl_s=10)
    edge, _, clock = make_edge(origin, stale_grace_s=0.0)
    await edge.recommend(request())
    origin.model_version = "m2"
    clock.advance(11)
    await edge.recommend(request())
    assert edge.model_version == "m2"
    await edge.recommend(request())
    assert origin.recommend_calls == 2


async def test_stale_while_revalidate_serves_stale_once_then_the_refresh() -> None:
    origin = FakeOrigin(ttl_s=10)
    edge, _, clock = make_edge(origin, stale_grace_s=30.0)
    first = await edge.recommend(request())
    assert item_of(first) == "u1#1"
    clock.advance(11)  # expired, within the grace window
    origin.gate = asyncio.Event()
    assert await edge.recommend(request()) == first  # stale, at once, while the refresh waits
    assert await edge.recommend(request()) == first  # still stale; no second refresh
    await asyncio.sleep(0)
    assert origin.recommend_calls == 2
    origin.gate.set()
    await edge.drain()
    refreshed = await edge.recommend(request())
    assert item_of(refreshed) == "u1#2"
    assert origin.recommend_calls == 2


async def test_past_the_grace_window_a_miss_waits_for_the_origin() -> None:
    edge, origin, clock = make_edge(FakeOrigin(ttl_s=10), stale_grace_s=5.0)
    await edge.recommend(request())
    clock.advance(16)
    assert item_of(await edge.recommend(request())) == "u1#2"
    assert origin.recommend_calls == 2


async def test_a_failed_refresh_keeps_the_stale_answer() -> None:
    origin = FakeOrigin(ttl_s=10)
    edge, _, clock = make_edge(origin, stale_grace_s=30.0)
    first = await edge.recommend(request())
    clock.advance(11)
    origin.error = grpc.StatusCode.UNAVAILABLE
    assert await edge.recommend(request()) == first
    await edge.drain()
    assert await edge.recommend(request()) == first


async def test_1000_concurrent_identical_misses_make_one_origin_call() -> None:
    origin = FakeOrigin(gate=asyncio.Event())
    edge, _, _ = make_edge(origin)
    calls = [asyncio.ensure_future(edge.recommend(request("hot"))) for _ in range(1000)]
    await asyncio.sleep(0.01)
    origin.gate.set()  # type: ignore[union-attr]
    answers = await asyncio.gather(*calls)
    assert origin.recommend_calls == 1
    assert len(set(answers)) == 1


async def test_an_origin_error_reaches_every_coalesced_caller_and_is_not_cached() -> None:
    origin = FakeOrigin(gate=asyncio.Event(), error=grpc.StatusCode.INVALID_ARGUMENT)
    edge, _, _ = make_edge(origin)
    calls = [asyncio.ensure_future(edge.recommend(request())) for _ in range(10)]
    await asyncio.sleep(0)
    origin.gate.set()  # type: ignore[union-attr]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, OriginError) and r.code == grpc.StatusCode.INVALID_ARGUMENT for r in results)
    origin.error = None
    await edge.recommend(request())
    assert origin.recommend_calls == 2


async def test_an_impatient_caller_times_out_without_failing_the_others() -> None:
    origin = FakeOrigin(gate=asyncio.Event())
    edge, _, _ = make_edge(origin)
    patient = asyncio.ensure_future(edge.recommend(request()))
    with pytest.raises(OriginError) as failed:
        await edge.recommend(request(), timeout_s=0.01)
    assert failed.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    origin.gate.set()  # type: ignore[union-attr]
    assert item_of(await patient) == "u1#1"
    assert origin.recommend_calls == 1


async def test_l1_is_bounded_in_bytes() -> None:
    edge, _, _ = make_edge(cache=CacheConfig(max_bytes=20_000))
    for i in range(500):
        await edge.recommend(request(f"user{i}"))
        assert edge.l1.bytes_used <= 20_000
    assert 0 < len(edge.l1) < 500


# --- the shared level -----------------------------------------------------------------------------------
async def test_replicas_share_answers_and_invalidations_through_the_shared_level() -> None:
    shared = InMemoryCache(1 << 20)
    origin = FakeOrigin()
    clock = FakeClock()
    a, _, _ = make_edge(origin, clock, shared, user_version_refresh_s=0.0)
    b, _, _ = make_edge(origin, clock, shared, user_version_refresh_s=0.0)
    first = await a.recommend(request())
    await a.drain()  # the shared write runs in the background
    b.model_version = a.model_version  # b would learn it from its first origin answer
    assert await b.recommend(request()) == first
    assert origin.recommend_calls == 1
    await a.invalidate_users(["u1"])
    assert await b.recommend(request()) != first
    assert origin.recommend_calls == 2


async def test_stale_in_the_shared_level_is_served_and_refreshed() -> None:
    shared = InMemoryCache(1 << 20)
    origin = FakeOrigin(ttl_s=10)
    clock = FakeClock()
    a, _, _ = make_edge(origin, clock, shared, stale_grace_s=30.0)
    b, _, _ = make_edge(origin, clock, shared, stale_grace_s=30.0)
    first = await a.recommend(request())
    await a.drain()
    clock.advance(11)
    b.model_version = "m1"
    assert await b.recommend(request()) == first
    await b.drain()
    assert origin.recommend_calls == 2
    assert item_of(await b.recommend(request())) == "u1#2"


@pytest.mark.parametrize("broken", ["raises", "refused"])
async def test_shared_level_down_still_serves(broken: str) -> None:
    if broken == "raises":
        shared: object = FailOpen(BrokenCache())  # type: ignore[arg-type]
    else:
        # A real Redis client aimed at a port nobody listens on: refused at once, every call.
        dead = CacheConfig(backend="redis", url=f"redis://127.0.0.1:{free_port()}/0", timeout_ms=50.0)
        shared = FailOpen(RedisCache(dead))
    edge, origin, _ = make_edge(shared=shared, user_version_refresh_s=0.0)
    try:
        first = await edge.recommend(request())
        assert await edge.recommend(request()) == first  # L1 still works
        await edge.invalidate_users(["u1"])
        assert await edge.recommend(request()) != first  # and so does invalidation, locally
        await edge.drain()
        assert origin.recommend_calls == 2
    finally:
        await edge.close()
        await shared.close()  # type: ignore[attr-defined]

"""The edge balances over every address its origin target resolves to (a headless Service: one per pod),
and follows the name as pods come and go. Lightweight fake frontends on 127.0.0.1; an injected resolver
stands in for DNS."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from server.edge.origin import OriginPool, RetryBudget
from server.edge.resolve import resolve_target
from server.edge.server import EdgeServer, build_edge
from server.gen.recd.v1 import common_pb2, recommender_pb2, recommender_pb2_grpc
from server.tests.edge.fakes import edge_config

TARGET = "recd-frontend.recd.test:50051"
RECOMMEND = "/recd.v1.Recommender/Recommend"


class FakeFrontend:
    """Answers Recommend with its own name and TTL 0 (nothing is cached: every call reaches an origin);
    `gate`, when set, holds answers until it opens."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0
        self.peers: set[str] = set()  # client ip:port: one per connection
        self.gate: asyncio.Event | None = None
        self.server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(self._recommend)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("recd.v1.Recommender", {"Recommend": handler}),)
        )
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"

    async def _recommend(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.calls += 1
        self.peers.add(context.peer())
        if self.gate is not None:
            await self.gate.wait()
        user = recommender_pb2.RecommendRequest.FromString(raw).user_id
        return recommender_pb2.RecommendResponse(
            items=[common_pb2.ScoredItem(item_id=f"{self.name}:{user}", score=1.0)],
            cache_ttl_seconds=0,
            model_version="m1",
        ).SerializeToString()


class FakeDns:
    """A resolver over a table the test edits; `down` makes every lookup fail."""

    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.down = False
        self.lookups = 0

    async def __call__(self, target: str) -> list[str]:
        self.lookups += 1
        if self.down:
            raise OSError("name resolution is down")
        return list(self.records.get(target, []))


@pytest.fixture
async def frontends() -> AsyncIterator[list[FakeFrontend]]:
    fakes = [FakeFrontend(name) for name in ("a", "b", "c")]
    for fake in fakes:
        await fake.server.start()
    try:
        yield fakes
    finally:
        for fake in fakes:
            await fake.server.stop(None)


def request(user: str) -> bytes:
    return recommender_pb2.RecommendRequest(user_id=user, k=10).SerializeToString()


async def wait_until(condition: object, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_the_edge_spreads_requests_over_every_resolved_frontend(frontends: list[FakeFrontend]) -> None:
    dns = FakeDns()
    dns.records[TARGET] = [f.address for f in frontends]
    config = edge_config(origins=[TARGET], balancing="round_robin", watch_deletes=False)
    edge = build_edge(config, resolver=dns)
    await edge.start()
    try:
        async with grpc.aio.insecure_channel(edge.address) as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            # One caller, one HTTP/2 connection to the edge: still every frontend gets its share.
            for i in range(30):
                await stub.Recommend(recommender_pb2.RecommendRequest(user_id=f"u{i}", k=10), timeout=5)
        assert [f.calls for f in frontends] == [10, 10, 10]
    finally:
        await edge.stop()


async def test_calls_to_one_address_take_turns_over_several_connections(
    frontends: list[FakeFrontend],
) -> None:
    """A pod's worker group shares one port: the kernel gives each worker connections, not requests."""
    a = frontends[0]
    pool = OriginPool([a.address], "round_robin", RetryBudget(0.1, 10.0), connections_per_origin=3)
    await pool.start()
    try:
        for i in range(9):
            await pool.call(RECOMMEND, request(f"u{i}"), 5.0, retryable=False)
        assert a.calls == 9 and len(a.peers) == 3
    finally:
        await pool.close()


async def test_an_address_that_appears_after_start_gets_calls(frontends: list[FakeFrontend]) -> None:
    a, b, c = frontends
    dns = FakeDns()
    dns.records[TARGET] = [a.address, b.address]
    config = edge_config(origins=[TARGET], balancing="round_robin", watch_deletes=False)
    config.resolve_interval_s = 0.05
    edge: EdgeServer = build_edge(config, resolver=dns)
    await edge.start()
    pool = edge.origin
    assert isinstance(pool, OriginPool)
    try:
        assert pool.addresses == [a.address, b.address]
        dns.records[TARGET].append(c.address)  # a pod became ready
        await wait_until(lambda: c.address in pool.addresses)
        for i in range(9):
            await edge.cache.recommend(request(f"u{i}"))
        assert c.calls == 3 and a.calls + b.calls == 6
    finally:
        await edge.stop()


async def test_a_vanished_address_gets_no_new_calls_and_is_closed_after_its_calls_drain(
    frontends: list[FakeFrontend],
) -> None:
    a, b, _ = frontends
    dns = FakeDns()
    dns.records[TARGET] = [a.address, b.address]
    pool = OriginPool([TARGET], "round_robin", RetryBudget(0.1, 10.0), resolver=dns, drain_s=10.0)
    await pool.start()
    try:
        a.gate = asyncio.Event()
        in_flight = asyncio.ensure_future(pool.call(RECOMMEND, request("slow"), 10.0, retryable=False))
        await wait_until(lambda: a.calls == 1)
        dns.records[TARGET] = [b.address]  # the pod is terminating
        assert await pool.refresh()
        assert pool.addresses == [b.address]
        for i in range(4):
            await pool.call(RECOMMEND, request(f"u{i}"), 5.0, retryable=False)
        assert (a.calls, b.calls) == (1, 4)
        # The call it had in flight finishes on the draining channel, which then closes.
        assert not in_flight.done() and len(pool._draining) == 1
        a.gate.set()
        answer = recommender_pb2.RecommendResponse.FromString(await in_flight)
        assert answer.items[0].item_id == "a:slow"
        await wait_until(lambda: not pool._draining)
    finally:
        await pool.close()


async def test_failed_or_empty_resolution_keeps_the_addresses_it_had(frontends: list[FakeFrontend]) -> None:
    a, b, _ = frontends
    dns = FakeDns()
    dns.records[TARGET] = [a.address, b.address]
    pool = OriginPool([TARGET], "round_robin", RetryBudget(0.1, 10.0), resolver=dns)
    await pool.start()
    try:
        dns.down = True
        assert not await pool.refresh()
        dns.down, dns.records[TARGET] = False, []
        assert not await pool.refresh()
        assert pool.addresses == [a.address, b.address]
    finally:
        await pool.close()


async def test_unavailable_triggers_an_early_re_resolution(frontends: list[FakeFrontend]) -> None:
    a, _, _ = frontends
    dns = FakeDns()
    await a.server.stop(None)  # a pod gone, still listed
    dns.records[TARGET] = [a.address]
    pool = OriginPool([TARGET], "round_robin", RetryBudget(0.1, 10.0), resolver=dns, resolve_interval_s=3600)
    await pool.start()
    try:
        lookups = dns.lookups
        with pytest.raises(Exception, match="UNAVAILABLE"):
            await pool.call(RECOMMEND, request("u"), 5.0, retryable=False)
        await wait_until(lambda: dns.lookups > lookups)
    finally:
        await pool.close()


async def test_targets_are_used_as_written_until_the_first_resolution() -> None:
    dns = FakeDns()
    pool = OriginPool([TARGET, "127.0.0.1:9"], "round_robin", RetryBudget(0.1, 10.0), resolver=dns)
    assert pool.addresses == [TARGET, "127.0.0.1:9"]
    await pool.close()


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        pytest.param("127.0.0.1:50051", ["127.0.0.1:50051"], id="ipv4 as is"),
        pytest.param("[::1]:50051", ["[::1]:50051"], id="ipv6 as is"),
        pytest.param("localhost:50051", "127.0.0.1:50051", id="a name: every address, ipv4 first"),
    ],
)
async def test_the_default_resolver(target: str, expected: list[str] | str) -> None:
    found = await resolve_target(target)
    if isinstance(expected, str):
        assert found[0] == expected
    else:
        assert found == expected

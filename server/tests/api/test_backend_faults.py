"""Backend faults during bounded Recommend traffic, on the real backends of deploy/scripts/stack.sh.

Each test kills one real server process (`stack.sh stop`, a SIGKILL: clients see resets and refused
connections, as when a server dies), keeps traffic going, restarts it on the same port (`stack.sh start`)
and checks that:
- no Recommend fails while the server is gone or coming back;
- the answers say what they lost (`coverage.degraded`) while it is gone;
- full answers come back by themselves, without restarting recd.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from server import metrics
from server.client import RecdClient
from server.config import Config
from server.domain import Edge, Interaction
from server.tests.api.test_end_to_end import cluster_items, load_toy
from server.tests.backends.real_backends import (
    drop_neo4j,
    drop_redis,
    drop_scylla,
    neo4j_config,
    redis_config,
    scylla_keyspace,
)
from server.tests.conftest import ToyCatalogue, make_config

pytestmark = [pytest.mark.real, pytest.mark.slow]

STACK = Path(__file__).resolve().parents[3] / "deploy" / "scripts" / "stack.sh"
USERS = [f"fan{k}" for k in range(12)]
# A server that does not answer its query this long after `stack.sh start` fails the test.
RECOVERY_S = 60.0


def stack(command: str, server: str) -> None:
    env = dict(os.environ, RECD_PYTHON=sys.executable)
    done = subprocess.run([str(STACK), command, server], env=env, capture_output=True, text=True, timeout=240)
    if done.returncode != 0 and command == "start":
        # A JVM occasionally dies while the killed one's files are released: one more try.
        done = subprocess.run(
            [str(STACK), command, server], env=env, capture_output=True, text=True, timeout=240
        )
    assert done.returncode == 0, f"stack.sh {command} {server} failed:\n{done.stderr[-3000:]}"


def require_stack_server(server: str) -> None:
    status = subprocess.run([str(STACK), "status", server], capture_output=True, text=True, timeout=30)
    if "running" not in status.stdout:
        pytest.skip(f"{server} is not a stack.sh server here (status: {status.stdout.strip()})")


@pytest.fixture
async def real_config() -> AsyncIterator[Config]:
    config = make_config()
    # Reads and graph queries get room on a slow test machine, yet far less than the steps' budgets,
    # so a dead backend shows up as a failed step rather than a late answer.
    config.profiles = await scylla_keyspace(request_timeout_ms=1000.0, reconnect_max_s=1.0)
    config.graph = neo4j_config(query_timeout_ms=1000.0)
    # Cached neighbour lists would hide a Neo4j outage (that is their point): these tests watch the
    # graph itself fail and recover. test_cached_graph.py covers the cache.
    config.graph.neighbour_cache_ttl_s = 0.0
    config.cache = redis_config(timeout_ms=100.0, breaker_open_s=0.5)
    try:
        yield config
    finally:
        await drop_scylla(config.profiles)
        await drop_neo4j(config.graph)
        await drop_redis(config.cache)


@pytest.fixture
async def client(real_config: Config, toy: ToyCatalogue) -> AsyncIterator[RecdClient]:
    from server.api.server import RecdServer
    from server.wiring import build_recd

    recd = build_recd(real_config)
    server = RecdServer(recd, real_config)
    await server.start()
    c = RecdClient(server.address, timeout_s=20.0)
    try:
        await load_toy(c, toy)
        # Each fan follows one cluster; the cluster's first items are chained by SIMILAR_TO edges, so
        # their recommendations draw on all three candidate sources.
        for k, user in enumerate(USERS):
            items = cluster_items(toy, k % 10, 6)
            await c.record_interactions([Interaction(user, item, "view", 1.0, 0) for item in items])
        edges = []
        for cluster in range(10):
            items = cluster_items(toy, cluster, 30)
            edges += [Edge(a, b, 0.8) for a, b in itertools.pairwise(items)]
        await c.upsert_edges(edges)
        yield c
    finally:
        await c.close()
        await server.stop()


class Traffic:
    """Concurrent Recommend calls until stopped; remembers every answer and every failure.

    `users` cycles through the given ids; None gives every request a new user, whose state no cache
    holds, so that each request asks the profile store.
    """

    def __init__(self, client: RecdClient, users: list[str] | None, workers: int = 4) -> None:
        self.client = client
        self.users = users
        self.answers: list[tuple[float, Any]] = []
        self.failures: list[BaseException] = []
        self._stop = asyncio.Event()
        self._ids = itertools.count()
        self._tasks = [asyncio.ensure_future(self._work()) for _ in range(workers)]

    async def _work(self) -> None:
        while not self._stop.is_set():
            n = next(self._ids)
            user = f"stranger{n}" if self.users is None else self.users[n % len(self.users)]
            try:
                response = await self.client.recommend(user, k=10, timeout_s=10.0)
                self.answers.append((time.monotonic(), response))
            except Exception as exc:
                self.failures.append(exc)
            await asyncio.sleep(0.01)

    def since(self, since: float) -> list[Any]:
        return [response for t, response in self.answers if t >= since]

    def degraded_since(self, since: float) -> list[set[str]]:
        return [set(r.coverage.degraded_reasons) for r in self.since(since)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


@asynccontextmanager
async def killed(server: str) -> AsyncIterator[None]:
    """The server killed for the block; restarted afterwards, also when the block fails."""
    await asyncio.to_thread(stack, "stop", server)
    try:
        yield
    finally:
        await asyncio.to_thread(stack, "start", server)


async def wait_until(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + RECOVERY_S
    while not await predicate():
        assert time.monotonic() < deadline, f"{what} within {RECOVERY_S}s"
        await asyncio.sleep(0.2)


async def full_answer(client: RecdClient, user: str) -> bool:
    response = await client.recommend(user, k=10)
    if response.coverage.degraded_reasons or len(response.items) != 10:
        print(f"{user}: degraded {list(response.coverage.degraded_reasons)}, {len(response.items)} items")
        return False
    return True


# How long traffic runs against a dead server before the answers are checked.
OUTAGE_S = 1.5


async def test_redis_stops_and_returns_without_a_failed_request(client: RecdClient) -> None:
    require_stack_server("redis")
    # A server restarted by an earlier test may still be warming up (cold JIT): wait for it.
    await wait_until(lambda: full_answer(client, USERS[0]), "no full answer before the fault")
    errors = metrics.CACHE_REQUESTS.labels("redis", "error")
    traffic = Traffic(client, USERS)
    try:
        await asyncio.sleep(0.5)
        before = errors._value.get()
        async with killed("redis"):
            gone = time.monotonic()
            await asyncio.sleep(OUTAGE_S)
            # Redis calls failed (and were counted) and nothing degraded: the profile store stood in.
            assert errors._value.get() > before
            during = traffic.degraded_since(gone)
            assert during and not any(during), during[:5]
        hits = metrics.CACHE_REQUESTS.labels("redis", "hit")

        async def cache_used_again() -> bool:
            before = hits._value.get()
            await client.recommend(USERS[2], k=10)
            return hits._value.get() > before

        await wait_until(cache_used_again, "recd did not use the restarted Redis again")
    finally:
        await traffic.stop()
    assert traffic.failures == []


async def test_neo4j_stops_and_returns_without_a_failed_request(client: RecdClient) -> None:
    require_stack_server("neo4j")
    # A server restarted by an earlier test may still be warming up (cold JIT): wait for it.
    await wait_until(lambda: full_answer(client, USERS[0]), "no full answer before the fault")
    traffic = Traffic(client, USERS)
    try:
        await asyncio.sleep(0.5)
        async with killed("neo4j"):
            gone = time.monotonic()
            await asyncio.sleep(OUTAGE_S)
            # Requests already past the graph step when the kill landed may still be complete.
            during = traffic.degraded_since(gone + 0.2)
            assert during and all(reasons == {"graph"} for reasons in during), during[:5]
        await wait_until(lambda: full_answer(client, USERS[1]), "no full answer after Neo4j came back")
    finally:
        await traffic.stop()
    assert traffic.failures == []


async def test_cassandra_stops_and_returns_without_a_failed_request(client: RecdClient) -> None:
    require_stack_server("cassandra")
    # A server restarted by an earlier test may still be warming up (cold JIT): wait for it.
    await wait_until(lambda: full_answer(client, USERS[0]), "no full answer before the fault")
    traffic = Traffic(client, None)
    try:
        await asyncio.sleep(0.5)
        async with killed("cassandra"):
            gone = time.monotonic()
            await asyncio.sleep(OUTAGE_S)
            # Cold-start answers (popular items) that say the user could not be looked up.
            during = traffic.since(gone + 0.2)
            assert during and all("profile" in r.coverage.degraded_reasons for r in during)
            assert all(len(r.items) == 10 for r in during)

        async def profiles_back() -> bool:
            try:
                await client.record_interactions(
                    [Interaction("returning", item, "view", 1.0, 0) for item in ("i00001", "i00002")]
                )
            except Exception:
                return False
            return True

        await wait_until(profiles_back, "RecordInteractions did not succeed after Cassandra came back")
        await wait_until(lambda: full_answer(client, "returning"), "no full answer after Cassandra came back")
    finally:
        await traffic.stop()
    assert traffic.failures == []

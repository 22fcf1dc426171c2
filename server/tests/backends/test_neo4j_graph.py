"""Neo4jItemGraph beyond the ItemGraph contract, against the Neo4j of deploy/scripts/stack.sh.

Batching of concurrent neighbour queries, the constraint and index use, bounded traversals, UNWIND
write batches, timeouts, and recovery when Neo4j goes away and comes back.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from server.backends.neo4j_graph import Neo4jItemGraph
from server.config import GraphConfig, MicroBatchConfig
from server.domain import Edge
from server.errors import BackendError
from server.tests.backends.real_backends import neo4j_config, neo4j_graph
from server.tests.backends.tcp_proxy import TcpProxy

pytestmark = pytest.mark.real
T = 5.0


class QueryCounter:
    """Counts the batches (round trips) of neighbour queries and the requests in each."""

    def __init__(self, graph: Neo4jItemGraph) -> None:
        self.batch_sizes: list[int] = []
        original = graph._query_batch

        async def counted(queries: list[Any]) -> list[dict[str, float]]:
            self.batch_sizes.append(len(queries))
            return await original(queries)

        graph._batcher._process = counted


@pytest.fixture
async def graph() -> AsyncIterator[Any]:
    # A wide batching window, so that every request of one gather() joins the same batch.
    instance = await neo4j_graph(neighbour_batch=MicroBatchConfig(max_batch=64, max_wait_ms=20.0))
    try:
        yield instance
    finally:
        await instance.close()


def star(center: str, n: int, prefix: str) -> list[Edge]:
    return [Edge(center, f"{prefix}{k}", round(0.01 + k / (n + 1), 4)) for k in range(n)]


async def test_concurrent_queries_are_merged_into_one_round_trip(graph: Any) -> None:
    edges = []
    for s in range(10):
        edges += star(f"s{s}", 5, f"s{s}-n")
        edges += [Edge(f"s{s}-n4", f"s{(s + 1) % 10}-n0", 0.5)]
    await graph.upsert_edges(edges)
    seeds = [[f"s{s}"] for s in range(10)] + [["s0", "s1"], ["missing"], ["s3"]]
    # Each caller's answer, one at a time (each its own batch of one)...
    alone = [await graph.neighbours(seed, 2, 3, 0.0, T) for seed in seeds]
    counter = QueryCounter(graph)
    # ...equals its share of one merged query.
    together = await asyncio.gather(*(graph.neighbours(seed, 2, 3, 0.0, T) for seed in seeds))
    assert counter.batch_sizes == [len(seeds)]
    assert together == alone
    assert together[11] == {} and together[12] == together[3]


async def test_different_parameters_in_one_batch_stay_apart(graph: Any) -> None:
    await graph.upsert_edges([*star("a", 30, "n"), Edge("n29", "far", 0.9)])
    counter = QueryCounter(graph)
    one_hop, two_hops, strict = await asyncio.gather(
        graph.neighbours(["a"], 1, 5, 0.0, T),
        graph.neighbours(["a"], 2, 5, 0.0, T),
        graph.neighbours(["a"], 1, 50, 0.9, T),
    )
    assert counter.batch_sizes == [3]
    assert sorted(one_hop) == ["n25", "n26", "n27", "n28", "n29"]
    assert sorted(two_hops) == sorted([*one_hop, "far"])
    assert two_hops["far"] == pytest.approx(0.9 * one_hop["n29"])
    assert sorted(strict) == ["n28", "n29"]  # the only edges scored 0.9 or more


async def test_high_degree_items_are_bounded_per_hop(graph: Any) -> None:
    edges = star("hub", 300, "a")
    for k in range(300):
        edges += star(f"a{k}", 5, f"a{k}-b") if k >= 290 else []
    await graph.upsert_edges(edges)
    result = await graph.neighbours(["hub"], 2, 10, 0.0, T)
    assert len(result) == 10 + 10 * 5
    assert min(result[f"a{k}"] for k in range(290, 300)) > max(
        (v for k, v in result.items() if k.startswith("a") and "-" not in k and int(k[1:]) < 290), default=0
    )


async def test_hops_beyond_two_are_refused_and_empty_queries_cost_nothing(graph: Any) -> None:
    counter = QueryCounter(graph)
    with pytest.raises(ValueError, match="hops"):
        await graph.neighbours(["a"], 3, 10, 0.0, T)
    assert await graph.neighbours([], 2, 10, 0.0, T) == {}
    assert await graph.neighbours(["a"], 0, 10, 0.0, T) == {}
    assert await graph.neighbours(["a"], 2, 0, 0.0, T) == {}
    assert counter.batch_sizes == []


async def test_the_constraint_exists_and_lookups_use_its_index(graph: Any) -> None:
    label = graph.config.item_label
    driver = graph._driver
    async with driver.session() as session:
        rows = await (await session.run("SHOW CONSTRAINTS YIELD type, labelsOrTypes, properties")).values()
        assert ["UNIQUENESS", [label], ["id"]] in rows
        plan = await (await session.run("EXPLAIN " + graph._neighbours_cypher, requests=[])).consume()
    operators = str(plan.plan)
    assert "NodeUniqueIndexSeek" in operators


async def test_edges_are_written_in_unwind_batches_of_the_configured_size() -> None:
    graph = await neo4j_graph(write_batch=100)
    try:
        from server import metrics

        ok = metrics.BACKEND_CALLS.labels("neo4j", "upsert_edges", "ok")
        before = ok._value.get()
        await graph.upsert_edges([Edge(f"x{k}", f"y{k % 7}", 0.5) for k in range(250)])
        assert ok._value.get() - before == 3  # 100 + 100 + 50, one transaction each
        assert await graph.count_edges() == 250
        await graph.upsert_edges([Edge("x1", "y1", 0.1), Edge("x1", "y1", 0.7)])  # the later one wins
        assert await graph.neighbours(["x1"], 1, 10, 0.0, T) == pytest.approx({"y1": 0.7})
    finally:
        await graph.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_unreachable_neo4j_is_a_backend_error_within_the_timeout() -> None:
    graph = Neo4jItemGraph(GraphConfig(backend="neo4j", uri=f"bolt://127.0.0.1:{closed_port()}"))
    try:
        started = time.monotonic()
        with pytest.raises(BackendError):
            await graph.neighbours(["a"], 2, 10, 0.0, 0.3)
        assert time.monotonic() - started < 0.5
        with pytest.raises(BackendError, match="budget"):
            await graph.neighbours(["a"], 2, 10, 0.0, 0.0)
    finally:
        await graph.close()


async def test_a_hung_neo4j_costs_the_budget_and_a_returning_one_is_used_again() -> None:
    uri = neo4j_config().uri
    host, port = uri.removeprefix("bolt://").split(":")
    proxy = await TcpProxy(host, int(port)).start()
    graph = await neo4j_graph(uri=f"bolt://{proxy.address}", query_timeout_ms=5000.0)
    try:
        await graph.upsert_edges([Edge("a", "b", 0.9)])
        assert await graph.neighbours(["a"], 1, 10, 0.0, T) == pytest.approx({"b": 0.9})

        proxy.blackhole()
        started = time.monotonic()
        with pytest.raises(BackendError):
            await graph.neighbours(["a"], 1, 10, 0.0, 0.2)
        assert 0.15 < time.monotonic() - started < 0.5

        await proxy.down()
        started = time.monotonic()
        for _ in range(3):
            with pytest.raises(BackendError):
                await graph.neighbours(["a"], 1, 10, 0.0, 0.2)
        assert time.monotonic() - started < 1.0

        await proxy.up()
        deadline = time.monotonic() + 10.0
        while True:
            try:
                assert await graph.neighbours(["a"], 1, 10, 0.0, 1.0) == pytest.approx({"b": 0.9})
                break
            except BackendError:
                assert time.monotonic() < deadline, "the driver did not reconnect"
                await asyncio.sleep(0.1)
    finally:
        await graph.close()
        await proxy.close()


async def test_the_neighbour_query_is_planned_at_start_so_a_tight_budget_works() -> None:
    # A fresh label makes a query text Neo4j has never planned; planning it takes hundreds of ms, far
    # more than the budget below, and a query cut short while being planned would never get faster.
    graph = await neo4j_graph(query_timeout_ms=10_000.0)
    try:
        await graph.upsert_edges([Edge("a", "b", 0.9), Edge("b", "c", 0.5)])
        for _ in range(3):
            assert await graph.neighbours(["a"], 2, 10, 0.0, 0.1) == pytest.approx({"b": 0.9, "c": 0.45})
    finally:
        await graph.close()

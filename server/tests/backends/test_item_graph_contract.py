"""The ItemGraph contract: every implementation must pass these, using only the Protocol's methods.

To cover another implementation, add one line to FACTORIES: an async factory that takes a fresh
temporary directory and returns an empty graph (a real backend would mark itself `pytest.mark.real`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from server.backends.base import ItemGraph
from server.backends.memory_graph import InMemoryItemGraph
from server.domain import Edge
from server.tests.backends.real_backends import neo4j_graph
from server.tests.workers.state_stores import graph_on_state_node

GraphFactory = Callable[[Path], Awaitable[ItemGraph]]


async def memory_graph(tmp_path: Path) -> ItemGraph:
    return InMemoryItemGraph(None)


async def durable_memory_graph(tmp_path: Path) -> ItemGraph:
    return InMemoryItemGraph(tmp_path / "graph", group_commit_window_s=0.0)


async def state_node_graph(tmp_path: Path) -> ItemGraph:
    # What a worker of `recd serve --workers N` uses: the durable graph, behind a state node.
    return await graph_on_state_node(tmp_path / "graph")


FACTORIES = [
    pytest.param(memory_graph, id="memory"),
    pytest.param(durable_memory_graph, id="memory-durable"),
    pytest.param(state_node_graph, id="state-node"),
    pytest.param(neo4j_graph, id="neo4j", marks=pytest.mark.real),
]

T = 1.0  # timeout_s for reads


@pytest.fixture(params=FACTORIES)
async def graph(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ItemGraph]:
    factory: GraphFactory = request.param
    instance = await factory(tmp_path)
    try:
        yield instance
    finally:
        await instance.close()


def approx(scores: dict[str, float]) -> object:
    return pytest.approx(scores, rel=1e-6)


async def test_empty_graph_has_no_neighbours(graph: ItemGraph) -> None:
    assert await graph.neighbours(["a"], hops=2, limit_per_hop=10, min_score=0.0, timeout_s=T) == {}
    assert await graph.count_edges() == 0


async def test_one_hop_returns_edge_scores(graph: ItemGraph) -> None:
    await graph.upsert_edges([Edge("a", "b", 0.9), Edge("a", "c", 0.5), Edge("x", "y", 0.7)])
    assert await graph.neighbours(["a"], 1, 10, 0.0, T) == approx({"b": 0.9, "c": 0.5})


async def test_edges_are_directed(graph: ItemGraph) -> None:
    await graph.upsert_edges([Edge("a", "b", 0.9)])
    assert await graph.neighbours(["b"], 2, 10, 0.0, T) == {}


async def test_upsert_replaces_the_score(graph: ItemGraph) -> None:
    await graph.upsert_edges([Edge("a", "b", 0.9), Edge("a", "c", 0.5)])
    await graph.upsert_edges([Edge("a", "b", 0.2)])
    assert await graph.neighbours(["a"], 1, 10, 0.0, T) == approx({"b": 0.2, "c": 0.5})
    assert await graph.count_edges() == 2


async def test_two_hops_multiply_scores_and_keep_the_best_path(graph: ItemGraph) -> None:
    await graph.upsert_edges(
        [
            Edge("a", "b", 0.9),
            Edge("a", "c", 0.5),
            Edge("b", "d", 0.8),  # a-b-d: 0.72
            Edge("c", "d", 0.6),  # a-c-d: 0.30
            Edge("c", "e", 0.4),  # a-c-e: 0.20
            Edge("d", "f", 0.9),  # three hops away
        ]
    )
    result = await graph.neighbours(["a"], 2, 10, 0.0, T)
    assert result == approx({"b": 0.9, "c": 0.5, "d": 0.72, "e": 0.2})


async def test_one_hop_does_not_go_further(graph: ItemGraph) -> None:
    await graph.upsert_edges([Edge("a", "b", 0.9), Edge("b", "c", 0.9)])
    assert await graph.neighbours(["a"], 1, 10, 0.0, T) == approx({"b": 0.9})


async def test_direct_edge_beats_a_weaker_two_hop_path(graph: ItemGraph) -> None:
    await graph.upsert_edges([Edge("a", "b", 0.5), Edge("b", "c", 0.5), Edge("a", "c", 0.4)])
    assert await graph.neighbours(["a"], 2, 10, 0.0, T) == approx({"b": 0.5, "c": 0.4})


async def test_seeds_are_not_returned(graph: ItemGraph) -> None:
    await graph.upsert_edges([Edge("a", "b", 0.9), Edge("b", "a", 0.9), Edge("b", "c", 0.5)])
    assert await graph.neighbours(["a", "b"], 2, 10, 0.0, T) == approx({"c": 0.5})


async def test_several_seeds_keep_the_best_score(graph: ItemGraph) -> None:
    await graph.upsert_edges([Edge("a", "x", 0.3), Edge("b", "x", 0.8), Edge("b", "y", 0.1)])
    assert await graph.neighbours(["a", "b"], 1, 10, 0.0, T) == approx({"x": 0.8, "y": 0.1})


async def test_limit_per_hop_keeps_the_best_edges_of_each_source(graph: ItemGraph) -> None:
    await graph.upsert_edges([Edge("a", f"n{k}", k / 10) for k in range(1, 8)])
    await graph.upsert_edges([Edge("n7", "m1", 0.9), Edge("n7", "m2", 0.8), Edge("n7", "m3", 0.7)])
    await graph.upsert_edges([Edge("n1", "far", 1.0)])  # n1 is not among a's best two
    result = await graph.neighbours(["a"], 2, 2, 0.0, T)
    assert result == approx({"n7": 0.7, "n6": 0.6, "m1": 0.63, "m2": 0.56})


async def test_min_score_drops_weak_edges(graph: ItemGraph) -> None:
    await graph.upsert_edges([Edge("a", "b", 0.9), Edge("a", "c", 0.1), Edge("b", "d", 0.3)])
    assert await graph.neighbours(["a"], 2, 10, 0.2, T) == approx({"b": 0.9, "d": 0.27})


async def test_unknown_seeds_are_ignored(graph: ItemGraph) -> None:
    await graph.upsert_edges([Edge("a", "b", 0.9)])
    assert await graph.neighbours(["zzz", "a"], 2, 10, 0.0, T) == approx({"b": 0.9})


async def test_count_edges_counts_distinct_pairs(graph: ItemGraph) -> None:
    await graph.upsert_edges([Edge("a", "b", 0.9), Edge("b", "a", 0.9), Edge("a", "c", 0.1)])
    await graph.upsert_edges([Edge("a", "b", 0.5), Edge("c", "a", 0.5)])
    assert await graph.count_edges() == 4


@pytest.mark.parametrize(
    "seed_lists",
    [[], [["a"]], [["a"], ["b"], ["zzz"], []], [["a", "b"], ["a"], ["a", "b"]]],
    ids=["none", "one", "mixed", "repeated"],
)
async def test_neighbours_many_answers_each_list_like_neighbours(
    graph: ItemGraph, seed_lists: list[list[str]]
) -> None:
    await graph.upsert_edges([Edge("a", "b", 0.9), Edge("b", "c", 0.5), Edge("b", "d", 0.4)])
    many = await graph.neighbours_many(seed_lists, 2, 10, 0.0, T)
    assert len(many) == len(seed_lists)
    for seeds, answer in zip(seed_lists, many, strict=True):
        assert answer == approx(await graph.neighbours(seeds, 2, 10, 0.0, T))

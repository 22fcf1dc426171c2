"""Per-item neighbour lists cached in front of a graph: same answers, fewer graph queries."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from server.backends.cached_graph import CachedNeighbours
from server.backends.memory_cache import InMemoryCache
from server.backends.memory_graph import InMemoryItemGraph
from server.domain import Edge

EDGES = [
    Edge("a", "b", 0.9), Edge("b", "c", 0.5), Edge("a", "d", 0.4), Edge("x", "c", 0.8),
    Edge("x", "y", 0.7), Edge("c", "z", 0.9), Edge("d", "a", 0.6),
]  # fmt: skip


class CountingGraph(InMemoryItemGraph):
    def __init__(self) -> None:
        super().__init__(None)
        self.queries: list[list[str]] = []

    async def neighbours(self, item_ids: Sequence[str], *args: object) -> dict[str, float]:  # type: ignore[override]
        self.queries.append(list(item_ids))
        return await super().neighbours(item_ids, *args)  # type: ignore[arg-type]


@pytest.fixture
async def graphs() -> tuple[InMemoryItemGraph, CountingGraph, CachedNeighbours]:
    plain, inner = InMemoryItemGraph(None), CountingGraph()
    await plain.upsert_edges(EDGES)
    cached = CachedNeighbours(inner, InMemoryCache(1 << 20), 60.0, 2, 10, 0.0)
    await cached.upsert_edges(EDGES)
    return plain, inner, cached


@pytest.mark.parametrize("seeds", [["a"], ["a", "x"], ["x", "c"], ["a", "b", "c", "d"], ["nobody"]])
async def test_same_answer_as_one_multi_seed_traversal(graphs, seeds: list[str]) -> None:  # type: ignore[no-untyped-def]
    plain, _, cached = graphs
    expected = await plain.neighbours(seeds, 2, 10, 0.0, 1.0)
    assert await cached.neighbours(seeds, 2, 10, 0.0, 1.0) == pytest.approx(expected)


async def test_cached_seeds_are_not_queried_again(graphs) -> None:  # type: ignore[no-untyped-def]
    _, inner, cached = graphs
    await cached.neighbours(["a", "x"], 2, 10, 0.0, 1.0)
    await cached.neighbours(["x", "c"], 2, 10, 0.0, 1.0)
    assert inner.queries == [["a"], ["x"], ["c"]]


async def test_concurrent_misses_of_one_seed_make_one_query(graphs) -> None:  # type: ignore[no-untyped-def]
    _, inner, cached = graphs
    await asyncio.gather(*(cached.neighbours(["a"], 2, 10, 0.0, 1.0) for _ in range(50)))
    assert inner.queries == [["a"]]


async def test_a_new_edge_invalidates_its_source(graphs) -> None:  # type: ignore[no-untyped-def]
    _, _, cached = graphs
    assert "q" not in await cached.neighbours(["a"], 2, 10, 0.0, 1.0)
    await cached.upsert_edges([Edge("a", "q", 0.95)])
    assert (await cached.neighbours(["a"], 2, 10, 0.0, 1.0))["q"] == pytest.approx(0.95)


class DownGraph(InMemoryItemGraph):
    async def neighbours(self, *args: object) -> dict[str, float]:  # type: ignore[override]
        from server.errors import BackendError

        raise BackendError("graph", "connection refused")


async def test_cached_lists_answer_while_the_graph_is_down() -> None:
    cache = InMemoryCache(1 << 20)
    up = CachedNeighbours(CountingGraph(), cache, 60.0, 2, 10, 0.0)
    await up.upsert_edges(EDGES)
    warm = await up.neighbours(["a"], 2, 10, 0.0, 1.0)
    down = CachedNeighbours(DownGraph(None), cache, 60.0, 2, 10, 0.0)
    assert await down.neighbours(["a"], 2, 10, 0.0, 1.0) == warm
    from server.errors import BackendError

    with pytest.raises(BackendError):
        await down.neighbours(["x"], 2, 10, 0.0, 1.0)  # not cached: the outage shows

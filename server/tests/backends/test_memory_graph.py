"""What only the embedded item graph promises: durability through its log and snapshots."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from server.backends import memory_graph
from server.backends.journal import WAL_DIR
from server.backends.memory_graph import SNAPSHOT_FILE, InMemoryItemGraph
from server.domain import Edge
from server.errors import BackendError

T = 1.0


async def wait_for_snapshot(path: Path) -> None:
    for _ in range(500):
        if path.exists():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no background snapshot at {path}")


def open_graph(path: Path, **kwargs: object) -> InMemoryItemGraph:
    return InMemoryItemGraph(path, group_commit_window_s=0.0, **kwargs)  # type: ignore[arg-type]


def batch(k: int) -> list[Edge]:
    return [Edge(f"s{k % 7}", f"d{k}-{j}", 1.0 / (1 + k + j)) for j in range(3)]


async def state(graph: InMemoryItemGraph) -> tuple[int, list[dict[str, float]]]:
    sources = [f"s{s}" for s in range(7)]
    reach = [await graph.neighbours([s], 1, 1000, 0.0, T) for s in sources]
    return await graph.count_edges(), reach


async def fill(graph: InMemoryItemGraph, n: int) -> None:
    for k in range(n):
        await graph.upsert_edges(batch(k))
    await graph.upsert_edges([Edge("s0", "d0-0", 0.99)])  # a replaced score


async def test_everything_acknowledged_survives_a_crash(tmp_path: Path) -> None:
    graph = open_graph(tmp_path)
    await fill(graph, 20)
    before = await state(graph)
    reopened = open_graph(tmp_path)  # no close(): a crash
    assert await state(reopened) == before
    assert before[0] == 60
    await reopened.close()


async def test_close_writes_a_snapshot_and_reopening_uses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory_graph, "SNAPSHOT_BATCH_SOURCES", 2)  # several record batches
    graph = open_graph(tmp_path)
    await fill(graph, 20)
    before = await state(graph)
    await graph.close()
    assert (tmp_path / SNAPSHOT_FILE).exists()
    reopened = open_graph(tmp_path)
    assert await state(reopened) == before
    await reopened.close()


async def test_background_compaction_bounds_the_log_and_keeps_everything(tmp_path: Path) -> None:
    graph = open_graph(tmp_path, compact_after_records=5)
    await fill(graph, 40)
    await wait_for_snapshot(tmp_path / SNAPSHOT_FILE)
    await graph.compact()
    await graph.upsert_edges([Edge("s1", "after-snapshot", 0.5)])
    before = await state(graph)
    assert len(list((tmp_path / WAL_DIR).iterdir())) <= 2
    reopened = open_graph(tmp_path)
    assert await state(reopened) == before
    await reopened.close()


async def test_concurrent_upserts_of_one_edge_replay_to_the_same_score(tmp_path: Path) -> None:
    graph = open_graph(tmp_path)
    await asyncio.gather(*(graph.upsert_edges([Edge("a", "b", k / 100)]) for k in range(50)))
    before = await graph.neighbours(["a"], 1, 10, 0.0, T)
    reopened = open_graph(tmp_path)
    assert await reopened.neighbours(["a"], 1, 10, 0.0, T) == before
    await reopened.close()


async def test_writes_after_close_are_refused(tmp_path: Path) -> None:
    graph = open_graph(tmp_path)
    await graph.close()
    with pytest.raises(BackendError):
        await graph.upsert_edges([Edge("a", "b", 1.0)])

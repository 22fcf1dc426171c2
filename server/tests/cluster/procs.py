"""Local clusters of real processes for the failure tests, and a bounded load that records every answer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from server.client import RecdClient
from server.cluster.local import LocalCluster
from server.domain import ItemRecord
from server.gen.recd.v1 import catalog_pb2

DIM = 16
SHARDS = 20


def cluster_config(**extra: Any) -> dict[str, Any]:
    # Generous budgets: timing is not under test here, failures are; 2 shared cores are slow.
    steps = {name: {"budget_ms": 3000.0} for name in ("hydrate_user", "candidates", "ann", "graph", "rank")}
    config: dict[str, Any] = {
        "dim": DIM,
        "ranking": {"ranker": "cpu"},
        "pipeline": {"budget_ms": 5000.0, "steps": steps},
        "shards": {"count": SHARDS, "index": {"initial_capacity": 1024, "ef_search": 64}},
        "cluster": {"probe_interval_ms": 200.0, "probe_timeout_ms": 1000.0, "breaker_open_s": 0.5},
        # Each frontend one process (`recd serve` would start a worker group of one per core).
        "workers": {"count": 0},
    }
    for key, value in extra.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


def start_cluster(root: Path, nodes: int, replication: int, **extra: Any) -> LocalCluster:
    cluster = LocalCluster(root, nodes, replication, cluster_config(**extra))
    try:
        return cluster.up()
    except BaseException:
        cluster.down()
        raise


def unit_vectors(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, DIM))
    v = centres[rng.integers(0, 20, n)] + 0.4 * rng.normal(size=(n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


async def load_items(address: str, ids: list[str], vectors: np.ndarray, batch: int = 500) -> None:
    client = RecdClient(address, timeout_s=60)
    try:
        for start in range(0, len(ids), batch):
            await client.upsert_items(
                [
                    ItemRecord(ids[i], vectors[i], {}, 1.0, 0)
                    for i in range(start, min(start + batch, len(ids)))
                ]
            )
    finally:
        await client.close()


async def get_items(address: str, ids: list[str]) -> set[str]:
    client = RecdClient(address, timeout_s=60)
    try:
        found: set[str] = set()
        for start in range(0, len(ids), 1000):
            reply = await client.catalog.GetItems(
                catalog_pb2.GetItemsRequest(item_ids=ids[start : start + 1000]), timeout=60
            )
            found.update(item.item_id for item in reply.items)
        return found
    finally:
        await client.close()


@dataclass
class Answer:
    started: float  # seconds since the load began
    ok: bool
    shards_ok: int
    shards_total: int
    error: str = ""

    @property
    def partial(self) -> bool:
        return self.ok and self.shards_ok < self.shards_total


async def similar_load(
    address: str,
    item_ids: list[str],
    seconds: float,
    concurrency: int = 6,
    max_requests: int = 20_000,
    events: list[tuple[float, Callable[[], Any]]] = (),  # type: ignore[assignment]
) -> list[Answer]:
    """Closed-loop SimilarItems for `seconds` (and at most max_requests); `events` run at their times
    (blocking calls go to a thread so the load keeps flowing)."""
    client = RecdClient(address, timeout_s=10)
    answers: list[Answer] = []
    began = time.monotonic()
    stop_at = began + seconds

    async def worker(w: int) -> None:
        i = w
        while time.monotonic() < stop_at and len(answers) < max_requests:
            t = time.monotonic() - began
            try:
                reply = await client.similar(item_ids[(i * 7919) % len(item_ids)], 10)
                answers.append(Answer(t, True, reply.coverage.shards_ok, reply.coverage.shards_total))
            except grpc.aio.AioRpcError as exc:
                answers.append(Answer(t, False, 0, 0, f"{exc.code().name}: {exc.details()}"))
            i += concurrency

    async def run_events() -> None:
        for at, action in events:
            await asyncio.sleep(max(0.0, began + at - time.monotonic()))
            await asyncio.to_thread(action)

    try:
        await asyncio.gather(run_events(), *(worker(w) for w in range(concurrency)))
    finally:
        await client.close()
    return answers

"""Write availability: one of four shard nodes (replication 2) killed under a write and read load, and
brought back. Upserts acknowledged and refused while it is down, reads failed, and items held by one
replica of their shard only a few seconds after its return, by write rule: the default (one ack, with
hinted handoff), every replica with hinted handoff, and every replica without it (the rule before).
"""

from __future__ import annotations

import asyncio
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from server.client import RecdClient
from server.cluster.layout import layout_from_config
from server.cluster.local import LocalCluster
from server.config import load_config
from server.domain import ItemRecord
from server.tools.bench.report import table
from shards.client import GrpcShardClient

DIM = 16
NODES = 4
DOWN = 1
RULES = (
    ("1 (default), hinted handoff", {"write_acks": 1}),
    ("0 (every replica), hinted handoff", {"write_acks": 0}),
    ("0 (every replica), no handoff", {"write_acks": 0, "hint_max_items": 0}),
)


def _config(cluster: dict[str, Any]) -> dict[str, Any]:
    steps = {name: {"budget_ms": 3000.0} for name in ("hydrate_user", "candidates", "ann", "graph", "rank")}
    return {
        "dim": DIM,
        "ranking": {"ranker": "cpu"},
        "pipeline": {"budget_ms": 5000.0, "steps": steps},
        "shards": {"index": {"initial_capacity": 4096}},
        "cluster": {"probe_interval_ms": 200.0, "breaker_open_s": 0.5, **cluster},
        "workers": {"count": 0},
    }


def _items(ids: list[str], vectors: np.ndarray, rows: range) -> list[ItemRecord]:
    return [ItemRecord(ids[i], vectors[i], {}, 1.0, 0) for i in rows]


async def _one_replica_only(cluster: LocalCluster) -> int:
    layout = layout_from_config(load_config(cluster.config_path))
    held: dict[str, dict[int, set[str]]] = {}
    for node in layout.current.nodes:
        client = GrpcShardClient(cluster.node_address(int(node.split("-")[1])))
        try:
            held[node] = {}
            for shard in layout.current.shards_of(node):
                held[node][shard] = set()
                async for part in client.scan(shard):
                    held[node][shard].update(part.item_ids)
        finally:
            await client.close()
    lonely = 0
    for shard in range(layout.current.shard_count):
        copies = [held[n][shard] for n in layout.current.replicas[shard]]
        lonely += len(set[str]().union(*copies) - copies[0].intersection(*copies[1:]))
    return lonely


async def _run_rule(cluster_config: dict[str, Any], items: int, seconds: float) -> dict[str, int]:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(items, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"av-{i}" for i in range(items)]
    preload = items // 3
    with tempfile.TemporaryDirectory(prefix="recd-avail-") as root:
        cluster = LocalCluster(Path(root), NODES, 2, _config(cluster_config))
        with cluster:
            cluster.up()
            client = RecdClient(cluster.frontend_address, timeout_s=10)
            try:
                for start in range(0, preload, 500):
                    await client.upsert_items(_items(ids, vectors, range(start, min(start + 500, preload))))
                out = {"upserts_ok": 0, "upserts_failed": 0, "reads_ok": 0, "reads_failed": 0}
                began = time.monotonic()
                stop = began + seconds

                async def writer() -> None:
                    for start in range(preload, items, 20):
                        if time.monotonic() >= stop:
                            return
                        try:
                            await client.upsert_items(
                                _items(ids, vectors, range(start, min(start + 20, items)))
                            )
                            out["upserts_ok"] += 1
                        except grpc.aio.AioRpcError:
                            out["upserts_failed"] += 1
                        await asyncio.sleep(0.02)

                async def reader(w: int) -> None:
                    i = w
                    while time.monotonic() < stop:
                        try:
                            await client.similar(ids[(i * 7919) % preload], 10)
                            out["reads_ok"] += 1
                        except grpc.aio.AioRpcError:
                            out["reads_failed"] += 1
                        i += 4

                async def outage() -> None:
                    await asyncio.sleep(seconds / 6)
                    await asyncio.to_thread(cluster.kill_node, DOWN, signal.SIGKILL)
                    await asyncio.sleep(seconds / 2)
                    await asyncio.to_thread(cluster.start_node, DOWN)

                await asyncio.gather(writer(), outage(), *(reader(w) for w in range(4)))
            finally:
                await client.close()
            await asyncio.sleep(3.0)  # the returning node's hints: replayed within a probe or two
            out["one_replica_only"] = await _one_replica_only(cluster)
            return out


def run_availability_bench(quick: bool = False) -> tuple[str, dict[str, Any]]:
    items, seconds = (1500, 6.0) if quick else (6000, 12.0)
    results = {name: asyncio.run(_run_rule(cfg, items, seconds)) for name, cfg in RULES}
    rows = [
        [
            name,
            f"{r['upserts_ok']} / {r['upserts_failed']}",
            f"{r['reads_ok']} / {r['reads_failed']}",
            r["one_replica_only"],
        ]
        for name, r in results.items()
    ]
    body = table(
        [
            "cluster.write_acks",
            "upsert batches ok / failed",
            "reads ok / failed",
            "items on one replica only",
        ],
        rows,
    )
    body += (
        f"\n\n{NODES} shard nodes, replication 2, one frontend; node-{DOWN} is killed (SIGKILL) a sixth into"
        f" a {seconds:.0f} s load (upserts of 20 items one after another, SimilarItems from 4 callers) and"
        " restarted half the run later. Items on one replica only: every shard's replicas scanned 3 s"
        " after the load ends; with hinted handoff the writes the node missed (acknowledged or refused)"
        " are replayed to it once it answers."
    )
    return body, results

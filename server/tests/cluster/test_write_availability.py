"""One of two replicas down under writes (real processes, kill -9): with the default rule (one ack,
hinted handoff) every upsert and delete succeeds during the outage, and once the node is back its
shards converge with their other replica: no item on one replica only."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc

from server.client import RecdClient
from server.cluster.layout import Layout, layout_from_config
from server.cluster.local import LocalCluster
from server.config import load_config
from server.domain import ItemRecord
from server.tests.cluster.procs import get_items, load_items, start_cluster, unit_vectors
from server.tools.bench.serverproc import scrape
from shards.client import GrpcShardClient

N_ITEMS = 1200
BATCH = 50
DOWN = 1


async def replica_items(address: str, shards: list[int]) -> dict[int, set[str]]:
    client = GrpcShardClient(address)
    try:
        out: dict[int, set[str]] = {}
        for shard in shards:
            out[shard] = set()
            async for part in client.scan(shard):
                out[shard].update(part.item_ids)
        return out
    finally:
        await client.close()


def recd(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "server.cli", *args, "--config", str(cluster.config_path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


async def converged(
    cluster: LocalCluster, layout: Layout, ids: list[str], live: set[str], timeout_s: float = 60.0
) -> tuple[dict[str, dict[int, set[str]]], list[tuple[str, int]]]:
    """Waits until every replica of every shard holds exactly the `live` items of `ids` it owns; returns
    each node's view and the (node, shard) pairs still differing at the end."""
    owner = dict(zip(ids, layout.current.item_ring.owner(ids).tolist(), strict=True))
    wanted = {s: {i for i in live if owner[i] == s} for s in range(layout.current.shard_count)}
    deadline = time.monotonic() + timeout_s
    while True:
        views = {
            n: await replica_items(
                cluster.node_address(int(n.split("-")[1])), list(layout.current.shards_of(n))
            )
            for n in layout.current.nodes
        }
        diverged = [
            (node, shard)
            for node, shards in views.items()
            for shard, items in shards.items()
            if items != wanted[shard]
        ]
        if not diverged or time.monotonic() > deadline:
            return views, diverged
        await asyncio.sleep(0.5)


async def test_writes_stay_available_and_a_returning_replica_converges(tmp_path: Path) -> None:
    vectors = unit_vectors(N_ITEMS, 5)
    ids = [f"wa-{i}" for i in range(N_ITEMS)]
    with start_cluster(tmp_path, nodes=4, replication=2) as cluster:
        await load_items(cluster.frontend_address, ids[:400], vectors[:400])
        await asyncio.to_thread(cluster.kill_node, DOWN, signal.SIGKILL)

        client = RecdClient(cluster.frontend_address, timeout_s=30)
        try:
            # Every write while node-1 is down must succeed (a grpc error fails the test).
            for start in range(400, N_ITEMS, BATCH):
                await client.upsert_items(
                    [ItemRecord(ids[i], vectors[i], {}, 1.0, 0) for i in range(start, start + BATCH)]
                )
            deleted = ids[:100] + ids[600:650]
            await client.delete_items(deleted)
        finally:
            await client.close()
        live = sorted(set(ids) - set(deleted))
        assert await get_items(cluster.frontend_address, live) == set(live)

        await asyncio.to_thread(cluster.start_node, DOWN)
        layout = layout_from_config(load_config(cluster.config_path))
        views, diverged = await converged(cluster, layout, ids, set(live))
        assert not diverged, f"replicas still differ from what was written: {diverged[:5]}"
        # The operator's check agrees: every shard's replicas alike.
        check = await asyncio.to_thread(recd, cluster, "shards", "check")
        assert check.returncode == 0, check.stdout + check.stderr
        assert "20 shards, 0 diverged, 0 not checked" in check.stdout
        # Each node serves its own metrics: the items its shards hold, as the scan saw them.
        for node, shards in views.items():
            page = scrape(cluster.node_metrics_address(int(node.split("-")[1])))
            held = sum(v for k, v in page.items() if k.startswith("recd_shard_items{"))
            assert held == sum(len(items) for items in shards.values())
            assert page["recd_shard_wal_fsync_seconds_count"] > 0
        # The returning node holds writes made while it was down (what it missed, replayed to it).
        during = set(ids[400:]) - set(deleted)
        assert any(items & during for items in views[f"node-{DOWN}"].values())


async def test_a_refused_write_is_applied_on_every_replica_not_one(tmp_path: Path) -> None:
    # write_acks 0 (every replica): with node-1 down, writes to its shards are refused. A refused write is
    # at-least-once: the other replica applied it, the returning node gets it by hinted handoff, and
    # the catalogue (following the shards' feeds) shows it; it never stays on one replica only.
    vectors = unit_vectors(300, 6)
    ids = [f"rf-{i}" for i in range(300)]
    with start_cluster(tmp_path, nodes=4, replication=2, cluster={"write_acks": 0}) as cluster:
        await asyncio.to_thread(cluster.kill_node, DOWN, signal.SIGKILL)
        client = RecdClient(cluster.frontend_address, timeout_s=30)
        refused = 0
        try:
            for start in range(0, len(ids), BATCH):
                try:
                    await client.upsert_items(
                        [ItemRecord(ids[i], vectors[i], {}, 1.0, 0) for i in range(start, start + BATCH)]
                    )
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
                    refused += 1
        finally:
            await client.close()
        assert refused > 0  # 50 items over 20 shards: every batch touches node-1's shards

        await asyncio.to_thread(cluster.start_node, DOWN)
        layout = layout_from_config(load_config(cluster.config_path))
        _, diverged = await converged(cluster, layout, ids, set(ids))
        assert not diverged, f"refused writes left on one replica only: {diverged[:5]}"
        assert await get_items(cluster.frontend_address, ids) == set(ids)
        # Alike already: a repair from node-0 writes and deletes nothing, and the check after it passes.
        repair = await asyncio.to_thread(recd, cluster, "shards", "check", "--repair-from", "0")
        assert repair.returncode == 0, repair.stdout + repair.stderr
        assert "20 shards, 0 diverged, 0 not checked" in repair.stdout
        repaired = [line for line in repair.stdout.splitlines() if "repaired from node-0" in line]
        assert repaired and all(line.endswith(": 0 written, 0 deleted") for line in repaired), repaired

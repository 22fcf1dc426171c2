"""Resharding 20 -> 22 online: under read and write load no request fails, recall is unchanged, about
2/22 of the items move, and afterwards every item lives exactly on the replicas of its new shard."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import numpy as np

from server import _core
from server.client import RecdClient
from server.cluster.layout import Layout, Placement, layout_from_config
from server.cluster.membership.manager import ClusterManager
from server.config import load_config
from server.domain import ItemRecord
from server.tests.cluster.procs import get_items, load_items, similar_load, start_cluster, unit_vectors
from server.tools.cluster.commands import newest_layout
from server.tools.cluster.rebalance import Rebalancer, RebalanceReport
from shards.client import GrpcShardClient, ShardClient

N_ITEMS = 3000


async def recall_at_10(config_path: Path, ids: list[str], vectors: np.ndarray) -> tuple[float, int]:
    manager = ClusterManager(load_config(config_path))
    router = manager.router
    try:
        rng = np.random.default_rng(11)
        queries = vectors[rng.integers(0, len(vectors), 200)] + 0.1 * rng.normal(size=(200, vectors.shape[1]))
        queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
        result = await router.search(queries, 10, router.per_shard_k(200, 2.0), 64, None, 10)
        truth = _core.stable_hash64(ids)[np.argsort(-(queries @ vectors.T), axis=1)[:, :10]]
        hits = [len(set(result.labels[i].tolist()) & set(truth[i].tolist())) for i in range(len(queries))]
        return float(np.mean(hits)) / 10, result.shards_total
    finally:
        await router.close()


def clients_for(layout: Layout) -> dict[str, ShardClient]:
    return {n: GrpcShardClient(a) for n, a in layout.addresses.items()}


async def test_resharding_under_load(tmp_path: Path) -> None:
    vectors = unit_vectors(N_ITEMS + 400, 5)
    ids = [f"rb-{i}" for i in range(N_ITEMS + 400)]
    with start_cluster(tmp_path, nodes=3, replication=2) as cluster:
        await load_items(cluster.frontend_address, ids[:N_ITEMS], vectors[:N_ITEMS])
        recall_before, total = await recall_at_10(cluster.config_path, ids[:N_ITEMS], vectors[:N_ITEMS])
        assert total == 20

        report: list[RebalanceReport] = []

        def reshard() -> None:
            async def run() -> None:
                configured = layout_from_config(load_config(cluster.config_path))
                clients = clients_for(configured)
                try:
                    layout, _ = await newest_layout(clients, configured)
                    target = Placement(22, layout.current.nodes, 2, layout.current.vnodes)
                    rebalancer = Rebalancer(clients, grace_s=1.0)
                    await rebalancer.run(layout, target, {})
                    report.append(rebalancer.report)
                finally:
                    for c in clients.values():
                        await c.close()

            asyncio.run(run())

        write_errors: list[str] = []

        async def write_during() -> None:
            client = RecdClient(cluster.frontend_address, timeout_s=30)
            try:
                for start in range(N_ITEMS, N_ITEMS + 400, 20):
                    rows = range(start, start + 20)
                    try:
                        await client.upsert_items([ItemRecord(ids[i], vectors[i], {}, 1.0, 0) for i in rows])
                    except grpc.aio.AioRpcError as exc:
                        write_errors.append(f"{exc.code().name}: {exc.details()}")
                    await asyncio.sleep(0.02)
            finally:
                await client.close()

        started = time.monotonic()
        answers, _ = await asyncio.gather(
            similar_load(
                cluster.frontend_address, ids[:N_ITEMS], seconds=6.0, concurrency=4, events=[(0.5, reshard)]
            ),
            write_during(),
        )
        assert report, "the rebalance did not finish"
        assert time.monotonic() - started < 60
        assert not write_errors, write_errors[:3]
        failed = [a.error for a in answers if not a.ok]
        assert not failed, failed[:3]
        assert not [a for a in answers if a.partial]
        assert {a.shards_total for a in answers} == {20, 22}  # the frontend followed the new layout

        r = report[0]
        assert r.items_scanned >= N_ITEMS
        assert r.items_moved / r.items_scanned <= 1.2 * 2 / 22

        recall_after, total = await recall_at_10(cluster.config_path, ids, vectors)
        assert total == 22
        assert recall_after >= recall_before - 0.03, (recall_before, recall_after)
        assert await get_items(cluster.frontend_address, ids) == set(ids)

        # Every item exactly on the replicas of its new shard; moved items deleted from the old one.
        configured = layout_from_config(load_config(cluster.config_path))
        clients = clients_for(configured)
        try:
            final, _ = await newest_layout(clients, configured)
            assert (final.phase, final.current.shard_count) == ("stable", 22)
            placement = final.current
            where: dict[str, set[tuple[str, int]]] = {}
            for node in placement.nodes:
                assert (await clients[node].get_layout(5)).shard_ids == placement.shards_of(node)
                for shard in placement.shards_of(node):
                    async for batch in clients[node].scan(shard):
                        for item_id in batch.item_ids:
                            where.setdefault(item_id, set()).add((node, shard))
            owners = placement.item_ring.owner(ids)
            for item_id, shard in zip(ids, owners.tolist(), strict=True):
                assert where[item_id] == {(n, shard) for n in placement.replicas[shard]}, item_id
        finally:
            for c in clients.values():
                await c.close()

        # A frontend started now (config still says 20 shards) routes by the nodes' layout from the start.
        cluster.stop_frontend()
        cluster.start_frontend()
        assert await get_items(cluster.frontend_address, ids) == set(ids)
        answers = await similar_load(cluster.frontend_address, ids, seconds=0.5, concurrency=2)
        assert answers and all(a.ok and a.shards_ok == a.shards_total == 22 for a in answers)

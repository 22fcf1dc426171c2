"""kill -9 a shard node in the middle of an ingest: every write the frontend acknowledged is, after the
node restarts, on every replica of its shard (the restarted node included), by id and as the top-1 of a
search for its own vector."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
import numpy as np

from server import _core
from server.client import RecdClient
from server.cluster.layout import layout_from_config
from server.config import load_config
from server.domain import ItemRecord
from server.tests.cluster.procs import get_items, start_cluster, unit_vectors
from shards.client import GrpcShardClient

N_ITEMS = 3000
BATCH = 100


async def test_acknowledged_items_survive_a_node_killed_mid_ingest(tmp_path: Path) -> None:
    vectors = unit_vectors(N_ITEMS, 3)
    ids = [f"ing-{i}" for i in range(N_ITEMS)]
    # Every replica must ack (write_acks 0), so "acknowledged" means "in every WAL" here; the default
    # (one ack, hinted handoff) is tested in test_write_availability.py.
    with start_cluster(tmp_path, nodes=3, replication=2, cluster={"write_acks": 0}) as cluster:
        client = RecdClient(cluster.frontend_address, timeout_s=30)
        acked: list[int] = []
        failures = 0
        try:
            for n, start in enumerate(range(0, N_ITEMS, BATCH)):
                rows = list(range(start, start + BATCH))
                call = asyncio.ensure_future(
                    client.upsert_items([ItemRecord(ids[i], vectors[i], {}, 1.0, 0) for i in rows])
                )
                if n == 8:  # while this batch is in flight
                    await asyncio.sleep(0.003)
                    await asyncio.to_thread(cluster.kill_node, 2, signal.SIGKILL)
                try:
                    await call
                    acked.extend(rows)
                except grpc.aio.AioRpcError:
                    failures += 1  # not acknowledged: the write needs both replicas (write_acks = R)
                if n == 12:
                    await asyncio.to_thread(cluster.start_node, 2)
        finally:
            await client.close()
        assert len(acked) >= 8 * BATCH and failures > 0

        acked_ids = [ids[i] for i in acked]
        assert await get_items(cluster.frontend_address, acked_ids) == set(acked_ids)

        # Straight to each replica, the restarted node included: by label, and top-1 for its vector.
        layout = layout_from_config(load_config(cluster.config_path))
        shards = layout.current.item_ring.owner(acked_ids)
        labels = _core.stable_hash64(acked_ids)
        queries = vectors[acked]
        for node in layout.current.nodes:
            node_client = GrpcShardClient(cluster.node_address(int(node.split("-")[1])))
            try:
                for shard in layout.current.shards_of(node):
                    rows = np.flatnonzero(shards == shard)
                    held = await node_client.fetch(shard, labels[rows], 30)
                    assert len(held) == len(rows), f"{node} shard {shard} lost acknowledged items"
                    hits = (await node_client.search(queries[rows], [shard], 1, 200, None, 30))[shard]
                    assert not isinstance(hits, Exception)
                    assert (hits.labels[:, 0] == labels[rows]).all()
            finally:
                await node_client.close()

"""With the layout in ScyllaDB (profiles.backend: scylla), shard node processes and a frontend follow the
stored epoch: a change stored by compare-and-set reaches them without anyone handing it over, and a node
restarted meanwhile comes back on it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from server.cluster.layout import Layout, Placement, layout_from_config
from server.cluster.layout_store.base import read_or_seed
from server.cluster.layout_store.cql import CqlLayoutStore
from server.cluster.local import LocalCluster
from server.cluster.membership.manager import ClusterManager
from server.config import load_config
from server.tests.backends.real_backends import drop_scylla, scylla_keyspace
from server.tests.cluster.procs import cluster_config
from shards.client import GrpcShardClient

pytestmark = pytest.mark.real


async def epochs(cluster: LocalCluster, nodes: int) -> list[int]:
    clients = [GrpcShardClient(cluster.node_address(i)) for i in range(nodes)]
    try:
        return [(await c.get_layout(5)).epoch for c in clients]
    finally:
        for c in clients:
            await c.close()


async def until(check, timeout_s: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.1)


async def test_nodes_and_a_frontend_follow_the_stored_layout(tmp_path: Path) -> None:
    profiles = await scylla_keyspace()
    scylla = {
        "backend": "scylla",
        "hosts": profiles.hosts,
        "port": profiles.port,
        "keyspace": profiles.keyspace,
    }
    cluster = LocalCluster(tmp_path, 2, 1, cluster_config(profiles=scylla))
    store = CqlLayoutStore(profiles)
    try:
        cluster.up(frontend=False)
        config = load_config(cluster.config_path)
        first = await read_or_seed(store, layout_from_config(config))
        assert first.epoch == 1 and await epochs(cluster, 2) == [1, 1]
        manager = ClusterManager(config)
        router = manager.router
        try:
            await router.ensure_started()
            dual = first.begin(Placement(22, first.current.nodes, 1, first.current.vnodes), {})
            await store.compare_and_set(1, dual)  # stored only: nobody hands it to the nodes

            async def nodes_follow() -> bool:
                return await epochs(cluster, 2) == [2, 2]

            await until(nodes_follow)
            await manager.probe_all()
            assert router.epoch == 2 and len(router.topology.writes) == 2

            cluster.kill_node(1)
            switched = dual.switch()
            await store.compare_and_set(2, switched)
            cluster.start_node(1)  # it kept epoch 2 on disk, and catches up from the store

            async def restarted_follows() -> bool:
                return await epochs(cluster, 2) == [3, 3]

            await until(restarted_follows)
            client = GrpcShardClient(cluster.node_address(1))
            try:
                got = await client.get_layout(5)
            finally:
                await client.close()
            assert Layout.from_json(got.layout_json) == switched
        finally:
            await router.close()
    finally:
        cluster.down()
        await store.close()
        await drop_scylla(profiles)

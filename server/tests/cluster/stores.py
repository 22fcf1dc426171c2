"""Layout stores for tests: the embedded one over in-process shard nodes, the CQL one on a fresh keyspace
of the test Cassandra, and an in-memory polled store for what follows a store."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from server.cluster.layout import Layout, Placement, node_name
from server.cluster.layout_store.base import LayoutConflict, LayoutStore, check_successor
from server.cluster.node.keeper import NodeLayoutKeeper
from server.tests.routing.fakes import DIM
from shards.client import GrpcShardClient, ShardClient
from shards.host import ShardHost
from shards.records import IndexParams
from shards.service import ShardNodeServer, serve_node

NODES = tuple(node_name(i) for i in range(3))


def first_layout(nodes: tuple[str, ...] = NODES, shards: int = 20) -> Layout:
    return Layout(
        1, Placement(shards, nodes, 2, 64), {n: f"127.0.0.1:{9000 + i}" for i, n in enumerate(nodes)}
    )


class MemoryLayoutStore:
    """A polled store in memory, with the contract's compare-and-set."""

    polled = True

    def __init__(self, layout: Layout | None = None) -> None:
        self.layout = layout
        self.reads = 0

    async def read(self) -> Layout | None:
        self.reads += 1
        return self.layout

    async def compare_and_set(self, expected_epoch: int, layout: Layout) -> None:
        check_successor(expected_epoch, layout)
        if (self.layout.epoch if self.layout else 0) != expected_epoch:
            raise LayoutConflict(expected_epoch, self.layout)
        self.layout = layout

    async def close(self) -> None:
        return None


@dataclass
class InProcessNodes:
    """Shard nodes on ephemeral ports, each following `layout` from the start."""

    hosts: dict[str, ShardHost] = field(default_factory=dict)
    servers: list[ShardNodeServer] = field(default_factory=list)
    clients: dict[str, ShardClient] = field(default_factory=dict)

    @classmethod
    async def start(cls, layout: Layout) -> InProcessNodes:
        nodes = cls()
        for name in layout.all_nodes:
            host = ShardHost(IndexParams(dim=DIM, initial_capacity=64), None, layout.hosted(name))
            server = await serve_node(host, "127.0.0.1:0", layout=NodeLayoutKeeper(name, host, None, layout))
            nodes.hosts[name] = host
            nodes.servers.append(server)
            nodes.clients[name] = GrpcShardClient(f"127.0.0.1:{server.port}")
        return nodes

    async def stop(self) -> None:
        for client in self.clients.values():
            await client.close()
        for server in self.servers:
            await server.stop(0.5)
        for host in self.hosts.values():
            await asyncio.to_thread(host.close)


async def cql_store(**overrides: Any) -> LayoutStore:
    """A CqlLayoutStore on a keyspace of its own (nothing stored yet), dropped again by `close`."""
    from server.cluster.layout_store.cql import CqlLayoutStore
    from server.tests.backends.real_backends import drop_scylla, scylla_keyspace

    class DisposableCqlLayoutStore(CqlLayoutStore):
        async def close(self) -> None:
            await super().close()
            await drop_scylla(self.config)

    return DisposableCqlLayoutStore(await scylla_keyspace(**overrides))


async def cql_store_beside(store: Any) -> LayoutStore:
    """Another store on the same keyspace, as another process would have (closing it drops nothing)."""
    from server.cluster.layout_store.cql import CqlLayoutStore

    return CqlLayoutStore(store.config)

"""The rebalance protocol against in-process shard nodes: a failed copy rolls back to the old placement,
an interrupted rebalance resumes, a paced one keeps its pace, and a rebalance computed from a layout that
changed meanwhile is refused before it changes anything (of two started at once against Cassandra's
compare-and-set, exactly one runs)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping

import numpy as np
import pytest

from server import _core
from server.cluster.layout import Layout, Placement, node_name
from server.cluster.layout_store.base import LayoutConflict
from server.cluster.layout_store.pushed import PushedLayoutStore
from server.cluster.node.follower import LayoutFollower
from server.cluster.node.keeper import NodeLayoutKeeper
from server.tests.cluster.stores import cql_store, cql_store_beside
from server.tests.routing.fakes import DIM, unit_vectors
from server.tools.cluster.rebalance import Rebalancer
from shards.client import GrpcShardClient, ShardClient
from shards.host import ShardHost
from shards.records import ErrorKind, IndexParams, RecordBatch, ShardError
from shards.service import ShardNodeServer, serve_node

NODES = tuple(node_name(i) for i in range(3))
SPARE = node_name(3)  # running, in no layout yet: a node to add
N = 1500


class Nodes:
    def __init__(self) -> None:
        self.hosts: dict[str, ShardHost] = {}
        self.servers: list[ShardNodeServer] = []
        self.clients: dict[str, ShardClient] = {}
        self.layout: Layout | None = None
        self.spare_address = ""


@pytest.fixture
async def nodes() -> AsyncIterator[Nodes]:
    out = Nodes()
    placement = Placement(20, NODES, 2, 64)
    addresses = {}
    for name in (*NODES, SPARE):
        out.hosts[name] = ShardHost(IndexParams(dim=DIM, initial_capacity=256), None, [])
    # Ports first (the layout names them), then keepers that follow it.
    for name in (*NODES, SPARE):
        server = await serve_node(out.hosts[name], "127.0.0.1:0", layout=_Late(name))
        out.servers.append(server)
        addresses[name] = f"127.0.0.1:{server.port}"
    out.spare_address = addresses.pop(SPARE)
    layout = Layout(1, placement, addresses)
    for name in NODES:
        out.hosts[name].add_shards(layout.hosted(name))
        _Late.bind(name, NodeLayoutKeeper(name, out.hosts[name], None, layout))
        out.clients[name] = GrpcShardClient(addresses[name])
    _Late.bind(SPARE, NodeLayoutKeeper(SPARE, out.hosts[SPARE], None, layout))
    out.layout = layout
    ids = [f"r{i}" for i in range(N)]
    vectors = unit_vectors(N, 4)
    owners = placement.item_ring.owner(ids)
    for shard in range(20):
        rows = np.flatnonzero(owners == shard)
        batch = RecordBatch(
            _core.stable_hash64([ids[i] for i in rows]),
            [ids[i] for i in rows],
            vectors[rows],
            [b""] * len(rows),
        )
        for name in placement.replicas[shard]:
            out.hosts[name].upsert({shard: batch})
    try:
        yield out
    finally:
        for client in out.clients.values():
            await client.close()
        for server in out.servers:
            await server.stop(0.5)
        for host in out.hosts.values():
            host.close()


class _Late:
    """A LayoutKeeper bound after the server started (its layout names the server's port)."""

    keepers: dict[str, NodeLayoutKeeper] = {}

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def bind(cls, name: str, keeper: NodeLayoutKeeper) -> None:
        cls.keepers[name] = keeper

    @property
    def epoch(self) -> int:
        return self.keepers[self.name].epoch

    def current(self):  # type: ignore[no-untyped-def]
        return self.keepers[self.name].current()

    def adopt(self, layout_json: str, drop_unplaced: bool):  # type: ignore[no-untyped-def]
        return self.keepers[self.name].adopt(layout_json, drop_unplaced)


class FailingBackfill:
    """Passes everything through, except backfill writes to one node, which fail for good."""

    def __init__(self, inner: ShardClient, fail: bool) -> None:
        self._inner = inner
        self._fail = fail

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def upsert(
        self,
        batches: Mapping[int, RecordBatch],
        timeout_s: float | None = None,
        *,
        layout_epoch: int = 0,
        backfill: bool = False,
    ) -> int:
        if backfill and self._fail:
            raise ShardError("disk full", ErrorKind.INTERNAL)
        return await self._inner.upsert(batches, timeout_s, layout_epoch=layout_epoch, backfill=backfill)


def items_where(nodes: Nodes) -> dict[str, set[tuple[str, int]]]:
    where: dict[str, set[tuple[str, int]]] = {}
    for name, host in nodes.hosts.items():
        for shard in host.shard_ids:
            for batch in host.scan(shard):
                for item_id in batch.item_ids:
                    where.setdefault(item_id, set()).add((name, shard))
    return where


async def test_a_failed_copy_rolls_back_to_the_old_placement(nodes: Nodes) -> None:
    assert nodes.layout is not None
    target = Placement(22, NODES, 2, 64)
    receiver = target.replicas[20][0]
    clients = {n: FailingBackfill(c, n == receiver) for n, c in nodes.clients.items()}
    rebalancer = Rebalancer(clients, grace_s=0.05)  # type: ignore[arg-type]
    with pytest.raises(ShardError, match="disk full"):
        await rebalancer.run(nodes.layout, target, {})
    for name, client in nodes.clients.items():
        got = await client.get_layout(5)
        back = Layout.from_json(got.layout_json)
        assert back.epoch == 3 and back.phase == "stable" and back.current == nodes.layout.current
        assert got.shard_ids == nodes.layout.current.shards_of(name)  # the new shards are gone
    before = nodes.layout.current
    owners = before.item_ring.owner([f"r{i}" for i in range(N)])
    where = items_where(nodes)
    for i, shard in enumerate(owners.tolist()):
        assert where[f"r{i}"] == {(n, shard) for n in before.replicas[shard]}


async def test_an_interrupted_rebalance_resumes_and_paces_itself(nodes: Nodes) -> None:
    assert nodes.layout is not None
    target = Placement(22, NODES, 2, 64)
    dual = nodes.layout.begin(target, {})
    for client in nodes.clients.values():  # as if the rebalancer died right after step 1
        await client.set_layout(dual.to_json())
    rebalancer = Rebalancer(nodes.clients, grace_s=0.05, max_items_per_s=3 * N)
    started = time.monotonic()
    final = await rebalancer.run(dual, None, {})
    # Copy and clean-up each scan every item once or twice: about (N + 2N) / (3N) s at that pace.
    assert time.monotonic() - started >= 0.8
    assert (final.epoch, final.phase, final.current) == (4, "stable", target)
    owners = target.item_ring.owner([f"r{i}" for i in range(N)])
    where = items_where(nodes)
    for i, shard in enumerate(owners.tolist()):
        assert where[f"r{i}"] == {(n, shard) for n in target.replicas[shard]}
    assert rebalancer.report.items_moved / N <= 1.2 * 2 / 22


async def test_adding_a_node_copies_only_the_shards_it_takes(nodes: Nodes) -> None:
    assert nodes.layout is not None
    before = nodes.layout.current
    target = Placement(20, (*NODES, SPARE), 2, 64)
    clients = {**nodes.clients, SPARE: GrpcShardClient(nodes.spare_address)}
    rebalancer = Rebalancer(clients, grace_s=0.05)
    try:
        final = await rebalancer.run(nodes.layout, target, {SPARE: nodes.spare_address})
    finally:
        await clients[SPARE].close()
    taken = target.shards_of(SPARE)
    assert taken and nodes.hosts[SPARE].shard_ids == taken
    assert rebalancer.report.items_moved == 0  # no item changes shard
    assert rebalancer.report.records_copied == sum(len(nodes.hosts[SPARE].shard(s)) for s in taken)
    for name in NODES:  # each old node lost only shards the new one took
        lost = set(before.shards_of(name)) - set(nodes.hosts[name].shard_ids)
        assert lost <= set(taken) and set(nodes.hosts[name].shard_ids) == set(target.shards_of(name))
    owners = target.item_ring.owner([f"r{i}" for i in range(N)])
    where = items_where(nodes)
    for i, shard in enumerate(owners.tolist()):
        assert where[f"r{i}"] == {(n, shard) for n in target.replicas[shard]}
    assert final.addresses[SPARE] == nodes.spare_address


async def test_a_rebalance_from_a_layout_that_changed_meanwhile_is_refused_and_changes_nothing(
    nodes: Nodes,
) -> None:
    assert nodes.layout is not None
    other = nodes.layout.begin(Placement(21, NODES, 2, 64), {})  # another operator's, just begun
    await PushedLayoutStore(lambda: nodes.clients).compare_and_set(1, other)
    before = {n: sorted(h.shard_ids) for n, h in nodes.hosts.items()}
    rebalancer = Rebalancer(nodes.clients, grace_s=0.05)
    with pytest.raises(LayoutConflict, match="computed from epoch 1, the store holds epoch 2 \\(dual"):
        await rebalancer.run(nodes.layout, Placement(22, NODES, 2, 64), {})
    assert rebalancer.report.records_copied == 0
    for client in nodes.clients.values():
        assert Layout.from_json((await client.get_layout(5)).layout_json) == other
    assert {n: sorted(h.shard_ids) for n, h in nodes.hosts.items()} == before


@pytest.mark.real
async def test_two_rebalances_at_once_one_is_refused_and_the_layout_stays_whole(nodes: Nodes) -> None:
    assert nodes.layout is not None
    first = await cql_store()
    await first.compare_and_set(0, nodes.layout)
    second = await cql_store_beside(first)
    spare = GrpcShardClient(nodes.spare_address)
    everyone: dict[str, ShardClient] = {**nodes.clients, SPARE: spare}

    # Every node follows the store, as `recd shard` does with the layout in ScyllaDB.
    follower_stores = {name: await cql_store_beside(first) for name in everyone}

    async def follow(name: str) -> None:
        client = everyone[name]
        epoch = [1]

        async def apply(layout: Layout) -> object:
            epoch.append((await client.set_layout(layout.to_json(), False, 5)).epoch)
            return None

        await LayoutFollower(follower_stores[name], lambda: epoch[-1], apply, 0.05, name).run()

    followers = [asyncio.ensure_future(follow(n)) for n in everyone]
    reshard = Rebalancer(nodes.clients, store=first, grace_s=0.05)
    grow = Rebalancer({**nodes.clients, SPARE: spare}, store=second, grace_s=0.05)
    try:
        outcomes = await asyncio.gather(
            reshard.run(nodes.layout, Placement(22, NODES, 2, 64), {}),
            grow.run(nodes.layout, Placement(20, (*NODES, SPARE), 2, 64), {SPARE: nodes.spare_address}),
            return_exceptions=True,
        )
        refused = [o for o in outcomes if isinstance(o, LayoutConflict)]
        finals = [o for o in outcomes if isinstance(o, Layout)]
        assert len(refused) == 1 and len(finals) == 1, outcomes
        loser = grow if isinstance(outcomes[1], LayoutConflict) else reshard
        assert loser.report.records_copied == 0 and loser.report.phases == []  # refused before any step
        final = finals[0]
        assert (final.epoch, final.phase) == (4, "stable")
        assert await first.read() == final == await second.read()
        for name, client in everyone.items():  # every node on the winner's layout, and only that
            got = await client.get_layout(5)
            assert Layout.from_json(got.layout_json) == final
            assert got.shard_ids == final.current.shards_of(name)
        owners = final.current.item_ring.owner([f"r{i}" for i in range(N)])
        where = items_where(nodes)
        for i, shard in enumerate(owners.tolist()):
            assert where[f"r{i}"] == {(n, shard) for n in final.current.replicas[shard]}
    finally:
        for task in followers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for store in follower_stores.values():
            await store.close()
        await spare.close()
        await second.close()
        await first.close()

"""Reads of one live replica per shard: point reads, the whole catalogue (scan_all), per-shard stats, and
the read preference order the catalogue feed follows (readable_replicas)."""

from __future__ import annotations

import pytest

from server import _core
from server.errors import BackendError
from server.routing.router import ShardRouter
from server.routing.topology import ShardNode
from server.tests.routing.fakes import DIM, fake_cluster, unit_vectors
from shards.client import InProcessShardClient
from shards.host import ShardHost
from shards.records import IndexParams, RecordBatch


async def load(router: ShardRouter, n: int) -> list[str]:
    ids = [f"i{i}" for i in range(n)]
    await router.upsert(RecordBatch(_core.stable_hash64(ids), ids, unit_vectors(n), [b""] * n), 30)
    return ids


async def scanned(router: ShardRouter, batch_size: int) -> list[str]:
    return [item for batch in [b async for b in router.scan_all(batch_size)] for item in batch.item_ids]


async def test_fetch_and_delete_fail_over() -> None:
    router, fakes, _, _ = fake_cluster(nodes=3, replication=2, write_acks=1)
    ids = await load(router, 300)
    fakes["node-1"].down = True
    got = await router.fetch(ids, _core.stable_hash64(ids), 5)
    assert len(got) == 300
    deleted = await router.delete(ids[:50], _core.stable_hash64(ids[:50]), 5)
    assert deleted == 50


async def test_scan_all_reads_each_shard_once_failing_over_from_a_node_that_is_down() -> None:
    router, fakes, layout, _ = fake_cluster(nodes=4, replication=2)
    ids = await load(router, 500)
    fakes["node-1"].down = True
    assert any(layout.current.replicas[s][0] == "node-1" for s in range(20))  # its first replica
    got = await scanned(router, 64)
    assert sorted(got) == sorted(ids)  # every item, and once: one replica per shard


async def test_scan_all_fails_over_when_a_replica_breaks_mid_scan() -> None:
    router, fakes, layout, _ = fake_cluster(nodes=3, replication=2)
    ids = await load(router, 600)
    first = layout.current.replicas[0][0]
    fakes[first].fail_scan_after = 1  # one batch of each of its shards, then the connection breaks
    got = await scanned(router, 8)
    assert set(got) == set(ids)
    assert len(got) > len(ids)  # the next replica read the broken shards from their start


async def test_scan_all_with_no_live_replica_says_which_shard() -> None:
    router, fakes, layout, _ = fake_cluster(nodes=3, replication=1)
    await load(router, 100)
    fakes["node-2"].down = True
    lost = layout.current.shards_of("node-2")
    with pytest.raises(BackendError, match=f"scan of shard {lost[0]}: no replica answered"):
        await scanned(router, 64)


async def test_stats_count_each_shard_once_from_a_replica_that_answers() -> None:
    router, fakes, _, _ = fake_cluster(nodes=4, replication=2)
    ids = await load(router, 500)
    fakes["node-2"].down = True
    stats = await router.stats(5)
    assert [s.shard_id for s in stats.shards] == list(range(20))
    assert sum(s.items for s in stats.shards) == len(ids)
    assert (stats.dim, stats.layout_epoch) == (DIM, 1)


async def test_readable_replicas_in_ring_order_with_open_circuits_last() -> None:
    router, fakes, layout, _ = fake_cluster(nodes=4, replication=3, breaker_open_s=30)
    first, second, third = layout.current.replicas[7]
    assert router.readable_replicas(7) == [
        (first, fakes[first]),
        (second, fakes[second]),
        (third, fakes[third]),
    ]
    for _ in range(3):
        router.health(first).record_failure()
    assert [name for name, _ in router.readable_replicas(7)] == [second, third, first]


class Closing(InProcessShardClient):
    closed = False

    async def close(self) -> None:
        self.closed = True
        await super().close()


async def test_an_embedded_router_reads_and_closes_its_one_node() -> None:
    host = ShardHost(IndexParams(dim=DIM, initial_capacity=64), None, range(4))
    client = Closing(host, owns_host=True)
    router = ShardRouter(DIM, 4, 64, [ShardNode("local", client, (0, 1, 2, 3))])
    assert all(router.readable_replicas(s) == [("local", client)] for s in range(4))
    ids = await load(router, 100)
    assert sorted(await scanned(router, 16)) == sorted(ids)
    stats = await router.stats(5)
    assert [s.shard_id for s in stats.shards] == [0, 1, 2, 3] and sum(s.items for s in stats.shards) == 100
    await router.close()
    assert client.closed


async def test_a_cluster_router_closes_through_its_manager() -> None:
    router, _, _, hooks = fake_cluster(nodes=2, replication=1)
    await router.close()
    assert hooks.closed

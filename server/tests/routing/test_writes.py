"""Writes to replicated shards: ack groups (every replica by default, or write_acks), durability on every
replica, and a retry after a stale layout."""

from __future__ import annotations

import numpy as np
import pytest

from server import _core
from server.errors import BackendError
from server.tests.routing.fakes import fake_cluster, unit_vectors
from shards.records import RecordBatch

N_ITEMS = 2000


async def load(router, n: int = N_ITEMS) -> tuple[list[str], np.ndarray]:  # type: ignore[no-untyped-def]
    vectors = unit_vectors(n)
    ids = [f"i{i}" for i in range(n)]
    await router.upsert(RecordBatch(_core.stable_hash64(ids), ids, vectors, [b""] * n), 30)
    return ids, vectors


async def test_writes_need_every_replica_by_default() -> None:
    router, fakes, _layout, _ = fake_cluster(nodes=3, replication=2)
    fakes["node-0"].down = True
    with pytest.raises(BackendError, match="acknowledged by 1 of 2 replicas"):
        await load(router, 200)


async def test_write_acks_one_tolerates_a_lost_replica() -> None:
    router, fakes, _, _ = fake_cluster(nodes=3, replication=2, write_acks=1)
    fakes["node-0"].down = True
    ids, _ = await load(router, 200)
    # Readable from the replicas that took it. (node-0 missed these writes: the hinted handoff brings
    # them to it once it is back, test_handoff.py.)
    got = await router.fetch(ids, _core.stable_hash64(ids), 5)
    assert sorted(got.item_ids) == sorted(ids)


async def test_acknowledged_writes_are_on_every_replica() -> None:
    router, fakes, layout, _ = fake_cluster(nodes=4, replication=2)
    ids, _ = await load(router, 500)
    shards = layout.current.item_ring.owner(ids)
    labels = _core.stable_hash64(ids)
    for shard in range(20):
        wanted = set(labels[shards == shard].tolist())
        for node in layout.current.replicas[shard]:
            held = fakes[node].host.fetch(shard, list(wanted))
            assert set(held.labels.tolist()) == wanted


async def test_a_stale_layout_refreshes_and_retries() -> None:
    router, fakes, _, hooks = fake_cluster(nodes=3, replication=2)
    fakes["node-2"].stale = 1
    await load(router, 100)
    assert hooks.refreshes == 1

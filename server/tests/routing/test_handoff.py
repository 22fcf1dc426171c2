"""Hinted handoff: a replica down during writes gets what it missed once it is back (upserts and deletes,
the newest write of an item winning), refused writes converge too, and a full handoff says so."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from server import _core, metrics
from server.cluster.layout import Layout, Placement
from server.errors import BackendError
from server.routing.topology import topology_of
from server.tests.routing.fakes import FakeNode, fake_cluster, unit_vectors
from shards.records import RecordBatch


def batch(ids: list[str], vectors: np.ndarray, payload: bytes = b"") -> RecordBatch:
    return RecordBatch(_core.stable_hash64(ids), ids, vectors, [payload] * len(ids))


def held(fakes: dict[str, FakeNode], node: str, shards: list[int]) -> dict[str, bytes]:
    """item id -> payload of every live item `node` holds in `shards`."""
    out: dict[str, bytes] = {}
    for shard in shards:
        for part in fakes[node].host.scan(shard):
            out.update(zip(part.item_ids, part.payloads, strict=True))
    return out


def on_node(layout, node: str, ids: list[str]) -> list[str]:  # type: ignore[no-untyped-def]
    shards = layout.current.item_ring.owner(ids)
    mine = set(layout.current.shards_of(node))
    return [i for i, s in zip(ids, shards.tolist(), strict=True) if s in mine]


async def test_a_replica_down_during_writes_catches_up_when_back() -> None:
    router, fakes, layout, _ = fake_cluster(nodes=3, replication=2, write_acks=1, breaker_failures=0)
    ids = [f"i{i}" for i in range(400)]
    await router.upsert(batch(ids[:200], unit_vectors(200)), 5)
    fakes["node-0"].down = True
    await router.upsert(batch(ids[200:], unit_vectors(200, 1)), 5)  # acknowledged by the other replica
    gone = ids[:50] + ids[300:320]
    await router.delete(gone, _core.stable_hash64(gone), 5)
    missed = on_node(layout, "node-0", ids[200:]) + on_node(layout, "node-0", gone)
    assert router.pending_hints("node-0") == len(set(missed)) > 0
    assert await router.replay_hints() == 0  # still down: nothing delivered, nothing lost
    assert router.pending_hints("node-0") == len(set(missed))

    fakes["node-0"].down = False
    assert await router.replay_hints() == len(set(missed))
    assert router.pending_hints() == 0
    live = set(ids) - set(gone)
    mine = layout.current.shards_of("node-0")
    assert set(held(fakes, "node-0", mine)) == set(on_node(layout, "node-0", sorted(live)))
    # No item only on one replica: every replica of every shard holds the same items.
    for shard in range(20):
        copies = [set(held(fakes, n, [shard])) for n in layout.current.replicas[shard]]
        assert all(c == copies[0] for c in copies), f"shard {shard} diverged"


async def test_a_newer_direct_write_wins_over_an_older_hint() -> None:
    router, fakes, layout, _ = fake_cluster(nodes=3, replication=2, write_acks=1, breaker_failures=0)
    ids = on_node(layout, "node-0", [f"i{i}" for i in range(100)])[:10]
    vectors = unit_vectors(len(ids))
    fakes["node-0"].down = True
    await router.upsert(batch(ids, vectors, b"old"), 5)
    assert router.pending_hints("node-0") == len(ids)
    fakes["node-0"].down = False
    await router.upsert(batch(ids[:4], vectors[:4], b"new"), 5)  # straight to node-0: newer than its hints
    assert router.pending_hints("node-0") == len(ids) - 4
    await router.replay_hints()
    got = held(fakes, "node-0", layout.current.shards_of("node-0"))
    assert got == {i: (b"new" if n < 4 else b"old") for n, i in enumerate(ids)}


async def test_a_refused_write_converges_on_every_replica() -> None:
    # write_acks 0 (every replica): the write is refused, yet the replica that took it keeps it (it is
    # in its WAL); the handoff brings it to the other replica, so the refused write ends up applied
    # everywhere (at-least-once), never on one replica only.
    router, fakes, layout, _ = fake_cluster(nodes=3, replication=2, write_acks=0, breaker_failures=0)
    ids = on_node(layout, "node-0", [f"i{i}" for i in range(200)])
    fakes["node-0"].down = True
    with pytest.raises(BackendError, match="acknowledged by 1 of 2 replicas"):
        await router.upsert(batch(ids, unit_vectors(len(ids))), 5)
    fakes["node-0"].down = False
    await router.replay_hints()
    for shard in layout.current.shards_of("node-0"):
        copies = [set(held(fakes, n, [shard])) for n in layout.current.replicas[shard]]
        assert copies[0] == copies[1]
    assert set(held(fakes, "node-0", layout.current.shards_of("node-0"))) == set(ids)


async def test_a_full_handoff_drops_and_counts() -> None:
    router, fakes, layout, _ = fake_cluster(nodes=3, replication=2, write_acks=1, hint_max_items=5)
    ids = on_node(layout, "node-0", [f"i{i}" for i in range(100)])[:12]
    before = metrics.WRITE_HINTS_DROPPED.labels("node-0")._value.get()
    fakes["node-0"].down = True
    await router.upsert(batch(ids, unit_vectors(len(ids))), 5)
    assert router.pending_hints("node-0") == 5
    assert metrics.WRITE_HINTS_DROPPED.labels("node-0")._value.get() - before == len(ids) - 5
    await router.close()


async def test_a_replay_holds_back_only_direct_writes_of_its_own_items() -> None:
    router, fakes, layout, _ = fake_cluster(nodes=3, replication=2, write_acks=1, breaker_failures=0)
    ids = on_node(layout, "node-0", [f"i{i}" for i in range(400)])
    shards = layout.current.item_ring.owner(ids).tolist()
    # The hinted items in one shard, so they make one replay batch.
    hinted = [i for i, s in zip(ids, shards, strict=True) if s == shards[0]][:10]
    other = [i for i in ids if i not in hinted][:10]
    vectors = unit_vectors(20)
    node = fakes["node-0"]
    node.down = True
    await router.upsert(batch(hinted, vectors[:10], b"old"), 5)
    node.down = False

    # node-0 holds the replay's call until released; direct calls pass.
    release, entered = asyncio.Event(), asyncio.Event()
    direct_upsert = node.upsert

    async def held_upsert(batches, timeout_s=None, **kw):  # type: ignore[no-untyped-def]
        if any(b.payloads and b.payloads[0] == b"old" for b in batches.values()):
            entered.set()
            await release.wait()
        return await direct_upsert(batches, timeout_s, **kw)

    node.upsert = held_upsert  # type: ignore[method-assign]
    replay = asyncio.ensure_future(router.replay_hints())
    await asyncio.wait_for(entered.wait(), 5)
    # Other items go straight through while the replay is held.
    await asyncio.wait_for(router.upsert(batch(other, vectors[10:20], b"other"), 5), 2)
    # A newer write of a replayed item waits for the replay, so it lands after it.
    newer = asyncio.ensure_future(router.upsert(batch(hinted[:1], vectors[:1], b"new"), 5))
    await asyncio.sleep(0.2)
    assert not newer.done()
    release.set()
    await asyncio.wait_for(asyncio.gather(replay, newer), 5)
    got = held(fakes, "node-0", layout.current.shards_of("node-0"))
    assert got[hinted[0]] == b"new"
    assert all(got[i] == b"old" for i in hinted[1:]) and all(got[i] == b"other" for i in other)
    assert router.pending_hints() == 0


async def test_hints_for_a_node_that_left_the_layout_are_moot_not_lost() -> None:
    router, fakes, layout, _ = fake_cluster(nodes=3, replication=2, write_acks=1, breaker_failures=0)
    ids = on_node(layout, "node-0", [f"i{i}" for i in range(100)])
    fakes["node-0"].down = True
    await router.upsert(batch(ids, unit_vectors(len(ids))), 5)
    assert router.pending_hints("node-0") == len(ids)
    dropped = metrics.WRITE_HINTS_DROPPED.labels("node-0")._value.get()
    # A rebalance removed node-0: its shards now live on the other two (copied from live replicas).
    rest = ("node-1", "node-2")
    smaller = Layout(2, Placement(20, rest, 2, 256), {n: layout.addresses[n] for n in rest})
    router.set_topology(topology_of(smaller), {n: fakes[n] for n in rest})  # type: ignore[misc]
    await router.replay_hints()
    assert router.pending_hints() == 0
    assert metrics.WRITE_HINTS_DROPPED.labels("node-0")._value.get() == dropped  # nothing needs repair

"""`recd shards check`: replicas compared item by item; a replica that missed writes (no handoff), an
item held differently, and a replica that cannot be read are each reported; alike replicas are not."""

from __future__ import annotations

from server import _core
from server.tests.routing.fakes import fake_cluster, unit_vectors
from server.tools.cluster.check import check_replicas, repair_from
from shards.records import RecordBatch


def batch(ids: list[str], payload: bytes = b"") -> RecordBatch:
    return RecordBatch(_core.stable_hash64(ids), ids, unit_vectors(len(ids)), [payload] * len(ids))


async def test_replicas_alike_then_a_missed_write_and_a_changed_item_are_found() -> None:
    router, fakes, layout, _ = fake_cluster(nodes=3, replication=2, write_acks=1, hint_max_items=0)
    ids = [f"c{i}" for i in range(300)]
    await router.upsert(batch(ids[:200]), 5)
    assert all(c.alike and c.items for c in await check_replicas(layout, fakes))  # type: ignore[arg-type]

    fakes["node-0"].down = True
    await router.upsert(batch(ids[200:]), 5)  # no handoff (hint_max_items 0): node-0 misses these
    fakes["node-0"].down = False
    shard = layout.current.shards_of("node-1")[0]
    other = next(n for n in layout.current.replicas[shard] if n != "node-1")
    owned = layout.current.item_ring.owner(ids[:200]).tolist()
    changed = next(i for i, s in zip(ids[:200], owned, strict=True) if s == shard)  # on every replica
    fakes["node-1"].host.upsert({shard: batch([changed], b"other")})  # straight to one replica

    checks = {c.shard: c for c in await check_replicas(layout, fakes)}  # type: ignore[arg-type]
    owner = dict(zip(ids, layout.current.item_ring.owner(ids).tolist(), strict=True))
    for s, check in checks.items():
        missed = sum(1 for i in ids[200:] if owner[i] == s)
        expect_missing = missed if "node-0" in check.replicas else 0
        assert check.missing.get("node-0", 0) == expect_missing, s
        assert check.differing == (1 if s == shard else 0), s
        assert check.alike == (expect_missing == 0 and s != shard), s
    assert changed in checks[shard].examples and other in checks[shard].replicas
    assert "DIVERGED" in checks[shard].describe()


async def test_a_replica_that_cannot_be_read_is_not_called_alike() -> None:
    router, fakes, layout, _ = fake_cluster(nodes=3, replication=2)
    await router.upsert(batch([f"d{i}" for i in range(50)]), 5)
    fakes["node-2"].down = True
    checks = await check_replicas(layout, fakes)  # type: ignore[arg-type]
    for check in checks:
        assert check.alike == ("node-2" not in check.replicas)
        assert bool(check.unreadable) == ("node-2" in check.replicas)


async def test_repair_from_a_replica_makes_the_others_match_it() -> None:
    router, fakes, layout, _ = fake_cluster(nodes=3, replication=2, write_acks=1, hint_max_items=0)
    ids = [f"r{i}" for i in range(300)]
    await router.upsert(batch(ids[:200]), 5)
    fakes["node-0"].down = True  # misses upserts and deletes (no handoff)
    await router.upsert(batch(ids[200:]), 5)
    gone = ids[:40]
    await router.delete(gone, _core.stable_hash64(gone), 5)
    fakes["node-0"].down = False
    assert not all(c.alike for c in await check_replicas(layout, fakes))  # type: ignore[arg-type]

    # node-1 and node-2 stayed up: each is the truth for its shards.
    repairs = [r for source in ("node-1", "node-2") for r in await repair_from(layout, fakes, source)]  # type: ignore[arg-type]
    assert sum(r.copied.get("node-0", 0) for r in repairs) > 0
    assert sum(r.deleted.get("node-0", 0) for r in repairs) > 0
    assert all(c.alike for c in await check_replicas(layout, fakes))  # type: ignore[arg-type]
    mine = layout.current.shards_of("node-0")
    held = {i for s in mine for part in fakes["node-0"].host.scan(s) for i in part.item_ids}
    owner = dict(zip(ids, layout.current.item_ring.owner(ids).tolist(), strict=True))
    assert held == {i for i in ids[40:] if owner[i] in mine}

"""The fan-out over replicated shards: one call per node, failover, hedging, the breaker, partial
answers. Nodes are in-process fakes, so every case is fast and deterministic."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from server import _core
from server.routing.hedging import HedgePolicy
from server.tests.routing.fakes import fake_cluster, unit_vectors
from shards.records import NO_LABEL, RecordBatch

N_ITEMS = 2000


async def load(router, n: int = N_ITEMS) -> tuple[list[str], np.ndarray]:  # type: ignore[no-untyped-def]
    vectors = unit_vectors(n)
    ids = [f"i{i}" for i in range(n)]
    await router.upsert(RecordBatch(_core.stable_hash64(ids), ids, vectors, [b""] * n), 30)
    return ids, vectors


async def search(router, queries: np.ndarray, timeout_s: float = 5.0):  # type: ignore[no-untyped-def]
    return await router.search(queries, 10, 10, 50, None, timeout_s)


async def test_one_call_per_node_and_reads_spread_over_replicas() -> None:
    router, fakes, layout, _ = fake_cluster(nodes=4, replication=2)
    ids, vectors = await load(router)
    result = await search(router, vectors[:64])  # a micro-batch of 64 queries
    assert (result.shards_ok, result.shards_total, result.calls) == (20, 20, 4)
    assigned = {n: sum(len(s) for s in f.searches) for n, f in fakes.items()}
    assert sum(assigned.values()) == 20 and max(assigned.values()) <= 6  # balanced, not primaries only
    for name, fake in fakes.items():  # each node asked only for shards it hosts
        assert set(fake.searches[0]) <= set(layout.current.shards_of(name))
    assert (result.labels[:, 0] == _core.stable_hash64(ids[:64])).all()  # each query finds itself


async def test_a_failed_node_fails_over_to_the_next_replica() -> None:
    router, fakes, _, _ = fake_cluster(nodes=4, replication=2)
    _, vectors = await load(router)
    fakes["node-1"].down = True
    result = await search(router, vectors[:8])
    assert (result.shards_ok, result.shards_total) == (20, 20)
    assert result.calls > 4  # the first wave, then the failover wave


async def test_with_one_replica_a_lost_node_costs_its_shards_only() -> None:
    router, fakes, layout, _ = fake_cluster(nodes=4, replication=1)
    _, vectors = await load(router)
    fakes["node-2"].down = True
    result = await search(router, vectors[:8])
    lost = layout.current.shards_of("node-2")
    assert (result.shards_total, result.shards_ok) == (20, 20 - len(lost))
    assert len(result.errors) == len(lost)
    assert (result.labels != NO_LABEL).any()


async def test_a_late_node_is_hedged_and_the_first_answer_wins() -> None:
    router, fakes, _, _ = fake_cluster(nodes=4, replication=2, hedge=HedgePolicy("fixed", after_s=0.01))
    _, vectors = await load(router)
    fakes["node-0"].delay_s = 1.0
    started = time.monotonic()
    result = await search(router, vectors[:4], timeout_s=3.0)
    assert time.monotonic() - started < 0.5
    assert result.shards_ok == 20


async def test_no_hedge_without_budget() -> None:
    router, fakes, _, _ = fake_cluster(
        nodes=4, replication=2, hedge=HedgePolicy("fixed", after_s=0.005, budget=0.0, burst=0.0)
    )
    _, vectors = await load(router)
    fakes["node-0"].delay_s = 0.1
    result = await search(router, vectors[:4])
    assert result.calls == 4 and result.shards_ok == 20  # waited for the late node


async def test_a_late_node_without_replicas_makes_a_partial_answer_in_time() -> None:
    router, fakes, layout, _ = fake_cluster(nodes=4, replication=1)
    _, vectors = await load(router)
    fakes["node-3"].delay_s = 5.0
    started = time.monotonic()
    result = await search(router, vectors[:4], timeout_s=0.2)
    assert time.monotonic() - started < 0.5
    assert result.shards_ok == 20 - len(layout.current.shards_of("node-3"))


async def test_a_node_that_keeps_failing_is_skipped_then_tried_again() -> None:
    router, fakes, _, _ = fake_cluster(nodes=4, replication=2, breaker_open_s=0.2)
    _, vectors = await load(router)
    fakes["node-1"].down = True
    for _ in range(3):
        await search(router, vectors[:2])
    assert router.health("node-1").state == "open"
    asked = len(fakes["node-1"].searches)
    result = await search(router, vectors[:2])
    assert len(fakes["node-1"].searches) == asked  # skipped: no time lost on it
    assert result.calls == 3 and result.shards_ok == 20
    fakes["node-1"].down = False
    await asyncio.sleep(0.25)
    assert router.health("node-1").state == "half_open"
    await search(router, vectors[:2])  # the trial call succeeds and closes the circuit
    assert router.health("node-1").state == "closed"

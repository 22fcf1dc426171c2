"""The LayoutStore contract, against the embedded store (the document the nodes keep, changed by handing
it to them) and the CQL store (one row in Cassandra, changed by lightweight transactions); then what only
a store that cannot race promises: of two changes from one epoch exactly one is stored, and an empty store
is seeded once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from server.cluster.layout import Layout, Placement
from server.cluster.layout_store.base import LayoutConflict, LayoutStore, read_or_seed
from server.cluster.layout_store.pushed import PushedLayoutStore
from server.errors import BackendError
from server.tests.cluster.stores import NODES, InProcessNodes, cql_store, cql_store_beside, first_layout

Seeded = tuple[LayoutStore, Layout]


async def pushed(layout: Layout) -> tuple[LayoutStore, Callable[[], Awaitable[None]]]:
    nodes = await InProcessNodes.start(layout)  # nodes that follow `layout` from the start
    return PushedLayoutStore(lambda: nodes.clients, timeout_s=5.0), nodes.stop


async def cql(layout: Layout) -> tuple[LayoutStore, Callable[[], Awaitable[None]]]:
    store = await cql_store()
    await store.compare_and_set(0, layout)

    async def nothing() -> None:
        return None

    return store, nothing


STORES = [
    pytest.param(pushed, id="embedded"),
    pytest.param(cql, id="cql", marks=pytest.mark.real),
]


@pytest.fixture(params=STORES)
async def seeded(request: pytest.FixtureRequest) -> AsyncIterator[Seeded]:
    layout = first_layout()
    store, stop = await request.param(layout)
    try:
        yield store, layout
    finally:
        await store.close()
        await stop()


def grown(layout: Layout, shards: int = 22) -> Layout:
    return layout.begin(Placement(shards, layout.current.nodes, 2, 64), {})


async def test_reads_the_stored_layout(seeded: Seeded) -> None:
    store, layout = seeded
    assert await store.read() == layout


async def test_a_change_from_the_stored_epoch_is_stored(seeded: Seeded) -> None:
    store, layout = seeded
    dual = grown(layout)
    await store.compare_and_set(1, dual)
    assert await store.read() == dual


async def test_a_change_from_a_stale_epoch_is_refused_and_changes_nothing(seeded: Seeded) -> None:
    store, layout = seeded
    dual = grown(layout)
    await store.compare_and_set(1, dual)
    other = grown(layout, shards=21)  # computed from epoch 1 too, by another operator
    with pytest.raises(
        LayoutConflict, match="computed from epoch 1, the store holds epoch 2 \\(dual"
    ) as info:
        await store.compare_and_set(1, other)
    assert info.value.current == dual
    with pytest.raises(LayoutConflict):  # ahead of the store is no better
        await store.compare_and_set(5, Layout(6, layout.current, layout.addresses))
    assert await store.read() == dual


async def test_a_rebalance_moves_through_its_phases(seeded: Seeded) -> None:
    store, layout = seeded
    dual = grown(layout)
    steps = [dual, dual.switch(), dual.switch().finish()]
    expected = layout.epoch
    for step in steps:
        await store.compare_and_set(expected, step)
        assert await store.read() == step
        expected = step.epoch
    final = await store.read()
    assert final is not None and (final.epoch, final.phase, final.current.shard_count) == (4, "stable", 22)


async def test_a_new_layout_needs_a_higher_epoch(seeded: Seeded) -> None:
    store, layout = seeded
    with pytest.raises(ValueError, match="epoch above 1"):
        await store.compare_and_set(1, layout)
    assert await store.read() == layout


# --- only a store that cannot race --------------------------------------------------------------------
@pytest.fixture
async def cql_pair() -> AsyncIterator[tuple[Any, Any]]:
    """Two stores on one (empty) keyspace, as two operators' processes would have."""
    one = await cql_store()
    two = await cql_store_beside(one)
    try:
        yield one, two
    finally:
        await two.close()
        await one.close()


@pytest.mark.real
async def test_an_empty_store_is_seeded_once(cql_pair: tuple[Any, Any]) -> None:
    one, two = cql_pair
    assert await one.read() is None
    a, b = first_layout(), first_layout(shards=24)
    got = await asyncio.gather(read_or_seed(one, a), read_or_seed(two, b))
    assert got[0] == got[1] and got[0] in (a, b)
    assert await one.read() == got[0]


@pytest.mark.real
async def test_of_two_changes_from_one_epoch_exactly_one_is_stored(cql_pair: tuple[Any, Any]) -> None:
    one, two = cql_pair
    layout = first_layout()
    await one.compare_and_set(0, layout)
    for round_ in range(5):  # a few rounds: the race is real, whichever side wins
        base = await one.read()
        assert base is not None
        a = Layout(base.epoch + 1, base.current, base.addresses, Placement(21 + round_, NODES, 2, 64), "dual")
        b = Layout(base.epoch + 1, base.current, base.addresses, Placement(30 + round_, NODES, 2, 64), "dual")
        outcomes = await asyncio.gather(
            one.compare_and_set(base.epoch, a), two.compare_and_set(base.epoch, b), return_exceptions=True
        )
        refused = [o for o in outcomes if isinstance(o, LayoutConflict)]
        assert len(refused) == 1 and outcomes.count(None) == 1, outcomes
        stored = await two.read()
        assert stored == (a if outcomes[0] is None else b)
        assert refused[0].current == stored
        # Back to stable, for the next round.
        await one.compare_and_set(stored.epoch, stored.rollback())


@pytest.mark.real
async def test_a_change_whose_answer_was_lost_is_settled_by_reading(cql_pair: tuple[Any, Any]) -> None:
    one, _ = cql_pair
    layout = first_layout()
    await one.compare_and_set(0, layout)
    execute = one._execute

    async def applied_then_lost(name: str, params: list[Any]) -> Any:
        result = await execute(name, params)
        if name == "change":
            raise BackendError("layout", "change: OperationTimedOut: errors={}, last_host=127.0.0.1")
        return result

    one._execute = applied_then_lost
    dual = grown(layout)
    await one.compare_and_set(1, dual)  # it was stored: no error
    assert await one.read() == dual

    async def lost_before(name: str, params: list[Any]) -> Any:
        if name == "change":
            raise BackendError("layout", "change: NoHostAvailable")
        return await execute(name, params)

    one._execute = lost_before
    with pytest.raises(BackendError, match="NoHostAvailable"):
        await one.compare_and_set(2, dual.switch())
    assert await one.read() == dual

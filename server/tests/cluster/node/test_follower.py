"""A shard node following a polled layout store: a newer stored epoch reaches the node through its own
SetLayout (write fence included); an older or equal one, or a store that does not answer, changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from server.cluster.layout import Layout, Placement
from server.cluster.node.follower import LayoutFollower
from server.errors import BackendError
from server.tests.cluster.stores import InProcessNodes, MemoryLayoutStore, first_layout
from shards.records import ErrorKind, ShardError

NODE = "node-0"


@pytest.fixture
async def node() -> AsyncIterator[tuple[InProcessNodes, MemoryLayoutStore, LayoutFollower]]:
    layout = first_layout((NODE,), shards=4)
    nodes = await InProcessNodes.start(layout)
    store = MemoryLayoutStore(layout)
    client = nodes.clients[NODE]

    async def epoch_now() -> int:
        return (await client.get_layout(5)).epoch

    epochs: list[int] = [layout.epoch]

    async def apply(stored: Layout) -> object:
        adopted = await client.set_layout(stored.to_json(), False, 5)
        epochs.append(adopted.epoch)
        return adopted

    follower = LayoutFollower(store, lambda: epochs[-1], apply, 0.01, NODE)
    try:
        yield nodes, store, follower
    finally:
        await nodes.stop()


async def test_a_newer_stored_epoch_reaches_the_node(
    node: tuple[InProcessNodes, MemoryLayoutStore, LayoutFollower],
) -> None:
    nodes, store, follower = node
    assert not await follower.step()  # the store holds what the node follows
    first = store.layout
    assert first is not None
    dual = first.begin(Placement(6, (NODE,), 1, 64), {})
    await store.compare_and_set(1, dual)
    assert await follower.step()
    got = await nodes.clients[NODE].get_layout(5)
    assert got.epoch == 2 and got.shard_ids == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ShardError) as info:  # writes routed by the old epoch are fenced now
        await nodes.clients[NODE].delete(0, [1], 5, layout_epoch=1)
    assert info.value.kind is ErrorKind.STALE_LAYOUT
    assert not await follower.step()


async def test_the_follower_outlives_a_store_that_does_not_answer(
    node: tuple[InProcessNodes, MemoryLayoutStore, LayoutFollower],
) -> None:
    nodes, store, follower = node
    real_read = store.read
    failures = 0

    async def flaky() -> Layout | None:
        nonlocal failures
        if failures < 3:
            failures += 1
            raise BackendError("layout", "read: NoHostAvailable")
        return await real_read()

    store.read = flaky  # type: ignore[method-assign]
    first = store.layout
    assert first is not None
    store.layout = first.begin(Placement(5, (NODE,), 1, 64), {})
    task = asyncio.ensure_future(follower.run())
    try:
        async with asyncio.timeout(5):
            while (await nodes.clients[NODE].get_layout(5)).epoch != 2:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert failures == 3

"""A shard node following a layout: backfill yields to live writes, writes are fenced by epoch, shards
open and drop as layouts change, and the layout survives a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from server import _core
from server.cluster.layout import Layout, Placement, node_name
from server.cluster.node.keeper import NodeLayoutKeeper, load_layout
from server.tests.routing.fakes import DIM, unit_vectors
from shards.client import GrpcShardClient
from shards.host import ShardHost
from shards.index import ShardIndex
from shards.records import ErrorKind, IndexParams, RecordBatch, ShardError
from shards.service import serve_node

PARAMS = IndexParams(dim=DIM, initial_capacity=64)


def records(ids: list[str], vectors: np.ndarray) -> RecordBatch:
    return RecordBatch(_core.stable_hash64(ids), ids, vectors, [i.encode() for i in ids])


def test_backfill_never_overwrites_a_live_write_or_resurrects_a_delete(tmp_path: Path) -> None:
    v = unit_vectors(4)
    shard = ShardIndex(0, PARAMS, tmp_path)
    shard.upsert(records(["gone"], v[3:4]))
    shard.start_receiving()
    shard.upsert(records(["x"], v[1:2]))  # live: newer than what the copy scanned
    shard.delete(_core.stable_hash64(["gone"]))
    written = shard.upsert(records(["x", "y", "gone"], v[0:3]), backfill=True)
    assert written == 1  # only y
    x = shard.fetch(_core.stable_hash64(["x"]))
    assert np.allclose(x.vectors[0], v[1])
    assert len(shard.fetch(_core.stable_hash64(["gone"]))) == 0
    shard.stop_receiving()
    assert shard.upsert(records(["x"], v[0:1]), backfill=True) == 1  # not receiving: a plain upsert
    shard.close()
    reopened = ShardIndex(0, PARAMS, tmp_path)  # what was logged replays to the same state
    assert sorted(reopened.fetch(_core.stable_hash64(["x", "y", "gone"])).item_ids) == ["x", "y"]
    reopened.close()


def layout(epoch: int, shards: int, phase_target: int | None = None) -> Layout:
    nodes = (node_name(0),)
    base = Layout(epoch, Placement(shards, nodes, 1, 64), {nodes[0]: "127.0.0.1:1"})
    if phase_target is None:
        return base
    return Layout(epoch, base.current, base.addresses, Placement(phase_target, nodes, 1, 64), "dual")


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[tuple[GrpcShardClient, ShardHost, Path]]:
    first = layout(1, 4)
    host = ShardHost(PARAMS, tmp_path, first.hosted("node-0"))
    keeper = NodeLayoutKeeper("node-0", host, tmp_path, first)
    server = await serve_node(host, "127.0.0.1:0", layout=keeper)
    client = GrpcShardClient(f"127.0.0.1:{server.port}")
    try:
        yield client, host, tmp_path
    finally:
        await client.close()
        await server.stop(1)
        host.close()


async def test_writes_are_fenced_by_layout_epoch(node: tuple[GrpcShardClient, ShardHost, Path]) -> None:
    client, _host, _ = node
    batch = {0: records(["a"], unit_vectors(1))}
    assert await client.upsert(batch, 5, layout_epoch=1) == 1
    adopted = await client.set_layout(layout(2, 6, phase_target=None).to_json())
    assert adopted.epoch == 2 and adopted.shard_ids == [0, 1, 2, 3, 4, 5]
    for epoch in (1, 3):  # behind the node, and ahead of it
        with pytest.raises(ShardError) as info:
            await client.upsert(batch, 5, layout_epoch=epoch)
        assert info.value.kind is ErrorKind.STALE_LAYOUT
    with pytest.raises(ShardError) as info:
        await client.delete(0, [1], 5, layout_epoch=1)
    assert info.value.kind is ErrorKind.STALE_LAYOUT
    assert await client.upsert(batch, 5, layout_epoch=2) == 1
    assert await client.upsert(batch, 5) == 1  # epoch 0: tools outside the cluster are not fenced
    stats = await client.stats(5)
    assert (stats.node_name, stats.layout_epoch) == ("node-0", 2)
    with pytest.raises(ShardError) as info:
        await client.set_layout(layout(1, 4).to_json())
    assert info.value.kind is ErrorKind.INVALID_ARGUMENT


async def test_layouts_open_receive_and_drop_shards(node: tuple[GrpcShardClient, ShardHost, Path]) -> None:
    client, host, data = node
    dual = layout(2, 4, phase_target=6)
    await client.set_layout(dual.to_json())
    assert host.shard_ids == [0, 1, 2, 3, 4, 5]
    assert all(host.shard(s).receiving for s in range(6))
    final = dual.switch().finish()  # epoch 4: 6 shards
    shrink = Layout(5, Placement(3, ("node-0",), 1, 64), final.addresses)
    await client.set_layout(shrink.to_json())
    assert host.shard_ids == [0, 1, 2, 3, 4, 5]  # not dropped until asked
    assert not any(host.shard(s).receiving for s in range(6))
    await client.set_layout(shrink.to_json(), drop_unplaced=True)
    assert host.shard_ids == [0, 1, 2]
    assert not (data / "shard-00005").exists()
    assert load_layout(data) == shrink  # what a restart resumes from
    got = await client.get_layout(5)
    assert got.epoch == 5 and Layout.from_json(got.layout_json) == shrink and got.incarnation > 0

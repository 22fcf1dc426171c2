"""The catalogue replica following the shards' change feeds: first sync, live changes, a replica that
fails, and a follower that fell further behind than the shard keeps."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence

import numpy as np
import numpy.typing as npt
import pytest

from server import _core, metrics
from server.catalog.feed import CatalogueFeed
from server.catalog.item_store import ItemStore
from server.catalog.payload import ItemMetadata, encode_metadata
from shards.changes import FeedRead
from shards.client import InProcessShardClient, ShardClient
from shards.host import ShardHost
from shards.records import ErrorKind, IndexParams, RecordBatch, ShardError

DIM = 4
SHARDS = 3
PARAMS = IndexParams(dim=DIM, space="ip", m=8, ef_construction=50, ef_search=20, initial_capacity=64)


def records(shard: int, names: Sequence[str], colour: str = "red") -> RecordBatch:
    ids = [f"s{shard}-{name}" for name in names]
    rng = np.random.default_rng(len(ids))
    vectors = rng.normal(size=(len(ids), DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    payloads = [encode_metadata(ItemMetadata({"colour": colour}, 1.0, 0)) for _ in ids]
    return RecordBatch(_core.stable_hash64(ids), ids, vectors, payloads)


def labels_of(*item_ids: str) -> npt.NDArray[np.uint64]:
    return _core.stable_hash64(list(item_ids))


class Replica:
    """An in-process replica that can be taken down: calls fail, and streams break at their next read."""

    def __init__(self, host: ShardHost) -> None:
        self.host = host
        self.client = InProcessShardClient(host)
        self.down = False
        self.follows = 0

    def _check(self) -> None:
        if self.down:
            raise ShardError("replica down", ErrorKind.UNAVAILABLE)

    async def follow(self, shard_id: int, incarnation: int, after: int) -> AsyncIterator[FeedRead]:
        self._check()
        self.follows += 1
        async for read in self.host.follow(shard_id, incarnation, after, heartbeat_s=0.02):
            self._check()
            yield read

    async def scan(self, shard_id: int, batch_size: int = 1024) -> AsyncIterator[RecordBatch]:
        self._check()
        async for batch in self.client.scan(shard_id, batch_size):
            yield batch


class Sources:
    """The router's side: `count` shards; an item's shard is in its id unless `moved` says otherwise."""

    def __init__(self, replicas: list[Replica]) -> None:
        self.replicas = replicas
        self.count = SHARDS
        self.moved: dict[str, int] = {}

    @property
    def shard_count(self) -> int:
        return self.count

    def readable_replicas(self, shard: int) -> list[tuple[str, ShardClient]]:
        return [(f"node-{i}", r) for i, r in enumerate(self.replicas)]  # type: ignore[misc]

    def shard_of(self, item_ids: Sequence[str]) -> npt.NDArray[np.uint32]:
        return np.array([self.moved.get(i, int(i.split("-")[0][1:])) for i in item_ids], dtype=np.uint32)


def write_everywhere(replicas: list[Replica], shard: int, batch: RecordBatch) -> None:
    for r in replicas:
        r.host.upsert({shard: batch})


def delete_everywhere(replicas: list[Replica], shard: int, labels: npt.NDArray[np.uint64]) -> None:
    for r in replicas:
        r.host.delete(shard, labels)


async def eventually(check: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


def live_ids(items: ItemStore) -> set[str]:
    return {items.item_id(r) for r in np.flatnonzero(items.alive_column()).tolist()}


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[list[Replica], ItemStore, CatalogueFeed]]:
    replicas = [Replica(ShardHost(PARAMS, None, range(SHARDS))) for _ in range(2)]
    items = ItemStore(DIM)
    feed = CatalogueFeed(Sources(replicas), items, retry_s=0.01)
    yield replicas, items, feed
    await feed.close()
    for r in replicas:
        r.host.close()


async def test_start_loads_every_shard_then_follows_writes_and_deletes(cluster) -> None:  # type: ignore[no-untyped-def]
    replicas, items, feed = cluster
    for shard in range(SHARDS):
        write_everywhere(replicas, shard, records(shard, ["a", "b"]))
    assert await feed.start(5.0) == 2 * SHARDS
    assert feed.synced_shards == SHARDS

    # Writes through another frontend reach the shards only; this replica learns them from the feed.
    write_everywhere(replicas, 1, records(1, ["c"], colour="blue"))
    write_everywhere(replicas, 1, records(1, ["a"], colour="green"))  # a re-upsert replaces metadata
    delete_everywhere(replicas, 2, labels_of("s2-b"))
    await eventually(lambda: "s1-c" in live_ids(items) and "s2-b" not in live_ids(items))
    row = items.row_of("s1-a")
    assert row is not None
    await eventually(lambda: items.metadata(row).attributes == {"colour": "green"})
    np.testing.assert_allclose(
        items.vectors(items.rows_of(["s1-c"])), records(1, ["c"]).vectors, atol=2e-3
    )  # FP16 table


async def test_a_failed_replica_is_left_for_the_next_which_is_rescanned(cluster) -> None:  # type: ignore[no-untyped-def]
    replicas, items, feed = cluster
    write_everywhere(replicas, 0, records(0, ["a", "b"]))
    await feed.start(5.0)
    resyncs = metrics.FEED_RESYNCS._value.get()
    replicas[0].down = True
    # Meanwhile a delete and a write land (on the replica still up, as a write with one ack would).
    replicas[1].host.delete(0, labels_of("s0-a"))
    replicas[1].host.upsert({0: records(0, ["c"])})
    await eventually(lambda: live_ids(items) == {"s0-b", "s0-c"})
    # Another replica is another feed: the switch re-read the shards from it, and the scan's diff
    # removed what it no longer holds.
    assert metrics.FEED_RESYNCS._value.get() >= resyncs + SHARDS
    assert replicas[1].follows >= SHARDS


async def test_a_follower_further_behind_than_the_shard_keeps_resyncs(cluster) -> None:  # type: ignore[no-untyped-def]
    replicas, items, feed = cluster
    replicas = replicas[:1]
    feed = CatalogueFeed(Sources(replicas), items, retry_s=0.01)
    log = replicas[0].host.shard(0).changes
    log._retain = 1  # a tiny ring (one change), and no WAL behind it (in-memory shard)
    write_everywhere(replicas, 0, records(0, ["a", "b", "c"]))
    await feed.start(5.0)
    await feed.close()  # the frontend stalls...
    for name in "defg":
        write_everywhere(replicas, 0, records(0, [name]))
    delete_everywhere(replicas, 0, labels_of("s0-a", "s0-d"))
    assert log.read(*feed.cursor(0)).reset  # ...past what the shard keeps
    await feed.start(5.0)  # same cursors: reset, scan, diff
    await eventually(lambda: live_ids(items) == {"s0-b", "s0-c", "s0-e", "s0-f", "s0-g"})
    await feed.close()


async def test_lag_is_measured_per_applied_change(cluster) -> None:  # type: ignore[no-untyped-def]
    replicas, items, feed = cluster
    await feed.start(5.0)
    before = metrics.FEED_LAG._sum.get(), sum(b.get() for b in metrics.FEED_LAG._buckets)
    write_everywhere(replicas, 0, records(0, ["x"]))
    await eventually(lambda: "s0-x" in live_ids(items))
    count = sum(b.get() for b in metrics.FEED_LAG._buckets)
    assert count == before[1] + 1
    assert 0 <= metrics.FEED_LAG._sum.get() - before[0] < 5.0


async def test_resharding_moves_are_not_deletes_and_new_shards_are_followed() -> None:
    replicas = [Replica(ShardHost(PARAMS, None, range(SHARDS + 1)))]
    items = ItemStore(DIM)
    sources = Sources(replicas)
    sources.count = SHARDS - 1  # shard 2 (and 3) are not placed yet
    feed = CatalogueFeed(sources, items, retry_s=0.01)
    try:
        write_everywhere(replicas, 0, records(0, ["a", "b"]))
        write_everywhere(replicas, 2, records(2, ["c"]))
        await feed.start(5.0)
        assert live_ids(items) == {"s0-a", "s0-b"}
        # A reshard: s0-a is copied to shard 2, reads switch to three shards, then the clean-up deletes
        # it from shard 0. It moved; it was not deleted.
        write_everywhere(replicas, 2, records(0, ["a"]))
        sources.moved["s0-a"] = 2
        sources.count = SHARDS
        await eventually(lambda: "s2-c" in live_ids(items))  # the new shard is followed
        delete_everywhere(replicas, 0, labels_of("s0-a"))
        delete_everywhere(replicas, 0, labels_of("s0-b"))  # a real delete, for comparison
        await eventually(lambda: "s0-b" not in live_ids(items))
        assert "s0-a" in live_ids(items)
        # Shrinking stops the followers of the shards that went away.
        sources.count = 1
        await eventually(lambda: feed._tasks.keys() == {0})
    finally:
        await feed.close()
        replicas[0].host.close()

"""The shards' change feed: the ring, the WAL behind it, resets, and the stream over both transports."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from shards.changes import ChangeLog, FeedRead
from shards.host import ShardHost
from shards.index import ShardIndex
from shards.records import ErrorKind, IndexParams, ShardError
from shards.tests.helpers import batch_of, connected, unit

DIM = 4
PARAMS = IndexParams(dim=DIM, space="ip", m=8, ef_construction=50, ef_search=20, initial_capacity=64)


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return unit(np.random.default_rng(seed).normal(size=(n, DIM)))


def lsns(read: FeedRead) -> list[int]:
    return [c.lsn for c in read.changes]


# --- the ring ------------------------------------------------------------------------------------------
def filled(n: int, retain: int = 100) -> ChangeLog:
    """`n` one-label deletes (8 bytes each) in a ring holding `retain` of them."""
    log = ChangeLog(1, 8 * retain)
    for lsn in range(1, n + 1):
        log.append(lsn, deletes=np.array([lsn], dtype=np.uint64))
    return log


@pytest.mark.parametrize(
    ("appended", "retain", "after", "max_items", "expected", "position", "reset"),
    [
        (5, 100, 0, 100, [1, 2, 3, 4, 5], 5, False),  # everything from the start
        (5, 100, 3, 100, [4, 5], 5, False),  # a cursor in the middle
        (5, 100, 5, 100, [], 5, False),  # caught up: nothing, same position
        (5, 100, 0, 2, [1, 2], 2, False),  # bounded reads, resumed from where they stop
        (10, 3, 7, 100, [8, 9, 10], 10, False),  # exactly what the ring still holds
        (10, 3, 6, 100, [], 10, True),  # older than the ring, and no WAL: reset to the newest
        (5, 100, 9, 100, [], 5, True),  # a cursor ahead of the shard (another incarnation's): reset
    ],
)
def test_ring_reads(
    appended: int,
    retain: int,
    after: int,
    max_items: int,
    expected: list[int],
    position: int,
    reset: bool,
) -> None:
    log = filled(appended, retain)
    read = log.read(log.incarnation, after, max_items)
    assert (lsns(read), read.position, read.reset) == (expected, position, reset)


def test_another_incarnation_resets_to_the_current_position() -> None:
    log = filled(3)
    read = log.read(log.incarnation + 1, 3)
    assert read.reset and read.position == 3 and read.incarnation == log.incarnation
    assert ChangeLog(1).incarnation != log.incarnation


def test_a_write_that_failed_to_apply_is_skipped_not_waited_for() -> None:
    log = filled(3)
    log.skip(4)
    log.append(5, deletes=np.array([5], dtype=np.uint64))
    assert lsns(log.read(log.incarnation, 4)) == [5]
    assert log.read(log.incarnation, 2).reset  # the gap cannot be served from memory


def test_appends_out_of_order_are_refused() -> None:
    log = filled(3)
    with pytest.raises(ValueError, match="out of order"):
        log.append(3, deletes=np.array([1], dtype=np.uint64))


async def test_waiters_wake_when_another_thread_appends() -> None:
    log = filled(2)
    assert not await log.wait_beyond(2, 0.05)
    waiting = asyncio.create_task(log.wait_beyond(2, 5.0))
    await asyncio.sleep(0.01)
    threading.Thread(target=lambda: log.append(3, deletes=np.array([3], dtype=np.uint64))).start()
    assert await asyncio.wait_for(waiting, 2.0)
    assert await log.wait_beyond(1, 0.0)  # already beyond: no wait


# --- a shard publishes what it applies -----------------------------------------------------------------
def test_a_shard_publishes_upserts_and_deletes_in_lsn_order() -> None:
    shard = ShardIndex(0, PARAMS)
    shard.upsert(batch_of([1, 2], vectors(2)))
    shard.delete([1, 99])
    read = shard.changes.read(shard.changes.incarnation, 0)
    assert lsns(read) == [1, 2]
    upsert, delete = read.changes
    assert upsert.upserts is not None and upsert.upserts.item_ids == ["item-1", "item-2"]
    assert delete.deletes is not None and delete.deletes.tolist() == [1, 99]
    assert upsert.applied_at > 0


def test_positions_older_than_the_ring_come_from_the_wal(tmp_path: Path) -> None:
    shard = ShardIndex(0, PARAMS, tmp_path, feed_retain_bytes=1)
    for label in range(1, 6):
        shard.upsert(batch_of([label], vectors(1, label)))
    inc = shard.changes.incarnation
    read = shard.changes.read(inc, 1)
    assert lsns(read) == [2, 3, 4, 5]
    assert read.changes[0].applied_at == 0.0  # re-read from the log, which keeps no times
    assert read.changes[0].upserts is not None and read.changes[0].upserts.item_ids == ["item-2"]
    shard.snapshot()  # drops the segments behind the snapshot: those positions are gone for good
    shard.upsert(batch_of([6], vectors(1, 6)))
    assert shard.changes.read(inc, 1).reset
    assert lsns(shard.changes.read(inc, 5)) == [6]
    shard.close()


def test_a_reopened_shard_is_a_new_incarnation(tmp_path: Path) -> None:
    shard = ShardIndex(0, PARAMS, tmp_path)
    shard.upsert(batch_of([1], vectors(1)))
    old = shard.changes.incarnation
    shard.close()
    again = ShardIndex(0, PARAMS, tmp_path)
    read = again.changes.read(old, 1)
    assert read.reset and read.position == 1  # followers rescan; the position continues the LSNs
    again.close()


# --- the stream, in process and over gRPC --------------------------------------------------------------
@pytest.fixture(params=["in-process", "grpc"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_the_stream_resets_a_new_follower_then_brings_each_write(transport: str) -> None:
    host = ShardHost(PARAMS, None, [0, 1])
    host.upsert({0: batch_of([1], vectors(1))})
    async with connected(host, transport) as (client, _):
        first = await anext(aiter(client.follow(0, 0, 0)))
        assert first.reset and first.position == 1
        stream = aiter(client.follow(0, first.incarnation, first.position))
        await asyncio.to_thread(host.upsert, {0: batch_of([2, 3], vectors(2)), 1: batch_of([4], vectors(1))})
        read = await asyncio.wait_for(anext(stream), 5.0)
        assert not read.reset and lsns(read) == [2] and read.position == 2
        change = read.changes[0]
        assert change.upserts is not None and change.upserts.item_ids == ["item-2", "item-3"]
        np.testing.assert_allclose(change.upserts.vectors, host.fetch(0, [2, 3]).vectors)
        await asyncio.to_thread(host.delete, 0, [2])
        read = await asyncio.wait_for(anext(stream), 5.0)
        assert read.changes[0].deletes is not None and read.changes[0].deletes.tolist() == [2]
        await stream.aclose()  # type: ignore[attr-defined]


async def test_an_idle_stream_sends_heartbeats() -> None:
    host = ShardHost(PARAMS, None, [0])
    log = host.shard(0).changes
    stream = aiter(host.follow(0, log.incarnation, 0, heartbeat_s=0.05))
    beat = await asyncio.wait_for(anext(stream), 1.0)
    assert (beat.changes, beat.position, beat.reset) == ((), 0, False)
    assert not (await asyncio.wait_for(anext(stream), 1.0)).changes
    host.close()


async def test_following_a_shard_the_node_does_not_hold_is_not_found(transport: str) -> None:
    host = ShardHost(PARAMS, None, [0])
    async with connected(host, transport) as (client, _):
        with pytest.raises(ShardError) as caught:
            await anext(aiter(client.follow(7, 0, 0)))
        assert caught.value.kind is ErrorKind.NOT_FOUND

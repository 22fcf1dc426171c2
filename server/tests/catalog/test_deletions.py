"""The deletion log behind Catalog.WatchDeletes: fed by the catalogue's deletes, replayed from a
position, followed, bounded, and ended when the frontend stops."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import numpy as np

from server import _core
from server.catalog.deletions import MAX_IDS_PER_MESSAGE, DeletedBatch, DeletionLog
from server.catalog.item_store import ItemStore
from server.catalog.payload import ItemMetadata


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def take(stream: AsyncIterator[DeletedBatch], n: int, timeout_s: float = 5.0) -> list[DeletedBatch]:
    return [await asyncio.wait_for(anext(stream), timeout_s) for _ in range(n)]


def ids(batches: list[DeletedBatch]) -> list[str]:
    return [i for b in batches for i in b.item_ids]


def test_the_catalogues_deletes_are_logged_and_upserts_are_not() -> None:
    items = ItemStore(4)
    log = DeletionLog(items)
    names = ["a", "b", "c"]
    vectors = np.eye(3, 4, dtype=np.float32)
    items.upsert(names, _core.stable_hash64(names), vectors, [ItemMetadata({}, 0.0, 0)] * 3)
    assert len(log) == 0
    items.delete(["b", "missing"])
    items.delete(["b"])  # already deleted: the catalogue reports nothing, nothing is logged
    assert len(log) == 1


async def test_replays_from_a_position_then_follows() -> None:
    clock = Clock()
    log = DeletionLog(clock=clock)
    log.record(["old"])
    clock.now += 1
    log.record(["x", "y"])
    since_ms = int(clock.now * 1000)
    clock.now += 1
    log.record(["z"])
    stream = log.follow(since_ms)
    replayed = await take(stream, 2)
    assert ids(replayed) == ["x", "y", "z"]
    assert replayed[-1].position_ms == int(clock.now * 1000)
    log.record(["new"])
    assert ids(await take(stream, 1)) == ["new"]
    await stream.aclose()


async def test_since_zero_follows_new_deletes_only_and_says_so_at_once() -> None:
    log = DeletionLog()
    log.record(["before"])
    stream = log.follow(0)
    first = await take(stream, 1)
    assert first[0].item_ids == () and first[0].covers_from_ms <= first[0].position_ms
    log.record(["after"])
    assert ids(await take(stream, 1)) == ["after"]
    await stream.aclose()


async def test_heartbeats_while_nothing_happens() -> None:
    log = DeletionLog()
    stream = log.follow(0, heartbeat_s=0.05)
    beats = await take(stream, 3)
    assert all(b.item_ids == () for b in beats)
    assert beats[0].position_ms <= beats[1].position_ms <= beats[2].position_ms
    await stream.aclose()


async def test_the_bound_drops_the_oldest_and_moves_covers_from() -> None:
    clock = Clock()
    log = DeletionLog(max_ids=3, clock=clock)
    start_ms = log.covers_from_ms
    for name in ("a", "b", "c", "d"):
        clock.now += 1
        log.record([name])
    assert len(log) == 3
    assert log.covers_from_ms == start_ms + 1000 + 1  # just past "a"
    stream = log.follow(start_ms)
    replayed = await take(stream, 3)
    assert ids(replayed) == ["b", "c", "d"]
    assert replayed[0].covers_from_ms > start_ms  # the watcher learns it missed something
    await stream.aclose()


async def test_a_mass_delete_goes_out_in_pieces() -> None:
    log = DeletionLog(max_ids=3 * MAX_IDS_PER_MESSAGE)
    stream = log.follow(0)
    await take(stream, 1)
    log.record(f"i{n}" for n in range(2 * MAX_IDS_PER_MESSAGE + 1))
    pieces = await take(stream, 3)
    assert [len(p.item_ids) for p in pieces] == [MAX_IDS_PER_MESSAGE, MAX_IDS_PER_MESSAGE, 1]
    await stream.aclose()


async def test_a_delete_applied_on_another_thread_wakes_the_follower() -> None:
    log = DeletionLog()
    stream = log.follow(0, heartbeat_s=30.0)
    await take(stream, 1)
    threading.Thread(target=log.record, args=(["from-a-thread"],)).start()
    assert ids(await take(stream, 1, timeout_s=2.0)) == ["from-a-thread"]
    await stream.aclose()


async def test_close_ends_every_follower() -> None:
    log = DeletionLog()
    stream = log.follow(0, heartbeat_s=30.0)
    await take(stream, 1)
    log.close()
    assert [b async for b in stream] == []


async def test_a_long_log_keeps_its_bound_and_its_order_across_compactions() -> None:
    clock = Clock()
    log = DeletionLog(max_ids=100, clock=clock)
    for n in range(5000):
        clock.now += 0.001
        log.record([f"i{n}"])
    assert len(log) == 100
    stream = log.follow(1)
    replayed = await take(stream, 100)
    assert ids(replayed) == [f"i{n}" for n in range(4900, 5000)]
    await stream.aclose()


def erased(batches: list[DeletedBatch]) -> list[str]:
    return [u for b in batches for u in b.erased_user_ids]


async def test_erasures_are_streamed_in_order_with_the_deletes_and_count_towards_the_bound() -> None:
    clock = Clock()
    log = DeletionLog(max_ids=3, clock=clock)
    stream = log.follow(0, heartbeat_s=30.0)
    await take(stream, 1)  # the first message: nothing to replay
    log.record(["item"])
    clock.now += 0.001
    assert log.record_erasures(["zoe", "yan"])
    got = await take(stream, 2)
    assert ids(got) == ["item"] and got[0].erased_user_ids == ()
    assert erased(got) == ["zoe", "yan"] and got[1].item_ids == ()
    assert got[1].position_ms == int(clock.now * 1000)
    assert {b.started_ms for b in got} == {log.started_ms} == {int(1_800_000_000.0 * 1000)}
    clock.now += 0.001
    log.record_erasures(["xi"])  # 4 ids held > 3: the oldest batch goes
    assert len(log) == 3
    assert log.covers_from_ms > log.started_ms  # the watcher can tell the log is no longer whole
    assert erased(await take(log.follow(1), 2)) == ["zoe", "yan", "xi"]
    await stream.aclose()


async def test_a_mass_erasure_goes_out_in_pieces() -> None:
    log = DeletionLog()
    users = [f"u{n}" for n in range(MAX_IDS_PER_MESSAGE + 1)]
    log.record_erasures(users)
    got = await take(log.follow(1), 2)
    assert [len(b.erased_user_ids) for b in got] == [MAX_IDS_PER_MESSAGE, 1]
    assert erased(got) == users


async def test_close_sends_what_was_recorded_then_refuses_erasures() -> None:
    log = DeletionLog()
    stream = log.follow(0, heartbeat_s=30.0)
    await take(stream, 1)
    # Recorded and closed before the follower runs again: a clean end of stream still carries it.
    assert log.record_erasures(["zoe"])
    log.close()
    assert erased([b async for b in stream]) == ["zoe"]
    assert not log.record_erasures(["yan"])  # the caller must not acknowledge it as streamed
    assert len(log) == 1

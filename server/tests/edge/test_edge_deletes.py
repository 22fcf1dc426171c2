"""Deletes reach the edge: a cached answer (L1 or the shared level) holding an item deleted since it was
stored is a miss; the edge follows an origin's Catalog.WatchDeletes and resumes it on any origin; gaps it
cannot fill make older entries misses; bad WatchDeletes requests are INVALID_ARGUMENT."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from server.api.services import CatalogService
from server.backends.memory_cache import InMemoryCache
from server.catalog.deletions import DeletionLog
from server.client import RecdClient
from server.edge.cache import EdgeCache
from server.edge.deletes import DeleteWatch, ErasureWatch, RecentDeletes
from server.edge.entry import Entry
from server.edge.origin import OriginPool, RetryBudget
from server.edge.server import build_edge
from server.gen.recd.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2, recommender_pb2
from server.tests.api.test_end_to_end import load_toy
from server.tests.conftest import ToyCatalogue
from server.tests.edge.fakes import T0, FakeClock, FakeOrigin, edge_config, item_of, request


def answer(*item_ids: str) -> bytes:
    return recommender_pb2.RecommendResponse(
        items=[common_pb2.ScoredItem(item_id=i, score=1.0) for i in item_ids]
    ).SerializeToString()


async def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


# --- which entries are admitted --------------------------------------------------------------------------
# An entry stored at T0 holding items a and b; margin 2 s: deletes heard from T0 - 2 on may be in it.
@pytest.mark.parametrize(
    ("heard", "heard_at", "blind_until", "admitted"),
    [
        pytest.param([], None, None, True, id="nothing heard"),
        pytest.param(["a"], T0 + 1, None, False, id="an item of it deleted after it was stored"),
        pytest.param(["a"], T0 - 1, None, False, id="deleted just before: within the margin"),
        pytest.param(["a"], T0 - 3, None, True, id="deleted well before: the origin had applied it"),
        pytest.param(["zzz"], T0 + 1, None, True, id="a delete of an item not in it"),
        pytest.param([], None, T0 - 1, False, id="stored before a gap ended (+ margin)"),
        pytest.param([], None, T0 - 3, True, id="stored well after a gap"),
    ],
)
def test_admits(heard: list[str], heard_at: float | None, blind_until: float | None, admitted: bool) -> None:
    clock = FakeClock()
    recent = RecentDeletes(keep_s=100.0, margin_s=2.0, max_ids=10, clock=clock)
    if heard_at is not None:
        clock.now = heard_at
        recent.add(heard)
    if blind_until is not None:
        recent.blind(blind_until, "stream")
    assert recent.admits(Entry(answer("a", "b"), T0 + 60, T0 + 90, T0)) is admitted


def test_ids_are_forgotten_after_keep_s_and_the_bound_blinds() -> None:
    clock = FakeClock()
    recent = RecentDeletes(keep_s=10.0, margin_s=0.0, max_ids=2, clock=clock)
    recent.add(["a"])
    clock.advance(11)
    recent.add(["b"])
    assert "a" not in recent and "b" in recent
    assert recent.blind_until == -math.inf
    clock.advance(1)
    recent.add(["c", "d"])  # over the bound: "b" goes, and what it might have matched is refused
    assert len(recent) == 2 and recent.blind_until == T0 + 11


# --- the cache refuses such entries --------------------------------------------------------------------
def make_edge(origin: FakeOrigin, clock: FakeClock, shared: object = None) -> EdgeCache:
    config = edge_config(delete_margin_s=0.5, user_version_refresh_s=0.0)
    return EdgeCache(config, origin, shared, clock=clock)  # type: ignore[arg-type]


async def test_a_cached_answer_holding_a_deleted_item_is_fetched_again() -> None:
    origin, clock = FakeOrigin(), FakeClock()
    edge = make_edge(origin, clock)
    assert item_of(await edge.recommend(request("u1"))) == "u1#1"
    clock.advance(10)
    edge.deletes.add(["someone-elses-item"])
    assert item_of(await edge.recommend(request("u1"))) == "u1#1"  # still a hit
    edge.deletes.add(["u1#1"])
    assert item_of(await edge.recommend(request("u1"))) == "u1#2"
    assert item_of(await edge.recommend(request("u1"))) == "u1#2"  # the new answer is cached again
    assert origin.recommend_calls == 2


async def test_a_stale_answer_holding_a_deleted_item_is_not_served_while_it_refreshes() -> None:
    origin, clock = FakeOrigin(ttl_s=10), FakeClock()
    edge = make_edge(origin, clock)
    await edge.recommend(request("u1"))
    clock.advance(15)  # stale, within the grace
    edge.deletes.add(["u1#1"])
    assert item_of(await edge.recommend(request("u1"))) == "u1#2"


async def test_the_shared_level_is_checked_too() -> None:
    shared, origin, clock = InMemoryCache(1 << 20), FakeOrigin(), FakeClock()
    a, b = make_edge(origin, clock, shared), make_edge(origin, clock, shared)
    await a.recommend(request("u1"))
    await a.drain()
    await b.recommend(request("someone-else"))  # b learns the model version from its own first answer
    assert item_of(await b.recommend(request("u1"))) == "u1#1"  # from the shared level
    assert origin.recommend_calls == 2
    clock.advance(10)
    b.deletes.add(["u1#1"])
    assert item_of(await b.recommend(request("u1"))) == "u1#3"
    await b.drain()
    # `a` has not heard of it yet: its own L1 still answers; once it has, the shared level has the new one.
    assert item_of(await a.recommend(request("u1"))) == "u1#1"
    a.deletes.add(["u1#1"])
    assert item_of(await a.recommend(request("u1"))) == "u1#3"
    assert origin.recommend_calls == 3


async def test_an_answer_from_an_origin_that_has_not_applied_a_delete_yet_is_not_cached() -> None:
    origin, clock = FakeOrigin(), FakeClock()
    edge = make_edge(origin, clock)
    edge.deletes.add(["u1#1"])  # heard of before the origin answers with it
    assert item_of(await edge.recommend(request("u1"))) == "u1#1"
    assert len(edge.l1) == 0
    assert item_of(await edge.recommend(request("u1"))) == "u1#2"


# --- the watch over gRPC --------------------------------------------------------------------------------
class NoCatalog:
    """Where a frontend's Catalog would be: the test records erasures in the log itself."""

    def add_erasure_listener(self, listener: object) -> None:
        pass


class LogServer:
    """A frontend reduced to its Catalog.WatchDeletes over a DeletionLog the test feeds."""

    def __init__(self, log: DeletionLog, port: int = 0) -> None:
        self.log = log
        self.server = grpc.aio.server()
        service = CatalogService(NoCatalog(), log, heartbeat_s=0.05)  # type: ignore[arg-type]
        catalog_pb2_grpc.add_CatalogServicer_to_server(service, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.address = f"127.0.0.1:{self.port}"

    async def stop(self) -> None:
        # As a frontend stops: the log first, then a drain in which the streams end cleanly.
        self.log.close()
        await self.server.stop(1.0)


def long_running_log() -> DeletionLog:
    """The log of a frontend that started 1000 s ago (its clock's first reading is then)."""
    started = iter([time.time() - 1000.0])
    return DeletionLog(clock=lambda: next(started, None) or time.time())


@pytest.fixture
async def started() -> AsyncIterator[Callable[[DeletionLog], asyncio.Future[LogServer]]]:
    servers: list[LogServer] = []

    async def start(log: DeletionLog, port: int = 0) -> LogServer:
        server = LogServer(log, port)
        await server.server.start()
        servers.append(server)
        return server

    yield start  # type: ignore[misc]
    for server in servers:
        await server.stop()


async def watching(
    *servers: LogServer, margin_s: float = 1.0
) -> tuple[DeleteWatch, RecentDeletes, OriginPool]:
    pool = OriginPool([s.address for s in servers], "round_robin", RetryBudget(0.1, 10.0))
    recent = RecentDeletes(keep_s=300.0, margin_s=margin_s, max_ids=1000)
    watch = DeleteWatch(pool, recent, idle_timeout_s=2.0, backoff_min_s=0.01)
    await watch.start()
    return watch, recent, pool


async def stop_watching(watch: DeleteWatch, pool: OriginPool) -> None:
    await watch.close()
    await pool.close()


async def test_the_stream_resumes_on_another_origin_from_its_last_position(started) -> None:  # type: ignore[no-untyped-def]
    a, b = await started(long_running_log()), await started(long_running_log())
    watch, recent, pool = await watching(a, b)
    try:
        await wait_until(lambda: watch.address == a.address)
        a.log.record(["x"])
        await wait_until(lambda: "x" in recent)
        b.log.record(["y"])  # applied by b, as the watch moves over
        await a.stop()  # its stream ends; the watch resumes on b, from a little before where it was
        await wait_until(lambda: "y" in recent)
        assert watch.address == b.address and watch.streams_opened == 2
        b.log.record(["z"])
        await wait_until(lambda: "z" in recent)
        assert recent.blind_until == -math.inf  # nothing was missed
    finally:
        await stop_watching(watch, pool)


async def test_an_origin_whose_log_starts_too_late_is_passed_over(started) -> None:  # type: ignore[no-untyped-def]
    young, old = await started(DeletionLog()), await started(long_running_log())
    watch, recent, pool = await watching(young, old)  # round robin tries `young` first
    try:
        await wait_until(lambda: watch.address == old.address)
        assert recent.blind_until == -math.inf
    finally:
        await stop_watching(watch, pool)


async def test_a_gap_no_origin_can_fill_refuses_older_entries(started) -> None:  # type: ignore[no-untyped-def]
    a, b = await started(DeletionLog()), await started(DeletionLog())
    watch, recent, pool = await watching(a, b)
    try:
        # a's log is too short; so is b's, the last one left: the watch settles for b.
        await wait_until(watch.connected.is_set)
        assert watch.address == b.address
        assert recent.blind_until == b.log.covers_from_ms / 1000
    finally:
        await stop_watching(watch, pool)


# --- erasures: every origin followed -------------------------------------------------------------------
class Erased:
    """What the watch erases (the edge cache's erase_users)."""

    def __init__(self) -> None:
        self.users: list[str] = []

    async def __call__(self, users: list[str]) -> None:
        self.users.extend(users)


async def watching_erasures(*servers: LogServer) -> tuple[ErasureWatch, Erased, RecentDeletes, OriginPool]:
    pool = OriginPool([s.address for s in servers], "round_robin", RetryBudget(0.1, 10.0))
    await pool.start()
    recent = RecentDeletes(keep_s=300.0, margin_s=1.0, max_ids=1000)
    erased = Erased()
    watch = ErasureWatch(pool, erased, recent, idle_timeout_s=2.0, backoff_min_s=0.01, rescan_s=0.05)
    await watch.start()
    return watch, erased, recent, pool


async def test_erasures_through_every_origin_are_heard_of(started) -> None:  # type: ignore[no-untyped-def]
    a, b = await started(long_running_log()), await started(long_running_log())
    watch, erased, recent, pool = await watching_erasures(a, b)
    try:
        await wait_until(lambda: watch.connected == {a.address, b.address})
        a.log.record_erasures(["zoe"])
        b.log.record_erasures(["yan", "yan"])
        a.log.record(["an-item"])  # item deletes are DeleteWatch's, not erasures
        await wait_until(lambda: sorted(erased.users) == ["yan", "zoe"])
        assert watch.erased == 2
        assert recent.blind_until == -math.inf and "an-item" not in recent
    finally:
        await watch.close()
        await pool.close()


async def test_a_frontend_restarted_after_a_clean_end_leaves_no_gap(started) -> None:  # type: ignore[no-untyped-def]
    a = await started(long_running_log())
    watch, erased, recent, pool = await watching_erasures(a)
    try:
        await wait_until(lambda: watch.connected == {a.address})
        a.log.record_erasures(["zoe"])
        await a.stop()  # a rolling deploy: its log closes, what it held is sent, the stream ends
        await wait_until(lambda: a.address not in watch.connected)
        successor = await started(DeletionLog(), a.port)  # a log that starts now, at the same address
        await wait_until(lambda: watch.connected == {a.address})
        successor.log.record_erasures(["yan"])
        await wait_until(lambda: erased.users[-1:] == ["yan"])
        assert "zoe" in erased.users
        assert recent.blind_until == -math.inf
    finally:
        await watch.close()
        await pool.close()


async def test_a_log_that_does_not_reach_back_refuses_older_entries(started) -> None:  # type: ignore[no-untyped-def]
    young = await started(DeletionLog())  # its log starts after everything the edge may still serve
    watch, _, recent, pool = await watching_erasures(young)
    try:
        await wait_until(lambda: watch.connected == {young.address})
        assert recent.blind_until == young.log.covers_from_ms / 1000
    finally:
        await watch.close()
        await pool.close()


async def test_a_broken_stream_then_a_late_log_refuses_older_entries(started) -> None:  # type: ignore[no-untyped-def]
    a = await started(long_running_log())
    watch, _, recent, pool = await watching_erasures(a)
    try:
        await wait_until(lambda: watch.connected == {a.address})
        await a.server.stop(None)  # a crash: the stream breaks, nothing says it sent everything
        await wait_until(lambda: a.address not in watch.connected)
        successor = await started(DeletionLog(), a.port)
        await wait_until(lambda: watch.connected == {a.address})
        assert recent.blind_until == successor.log.covers_from_ms / 1000
    finally:
        await watch.close()
        await pool.close()


@pytest.mark.parametrize("dropped", [False, True], ids=["whole log", "log past its bound"])
async def test_a_frontend_that_appears_later_is_followed_from_its_start(started, dropped: bool) -> None:  # type: ignore[no-untyped-def]
    a = await started(long_running_log())
    found = [a.address]

    async def dns(target: str) -> list[str]:
        return list(found)

    pool = OriginPool(["frontends"], "round_robin", RetryBudget(0.1, 10.0), resolver=dns)
    await pool.start()
    recent = RecentDeletes(keep_s=300.0, margin_s=1.0, max_ids=1000)
    erased = Erased()
    watch = ErasureWatch(pool, erased, recent, idle_timeout_s=2.0, backoff_min_s=0.01, rescan_s=0.05)
    await watch.start()
    try:
        await wait_until(lambda: watch.connected == {a.address})
        newcomer = await started(DeletionLog(max_ids=1))  # a new pod: its log starts now
        newcomer.log.record_erasures(["zoe"])
        if dropped:
            newcomer.log.record_erasures(["yan"])  # past its bound: "zoe" is dropped before the edge looks
        found.append(newcomer.address)
        await pool.refresh()
        await wait_until(lambda: watch.connected == {a.address, newcomer.address})
        await wait_until(lambda: bool(erased.users))
        if dropped:
            assert erased.users == ["yan"]
            assert recent.blind_until == newcomer.log.covers_from_ms / 1000
        else:
            assert erased.users == ["zoe"]
            assert recent.blind_until == -math.inf
    finally:
        await watch.close()
        await pool.close()


@pytest.mark.parametrize(
    "since_ms",
    [
        pytest.param(-1, id="negative"),
        pytest.param(int(time.time() * 1000) + 3_600_000, id="an hour ahead of the server"),
    ],
)
async def test_bad_watch_requests_are_invalid_argument(started, since_ms: int) -> None:  # type: ignore[no-untyped-def]
    server = await started(DeletionLog())
    async with grpc.aio.insecure_channel(server.address) as channel:
        stream = catalog_pb2_grpc.CatalogStub(channel).WatchDeletes(
            catalog_pb2.WatchDeletesRequest(since_ms=since_ms), timeout=5
        )
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stream.read()
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "since_ms" in (bad.value.details() or "")


# --- end to end: a real frontend behind a real edge ---------------------------------------------------
async def test_an_item_deleted_through_the_frontend_leaves_the_edges_cached_answer(
    server_address: str, toy: ToyCatalogue
) -> None:
    edge = build_edge(edge_config(origins=[server_address], delete_margin_s=0.0))
    await edge.start()
    client = RecdClient(edge.address, timeout_s=20.0)
    try:
        await load_toy(client, toy)
        first = await client.recommend("carol", k=10)
        assert await client.recommend("carol", k=10) == first and edge.cache.origin_calls == 1
        assert edge.watch is not None
        await wait_until(edge.watch.connected.is_set)

        deleted = first.items[0].item_id
        frontend = RecdClient(server_address, timeout_s=20.0)
        try:
            assert await frontend.delete_items([deleted]) == 1
        finally:
            await frontend.close()
        await wait_until(lambda: deleted in edge.cache.deletes)

        after = await client.recommend("carol", k=10)
        assert edge.cache.origin_calls == 2
        assert deleted not in {i.item_id for i in after.items}
        assert await client.recommend("carol", k=10) == after and edge.cache.origin_calls == 2
    finally:
        await client.close()
        await edge.stop()

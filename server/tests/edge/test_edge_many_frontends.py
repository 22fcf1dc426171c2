"""The edge in front of two real frontends over one set of shards, reached through one name (as a
headless Service): both get Recommend calls, a delete through either one drops the edge's cached
answers that hold the item, whichever frontend the edge follows, and a user's erasure, through the edge
or straight through either frontend, drops that user's."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from server.api.server import RecdServer
from server.client import RecdClient
from server.domain import Interaction
from server.edge.keys import key_of_user, user_key_prefix
from server.edge.server import EdgeServer, build_edge
from server.gen.recd.v1 import recommender_pb2 as rpb
from server.recommender import Recommender
from server.tests.api.test_end_to_end import cluster_items, load_toy
from server.tests.conftest import ToyCatalogue, frontends_over_one_host, make_config
from server.tests.edge.fakes import edge_config

TARGET = "recd-frontend.recd.test:50051"


async def eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"not reached within {timeout_s}s"
        await asyncio.sleep(0.02)


def count_recommends(recommender: Recommender) -> list[int]:
    calls = [0]
    inner = recommender.recommend

    async def counted(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        return await inner(*args, **kwargs)  # type: ignore[arg-type]

    recommender.recommend = counted  # type: ignore[method-assign]
    return calls


@pytest.fixture
async def frontends(toy: ToyCatalogue) -> AsyncIterator[list[RecdServer]]:
    async with frontends_over_one_host(make_config(), 2) as servers:
        client = RecdClient(servers[0].address, timeout_s=20.0)
        try:
            await load_toy(client, toy)
        finally:
            await client.close()
        yield servers


@pytest.fixture
async def edge(frontends: list[RecdServer]) -> AsyncIterator[EdgeServer]:
    async def dns(target: str) -> list[str]:
        return [s.address for s in frontends] if target == TARGET else []

    server = build_edge(edge_config(origins=[TARGET], balancing="round_robin"), resolver=dns)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_both_frontends_behind_one_name_get_calls(
    frontends: list[RecdServer], edge: EdgeServer, toy: ToyCatalogue
) -> None:
    counts = [count_recommends(s.recd.recommender) for s in frontends]
    client = RecdClient(edge.address, timeout_s=20.0)
    try:
        for i in range(10):
            await client.recommend(f"user-{i}", k=5)
    finally:
        await client.close()
    # Round robin, give or take the one turn the edge's deletes stream took.
    assert sum(c[0] for c in counts) == 10 and min(c[0] for c in counts) >= 4


@pytest.mark.parametrize("through", [0, 1], ids=["the first frontend", "the second frontend"])
async def test_a_delete_through_any_frontend_drops_the_edges_cached_answers(
    frontends: list[RecdServer], edge: EdgeServer, toy: ToyCatalogue, through: int
) -> None:
    assert edge.watch is not None
    await eventually(lambda: all(len(s.recd.items) == len(toy.item_ids) for s in frontends))
    client = RecdClient(edge.address, timeout_s=20.0)
    writer = RecdClient(frontends[through].address, timeout_s=20.0)
    try:
        first = await client.recommend("newcomer", k=10)
        assert await client.recommend("newcomer", k=10) == first and edge.cache.origin_calls == 1
        deleted = first.items[0].item_id
        await writer.delete_items([deleted])

        # Every frontend applies it (the shards' change feed), so the one the edge follows streams it.
        await eventually(lambda: all(s.recd.items.row_of(deleted) is None for s in frontends))
        await eventually(lambda: deleted in edge.cache.deletes)
        after = await client.recommend("newcomer", k=10)
        assert edge.cache.origin_calls == 2
        assert deleted not in {i.item_id for i in after.items}
    finally:
        await writer.close()
        await client.close()


def l1_keys_of(edge: EdgeServer, user: str) -> list[str]:
    prefix = user_key_prefix(edge.config.key_version, user)
    return [key for key in list(edge.cache.l1._entries) if key_of_user(key, prefix)]


async def test_an_erasure_through_the_edge_drops_the_users_cached_answers(
    frontends: list[RecdServer], edge: EdgeServer, toy: ToyCatalogue
) -> None:
    await eventually(lambda: all(len(s.recd.items) == len(toy.item_ids) for s in frontends))
    client = RecdClient(edge.address, timeout_s=20.0)
    try:
        history = cluster_items(toy, 5, 6)
        await client.record_interactions([Interaction("zoe", item, "click", 1.0, 0) for item in history])
        await client.recommend("stranger", k=10)
        warm = await client.recommend("zoe", k=10)
        assert await client.recommend("zoe", k=10) == warm  # from the edge's cache
        calls = edge.cache.origin_calls
        assert l1_keys_of(edge, "zoe") and l1_keys_of(edge, "stranger")

        await client.delete_user("zoe")

        assert l1_keys_of(edge, "zoe") == []  # gone from memory, not only unreachable
        assert l1_keys_of(edge, "stranger")  # nobody else's
        cold = await client.recommend("zoe", k=10)
        assert edge.cache.origin_calls == calls + 1  # a miss: answered by a frontend again
        assert cold.retrieval == rpb.RETRIEVAL_UNSPECIFIED and cold != warm
        assert not (await client.get_user("zoe")).found  # passed through to a frontend
    finally:
        await client.close()


@pytest.mark.parametrize("followed", [True, False], ids=["the frontend followed for deletes", "the other"])
async def test_an_erasure_straight_through_a_frontend_reaches_the_edge(
    frontends: list[RecdServer], edge: EdgeServer, toy: ToyCatalogue, followed: bool
) -> None:
    erasures = edge.erasures
    assert edge.watch is not None and erasures is not None
    await eventually(lambda: all(len(s.recd.items) == len(toy.item_ids) for s in frontends))
    await eventually(edge.watch.connected.is_set)
    await eventually(lambda: erasures.connected == {s.address for s in frontends})
    through = next(s for s in frontends if (s.address == edge.watch.address) == followed)
    client = RecdClient(edge.address, timeout_s=20.0)
    writer = RecdClient(through.address, timeout_s=20.0)
    try:
        history = cluster_items(toy, 5, 6)
        await client.record_interactions([Interaction("zoe", item, "click", 1.0, 0) for item in history])
        await client.recommend("stranger", k=10)
        warm = await client.recommend("zoe", k=10)
        assert await client.recommend("zoe", k=10) == warm  # from the edge's cache
        calls = edge.cache.origin_calls

        await writer.delete_user("zoe")  # the edge is not told by the call: only by the stream

        await eventually(lambda: l1_keys_of(edge, "zoe") == [])
        assert erasures.erased == 1
        assert l1_keys_of(edge, "stranger")  # nobody else's
        cold = await client.recommend("zoe", k=10)
        assert edge.cache.origin_calls == calls + 1  # a miss: answered by a frontend again
        assert cold.retrieval == rpb.RETRIEVAL_UNSPECIFIED and cold != warm
    finally:
        await writer.close()
        await client.close()


async def test_a_stopping_frontend_refuses_an_erasure_it_could_not_stream(
    frontends: list[RecdServer],
) -> None:
    stopping, other = frontends
    stopping.deletions.close()  # what RecdServer.stop does first
    writer = RecdClient(stopping.address, timeout_s=20.0)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await writer.delete_user("zoe")
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "send the erasure again" in (refused.value.details() or "")
    finally:
        await writer.close()
    retry = RecdClient(other.address, timeout_s=20.0)
    try:
        await retry.delete_user("zoe")  # another frontend takes it
    finally:
        await retry.close()

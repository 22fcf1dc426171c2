"""The state node's own behaviour beyond the role contracts (those run over it in server/tests/backends):
what it spares the workers (repeated popularity answers, one call per batch of cache sets) and how its
failures reach them."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.backends.memory_cache import InMemoryCache
from server.backends.memory_profiles import InMemoryProfileStore
from server.domain import Interaction
from server.errors import BackendError
from server.workers.state_node import StateNode
from server.workers.state_proxies import StateCache, StateProfileStore

MAX = 64 * 1024 * 1024


class CountingNode(StateNode):
    """Records the batches of cache sets it receives."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.set_batches: list[int] = []

    async def _cache_set_many(self, entries: list[tuple[str, bytes, float]]) -> None:
        self.set_batches.append(len(entries))
        await super()._cache_set_many(entries)


@pytest.fixture
async def node() -> AsyncIterator[CountingNode]:
    directory = Path(tempfile.mkdtemp(prefix="recd-state-"))
    node = CountingNode(
        str(directory / "state.sock"), InMemoryProfileStore(None), None, InMemoryCache(1 << 20)
    )
    await node.start()
    try:
        yield node
    finally:
        await node.stop(None)
        shutil.rmtree(directory, ignore_errors=True)


async def test_the_socket_is_this_users_only(node: CountingNode) -> None:
    assert stat.S_IMODE(os.stat(node.socket_path).st_mode) == 0o600
    assert node.hosted == ("recd.internal.ProfileStore", "recd.internal.Cache")


async def test_sets_issued_together_travel_as_one_call(node: CountingNode) -> None:
    cache = StateCache(node.socket_path, 5.0, MAX)
    try:
        await asyncio.gather(*(cache.set(f"k{i}", bytes([i]), 60) for i in range(10)))
        await cache.set("alone", b"x", 60)
        assert node.set_batches == [10]  # the lone set went as a plain set
        assert await cache.get_many([f"k{i}" for i in range(10)]) == [bytes([i]) for i in range(10)]
        assert await cache.get("alone") == b"x"
    finally:
        await cache.close()


async def test_popularity_is_sent_again_only_once_it_changed(node: CountingNode) -> None:
    store = StateProfileStore(node.socket_path, 10.0, MAX)
    try:
        await store.append_interactions([Interaction("u1", "a", "view", 1.0, 1_000)])
        first = await store.item_popularity(5.0)
        assert first["all_time"] == pytest.approx({"a": 1.0})
        # Unchanged: the very same object back, as the embedded store gives (the frontend skips its work).
        assert await store.item_popularity(5.0) is first
        await store.append_interactions([Interaction("u2", "b", "view", 1.0, 1_000)])
        second = await store.item_popularity(5.0)
        assert second is not first and set(second["all_time"]) == {"a", "b"}
    finally:
        await store.close()


async def test_a_state_node_that_is_gone_fails_reads_as_transient_and_the_cache_as_misses() -> None:
    directory = Path(tempfile.mkdtemp(prefix="recd-state-"))
    try:
        socket_path = str(directory / "absent.sock")
        store = StateProfileStore(socket_path, 0.5, MAX)
        cache = StateCache(socket_path, 0.2, MAX)
        with pytest.raises(BackendError) as failed:
            await store.get_profile("u1", 0.2)
        assert failed.value.transient
        with pytest.raises(BackendError):
            await store.append_interactions([Interaction("u1", "a", "view", 1.0, 1)])  # waits, then gives up
        assert await cache.get_many(["a", "b"]) == [None, None]
        await cache.set("a", b"1", 60)  # no error: best effort
        await store.close()
        await cache.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)

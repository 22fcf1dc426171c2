from __future__ import annotations

import asyncio
from collections.abc import Mapping

import numpy as np
import pytest

from server import _core, metrics
from server.catalog.item_store import ItemStore
from server.catalog.payload import ItemMetadata
from server.catalog.popularity_sync import PopularitySync
from server.errors import BackendError


class FakeProfiles:
    """Just the popularity read of a ProfileStore: answers what `counts` holds, or fails."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, float]] = {"all_time": {}, "trending": {}}
        self.fail = False
        self.reads = 0

    async def item_popularity(self, timeout_s: float) -> Mapping[str, Mapping[str, float]]:
        self.reads += 1
        if self.fail:
            raise BackendError("profiles", "the cluster is down")
        return {name: dict(counts) for name, counts in self.counts.items()}


def items() -> ItemStore:
    store = ItemStore(2)
    ids = ["a", "b"]
    store.upsert(ids, _core.stable_hash64(ids), np.ones((2, 2), np.float32), [ItemMetadata({}, 1.0, 0)] * 2)
    return store


def counts_of(store: ItemStore, list_name: str) -> list[float]:
    return store.popularity(store.rows_of(["a", "b"]), list_name).tolist()


def errors() -> float:
    return metrics.POPULARITY_REFRESHES.labels("error")._value.get()


async def test_start_pushes_every_list_and_a_failure_keeps_the_previous_counts() -> None:
    profiles, store = FakeProfiles(), items()
    profiles.counts = {"all_time": {"a": 5.0}, "trending": {"b": 2.0}}
    sync = PopularitySync(profiles, store, refresh_s=60.0)  # type: ignore[arg-type]
    try:
        await sync.start()
        assert counts_of(store, "all_time") == [6.0, 1.0]
        assert counts_of(store, "trending") == [1.0, 3.0]
        profiles.fail = True
        before = errors()
        assert await sync.refresh() is False
        assert errors() == before + 1
        assert counts_of(store, "all_time") == [6.0, 1.0]  # still served
        profiles.fail = False
        profiles.counts["all_time"] = {"a": 1.0}
        assert await sync.refresh() is True
        assert counts_of(store, "all_time") == [2.0, 1.0]  # replaced, not added
    finally:
        await sync.close()


async def test_the_loop_refreshes_every_refresh_s_and_survives_failures() -> None:
    profiles, store = FakeProfiles(), items()
    profiles.fail = True
    sync = PopularitySync(profiles, store, refresh_s=0.05)  # type: ignore[arg-type]
    try:
        await sync.start()
        await asyncio.sleep(0.3)
        assert profiles.reads >= 3  # failing, and still trying
        profiles.fail = False
        profiles.counts["all_time"] = {"b": 4.0}
        await asyncio.sleep(0.2)
        assert counts_of(store, "all_time") == [1.0, 5.0]
    finally:
        await sync.close()
    reads = profiles.reads
    await asyncio.sleep(0.15)
    assert profiles.reads == reads  # closed: no more refreshes


async def test_pokes_refresh_early_but_at_most_once_per_gap(monkeypatch: pytest.MonkeyPatch) -> None:
    from server.catalog import popularity_sync

    monkeypatch.setattr(popularity_sync, "_EARLY_GAP_S", 0.2)
    profiles, store = FakeProfiles(), items()
    sync = PopularitySync(profiles, store, refresh_s=60.0)  # type: ignore[arg-type]
    try:
        sync.poke()  # not started yet: a write starts the loop, which refreshes at once
        await asyncio.sleep(0.05)
        assert profiles.reads == 1
        profiles.counts["all_time"] = {"a": 3.0}
        for _ in range(20):  # a burst of writes, well within one gap
            sync.poke()
            await asyncio.sleep(0)
        await asyncio.sleep(0.3)
        assert profiles.reads == 2  # one early refresh for the burst, not twenty
        assert counts_of(store, "all_time") == [4.0, 1.0]
    finally:
        await sync.close()


async def test_unchanged_counts_and_catalogue_are_not_pushed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """An embedded store answers with the same object until a write: resolving 200k ids again would
    hold the GIL for nothing, every refresh_s."""
    store = items()
    answer = {"all_time": {"a": 5.0, "new": 7.0}, "trending": {}}

    class SameObject:
        async def item_popularity(self, timeout_s: float) -> Mapping[str, Mapping[str, float]]:
            return answer

    pushes: list[str] = []
    push = store.set_popularity_counts
    monkeypatch.setattr(store, "set_popularity_counts", lambda name, c: (pushes.append(name), push(name, c)))
    sync = PopularitySync(SameObject(), store, refresh_s=60.0)  # type: ignore[arg-type]
    await sync.refresh()
    assert len(pushes) == 2
    await sync.refresh()
    assert len(pushes) == 2  # nothing changed: nothing pushed
    store.upsert(
        ["new"], _core.stable_hash64(["new"]), np.ones((1, 2), np.float32), [ItemMetadata({}, 0.0, 0)]
    )
    await sync.refresh()
    assert len(pushes) == 4  # a new item takes its count
    assert store.popularity(store.rows_of(["new"]), "all_time").tolist() == [7.0]
    await sync.close()

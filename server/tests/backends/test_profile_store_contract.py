"""The ProfileStore contract: every implementation must pass these, using only the Protocol's methods.

To cover another implementation, add one line to FACTORIES: an async factory that takes a fresh
temporary directory and returns an empty store (a real backend would mark itself `pytest.mark.real`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from server.backends.base import ProfileStore
from server.backends.memory_profiles import InMemoryProfileStore
from server.domain import Interaction, UserProfile
from server.tests.backends.real_backends import scylla_store

StoreFactory = Callable[[Path], Awaitable[ProfileStore]]


async def memory_store(tmp_path: Path) -> ProfileStore:
    return InMemoryProfileStore(None, history_limit=50)


async def durable_memory_store(tmp_path: Path) -> ProfileStore:
    return InMemoryProfileStore(tmp_path / "profiles", history_limit=50, group_commit_window_s=0.0)


FACTORIES = [
    pytest.param(memory_store, id="memory"),
    pytest.param(durable_memory_store, id="memory-durable"),
    pytest.param(scylla_store, id="scylla", marks=pytest.mark.real),
]

T = 1.0  # timeout_s for reads


@pytest.fixture(params=FACTORIES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ProfileStore]:
    factory: StoreFactory = request.param
    instance = await factory(tmp_path)
    try:
        yield instance
    finally:
        await instance.close()


def vec(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def event(user: str, item: str, ts: int, action: str = "view", weight: float = 1.0) -> Interaction:
    return Interaction(user, item, action, weight, ts)


def assert_same_profile(actual: UserProfile | None, expected: UserProfile) -> None:
    assert actual is not None
    assert actual.user_id == expected.user_id
    assert actual.attributes == expected.attributes
    if expected.embedding is None:
        assert actual.embedding is None
    else:
        assert actual.embedding is not None
        # Real stores may keep float16: compare at that precision.
        np.testing.assert_allclose(actual.embedding, expected.embedding, rtol=1e-3, atol=1e-3)


async def test_unknown_user_has_no_profile_and_no_history(store: ProfileStore) -> None:
    assert await store.get_profile("nobody", T) is None
    assert await store.recent_interactions("nobody", 10, T) == []


async def test_upserted_profiles_read_back(store: ProfileStore) -> None:
    profiles = [
        UserProfile("u1", vec(0.25, -0.5, 1.0), {"lang": "en", "tier": "gold"}),
        UserProfile("u2", None, {"lang": "de"}),
        UserProfile("u3", vec(0.125, 0.0, 0.75), {}),
    ]
    await store.upsert_profiles(profiles)
    for profile in profiles:
        assert_same_profile(await store.get_profile(profile.user_id, T), profile)


async def test_upsert_replaces_the_whole_profile(store: ProfileStore) -> None:
    await store.upsert_profiles([UserProfile("u1", vec(1.0, 0.0), {"lang": "en", "tier": "gold"})])
    replacement = UserProfile("u1", vec(0.0, 1.0), {"lang": "fr"})
    await store.upsert_profiles([replacement])
    assert_same_profile(await store.get_profile("u1", T), replacement)


async def test_profile_embedding_can_be_cleared(store: ProfileStore) -> None:
    await store.upsert_profiles([UserProfile("u1", vec(1.0, 0.0), {})])
    await store.upsert_profiles([UserProfile("u1", None, {})])
    assert_same_profile(await store.get_profile("u1", T), UserProfile("u1", None, {}))


async def test_count_users_counts_profiles(store: ProfileStore) -> None:
    assert await store.count_users() == 0
    await store.upsert_profiles([UserProfile(f"u{i}", None, {}) for i in range(7)])
    await store.upsert_profiles([UserProfile("u3", vec(1.0), {})])
    assert await store.count_users() == 7


async def test_recent_interactions_are_newest_first_and_limited(store: ProfileStore) -> None:
    events = [event("u1", f"i{k}", 1_000 + k, weight=float(k)) for k in range(10)]
    await store.append_interactions(events)
    recent = await store.recent_interactions("u1", 4, T)
    assert [e.item_id for e in recent] == ["i9", "i8", "i7", "i6"]
    newest = recent[0]
    assert (newest.user_id, newest.item_id, newest.action, newest.timestamp_ms) == ("u1", "i9", "view", 1_009)
    assert newest.weight == pytest.approx(9.0)
    assert len(await store.recent_interactions("u1", 100, T)) == 10


async def test_history_is_ordered_by_timestamp_not_arrival(store: ProfileStore) -> None:
    await store.append_interactions([event("u1", "late", 3_000), event("u1", "early", 1_000)])
    await store.append_interactions([event("u1", "middle", 2_000)])
    recent = await store.recent_interactions("u1", 10, T)
    assert [e.item_id for e in recent] == ["late", "middle", "early"]


async def test_histories_of_users_are_separate(store: ProfileStore) -> None:
    await store.append_interactions(
        [event("u1", "a", 1), event("u2", "b", 2), event("u1", "c", 3), event("u2", "d", 4)]
    )
    assert [e.item_id for e in await store.recent_interactions("u1", 10, T)] == ["c", "a"]
    assert [e.item_id for e in await store.recent_interactions("u2", 10, T)] == ["d", "b"]


async def test_actions_and_weights_are_kept(store: ProfileStore) -> None:
    await store.append_interactions([event("u1", "a", 1, "purchase", 5.0), event("u1", "b", 2, "click", 2.0)])
    recent = await store.recent_interactions("u1", 10, T)
    assert [(e.action, e.weight) for e in recent] == [("click", 2.0), ("purchase", 5.0)]


async def test_same_timestamp_and_item_is_one_interaction(store: ProfileStore) -> None:
    # (timestamp, item) identifies an interaction, so a retried or reloaded batch is idempotent.
    batch = [event("u1", "a", 1), event("u1", "b", 2)]
    await store.append_interactions(batch)
    await store.append_interactions(batch)
    assert [e.item_id for e in await store.recent_interactions("u1", 10, T)] == ["b", "a"]


async def test_profiles_and_histories_are_independent(store: ProfileStore) -> None:
    await store.append_interactions([event("u1", "a", 1)])
    assert await store.get_profile("u1", T) is None
    await store.upsert_profiles([UserProfile("u1", vec(1.0), {"lang": "en"})])
    assert [e.item_id for e in await store.recent_interactions("u1", 10, T)] == ["a"]


async def test_empty_writes_are_no_ops(store: ProfileStore) -> None:
    await store.upsert_profiles([])
    await store.append_interactions([])
    assert await store.count_users() == 0


async def test_concurrent_writes_are_all_acknowledged_and_visible(store: ProfileStore) -> None:
    await asyncio.gather(
        *(store.append_interactions([event(f"u{k % 5}", f"i{k}", 1_000 + k)]) for k in range(100)),
        *(store.upsert_profiles([UserProfile(f"p{k}", vec(float(k)), {})]) for k in range(20)),
    )
    for user in range(5):
        assert len(await store.recent_interactions(f"u{user}", 100, T)) == 20
    for k in range(20):
        assert_same_profile(await store.get_profile(f"p{k}", T), UserProfile(f"p{k}", vec(float(k)), {}))

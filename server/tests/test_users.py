"""The user's vector: stored profile, history mean with recency weights, and the cached encoding."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from server import _core
from server.backends.memory_cache import InMemoryCache
from server.backends.memory_profiles import InMemoryProfileStore
from server.catalog.item_store import ItemStore
from server.catalog.payload import ItemMetadata
from server.domain import Interaction, UserProfile
from server.users import UserState, UserStates, decode_state, encode_state

DAY_MS = 86_400_000


@pytest.fixture
def items() -> ItemStore:
    store = ItemStore(4)
    ids = ["a", "b", "c"]
    vectors = np.eye(4, dtype=np.float32)[:3]
    store.upsert(ids, _core.stable_hash64(ids), vectors, [ItemMetadata({}, 1.0, 0)] * 3)
    return store


def states(items: ItemStore, half_life_days: float = 1.0) -> UserStates:
    return UserStates(
        InMemoryProfileStore(None), InMemoryCache(1 << 20), items, 50, half_life_days * 86400, 60
    )


def test_history_mean_weights_recent_and_strong_interactions_more(items: ItemStore) -> None:
    now = 100 * DAY_MS
    history = [
        Interaction("u", "a", "view", 1.0, now),  # fresh
        Interaction("u", "b", "view", 1.0, now - DAY_MS),  # one half-life old: half the weight
        Interaction("u", "c", "buy", 0.0, now),  # weight 0 contributes nothing
    ]
    state = states(items).compute("u", None, history)
    assert state.vector is not None
    expected = np.array([1.0, 0.5, 0.0, 0.0]) / np.linalg.norm([1.0, 0.5])
    np.testing.assert_allclose(state.vector, expected, atol=2e-3)
    assert state.recent_item_ids == ("a", "b", "c")


def test_stored_embedding_is_blended_with_history(items: ItemStore) -> None:
    profile = UserProfile("u", np.array([0, 0, 0, 1], dtype=np.float32))
    only_profile = states(items).compute("u", profile, [])
    np.testing.assert_allclose(only_profile.vector, [0, 0, 0, 1])
    blended = states(items).compute("u", profile, [Interaction("u", "a", "view", 1.0, 0)])
    assert blended.vector is not None and blended.vector[0] > 0 and blended.vector[3] > blended.vector[0]


def test_unknown_items_and_empty_history_mean_cold_start(items: ItemStore) -> None:
    s = states(items)
    assert s.compute("u", None, []).cold
    assert s.compute("u", None, [Interaction("u", "zzz", "view", 1.0, 0)]).cold


@pytest.mark.parametrize("newest_ms", [0, 900_000_000_000, 1_800_000_000_000, 2**62])
def test_recency_is_relative_to_the_users_newest_interaction(items: ItemStore, newest_ms: int) -> None:
    """A history from 1998 (or from the far future) weighs its items exactly as one from today: the
    wall clock would underflow every weight of an old history to 0 and turn it into a plain mean."""
    history = [
        Interaction("u", "a", "view", 1.0, newest_ms),
        Interaction("u", "b", "view", 1.0, newest_ms - DAY_MS),
        Interaction("u", "c", "view", 1.0, newest_ms - 3 * DAY_MS),
    ]
    state = states(items).compute("u", None, history)
    assert state.vector is not None
    expected = np.array([1.0, 0.5, 0.125, 0.0]) / np.linalg.norm([1.0, 0.5, 0.125])
    np.testing.assert_allclose(state.vector, expected, atol=2e-3)


def test_a_history_spanning_thousands_of_half_lives_keeps_the_newest(items: ItemStore) -> None:
    history = [
        Interaction("u", "a", "view", 1.0, 5000 * DAY_MS),
        Interaction("u", "b", "view", 1.0, 0),  # 5000 half-lives older: its weight underflows to 0
    ]
    state = states(items).compute("u", None, history)
    np.testing.assert_allclose(state.vector, [1.0, 0.0, 0.0, 0.0], atol=1e-6)


def test_seen_labels_are_kept_apart_from_the_recent_window(items: ItemStore) -> None:
    seen = np.array([3, 7, 2**64 - 2], dtype=np.uint64)
    state = states(items).compute("u", None, [Interaction("u", "a", "view", 1.0, 0)], seen)
    assert state.recent_item_ids == ("a",)
    np.testing.assert_array_equal(state.seen_labels, seen)


@pytest.mark.parametrize("vector", [None, np.array([0.6, 0.8, 0.0, 0.0], dtype=np.float32)])
@pytest.mark.parametrize("seen", [[], [1, 5, 2**64 - 2]])
def test_cached_state_round_trips(vector: np.ndarray | None, seen: list[int]) -> None:
    state = UserState("u", vector, ("x", "y"), np.array(seen, dtype=np.uint64))
    back = decode_state("u", encode_state(state))
    assert back.recent_item_ids == ("x", "y")
    np.testing.assert_array_equal(back.seen_labels, np.array(seen, dtype=np.uint64))
    assert back.seen_labels.dtype == np.uint64
    if vector is None:
        assert back.vector is None
    else:
        np.testing.assert_allclose(back.vector, vector, atol=1e-3)  # stored as f16


async def test_interactions_invalidate_the_cached_state(items: ItemStore) -> None:
    s = states(items)
    await s._profiles.append_interactions([Interaction("u", "a", "view", 1.0, 0)])
    first = await s.get("u", 1.0)
    await s._profiles.append_interactions([Interaction("u", "b", "view", 50.0, 0)])
    assert (await s.get("u", 1.0)).recent_item_ids == first.recent_item_ids  # still cached
    await s.invalidate(["u"])
    assert (await s.get("u", 1.0)).recent_item_ids[0] == "b"


async def test_a_read_that_raced_a_write_never_caches_the_old_state(items: ItemStore) -> None:
    """The read starts before the interaction is written and finishes after its invalidation: what it
    caches is tagged with the old version and never served."""
    s = states(items)
    profiles = s._profiles
    await profiles.append_interactions([Interaction("u", "a", "view", 1.0, 0)])
    read_started = asyncio.Event()
    write_done = asyncio.Event()
    real_read = profiles.read_users

    async def slow_read(user_ids, limit, timeout_s):  # type: ignore[no-untyped-def]
        records = await real_read(user_ids, limit, timeout_s)  # the old history
        read_started.set()
        await write_done.wait()
        return records

    profiles.read_users = slow_read  # type: ignore[method-assign]
    racing = asyncio.create_task(s.get("u", 1.0))
    await read_started.wait()
    await profiles.append_interactions([Interaction("u", "b", "view", 50.0, 1)])
    await s.invalidate(["u"])
    write_done.set()
    assert (await racing).recent_item_ids == ("a",)  # it answers with what it read...
    profiles.read_users = real_read  # type: ignore[method-assign]
    assert (await s.get("u", 1.0)).recent_item_ids[0] == "b"  # ...but did not cache it over the write


async def test_frontends_sharing_a_cache_see_each_others_invalidations(items: ItemStore) -> None:
    profiles, cache = InMemoryProfileStore(None), InMemoryCache(1 << 20)
    a = UserStates(profiles, cache, items, 50, 86400, 60)
    b = UserStates(profiles, cache, items, 50, 86400, 60)
    await profiles.append_interactions([Interaction("u", "a", "view", 1.0, 0)])
    assert (await b.get("u", 1.0)).recent_item_ids == ("a",)  # cached by b
    await profiles.append_interactions([Interaction("u", "c", "view", 1.0, 1)])
    await a.invalidate(["u"])  # the write went through frontend a
    assert (await b.get("u", 1.0)).recent_item_ids[0] == "c"

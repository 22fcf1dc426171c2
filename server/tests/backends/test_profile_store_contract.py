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

from server import _core
from server.backends.base import ProfileStore
from server.backends.memory_profiles import InMemoryProfileStore
from server.domain import Exposure, Interaction, Outcome, UserProfile
from server.tests.backends.real_backends import scylla_store
from server.tests.workers.state_stores import profiles_on_state_node

StoreFactory = Callable[[Path], Awaitable[ProfileStore]]

# Every store here keeps 20 items per seen set and the default popularity lists: trending (half-life
# one day) and all_time (365 days).
SEEN_LIMIT = 20
DAY_MS = 86_400_000


async def memory_store(tmp_path: Path) -> ProfileStore:
    return InMemoryProfileStore(None, history_limit=50, seen_limit=SEEN_LIMIT)


async def durable_memory_store(tmp_path: Path) -> ProfileStore:
    return InMemoryProfileStore(
        tmp_path / "profiles", history_limit=50, seen_limit=SEEN_LIMIT, group_commit_window_s=0.0
    )


async def state_node_store(tmp_path: Path) -> ProfileStore:
    # What a worker of `recd serve --workers N` uses: the durable store, behind a state node.
    return await profiles_on_state_node(tmp_path / "profiles", history_limit=50, seen_limit=SEEN_LIMIT)


async def cql_store(tmp_path: Path) -> ProfileStore:
    store: ProfileStore = await scylla_store(tmp_path, seen_limit=SEEN_LIMIT)
    return store


FACTORIES = [
    pytest.param(memory_store, id="memory"),
    pytest.param(durable_memory_store, id="memory-durable"),
    pytest.param(state_node_store, id="state-node"),
    pytest.param(cql_store, id="scylla", marks=pytest.mark.real),
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


# --- seen sets -------------------------------------------------------------------------------------------
def hashes(*item_ids: str) -> list[int]:
    return sorted(_core.stable_hash64(list(item_ids)).tolist())


async def test_unknown_user_has_seen_nothing(store: ProfileStore) -> None:
    seen = await store.seen_items("nobody", T)
    assert seen.dtype == np.uint64 and len(seen) == 0


async def test_appended_items_are_seen_at_once_as_sorted_unique_hashes(store: ProfileStore) -> None:
    await store.append_interactions([event("u1", "b", 2), event("u1", "a", 1), event("u2", "c", 3)])
    await store.append_interactions([event("u1", "a", 5), event("u1", "d", 4), event("u1", "a", 6)])
    seen = await store.seen_items("u1", T)
    assert seen.dtype == np.uint64
    assert seen.tolist() == hashes("a", "b", "d")  # sorted ascending, "a" once
    assert (await store.seen_items("u2", T)).tolist() == hashes("c")


async def test_seen_set_keeps_the_most_recently_seen_at_the_cap(store: ProfileStore) -> None:
    items = [f"i{k}" for k in range(SEEN_LIMIT + 5)]
    await store.append_interactions([event("u1", item, 1_000 + k) for k, item in enumerate(items)])
    assert (await store.seen_items("u1", T)).tolist() == hashes(*items[5:])
    # Seeing an evicted item again makes it the most recent; seeing one long ago changes nothing.
    await store.append_interactions([event("u1", "i0", 5_000), event("u1", "ancient", 1)])
    expected = hashes("i0", *items[6:])
    assert (await store.seen_items("u1", T)).tolist() == expected
    await asyncio.sleep(0.2)  # a store may trim in the background: the answer stays the same
    assert (await store.seen_items("u1", T)).tolist() == expected
    # An item seen again keeps its latest time even when an older interaction with it arrives later.
    await store.append_interactions([event("u1", "i10", 6_000)])
    await store.append_interactions(
        [event("u1", "i10", 2), *(event("u1", f"new{k}", 3_000 + k) for k in range(18))]
    )
    assert (await store.seen_items("u1", T)).tolist() == hashes("i0", "i10", *(f"new{k}" for k in range(18)))


# --- popularity --------------------------------------------------------------------------------------------
TODAY_MS = 1_750_000_000_000  # June 2025
Y1998_MS = 883_612_800_000  # 1 January 1998


async def test_popularity_is_empty_without_interactions(store: ProfileStore) -> None:
    popularity = await store.item_popularity(T)
    assert all(len(counts) == 0 for counts in popularity.values())


@pytest.mark.parametrize("start_ms", [TODAY_MS, Y1998_MS], ids=["today", "1998"])
async def test_counts_decay_by_each_lists_half_life_to_the_newest_interaction(
    store: ProfileStore, start_ms: int
) -> None:
    await store.append_interactions([event("u1", "old", start_ms)])
    counts = await store.item_popularity(T)
    assert counts["trending"] == {"old": pytest.approx(1.0, rel=1e-4)}
    # One day (trending's half-life) later, the older interaction weighs half, whatever the wall clock.
    await store.append_interactions([event("u2", "new", start_ms + DAY_MS)])
    counts = await store.item_popularity(T)
    assert counts["trending"]["old"] == pytest.approx(0.5, rel=1e-4)
    assert counts["trending"]["new"] == pytest.approx(1.0, rel=1e-4)
    assert counts["all_time"]["old"] == pytest.approx(2 ** (-1 / 365), rel=1e-4)
    assert counts["all_time"]["new"] == pytest.approx(1.0, rel=1e-4)


async def test_weights_add_and_decay_across_epochs(store: ProfileStore) -> None:
    # Trending's epochs are 16 days long: these interactions fall into several of them.
    start = TODAY_MS
    await store.append_interactions(
        [event("u1", "a", start, weight=2.0), event("u2", "a", start, weight=3.0), event("u3", "b", start)]
    )
    await store.append_interactions([event("u1", "a", start + 20 * DAY_MS, weight=1.0)])
    await store.append_interactions([event("u4", "c", start + 40 * DAY_MS, weight=4.0)])
    counts = await store.item_popularity(T)
    trending, all_time = counts["trending"], counts["all_time"]
    assert trending["a"] == pytest.approx(5 * 2.0**-40 + 2.0**-20, rel=1e-4)
    assert trending.get("b", 0.0) == pytest.approx(2.0**-40, abs=1e-9)
    assert trending["c"] == pytest.approx(4.0, rel=1e-4)
    assert all_time["a"] == pytest.approx(5 * 2 ** (-40 / 365) + 2 ** (-20 / 365), rel=1e-4)
    assert all_time["b"] == pytest.approx(2 ** (-40 / 365), rel=1e-4)
    assert all_time["c"] == pytest.approx(4.0, rel=1e-4)
    # The lists order the items differently: recent activity against the long run.
    assert max(trending, key=trending.__getitem__) == "c"
    assert max(all_time, key=all_time.__getitem__) == "a"


async def test_an_interaction_older_than_the_newest_counts_decayed(store: ProfileStore) -> None:
    await store.append_interactions([event("u1", "a", TODAY_MS)])
    await store.append_interactions([event("u2", "b", TODAY_MS - 2 * DAY_MS)])  # arrives late
    counts = await store.item_popularity(T)
    assert counts["trending"]["a"] == pytest.approx(1.0, rel=1e-4)
    assert counts["trending"]["b"] == pytest.approx(0.25, rel=1e-4)


# --- erasure and access ------------------------------------------------------------------------------------
async def fill_user(store: ProfileStore, user: str) -> None:
    await store.upsert_profiles([UserProfile(user, vec(0.5, 0.5), {"lang": "en"})])
    await store.append_interactions([event(user, f"{user}-i{k}", 1_000 + k) for k in range(5)])


async def test_delete_users_erases_profile_history_and_seen_set(store: ProfileStore) -> None:
    for user in ("gone", "other", "also-gone"):
        await fill_user(store, user)
    await store.delete_users(["gone", "also-gone"])
    for user in ("gone", "also-gone"):
        assert await store.get_profile(user, T) is None
        assert await store.recent_interactions(user, 10, T) == []
        assert len(await store.seen_items(user, T)) == 0
        [record] = await store.read_users([user], 10, T)
        assert (record.profile, record.history, len(record.seen)) == (None, [], 0)
    # Nobody else is touched.
    assert_same_profile(
        await store.get_profile("other", T), UserProfile("other", vec(0.5, 0.5), {"lang": "en"})
    )
    assert len(await store.recent_interactions("other", 10, T)) == 5
    assert len(await store.seen_items("other", T)) == 5
    assert await store.count_users() == 1


async def test_delete_users_of_unknown_users_repeated_or_none_is_a_no_op(store: ProfileStore) -> None:
    await fill_user(store, "kept")
    await store.delete_users([])
    await store.delete_users(["nobody", "nobody"])
    assert await store.count_users() == 1
    assert len(await store.recent_interactions("kept", 10, T)) == 5


async def test_an_erased_user_can_start_again(store: ProfileStore) -> None:
    await fill_user(store, "u1")
    await store.delete_users(["u1"])
    # Later than everything erased, earlier than everything erased, and an erased item seen again later.
    await store.append_interactions(
        [event("u1", "new", 9_000), event("u1", "backfill", 10), event("u1", "u1-i2", 8_000)]
    )
    await store.upsert_profiles([UserProfile("u1", None, {"lang": "fr"})])
    assert [e.item_id for e in await store.recent_interactions("u1", 10, T)] == ["new", "u1-i2", "backfill"]
    assert (await store.seen_items("u1", T)).tolist() == hashes("new", "backfill", "u1-i2")
    assert_same_profile(await store.get_profile("u1", T), UserProfile("u1", None, {"lang": "fr"}))
    assert await store.count_users() == 1


async def test_erasure_keeps_the_items_popularity(store: ProfileStore) -> None:
    await store.append_interactions([event("u1", "a", TODAY_MS), event("u2", "a", TODAY_MS)])
    before = await store.item_popularity(T)
    await store.delete_users(["u1"])
    after = await store.item_popularity(T)
    assert after["all_time"]["a"] == pytest.approx(before["all_time"]["a"]) == pytest.approx(2.0)


async def test_export_user_returns_everything_held(store: ProfileStore) -> None:
    await store.upsert_profiles([UserProfile("u1", vec(0.25, -0.5), {"lang": "en"})])
    await store.append_interactions(
        [event("u1", f"i{k}", 1_000 + k, "click", float(k)) for k in range(6)] + [event("u1", "i0", 2_000)]
    )
    held = await store.export_user("u1", 3, T)
    assert held.found
    assert held.profile is not None
    assert_same_profile(held.profile, UserProfile("u1", vec(0.25, -0.5), {"lang": "en"}))
    assert [(e.item_id, e.timestamp_ms) for e in held.interactions] == [
        ("i0", 2_000),
        ("i5", 1_005),
        ("i4", 1_004),
    ]
    assert held.interactions[1].action == "click" and held.interactions[1].weight == pytest.approx(5.0)
    assert held.interactions_truncated
    assert held.seen.tolist() == hashes(*(f"i{k}" for k in range(6)))
    last_seen = dict(zip(held.seen.tolist(), held.seen_last_ms.tolist(), strict=True))
    assert last_seen[hashes("i0")[0]] == 2_000 and last_seen[hashes("i3")[0]] == 1_003
    everything = await store.export_user("u1", 100, T)
    assert len(everything.interactions) == 7 and not everything.interactions_truncated


async def test_export_of_an_unknown_or_erased_user_is_empty(store: ProfileStore) -> None:
    await fill_user(store, "u1")
    await store.delete_users(["u1"])
    for user in ("u1", "nobody"):
        held = await store.export_user(user, 10, T)
        assert not held.found
        assert held.profile is None and held.interactions == [] and not held.interactions_truncated
        assert len(held.seen) == 0 and len(held.seen_last_ms) == 0


# --- the exposure log ----------------------------------------------------------------------------------------
KEEP = 200
WEEK_S = 7 * 86_400.0


def exposure(user: str, served_at_ms: int, *items: str, arm: str = "exp=a") -> Exposure:
    return Exposure(user, served_at_ms, items or ("x", "y"), arm, 12.5, 0.25)


def outcome(user: str, item: str, at_ms: int, action: str = "click", arm: str = "exp=a") -> Outcome:
    return Outcome(user, item, action, 1.0, at_ms, at_ms - 500, arm)


def bounds_by_count(request: pytest.FixtureRequest) -> bool:
    # CQL cannot bound a partition by row count without a read before every write (server/backends/
    # scylla.py): there the TTL bounds what is held, and a read's limit what it returns.
    return request.node.callspec.params["store"] is not cql_store


async def test_exposures_read_newest_first_limited_and_since(store: ProfileStore) -> None:
    served = [exposure("u1", TODAY_MS + k, f"i{k}", f"j{k}") for k in range(6)]
    await store.record_exposures(served[:4], KEEP, WEEK_S)
    await store.record_exposures(served[4:], KEEP, WEEK_S)
    [found] = await store.read_exposures(["u1"], 0, 3, T)
    assert found == [served[5], served[4], served[3]]
    [since] = await store.read_exposures(["u1"], TODAY_MS + 2, 100, T)
    assert [e.served_at_ms for e in since] == [TODAY_MS + k for k in (5, 4, 3, 2)]
    assert await store.read_exposures(["u1"], TODAY_MS + 6, 100, T) == [[]]
    assert await store.read_exposures(["u1"], 0, 0, T) == [[]]


async def test_exposures_keep_every_field(store: ProfileStore) -> None:
    served = Exposure("u1", TODAY_MS, ("b", "a", "c"), "exp1=treatment;exp2=control", 3.75, 0.625)
    await store.record_exposures([served], KEEP, WEEK_S)
    [[found]] = await store.read_exposures(["u1"], 0, 10, T)
    assert found == served
    assert isinstance(found.item_ids, tuple)


async def test_exposures_of_users_are_separate_and_aligned(store: ProfileStore) -> None:
    await store.record_exposures(
        [exposure("u1", TODAY_MS, "a"), exposure("u2", TODAY_MS + 1, "b"), exposure("u1", TODAY_MS + 2, "c")],
        KEEP,
        WEEK_S,
    )
    found = await store.read_exposures(["u2", "nobody", "u1"], 0, 10, T)
    assert [[e.item_ids for e in user] for user in found] == [[("b",)], [], [("c",), ("a",)]]
    assert all(e.user_id == "u1" for e in found[2])


async def test_exposures_are_ordered_by_serving_time_not_arrival(store: ProfileStore) -> None:
    await store.record_exposures([exposure("u1", TODAY_MS + 30, "late")], KEEP, WEEK_S)
    await store.record_exposures(
        [exposure("u1", TODAY_MS + 10, "early"), exposure("u1", TODAY_MS + 20, "middle")], KEEP, WEEK_S
    )
    [found] = await store.read_exposures(["u1"], 0, 10, T)
    assert [e.item_ids for e in found] == [("late",), ("middle",), ("early",)]


async def test_the_same_exposure_recorded_twice_is_one(store: ProfileStore) -> None:
    # A retried write adds nothing; another answer at the same millisecond is another exposure.
    batch = [exposure("u1", TODAY_MS, "a", "b"), exposure("u1", TODAY_MS, "c")]
    await store.record_exposures(batch, KEEP, WEEK_S)
    await store.record_exposures(batch, KEEP, WEEK_S)
    [found] = await store.read_exposures(["u1"], 0, 10, T)
    assert sorted(e.item_ids for e in found) == [("a", "b"), ("c",)]


async def test_each_user_keeps_the_newest_exposures(
    store: ProfileStore, request: pytest.FixtureRequest
) -> None:
    await store.record_exposures([exposure("u1", TODAY_MS + k, f"i{k}") for k in range(8)], 5, WEEK_S)
    await store.record_exposures(
        [exposure("u1", TODAY_MS + 8, "i8"), exposure("u2", TODAY_MS, "z")], 5, WEEK_S
    )
    [found, other] = await store.read_exposures(["u1", "u2"], 0, 100, T)
    assert len(other) == 1
    if not bounds_by_count(request):
        assert [e.item_ids[0] for e in found[:5]] == [f"i{k}" for k in range(8, 3, -1)]
        return
    assert [e.item_ids[0] for e in found] == [f"i{k}" for k in range(8, 3, -1)]
    assert (await store.export_user("u1", 10, T)).exposures_held == 5
    # An older answer arriving late does not displace the newest ones.
    await store.record_exposures([exposure("u1", TODAY_MS - 1, "stale")], 5, WEEK_S)
    [found] = await store.read_exposures(["u1"], 0, 100, T)
    assert [e.item_ids[0] for e in found] == [f"i{k}" for k in range(8, 3, -1)]


async def test_scan_exposures_lists_every_users_since(store: ProfileStore) -> None:
    await store.record_exposures(
        [exposure(f"u{k % 3}", TODAY_MS + k, f"i{k}") for k in range(9)], KEEP, WEEK_S
    )
    everything = await store.scan_exposures(0)
    assert sorted((e.user_id, e.served_at_ms, e.item_ids) for e in everything) == [
        (f"u{k % 3}", TODAY_MS + k, (f"i{k}",)) for k in sorted(range(9), key=lambda k: (k % 3, k))
    ]
    recent = await store.scan_exposures(TODAY_MS + 6)
    assert sorted(e.served_at_ms - TODAY_MS for e in recent) == [6, 7, 8]
    assert await store.scan_exposures(TODAY_MS + 9) == []


async def test_outcomes_round_trip_through_the_scan(store: ProfileStore) -> None:
    click = Outcome("u1", "a", "click", 2.5, TODAY_MS + 100, TODAY_MS, "exp=b")
    later = [outcome("u2", "b", TODAY_MS + 200), outcome("u1", "c", TODAY_MS + 300, "purchase")]
    await store.record_outcomes([click], WEEK_S)
    await store.record_outcomes(later, WEEK_S)
    assert sorted(await store.scan_outcomes(0), key=lambda o: o.at_ms) == [click, *later]
    assert sorted(o.at_ms for o in await store.scan_outcomes(TODAY_MS + 200)) == [
        TODAY_MS + 200,
        TODAY_MS + 300,
    ]


async def test_the_same_outcome_recorded_twice_is_one(store: ProfileStore) -> None:
    # (time, item, action) is one interaction: a retried RecordInteractions counts once; a view and a
    # click of the item at the same time are two.
    batch = [outcome("u1", "a", TODAY_MS), outcome("u1", "a", TODAY_MS, "view")]
    await store.record_outcomes(batch, WEEK_S)
    await store.record_outcomes(batch[:1], WEEK_S)
    assert sorted(o.action for o in await store.scan_outcomes(0)) == ["click", "view"]
    assert (await store.export_user("u1", 10, T)).outcomes_held == 2


async def test_exposures_and_outcomes_expire_after_their_ttl(store: ProfileStore) -> None:
    # CQL's TTL is whole seconds, and a row expires within the second after: 1 s, then 2.5 s later.
    await store.record_exposures([exposure("u1", TODAY_MS, "short")], KEEP, 1.0)
    await store.record_exposures([exposure("u1", TODAY_MS - 1, "long")], KEEP, WEEK_S)
    await store.record_outcomes([outcome("u1", "short", TODAY_MS)], 1.0)
    await store.record_outcomes([outcome("u1", "long", TODAY_MS - 1)], WEEK_S)
    [found] = await store.read_exposures(["u1"], 0, 10, T)
    assert [e.item_ids for e in found] == [("short",), ("long",)]
    await asyncio.sleep(2.5)
    [found] = await store.read_exposures(["u1"], 0, 10, T)
    assert [e.item_ids for e in found] == [("long",)]
    assert [e.item_ids for e in await store.scan_exposures(0)] == [("long",)]
    assert [o.item_id for o in await store.scan_outcomes(0)] == ["long"]
    held = await store.export_user("u1", 10, T)
    assert (held.exposures_held, held.outcomes_held) == (1, 1)


@pytest.mark.parametrize(("keep", "ttl_s"), [(0, WEEK_S), (KEEP, 0.0), (KEEP, -1.0), (KEEP, float("nan"))])
async def test_bad_exposure_log_arguments_are_refused(store: ProfileStore, keep: int, ttl_s: float) -> None:
    with pytest.raises(ValueError, match=r"keep_per_user|ttl_s"):
        await store.record_exposures([exposure("u1", TODAY_MS)], keep, ttl_s)
    if ttl_s != WEEK_S:
        with pytest.raises(ValueError, match="ttl_s"):
            await store.record_outcomes([outcome("u1", "a", TODAY_MS)], ttl_s)
    assert await store.scan_exposures(0) == [] and await store.scan_outcomes(0) == []


async def test_empty_exposure_log_writes_are_no_ops(store: ProfileStore) -> None:
    await store.record_exposures([], KEEP, WEEK_S)
    await store.record_outcomes([], WEEK_S)
    assert await store.read_exposures([], 0, 10, T) == []
    assert await store.scan_exposures(0) == [] and await store.scan_outcomes(0) == []


async def test_exposures_and_outcomes_do_not_make_a_user(store: ProfileStore) -> None:
    await store.record_exposures([exposure("u1", TODAY_MS)], KEEP, WEEK_S)
    await store.record_outcomes([outcome("u1", "x", TODAY_MS + 1)], WEEK_S)
    assert await store.count_users() == 0
    assert await store.get_profile("u1", T) is None
    held = await store.export_user("u1", 10, T)
    assert held.found and (held.exposures_held, held.outcomes_held) == (1, 1)


async def test_delete_users_erases_exposures_and_outcomes(store: ProfileStore) -> None:
    for user in ("gone", "kept"):
        await fill_user(store, user)
        await store.record_exposures(
            [exposure(user, TODAY_MS + k, f"{user}-i{k}") for k in range(3)], KEEP, WEEK_S
        )
        await store.record_outcomes([outcome(user, f"{user}-i0", TODAY_MS + 10)], WEEK_S)
    await store.delete_users(["gone"])
    assert await store.read_exposures(["gone", "kept"], 0, 10, T) == [
        [],
        [exposure("kept", TODAY_MS + k, f"kept-i{k}") for k in (2, 1, 0)],
    ]
    assert {e.user_id for e in await store.scan_exposures(0)} == {"kept"}
    assert [o.user_id for o in await store.scan_outcomes(0)] == ["kept"]
    held = await store.export_user("gone", 10, T)
    assert not held.found and (held.exposures_held, held.outcomes_held) == (0, 0)
    # An exposure logged after the erasure (a new answer) is held again.
    await store.record_exposures([exposure("gone", TODAY_MS + 99, "new")], KEEP, WEEK_S)
    assert [[e.item_ids for e in u] for u in await store.read_exposures(["gone"], 0, 10, T)] == [[("new",)]]


async def test_export_user_counts_exposures_and_outcomes(store: ProfileStore) -> None:
    await fill_user(store, "u1")
    await store.record_exposures([exposure("u1", TODAY_MS + k, f"i{k}") for k in range(4)], KEEP, WEEK_S)
    await store.record_exposures([exposure("u2", TODAY_MS, "other")], KEEP, WEEK_S)
    await store.record_outcomes([outcome("u1", f"i{k}", TODAY_MS + 10 + k) for k in range(3)], WEEK_S)
    held = await store.export_user("u1", 10, T)
    assert (held.exposures_held, held.outcomes_held) == (4, 3)
    assert (await store.export_user("u2", 10, T)).exposures_held == 1

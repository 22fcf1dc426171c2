"""What only the embedded profile store promises: durability through its log and snapshots, the history
bound, and its extra accessors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from server.backends import memory_profiles
from server.backends.journal import WAL_DIR
from server.backends.memory_profiles import SNAPSHOT_FILE, InMemoryProfileStore
from server.domain import Interaction, UserProfile
from server.errors import BackendError

T = 1.0


async def wait_for_snapshot(path: Path) -> None:
    for _ in range(500):
        if path.exists():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no background snapshot at {path}")


def open_store(path: Path, **kwargs: object) -> InMemoryProfileStore:
    return InMemoryProfileStore(path, group_commit_window_s=0.0, **kwargs)  # type: ignore[arg-type]


def profile(k: int) -> UserProfile:
    return UserProfile(f"u{k}", np.full(4, k / 7, dtype=np.float32), {"n": str(k)})


def events(user: str, count: int, start: int = 0) -> list[Interaction]:
    return [Interaction(user, f"i{t}", "click", 2.0 + t / 3, 10_000 + t) for t in range(start, start + count)]


async def state(store: InMemoryProfileStore) -> dict[str, tuple[object, object, list[Interaction]]]:
    """Everything the store knows, comparable across instances."""
    result: dict[str, tuple[object, object, list[Interaction]]] = {}
    for user in sorted(store.known_user_ids()):
        p = await store.get_profile(user, T)
        embedding = None if p is None or p.embedding is None else p.embedding.tolist()
        attributes = None if p is None else p.attributes
        result[user] = (embedding, attributes, await store.recent_interactions(user, 10_000, T))
    return result


async def fill(store: InMemoryProfileStore, n: int = 30) -> None:
    for k in range(n):
        await store.upsert_profiles([profile(k)])
        await store.append_interactions(events(f"u{k % 4}", 3, start=3 * k))


async def test_everything_acknowledged_survives_a_crash(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    await fill(store)
    before = await state(store)
    # No close(): the process "dies" here, with no snapshot ever written.
    assert not (tmp_path / SNAPSHOT_FILE).exists()
    reopened = open_store(tmp_path)
    assert await state(reopened) == before
    assert await reopened.count_users() == 30
    await reopened.close()


async def test_close_writes_a_snapshot_and_reopening_uses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory_profiles, "SNAPSHOT_BATCH_USERS", 3)  # several record batches
    store = open_store(tmp_path)
    await fill(store)
    before = await state(store)
    await store.close()
    assert (tmp_path / SNAPSHOT_FILE).exists()
    reopened = open_store(tmp_path)
    assert await state(reopened) == before
    await reopened.append_interactions(events("u1", 1, start=999))
    after = await state(reopened)
    await reopened.close()
    third = open_store(tmp_path)
    assert await state(third) == after
    await third.close()


async def test_background_compaction_bounds_the_log_and_keeps_everything(tmp_path: Path) -> None:
    store = open_store(tmp_path, compact_after_records=10)
    await fill(store, n=40)  # 80 records: several snapshots
    await wait_for_snapshot(tmp_path / SNAPSHOT_FILE)
    await store.compact()
    await store.append_interactions(events("late", 2))  # after the last snapshot: only in the log
    before = await state(store)
    segments = list((tmp_path / WAL_DIR).iterdir())
    assert len(segments) <= 2
    reopened = open_store(tmp_path)  # crash: no close
    assert await state(reopened) == before
    await reopened.close()


async def test_concurrent_writes_to_one_user_replay_to_the_same_state(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    await asyncio.gather(
        *(
            store.upsert_profiles([UserProfile("u", np.full(2, k, np.float32), {"k": str(k)})])
            for k in range(50)
        )
    )
    before = await state(store)
    reopened = open_store(tmp_path)
    assert await state(reopened) == before
    await reopened.close()


async def test_history_keeps_only_the_newest(tmp_path: Path) -> None:
    store = open_store(tmp_path, history_limit=3)
    await store.append_interactions(events("u", 5))
    await store.append_interactions([Interaction("u", "ancient", "view", 1.0, 1)])  # older than all kept
    assert [e.item_id for e in await store.recent_interactions("u", 10, T)] == ["i4", "i3", "i2"]
    await store.close()
    reopened = open_store(tmp_path, history_limit=3)
    assert [e.item_id for e in await reopened.recent_interactions("u", 10, T)] == ["i4", "i3", "i2"]
    await reopened.close()


async def test_known_user_ids_include_users_with_only_history() -> None:
    store = InMemoryProfileStore(None)
    await store.upsert_profiles([profile(1)])
    await store.append_interactions(events("u2", 1))
    assert sorted(store.known_user_ids()) == ["u1", "u2"]
    assert await store.count_users() == 2


async def test_stored_profiles_are_read_only_copies() -> None:
    store = InMemoryProfileStore(None)
    original = profile(3)
    await store.upsert_profiles([original])
    original.embedding[0] = 99.0  # type: ignore[index]
    stored = await store.get_profile("u3", T)
    assert stored is not None and stored.embedding is not None
    assert stored.embedding[0] == pytest.approx(3 / 7)
    with pytest.raises(ValueError):
        stored.embedding[0] = 1.0


async def test_writes_after_close_are_refused(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    await store.close()
    with pytest.raises(BackendError):
        await store.upsert_profiles([profile(1)])


async def test_a_torn_log_tail_loses_nothing_acknowledged(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    await fill(store, n=5)
    before = await state(store)
    segment = sorted((tmp_path / WAL_DIR).iterdir())[-1]
    with open(segment, "ab") as f:
        f.write(b"\x40\x00\x00\x00\x01\x02")  # half a record header: a crash mid-append
    reopened = open_store(tmp_path)
    assert await state(reopened) == before
    await reopened.close()


async def test_iter_interactions_lists_every_stored_interaction() -> None:
    store = InMemoryProfileStore(None, history_limit=3)
    await store.append_interactions(
        [Interaction("a", f"i{n}", "view", 1.0, n) for n in range(5)] + [Interaction("b", "x", "buy", 2.0, 7)]
    )
    got = [(i.user_id, i.item_id, i.timestamp_ms) async for i in store.iter_interactions()]
    # the newest history_limit per user, newest first
    assert sorted(got) == sorted([("a", "i4", 4), ("a", "i3", 3), ("a", "i2", 2), ("b", "x", 7)])

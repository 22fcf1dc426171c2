"""What only the embedded profile store promises: durability through its log and snapshots, the history
bound, and its extra accessors."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from server import _core
from server.backends import memory_profiles
from server.backends.journal import WAL_DIR
from server.backends.memory_profiles import SNAPSHOT_FILE, InMemoryProfileStore
from server.domain import Exposure, Interaction, Outcome, UserProfile
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


async def state(store: InMemoryProfileStore) -> dict[str, object]:
    """Everything the store knows, comparable across instances: per user the profile, the history and
    the seen set; and the popularity counts."""
    users: dict[str, tuple[object, object, list[Interaction], list[int]]] = {}
    for user in sorted(store.known_user_ids()):
        p = await store.get_profile(user, T)
        embedding = None if p is None or p.embedding is None else p.embedding.tolist()
        attributes = None if p is None else p.attributes
        recent = await store.recent_interactions(user, 10_000, T)
        users[user] = (embedding, attributes, recent, (await store.seen_items(user, T)).tolist())
    return {"users": users, "popularity": await store.item_popularity(T)}


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


def seen_of(*item_ids: str) -> list[int]:
    return sorted(_core.stable_hash64(list(item_ids)).tolist())


async def test_seen_sets_and_counts_survive_log_replay_and_snapshots(tmp_path: Path) -> None:
    store = open_store(tmp_path, seen_limit=3)
    await store.append_interactions(events("u", 5))
    await store.append_interactions([Interaction("v", "i1", "view", 4.0, 20_000)])
    before = await state(store)
    assert (await store.seen_items("u", T)).tolist() == seen_of("i2", "i3", "i4")
    counts = before["popularity"]
    assert isinstance(counts, dict) and set(counts) == {"trending", "all_time"}
    assert counts["all_time"]["i1"] == pytest.approx(4.0 + (2.0 + 1 / 3), rel=1e-6)
    replayed = open_store(tmp_path, seen_limit=3)  # crash: the log alone
    assert await state(replayed) == before
    await replayed.close()  # writes a snapshot
    reopened = open_store(tmp_path, seen_limit=3)
    assert await state(reopened) == before
    await reopened.close()
    # A seen_limit lowered since the snapshot applies at once: the most recently seen are kept.
    lowered = open_store(tmp_path, seen_limit=2)
    assert (await lowered.seen_items("u", T)).tolist() == seen_of("i3", "i4")
    await lowered.close()


async def test_a_list_new_or_with_a_new_half_life_restarts_from_the_histories(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    day_ms = 86_400_000
    store = open_store(tmp_path, popularity_half_lives={"trending": 86_400.0})
    await store.append_interactions(
        [Interaction("u", "a", "view", 1.0, 0), Interaction("u", "b", "view", 1.0, day_ms)]
    )
    await store.close()
    changed = {"trending": 2 * 86_400.0, "weekly": 7 * 86_400.0}
    reopened = open_store(tmp_path, popularity_half_lives=changed)
    counts = await reopened.item_popularity(T)
    assert counts["trending"]["a"] == pytest.approx(2**-0.5, rel=1e-6)
    assert counts["weekly"]["a"] == pytest.approx(2 ** (-1 / 7), rel=1e-6)
    assert "trending" in caplog.text and "weekly" in caplog.text
    await reopened.close()


def write_format_1_snapshot(path: Path, lsn: int, histories: dict[str, list[Interaction]]) -> None:
    """A snapshot as the store wrote it before seen sets and popularity counts existed."""
    history_type = pa.list_(
        pa.struct(
            [
                ("item_id", pa.string()),
                ("action", pa.string()),
                ("weight", pa.float64()),
                ("timestamp_ms", pa.int64()),
            ]
        )
    )
    schema = pa.schema(
        [
            ("user_id", pa.string()),
            ("has_profile", pa.bool_()),
            ("embedding", pa.list_(pa.float32())),
            ("attributes", pa.map_(pa.string(), pa.string())),
            ("history", history_type),
        ],
        metadata={"format": "recd-profiles-1", "lsn": str(lsn)},
    )
    users = sorted(histories)
    table = pa.table(
        [
            pa.array(users),
            pa.array([user == "u" for user in users]),
            pa.array([[0.5, 0.25] if user == "u" else None for user in users], pa.list_(pa.float32())),
            pa.array(
                [[("k", "v")] if user == "u" else None for user in users], pa.map_(pa.string(), pa.string())
            ),
            pa.array(
                [
                    [
                        {
                            "item_id": i.item_id,
                            "action": i.action,
                            "weight": i.weight,
                            "timestamp_ms": i.timestamp_ms,
                        }
                        for i in histories[user]
                    ]
                    for user in users
                ],
                history_type,
            ),
        ],
        schema=schema,
    )
    with pa.OSFile(str(path), "wb") as f, pa.ipc.new_file(f, schema) as writer:
        writer.write_table(table)


async def test_a_format_1_snapshot_loads_with_seen_sets_and_counts_from_its_histories(tmp_path: Path) -> None:
    histories = {"u": events("u", 4), "w": [Interaction("w", "i0", "buy", 3.0, 50_000)]}
    write_format_1_snapshot(tmp_path / SNAPSHOT_FILE, 7, histories)
    store = open_store(tmp_path, seen_limit=3)
    profile_u = await store.get_profile("u", T)
    assert profile_u is not None and profile_u.attributes == {"k": "v"}
    assert [e.item_id for e in await store.recent_interactions("u", 10, T)] == ["i3", "i2", "i1", "i0"]
    assert (await store.seen_items("u", T)).tolist() == seen_of("i1", "i2", "i3")
    assert (await store.seen_items("w", T)).tolist() == seen_of("i0")
    counts = await store.item_popularity(T)
    day_ms = 86_400_000
    # Decayed to the newest interaction the snapshot holds (w's, at 50_000).
    assert counts["trending"]["i0"] == pytest.approx(3.0 + 2.0 * 2 ** (-40_000 / day_ms), rel=1e-6)
    await store.append_interactions([Interaction("u", "i9", "view", 1.0, 60_000)])
    before = await state(store)
    await store.close()  # rewrites the snapshot in the current format
    reopened = open_store(tmp_path, seen_limit=3)
    assert await state(reopened) == before
    await reopened.close()


# --- erasure -------------------------------------------------------------------------------------------
MARKERS = (b"erased-user-7f3a", b"marker-attribute-c0ffee", b"marker-item-b00c")


def files_holding(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


async def test_an_erasure_is_durable_at_once_and_then_leaves_the_disk(tmp_path: Path) -> None:
    data = tmp_path / "profiles"
    store = open_store(data)
    await fill(store)
    erased = MARKERS[0].decode()
    await store.upsert_profiles([UserProfile(erased, np.ones(4, np.float32), {"k": MARKERS[1].decode()})])
    await store.append_interactions([Interaction(erased, MARKERS[2].decode(), "click", 1.0, 10_000)])
    await store.compact()  # in the snapshot as well as in what the log held
    assert all(files_holding(data, marker) for marker in MARKERS)

    await store.delete_users([erased, "u1"])
    # What a kill -9 right after the acknowledgement leaves: the erasure is only in the log so far.
    crashed = tmp_path / "crashed"
    shutil.copytree(data, crashed)
    expected = await state(store)
    assert erased not in expected["users"] and "u1" not in expected["users"]  # type: ignore[operator]
    assert MARKERS[2].decode() in expected["popularity"]["all_time"]  # type: ignore[index]
    replayed = open_store(crashed)
    assert await state(replayed) == expected
    assert await replayed.count_users() == 29

    # The compaction the erasure started rewrites the snapshot and drops the log that held the user.
    assert store._erasure_compaction is not None
    await asyncio.wait_for(store._erasure_compaction, 10)
    assert [files_holding(data, marker) for marker in MARKERS[:2]] == [[], []]
    # The item id stays only as a popularity count (an anonymous aggregate), never with the user.
    assert all(p.name == SNAPSHOT_FILE for p in files_holding(data, MARKERS[2]))
    await store.close()
    reopened = open_store(data)
    assert await state(reopened) == expected
    await reopened.close()
    await replayed.close()


# --- the exposure log --------------------------------------------------------------------------------------
NOW_S = 1_750_000_000.0
WEEK_S = 7 * 86_400.0


class Clock:
    """The wall clock the exposure log's expiry reads, moved by hand."""

    def __init__(self) -> None:
        self.now_s = NOW_S

    def __call__(self) -> float:
        return self.now_s


def served(user: str, k: int, arm: str = "exp=a") -> Exposure:
    return Exposure(user, int(NOW_S * 1000) + k, (f"{user}-i{k}", f"{user}-j{k}"), arm, 10.0 + k, k / 10)


def clicked(user: str, k: int) -> Outcome:
    return Outcome(
        user, f"{user}-i{k}", "click", 1.0 + k, int(NOW_S * 1000) + k + 5, int(NOW_S * 1000) + k, "exp=a"
    )


async def log_state(store: InMemoryProfileStore) -> tuple[object, ...]:
    exposures = sorted(await store.scan_exposures(0), key=lambda e: (e.user_id, e.served_at_ms))
    outcomes = sorted(await store.scan_outcomes(0), key=lambda o: (o.user_id, o.at_ms))
    return exposures, outcomes


async def fill_log(store: InMemoryProfileStore, users: int = 6) -> None:
    for k in range(12):
        await store.record_exposures(
            [served(f"u{k % users}", k), served(f"u{(k + 1) % users}", k)], 3, WEEK_S
        )
        await store.record_outcomes([clicked(f"u{k % users}", k)], WEEK_S)


@pytest.mark.parametrize("restart", ["crash", "close"])
async def test_exposures_and_outcomes_survive_a_restart(tmp_path: Path, restart: str) -> None:
    clock = Clock()
    store = open_store(tmp_path, clock=clock, outcomes_per_user=2)
    await fill_log(store)
    exposures, outcomes = before = await log_state(store)
    # The bounds hold: three exposures per user (keep_per_user), two outcomes (outcomes_per_user).
    assert len(exposures) == 6 * 3 and len(outcomes) == 6 * 2  # type: ignore[arg-type]
    if restart == "close":
        await store.close()
        assert (tmp_path / SNAPSHOT_FILE).exists()
    else:
        assert not (tmp_path / SNAPSHOT_FILE).exists()  # only the log holds them
    reopened = open_store(tmp_path, clock=clock, outcomes_per_user=2)
    assert await log_state(reopened) == before
    [newest] = await reopened.read_exposures(["u1"], 0, 1, T)
    assert newest == [served("u1", 7)]
    await reopened.close()
    third = open_store(tmp_path, clock=clock, outcomes_per_user=2)
    assert await log_state(third) == before
    await third.close()


async def test_a_snapshot_and_the_log_after_it_replay_the_exposure_log(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    await fill_log(store)
    await store.compact()
    await store.record_exposures([served("u1", 50)], 3, WEEK_S)  # only in the log
    await store.record_outcomes([clicked("u9", 50)], WEEK_S)
    before = await log_state(store)
    reopened = open_store(tmp_path)  # crash: no close
    assert await log_state(reopened) == before
    [found] = await reopened.read_exposures(["u1"], 0, 10, T)
    assert found[0] == served("u1", 50) and len(found) == 3
    await reopened.close()


async def test_expired_entries_are_never_answered_and_leave_memory_and_snapshots(tmp_path: Path) -> None:
    clock = Clock()
    store = open_store(tmp_path, clock=clock)
    await store.record_exposures([served("short", 1)], 10, 60.0)
    await store.record_outcomes([clicked("short", 1)], 60.0)
    await store.record_exposures([served("long", 1)], 10, WEEK_S)
    clock.now_s += 59
    assert await store.read_exposures(["short"], 0, 10, T) == [[served("short", 1)]]
    clock.now_s += 2
    assert await store.read_exposures(["short", "long"], 0, 10, T) == [[], [served("long", 1)]]
    assert await store.scan_outcomes(0) == []
    held = await store.export_user("short", 10, T)
    assert (held.found, held.exposures_held, held.outcomes_held) == (False, 0, 0)
    # The read dropped the expired exposure; the sweep, advanced by a write, drops the outcome of a
    # user nobody reads or writes again.
    assert "short" not in store._exposures
    await store.record_exposures([served("other", 1)], 10, WEEK_S)
    assert "short" not in store._outcomes
    await store.close()
    # Expiry is by the wall clock, so it holds across a restart: the snapshot held only what was alive.
    clock.now_s += WEEK_S - 30
    reopened = open_store(tmp_path, clock=clock)
    assert await reopened.read_exposures(["long", "other"], 0, 10, T) == [[], [served("other", 1)]]
    await reopened.close()


async def test_an_expired_entry_replayed_from_the_log_is_not_answered(tmp_path: Path) -> None:
    clock = Clock()
    store = open_store(tmp_path, clock=clock)
    await store.record_exposures([served("u1", 1)], 10, 60.0)
    await store.record_outcomes([clicked("u1", 1)], 60.0)
    clock.now_s += 61
    reopened = open_store(tmp_path, clock=clock)  # crash: the log replays an entry that has expired
    assert await reopened.read_exposures(["u1"], 0, 10, T) == [[]]
    assert await reopened.scan_exposures(0) == [] and await reopened.scan_outcomes(0) == []
    await reopened.close()


async def test_an_erasure_of_the_exposure_log_survives_a_restart_and_leaves_the_disk(tmp_path: Path) -> None:
    data = tmp_path / "profiles"
    store = open_store(data)
    await fill_log(store)
    erased = MARKERS[0].decode()
    marker_item = MARKERS[2].decode()
    await store.record_exposures([Exposure(erased, 1, (marker_item,), "exp=a", 1.0, 0.0)], 3, WEEK_S)
    await store.record_outcomes([Outcome(erased, marker_item, "click", 1.0, 2, 1, "exp=a")], WEEK_S)
    await store.compact()
    assert files_holding(data, MARKERS[0]) and files_holding(data, MARKERS[2])

    await store.delete_users([erased, "u1"])
    crashed = tmp_path / "crashed"
    shutil.copytree(data, crashed)  # kill -9 right after the acknowledgement
    expected = await log_state(store)
    assert {e.user_id for e in expected[0]} == {"u0", "u2", "u3", "u4", "u5"}  # type: ignore[attr-defined]
    replayed = open_store(crashed)
    assert await log_state(replayed) == expected
    assert (await replayed.export_user(erased, 10, T)).found is False

    assert store._erasure_compaction is not None
    await asyncio.wait_for(store._erasure_compaction, 10)
    assert files_holding(data, MARKERS[0]) == [] and files_holding(data, MARKERS[2]) == []
    await store.close()
    reopened = open_store(data)
    assert await log_state(reopened) == expected
    await reopened.close()
    await replayed.close()


async def test_a_format_2_snapshot_loads_with_an_empty_exposure_log(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    await fill(store, n=8)
    before = await state(store)
    await store.close()
    # What the previous version wrote: the same rows without the exposure log's columns.
    path = tmp_path / SNAPSHOT_FILE
    table = pa.ipc.open_file(pa.BufferReader(path.read_bytes())).read_all()  # a copy, not a map
    kept = [name for name in table.column_names if not name.startswith(("exposure_", "outcome_"))]
    old = table.select(kept).replace_schema_metadata(
        {**(table.schema.metadata or {}), b"format": b"recd-profiles-2"}
    )
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, old.schema) as writer:
        writer.write_table(old)
    reopened = open_store(tmp_path)
    assert await state(reopened) == before
    assert await reopened.scan_exposures(0) == []
    await reopened.record_exposures([served("u1", 1)], 3, WEEK_S)
    await reopened.close()
    third = open_store(tmp_path)
    assert await third.read_exposures(["u1"], 0, 10, T) == [[served("u1", 1)]]
    await third.close()


def test_outcomes_per_user_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="outcomes_per_user"):
        InMemoryProfileStore(None, outcomes_per_user=0)

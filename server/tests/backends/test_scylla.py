"""ScyllaProfileStore beyond the ProfileStore contract, against the Cassandra of deploy/scripts/stack.sh.

What the driver is asked to do (prepared statements, one partition per read, LIMIT bounds, batching,
idempotence, routing), what the schema is, and how the store behaves when the cluster is slow, gone,
or back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import BatchStatement

from server import _core
from server.backends.scylla import ScyllaProfileStore, apply_schema, drop_keyspace
from server.config import ProfilesConfig
from server.domain import Exposure, Interaction, Outcome, UserProfile
from server.errors import BackendError
from server.tests.backends.real_backends import scylla_config, scylla_store
from server.tests.backends.tcp_proxy import TcpProxy

pytestmark = pytest.mark.real


class Spy:
    """Records every statement the store hands to the driver."""

    def __init__(self, store: Any) -> None:
        self.calls: list[tuple[Any, Any, dict[str, Any]]] = []
        session = store._conn.session
        original = session.execute_async

        def execute_async(statement: Any, parameters: Any = None, **kwargs: Any) -> Any:
            self.calls.append((statement, parameters, kwargs))
            return original(statement, parameters, **kwargs)

        session.execute_async = execute_async


@pytest.fixture
async def store() -> AsyncIterator[Any]:
    instance = await scylla_store()
    try:
        yield instance
    finally:
        await instance.close()


def events(user: str, n: int, start: int = 1_000) -> list[Interaction]:
    return [Interaction(user, f"i{k}", "view", 1.0, start + k) for k in range(n)]


async def test_only_prepared_statements_reach_the_driver(store: Any) -> None:
    spy = Spy(store)
    await store.upsert_profiles([UserProfile("u1", np.ones(4, np.float32), {"a": "b"})])
    await store.append_interactions(events("u1", 3) + events("u2", 1))
    await store.get_profile("u1", 1.0)
    await store.recent_interactions("u1", 10, 1.0)
    await store.count_users()
    assert spy.calls
    for statement, _, _ in spy.calls:
        inner = statement._statements_and_parameters if isinstance(statement, BatchStatement) else [statement]
        if isinstance(statement, BatchStatement):
            assert all(is_prepared for is_prepared, _, _ in inner)
        else:
            # A PreparedStatement bound by the driver, never query text.
            assert not isinstance(statement, str)
            assert hasattr(statement, "query_id"), type(statement)


async def test_reads_are_single_partition_idempotent_and_bounded_by_the_budget(store: Any) -> None:
    await store.append_interactions(events("u1", 5))
    spy = Spy(store)
    await asyncio.gather(*(store.recent_interactions(f"u{k}", 10, 0.5) for k in range(20)))
    await store.get_profile("u1", 0.25)
    assert len(spy.calls) == 21  # one query per user: no multi-partition IN
    for statement, _, kwargs in spy.calls:
        cql = (
            statement.query_string
            if hasattr(statement, "query_string")
            else statement.prepared_statement.query_string
        )
        assert "WHERE user_id = ?" in cql and " IN " not in cql
        assert statement.is_idempotent  # so speculative execution may race a second replica
        assert kwargs["execution_profile"] == "recd-read"
        assert kwargs["timeout"] <= 0.5
    assert spy.calls[-1][2]["timeout"] == pytest.approx(0.25)


async def test_history_reads_are_limited_by_the_configured_history_limit(store: Any) -> None:
    await store.append_interactions(events("u1", 80))
    spy = Spy(store)
    recent = await store.recent_interactions("u1", 1000, 1.0)
    assert len(recent) == 50  # scylla_config() sets history_limit=50
    assert [e.timestamp_ms for e in recent] == list(range(1079, 1029, -1))
    assert spy.calls[0][1] == ["u1", 50]  # the LIMIT bound in the query
    assert await store.recent_interactions("u1", 0, 1.0) == []


def statement_name(store: Any, statement: Any) -> str:
    """The _Statements field a call runs (for a batch: its first statement's)."""
    names = {
        getattr(store._conn.statements, f.name).query_id: f.name
        for f in dataclasses.fields(store._conn.statements)
    }
    if isinstance(statement, BatchStatement):
        return names[statement._statements_and_parameters[0][1]]
    return names[getattr(statement, "prepared_statement", statement).query_id]


async def test_interactions_are_written_in_single_partition_unlogged_batches(store: Any) -> None:
    spy = Spy(store)
    batch = events("u1", 120) + events("u2", 1) + [Interaction("u1", "i5", "buy", 9.0, 1_005)]
    await store.append_interactions(batch)
    history = [s for s, _, _ in spy.calls if statement_name(store, s) == "append_interaction"]
    batches = [s for s in history if isinstance(s, BatchStatement)]
    singles = [s for s in history if not isinstance(s, BatchStatement)]
    assert sorted(len(b._statements_and_parameters) for b in batches) == [20, 50, 50]
    assert len(singles) == 1  # u2's single row needs no batch
    assert all(b.batch_type.name == "UNLOGGED" and b.is_idempotent for b in batches)
    assert len(await store.recent_interactions("u1", 200, 1.0)) == 50
    # Within one call, the later row for the same (ts, item) wins.
    all_u1 = [e async for e in store.iter_interactions() if e.user_id == "u1"]
    assert len(all_u1) == 120
    assert [(e.action, e.weight) for e in all_u1 if e.item_id == "i5"] == [("buy", 9.0)]


async def test_embeddings_are_stored_as_float16_blobs(store: Any) -> None:
    vector = np.linspace(-1, 1, 64, dtype=np.float32)
    await store.upsert_profiles([UserProfile("u1", vector, {})])
    conn = store._conn
    row = conn.session.execute(
        f"SELECT embedding FROM {store.config.keyspace}.user_profiles WHERE user_id = 'u1'"
    ).one()
    assert len(row[0]) == 2 * 64
    profile = await store.get_profile("u1", 1.0)
    np.testing.assert_array_equal(profile.embedding, vector.astype(np.float16).astype(np.float32))


async def test_count_users_and_iter_interactions_cover_both_tables(store: Any) -> None:
    await store.upsert_profiles([UserProfile(f"p{k}", None, {}) for k in range(3)])
    await store.append_interactions(events("p0", 2) + events("h1", 3) + events("h2", 1))
    assert await store.count_users() == 5
    got = sorted([(e.user_id, e.item_id, e.timestamp_ms) async for e in store.iter_interactions()])
    assert got == sorted(
        (e.user_id, e.item_id, e.timestamp_ms) for e in events("p0", 2) + events("h1", 3) + events("h2", 1)
    )


async def test_schema_matches_the_design() -> None:
    config = scylla_config(
        replication={"class": "SimpleStrategy", "replication_factor": 1}, interactions_ttl_s=86400
    )
    await asyncio.to_thread(apply_schema, config)
    await asyncio.to_thread(apply_schema, config)  # idempotent
    store = ScyllaProfileStore(config)
    try:
        await store.connect()
        assert store._conn is not None
        session = store._conn.session
        ks = config.keyspace
        tables = {
            r[0]: r
            for r in session.execute(
                "SELECT table_name, compaction, default_time_to_live FROM system_schema.tables WHERE keyspace_name = %s",
                [ks],
            )
        }
        assert set(tables) == {
            "user_profiles",
            "user_interactions",
            "items",
            "user_seen",
            "item_popularity",
            "popularity_clock",
            "popularity_writes",
            "cluster_layout",
            "exposures",
            "outcomes",
        }
        assert tables["user_interactions"][1]["class"].endswith("TimeWindowCompactionStrategy")
        assert tables["exposures"][1]["class"].endswith("TimeWindowCompactionStrategy")
        assert tables["outcomes"][1]["class"].endswith("TimeWindowCompactionStrategy")
        assert tables["user_interactions"][2] == 86400
        columns = {
            (r[0], r[1]): (r[2], r[3])
            for r in session.execute(
                "SELECT table_name, column_name, kind, clustering_order FROM system_schema.columns WHERE keyspace_name = %s",
                [ks],
            )
        }
        assert columns[("user_interactions", "user_id")][0] == "partition_key"
        assert columns[("user_interactions", "ts")] == ("clustering", "desc")
        assert columns[("user_interactions", "item_id")][0] == "clustering"
        assert columns[("items", "item_id")][0] == "partition_key"
        assert columns[("item_popularity", "list_name")][0] == "partition_key"
        assert columns[("item_popularity", "epoch")][0] == "partition_key"
        assert columns[("item_popularity", "item_id")][0] == "clustering"
        assert columns[("exposures", "user_id")][0] == "partition_key"
        assert columns[("exposures", "served_at_ms")] == ("clustering", "desc")
        assert columns[("outcomes", "user_id")][0] == "partition_key"
        assert columns[("outcomes", "at_ms")] == ("clustering", "desc")
        types = {
            (r[0], r[1]): r[2]
            for r in session.execute(
                "SELECT table_name, column_name, type FROM system_schema.columns WHERE keyspace_name = %s",
                [ks],
            )
        }
        assert types[("user_seen", "items")] == "map<bigint, bigint>"
        assert types[("item_popularity", "value")] == "counter"
        assert types[("exposures", "item_ids")] == "frozen<list<text>>"
        replication = session.execute(
            "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s", [ks]
        ).one()[0]
        assert replication["class"].endswith("SimpleStrategy") and replication["replication_factor"] == "1"
    finally:
        await store.close()
        await asyncio.to_thread(drop_keyspace, config)


async def test_routing_consistency_and_speculation_come_from_config(store: Any) -> None:
    from cassandra import ConsistencyLevel

    profiles = store._conn.cluster.profile_manager.profiles
    for name in (None, "recd-read"):
        profile = profiles["recd-read"] if name else next(p for k, p in profiles.items() if k != "recd-read")
        assert isinstance(profile.load_balancing_policy, TokenAwarePolicy)
        assert isinstance(profile.load_balancing_policy._child_policy, DCAwareRoundRobinPolicy)
        assert profile.consistency_level == ConsistencyLevel.LOCAL_QUORUM
    assert profiles["recd-read"].speculative_execution_policy.max_attempts == 1
    with pytest.raises(ValueError, match="consistency"):
        ScyllaProfileStore(ProfilesConfig(backend="scylla", consistency="MOSTLY"))


async def test_seen_entries_carry_their_interaction_time_and_counters_come_last(store: Any) -> None:
    spy = Spy(store)
    await store.append_interactions([*events("u1", 60), Interaction("u1", "i3", "view", 1.0, 500)])
    names = [statement_name(store, s) for s, _, _ in spy.calls]
    seen_writes = [s for s, _, _ in spy.calls if statement_name(store, s) == "seen_add"]
    assert [len(s._statements_and_parameters) for s in seen_writes] == [50, 10]
    for batch in seen_writes:
        assert batch.batch_type.name == "UNLOGGED" and batch.is_idempotent
        for _, _, values in batch._statements_and_parameters:
            assert len(values) == 3  # USING TIMESTAMP, the map, the user
    counters = [s for s, _, _ in spy.calls if statement_name(store, s) == "popularity_add"]
    assert counters and all(s.batch_type.name == "COUNTER" and not s.is_idempotent for s in counters)
    # The counters (not idempotent) are sent only once every idempotent write was acknowledged.
    first_counter = names.index("popularity_add")
    assert set(names[first_counter:-1]) == {"popularity_add"}
    assert names[-1] == "writes_bump"  # after the counters: a refresher seeing it reads them all


async def test_a_seen_entry_keeps_the_latest_time_whatever_the_arrival_order(store: Any) -> None:
    await store.append_interactions(events("u1", 60))
    await store.append_interactions([Interaction("u1", "i3", "view", 1.0, 500)])
    # i3 was seen at 1_003; the older interaction with it (ts 500), written later, did not lower that.
    row = store._conn.session.execute(
        f"SELECT items FROM {store.config.keyspace}.user_seen WHERE user_id = 'u1'"
    ).one()
    hash_i3 = int(_core.stable_hash64(["i3"]).view(np.int64)[0])
    assert row[0][hash_i3] == 1_003


async def test_an_oversized_seen_set_is_answered_newest_first_and_trimmed_in_the_background() -> None:
    store = await scylla_store(seen_limit=5)
    try:
        await store.append_interactions(events("u1", 8))
        seen = await store.seen_items("u1", 1.0)
        assert seen.tolist() == sorted(_core.stable_hash64([f"i{k}" for k in range(3, 8)]).tolist())
        query = f"SELECT items FROM {store.config.keyspace}.user_seen WHERE user_id = 'u1'"
        for _ in range(100):
            if len(store._conn.session.execute(query).one()[0]) == 5:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the seen set was not trimmed")
        assert (await store.seen_items("u1", 1.0)).tolist() == seen.tolist()
    finally:
        await store.close()


async def test_popularity_reads_the_newest_epochs_of_each_list_only(store: Any) -> None:
    from server import popularity

    now_ms = 1_750_000_000_000
    await store.append_interactions(
        [
            Interaction("u1", "a", "view", 1.0, now_ms - 100 * 86_400_000),
            Interaction("u1", "b", "view", 1.0, now_ms),
        ]
    )
    spy = Spy(store)
    counts = await store.item_popularity(5.0)
    assert counts["trending"] == {"b": pytest.approx(1.0, rel=1e-4)}  # "a" is 6 epochs back: not read
    assert counts["all_time"]["a"] == pytest.approx(2 ** (-100 / 365), rel=1e-4)
    reads = [p for s, p, _ in spy.calls if statement_name(store, s) == "popularity_read"]
    expected = [
        [name, epoch]
        for name, half_life_s in store.popularity_half_lives.items()
        for epoch in popularity.epochs_to_read(now_ms, half_life_s)
    ]
    assert sorted(reads) == sorted(expected)


async def test_popularity_is_read_again_only_after_a_write(store: Any) -> None:
    await store.append_interactions(events("u1", 3))
    first = await store.item_popularity(5.0)
    spy = Spy(store)
    assert await store.item_popularity(5.0) is first  # nothing written since: no partition read
    assert [statement_name(store, s) for s, _, _ in spy.calls] == ["writes_read"]
    await store.append_interactions([Interaction("u2", "i0", "view", 1.0, 2_000)])
    second = await store.item_popularity(5.0)
    assert second is not first
    assert second["all_time"]["i0"] > first["all_time"]["i0"]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_unreachable_cluster_is_a_backend_error_and_fails_fast_afterwards() -> None:
    store = ScyllaProfileStore(ProfilesConfig(backend="scylla", hosts=["127.0.0.1"], port=closed_port()))
    try:
        with pytest.raises(BackendError):
            await store.get_profile("u1", 2.0)
        started = time.monotonic()
        with pytest.raises(BackendError, match="not connected"):
            await store.recent_interactions("u1", 10, 2.0)
        assert time.monotonic() - started < 0.05
        with pytest.raises(BackendError, match="budget"):
            await store.get_profile("u1", 0.0)
    finally:
        await store.close()


async def test_a_hung_cluster_costs_the_budget_and_a_returning_one_is_used_again() -> None:
    """Through a proxy: a hung node, then a dead one, then back; the driver reconnects by itself."""
    base = scylla_config()
    proxy = await TcpProxy(base.hosts[0], base.port).start()
    store = await scylla_store(hosts=["127.0.0.1"], port=proxy.port, keyspace=base.keyspace)
    try:
        await store.append_interactions(events("u1", 3))
        assert len(await store.recent_interactions("u1", 10, 1.0)) == 3

        proxy.blackhole()
        started = time.monotonic()
        with pytest.raises(BackendError):
            await store.recent_interactions("u1", 10, 0.2)
        assert 0.15 < time.monotonic() - started < 0.6

        await proxy.down()
        started = time.monotonic()
        for _ in range(5):
            with pytest.raises(BackendError):
                await store.get_profile("u1", 0.2)
        assert time.monotonic() - started < 2.0

        await proxy.up()
        deadline = time.monotonic() + 15.0
        while True:
            try:
                assert len(await store.recent_interactions("u1", 10, 0.5)) == 3
                break
            except BackendError:
                assert time.monotonic() < deadline, "the driver did not reconnect"
                await asyncio.sleep(0.2)
    finally:
        await store.close()
        await proxy.close()


async def test_an_erasure_removes_each_seen_entry_at_its_own_time_and_every_partition() -> None:
    store = await scylla_store(seen_limit=5)
    try:
        # Nine entries, more than seen_limit (not trimmed yet), one at a time past the erasure's own.
        future_ms = int(time.time() * 1000) + 86_400_000
        await store.append_interactions(
            [*events("u1", 8), Interaction("u1", "later", "view", 1.0, future_ms)]
        )
        await store.upsert_profiles([UserProfile("u1", np.ones(4, np.float32), {"lang": "en"})])
        spy = Spy(store)
        await store.delete_users(["u1"])
        names = [statement_name(store, s) for s, _, _ in spy.calls]
        assert names.count("delete_profile") == names.count("delete_interactions") == 1
        removals = [s for s, _, _ in spy.calls if statement_name(store, s) == "seen_remove"]
        assert [len(b._statements_and_parameters) for b in removals] == [9]  # one per distinct time
        assert all(b.batch_type.name == "UNLOGGED" and b.is_idempotent for b in removals)
        ks = store.config.keyspace
        session = store._conn.session
        del session.execute_async  # the spy's: the session's own again, for the blocking reads below
        for table in ("user_profiles", "user_interactions"):
            assert session.execute(f"SELECT * FROM {ks}.{table} WHERE user_id = 'u1'").all() == []
        seen_row = session.execute(f"SELECT items FROM {ks}.user_seen WHERE user_id = 'u1'").one()
        assert seen_row is None or not seen_row[0]  # the future entry too: its tombstone is as late
        # The identical interaction recorded again stays erased from the seen set (its tombstone is as
        # new as it); any later time is a new entry.
        await store.append_interactions([Interaction("u1", "i0", "view", 1.0, 1_000)])
        assert len(await store.seen_items("u1", 1.0)) == 0
        await store.append_interactions([Interaction("u1", "i0", "view", 1.0, 1_001)])
        assert (await store.seen_items("u1", 1.0)).tolist() == _core.stable_hash64(["i0"]).tolist()
    finally:
        await store.close()


# --- the exposure log --------------------------------------------------------------------------------------
def served(user: str, k: int) -> Exposure:
    return Exposure(user, 1_750_000_000_000 + k, (f"i{k}", f"j{k}"), "exp=a", 4.0, 0.5)


async def test_exposures_are_written_per_partition_with_a_ttl_and_read_one_partition_each(store: Any) -> None:
    spy = Spy(store)
    await store.record_exposures([served("u1", k) for k in range(25)] + [served("u2", 0)], 3, 3600.4)
    writes = [s for s, _, _ in spy.calls if statement_name(store, s) == "exposure_add"]
    batches = [s for s in writes if isinstance(s, BatchStatement)]
    assert sorted(len(b._statements_and_parameters) for b in batches) == [5, 10, 10]
    assert all(b.batch_type.name == "UNLOGGED" and b.is_idempotent for b in batches)
    assert len(writes) == 4  # u2's single row needs no batch
    # The TTL is whole seconds, rounded up; keep_per_user is not enforced in CQL (the read's LIMIT is).
    session = store._conn.session
    del session.execute_async  # the spy's: execute() passes more than it takes
    ttls = [r[0] for r in session.execute(f"SELECT TTL(arm) FROM {store.config.keyspace}.exposures")]
    assert len(ttls) == 26 and all(3590 <= ttl <= 3601 for ttl in ttls)

    spy = Spy(store)
    found = await store.read_exposures([f"u{k}" for k in range(1, 6)], 0, 3, 0.5)
    assert [len(f) for f in found] == [3, 1, 0, 0, 0]
    assert [e.served_at_ms for e in found[0]] == [1_750_000_000_000 + k for k in (24, 23, 22)]
    assert len(spy.calls) == 5  # one single-partition query per user, all in flight together
    for statement, params, kwargs in spy.calls:
        assert statement.is_idempotent and kwargs["execution_profile"] == "recd-read"
        assert params[1:] == [0, 3]  # since_ms and the LIMIT, in the query
        assert kwargs["timeout"] <= 0.5


async def test_exposure_log_scans_page_through_the_table(store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    await store.record_exposures([served(f"u{k % 7}", k) for k in range(40)], 100, 3600)
    await store.record_outcomes(
        [Outcome(f"u{k % 7}", f"i{k}", "click", 1.0, 2_000 + k, 1_000 + k, "exp=a") for k in range(40)], 3600
    )
    spy = Spy(store)
    for name in ("exposures_scan", "outcomes_scan"):
        getattr(store._conn.statements, name).fetch_size = 8
    assert len(await store.scan_exposures(0)) == 40
    assert len(await store.scan_outcomes(2_010)) == 30
    assert len(spy.calls) >= 5 + 4  # page by page

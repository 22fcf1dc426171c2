"""The profile and interaction store on ScyllaDB (or Apache Cassandra) through the CQL driver.

- Prepared statements only, routed token-aware (the replica that owns the partition coordinates it),
  at the configured consistency (LOCAL_QUORUM by default; a one-node test cluster with RF=1 meets it).
- Reads on the request path touch one partition each (`WHERE user_id = ?`), never a multi-partition
  IN: concurrent users become concurrent queries that the token-aware policy spreads over the replicas.
  They are idempotent, so a slow replica is raced by a speculative copy to the next one.
- Each read's timeout is what the caller's budget has left, capped by `request_timeout_ms`; the driver
  enforces it, so a slow or dead cluster costs a request its budget and no more.
- The driver's futures are bridged to asyncio with a callback that hops onto the event loop
  (`call_soon_threadsafe`): no thread is held per call. Only connecting, which blocks, runs in a thread.
- Once connected, the driver itself reconnects when nodes come back; until then calls fail fast with
  BackendError (all hosts down -> NoHostAvailable at once, not a timeout).

Seen sets and popularity counts are written without any read before the write, so several frontends
can write at once:

- `user_seen` holds one map per user, item hash -> last seen (ms). Each entry is written `USING
  TIMESTAMP` of its interaction, so the cell's own last-write-wins keeps the LATEST time whatever the
  order writes arrive in. A read that finds more than `seen_limit` entries answers the newest ones and
  removes the others in the background, with a tombstone at the newest removed entry's time: an item
  seen again later than that (by a concurrent write) survives the removal.
- `item_popularity` holds CQL counters per (list, epoch, item) in fixed point (server/popularity.py).
  Counters are not idempotent: a write that failed may still have been applied, so retrying a failed
  `append_interactions` can count its interactions twice. They are written only after everything
  idempotent succeeded, so a retry after a failure of those does not.
- `popularity_clock` holds the newest interaction timestamp, the counts' reference time, as one cell
  written `USING TIMESTAMP` of its value: last-write-wins then keeps the maximum, with no LWT.
- `popularity_writes` is a counter bumped after each call's counter writes: a refresher reads the
  counters (whole partitions) only when it moved, and otherwise answers what it read last time.

The exposure log (server/experiments) is two tables, one partition per user, newest first on disk:
`exposures` (answers served) and `outcomes` (interactions attributed to them). Every row is written
`USING TTL` of the call's `ttl_s` (counted from the write, at least 1 s), and both tables compact by
time window, so expired rows leave whole SSTables at once. CQL cannot bound a partition by row count
without a read before each write, so `keep_per_user` is not enforced here: a partition is bounded by the
TTL, and a read by its LIMIT (callers ask for at most keep_per_user). An exposure's clustering key ends
in a hash of its items and arm, and an outcome's is (time, item, action): a retried write rewrites the
same rows instead of adding new ones. Scans for the report page through the whole table, filtered by
time on the server (ALLOW FILTERING on the clustering time: a full scan either way, but fewer rows sent).

Erasure (`delete_users`) deletes the user's `user_profiles`, `user_interactions`, `exposures` and
`outcomes` partitions, and
removes each `user_seen` entry with a tombstone at that entry's own write time (the interaction's time)
rather than deleting the map at "now": a partition tombstone at now would also hide every entry written
later with an older interaction time (a backfill after the erasure), and one at now would miss entries
whose interaction time lies in the future. Re-recording an erased interaction with the same time stays
erased; any later time, or another item, is a new entry. The deletes are acknowledged at the configured
consistency like any write; tombstones purge the data from disk at compaction after gc_grace_seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from cassandra import ConsistencyLevel, InvalidRequest, Unauthorized
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import (
    ConstantSpeculativeExecutionPolicy,
    DCAwareRoundRobinPolicy,
    ExponentialReconnectionPolicy,
    TokenAwarePolicy,
)
from cassandra.protocol import SyntaxException
from cassandra.query import BatchStatement, BatchType, tuple_factory

from server import _core, metrics, popularity, tracing
from server.backends import seen as seen_sets
from server.backends.base import ItemHashes, UserExport, UserRecord, read_users_by_partition
from server.config import PopularityConfig, ProfilesConfig
from server.domain import Exposure, Interaction, Outcome, UserProfile
from server.errors import BackendError
from server.security.tls import cql_options

log = logging.getLogger(__name__)

_BACKEND = "profiles"
_METRIC = "scylla"
_READ_PROFILE = "recd-read"
# The driver enforces each timeout; this slack only keeps an asyncio caller from waiting forever should
# a driver callback never come.
_GUARD_S = 0.25
# Rows per single-partition UNLOGGED batch: well under the server's batch_size_warn_threshold (5 KiB).
_BATCH_ROWS = 50
# An exposure row carries its answer's item ids (a few hundred bytes): fewer per batch, same bound.
_EXPOSURE_BATCH_ROWS = 10
_SCAN_PAGE = 5000
# After a failed connect, callers fail fast for this long instead of each retrying the connection.
_CONNECT_RETRY_S = 1.0
_IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")
# The popularity_clock row that holds the newest interaction timestamp.
_CLOCK_ROW = "interactions"
# Seen-set trims in flight at once, and map entries one trim removes: a burst of reads of oversized sets
# cannot flood the cluster; what one trim leaves, the next read removes.
_MAX_TRIMS = 16
_TRIM_ENTRIES = 2000
# CQL's largest TTL (20 years).
_MAX_TTL_S = 630_720_000


def _check_identifier(name: str, what: str) -> str:
    if not _IDENTIFIER.match(name):
        raise ValueError(f"{what} {name!r} is not a valid CQL identifier (letters, digits, _; 48 at most)")
    return name


# --- schema ---------------------------------------------------------------------------------------------
def schema_statements(config: ProfilesConfig) -> list[str]:
    """The DDL of DESIGN.md's data model, idempotent (IF NOT EXISTS)."""
    ks = _check_identifier(config.keyspace, "profiles.keyspace")
    replication = ", ".join(f"'{k}': '{_cql_escape(str(v))}'" for k, v in config.replication.items())
    ttl = f" AND default_time_to_live = {int(config.interactions_ttl_s)}" if config.interactions_ttl_s else ""
    return [
        f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {{{replication}}}",
        f"""CREATE TABLE IF NOT EXISTS {ks}.user_profiles (
    user_id text PRIMARY KEY,
    embedding blob,
    attributes map<text, text>,
    updated_at timestamp
)""",
        # Newest first on disk, so "the recent N" is the head of the partition; time-windowed compaction
        # because interactions are append-only time series that age out together.
        f"""CREATE TABLE IF NOT EXISTS {ks}.user_interactions (
    user_id text,
    ts timestamp,
    item_id text,
    action text,
    weight double,
    PRIMARY KEY ((user_id), ts, item_id)
) WITH CLUSTERING ORDER BY (ts DESC, item_id ASC)
  AND compaction = {{'class': 'TimeWindowCompactionStrategy',
                     'compaction_window_unit': 'DAYS', 'compaction_window_size': 1}}{ttl}""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.items (
    item_id text PRIMARY KEY,
    embedding blob,
    attributes map<text, text>,
    popularity float,
    created_at timestamp
)""",
        # Item hash (stable_hash64 as a signed bigint) -> last seen (ms); entries written USING TIMESTAMP
        # of the interaction, so the latest time wins whatever the arrival order.
        f"""CREATE TABLE IF NOT EXISTS {ks}.user_seen (
    user_id text PRIMARY KEY,
    items map<bigint, bigint>
)""",
        # Forward-decayed counts in fixed point (server/popularity.py); a partition per list and epoch,
        # of which readers read only the newest few.
        f"""CREATE TABLE IF NOT EXISTS {ks}.item_popularity (
    list_name text,
    epoch bigint,
    item_id text,
    value counter,
    PRIMARY KEY ((list_name, epoch), item_id)
)""",
        # The newest interaction timestamp, written USING TIMESTAMP of itself: a max register.
        f"""CREATE TABLE IF NOT EXISTS {ks}.popularity_clock (
    name text PRIMARY KEY,
    newest_ms bigint
)""",
        # Bumped after every call's counter writes: a refresher re-reads the counters only when it moved.
        f"""CREATE TABLE IF NOT EXISTS {ks}.popularity_writes (
    name text PRIMARY KEY,
    writes counter
)""",
        # The exposure log: answers served and the interactions attributed to them, every row with a TTL;
        # windows of six hours hold a week's TTL in ~28 SSTables, each dropped whole once expired.
        f"""CREATE TABLE IF NOT EXISTS {ks}.exposures (
    user_id text,
    served_at_ms bigint,
    nonce bigint,
    item_ids frozen<list<text>>,
    arm text,
    latency_ms double,
    diversity double,
    PRIMARY KEY ((user_id), served_at_ms, nonce)
) WITH CLUSTERING ORDER BY (served_at_ms DESC, nonce ASC)
  AND compaction = {{'class': 'TimeWindowCompactionStrategy',
                     'compaction_window_unit': 'HOURS', 'compaction_window_size': 6}}""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.outcomes (
    user_id text,
    at_ms bigint,
    item_id text,
    action text,
    weight double,
    served_at_ms bigint,
    arm text,
    PRIMARY KEY ((user_id), at_ms, item_id, action)
) WITH CLUSTERING ORDER BY (at_ms DESC, item_id ASC, action ASC)
  AND compaction = {{'class': 'TimeWindowCompactionStrategy',
                     'compaction_window_unit': 'HOURS', 'compaction_window_size': 6}}""",
        # The cluster layout (shard nodes and their placement), one row changed only by lightweight
        # transactions on its epoch (server/cluster/layout_store/cql.py).
        f"""CREATE TABLE IF NOT EXISTS {ks}.cluster_layout (
    name text PRIMARY KEY,
    epoch bigint,
    phase text,
    document text,
    updated_at timestamp,
    updated_by text
)""",
    ]


def _cql_escape(value: str) -> str:
    return value.replace("'", "''")


def apply_schema(config: ProfilesConfig, timeout_s: float = 60.0) -> list[str]:
    """Creates the keyspace and tables if missing (blocking; for `recd schema apply` and tests).

    Returns the statements run. An existing keyspace keeps its replication: changing it needs a repair
    afterwards, which is an operator's decision, so a mismatch is only logged.
    """
    cluster = _new_cluster(config)
    try:
        session = cluster.connect()
        statements = schema_statements(config)
        for statement in statements:
            session.execute(statement, timeout=timeout_s)
        row = session.execute(
            "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s", [config.keyspace]
        ).one()
        existing = {k: str(v) for k, v in dict(row[0] if row else {}).items()}
        wanted = {k: str(v) for k, v in config.replication.items()}
        wanted_class = wanted.get("class", "")
        if existing.get("class", "").split(".")[-1] == wanted_class.split(".")[-1]:
            existing["class"] = wanted_class
        if existing != wanted:
            log.warning(
                "keyspace %s exists with replication %s, not the configured %s; alter it by hand "
                "(ALTER KEYSPACE, then repair)",
                config.keyspace,
                existing,
                wanted,
            )
        if not cluster.control_connection.wait_for_schema_agreement(wait_time=timeout_s):
            raise BackendError(_BACKEND, "schema versions did not agree across nodes", transient=True)
        return statements
    finally:
        cluster.shutdown()


def drop_keyspace(config: ProfilesConfig, timeout_s: float = 60.0) -> None:
    """Drops the configured keyspace and everything in it (blocking; for tests)."""
    cluster = _new_cluster(config)
    try:
        ks = _check_identifier(config.keyspace, "profiles.keyspace")
        cluster.connect().execute(f"DROP KEYSPACE IF EXISTS {ks}", timeout=timeout_s)
    finally:
        cluster.shutdown()


# --- the driver -----------------------------------------------------------------------------------------
def _consistency(name: str) -> int:
    try:
        return int(ConsistencyLevel.name_to_value[name.upper()])
    except KeyError:
        allowed = ", ".join(sorted(ConsistencyLevel.name_to_value))
        raise ValueError(f"profiles.consistency {name!r} is not one of {allowed}") from None


def _new_cluster(config: ProfilesConfig) -> Any:
    """A driver Cluster (not yet connected) with recd's routing, consistency, timeouts and retries."""
    consistency = _consistency(config.consistency)

    def routing() -> Any:
        # One policy object per profile: a policy tracks the cluster's hosts and must not be shared.
        return TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=config.local_dc))

    writes = ExecutionProfile(
        load_balancing_policy=routing(),
        consistency_level=consistency,
        request_timeout=config.write_timeout_ms / 1000.0,
        row_factory=tuple_factory,
    )
    reads = ExecutionProfile(
        load_balancing_policy=routing(),
        consistency_level=consistency,
        request_timeout=config.request_timeout_ms / 1000.0,
        row_factory=tuple_factory,
        # Applies only to statements marked idempotent (the driver checks), i.e. our reads.
        speculative_execution_policy=ConstantSpeculativeExecutionPolicy(
            config.speculative_delay_ms / 1000.0, config.speculative_attempts
        ),
    )
    return Cluster(
        config.hosts,
        port=config.port,
        protocol_version=config.protocol_version,
        execution_profiles={EXEC_PROFILE_DEFAULT: writes, _READ_PROFILE: reads},
        connect_timeout=config.connect_timeout_s,
        control_connection_timeout=config.connect_timeout_s,
        # The driver's default backs off to 10 minutes and stops after 64 attempts; a request-path
        # store must notice a returning node within seconds, forever.
        reconnection_policy=ExponentialReconnectionPolicy(0.2, config.reconnect_max_s, max_attempts=None),
        # Detects a silently dead node (no RST) between requests.
        idle_heartbeat_interval=10,
        idle_heartbeat_timeout=10,
        **cql_options(config.tls, "profiles.tls"),
    )


@dataclass(frozen=True, slots=True)
class _Statements:
    get_profile: Any
    upsert_profile: Any
    append_interaction: Any
    recent_interactions: Any
    profile_keys: Any
    interaction_keys: Any
    all_interactions: Any
    seen_add: Any
    seen_remove: Any
    seen_read: Any
    popularity_add: Any
    popularity_read: Any
    clock_set: Any
    clock_read: Any
    writes_bump: Any
    writes_read: Any
    delete_profile: Any
    delete_interactions: Any
    exposure_add: Any
    exposures_read: Any
    exposures_count: Any
    exposures_scan: Any
    delete_exposures: Any
    outcome_add: Any
    outcomes_count: Any
    outcomes_scan: Any
    delete_outcomes: Any


@dataclass(frozen=True, slots=True)
class _Connection:
    cluster: Any
    session: Any
    statements: _Statements


def _connect(config: ProfilesConfig) -> _Connection:
    """Connects and prepares every statement (blocking: runs in a worker thread)."""
    cluster = _new_cluster(config)
    try:
        session = cluster.connect()
        ks = _check_identifier(config.keyspace, "profiles.keyspace")

        def prepare(cql: str, idempotent: bool = True, fetch_size: int | None = None) -> Any:
            statement = session.prepare(cql)
            statement.is_idempotent = idempotent
            if fetch_size is not None:
                statement.fetch_size = fetch_size
            return statement

        statements = _Statements(
            get_profile=prepare(f"SELECT embedding, attributes FROM {ks}.user_profiles WHERE user_id = ?"),
            upsert_profile=prepare(
                f"INSERT INTO {ks}.user_profiles (user_id, embedding, attributes, updated_at) "
                "VALUES (?, ?, ?, ?)"
            ),
            append_interaction=prepare(
                f"INSERT INTO {ks}.user_interactions (user_id, ts, item_id, action, weight) "
                "VALUES (?, ?, ?, ?, ?)"
            ),
            # toUnixTimestamp: milliseconds as a bigint, sparing a datetime object per row.
            recent_interactions=prepare(
                f"SELECT toUnixTimestamp(ts), item_id, action, weight FROM {ks}.user_interactions "
                "WHERE user_id = ? LIMIT ?"
            ),
            profile_keys=prepare(f"SELECT DISTINCT user_id FROM {ks}.user_profiles", fetch_size=_SCAN_PAGE),
            interaction_keys=prepare(
                f"SELECT DISTINCT user_id FROM {ks}.user_interactions", fetch_size=_SCAN_PAGE
            ),
            all_interactions=prepare(
                f"SELECT user_id, toUnixTimestamp(ts), item_id, action, weight FROM {ks}.user_interactions",
                fetch_size=_SCAN_PAGE,
            ),
            seen_add=prepare(
                f"UPDATE {ks}.user_seen USING TIMESTAMP ? SET items = items + ? WHERE user_id = ?"
            ),
            seen_remove=prepare(
                f"UPDATE {ks}.user_seen USING TIMESTAMP ? SET items = items - ? WHERE user_id = ?"
            ),
            seen_read=prepare(f"SELECT items FROM {ks}.user_seen WHERE user_id = ?"),
            # Not idempotent: a counter increment applied twice counts twice.
            popularity_add=prepare(
                f"UPDATE {ks}.item_popularity SET value = value + ? "
                "WHERE list_name = ? AND epoch = ? AND item_id = ?",
                idempotent=False,
            ),
            popularity_read=prepare(
                f"SELECT item_id, value FROM {ks}.item_popularity WHERE list_name = ? AND epoch = ?",
                fetch_size=_SCAN_PAGE,
            ),
            clock_set=prepare(
                f"UPDATE {ks}.popularity_clock USING TIMESTAMP ? SET newest_ms = ? WHERE name = ?"
            ),
            clock_read=prepare(f"SELECT newest_ms FROM {ks}.popularity_clock WHERE name = ?"),
            # Not idempotent either, but a bump counted twice only costs one extra re-read.
            writes_bump=prepare(
                f"UPDATE {ks}.popularity_writes SET writes = writes + 1 WHERE name = ?", idempotent=False
            ),
            writes_read=prepare(f"SELECT writes FROM {ks}.popularity_writes WHERE name = ?"),
            delete_profile=prepare(f"DELETE FROM {ks}.user_profiles WHERE user_id = ?"),
            delete_interactions=prepare(f"DELETE FROM {ks}.user_interactions WHERE user_id = ?"),
            exposure_add=prepare(
                f"INSERT INTO {ks}.exposures (user_id, served_at_ms, nonce, item_ids, arm, latency_ms, "
                "diversity) VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL ?"
            ),
            exposures_read=prepare(
                f"SELECT served_at_ms, item_ids, arm, latency_ms, diversity FROM {ks}.exposures "
                "WHERE user_id = ? AND served_at_ms >= ? LIMIT ?"
            ),
            exposures_count=prepare(f"SELECT COUNT(*) FROM {ks}.exposures WHERE user_id = ?"),
            exposures_scan=prepare(
                f"SELECT user_id, served_at_ms, item_ids, arm, latency_ms, diversity FROM {ks}.exposures "
                "WHERE served_at_ms >= ? ALLOW FILTERING",
                fetch_size=_SCAN_PAGE,
            ),
            delete_exposures=prepare(f"DELETE FROM {ks}.exposures WHERE user_id = ?"),
            outcome_add=prepare(
                f"INSERT INTO {ks}.outcomes (user_id, at_ms, item_id, action, weight, served_at_ms, arm) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) USING TTL ?"
            ),
            outcomes_count=prepare(f"SELECT COUNT(*) FROM {ks}.outcomes WHERE user_id = ?"),
            outcomes_scan=prepare(
                f"SELECT user_id, at_ms, item_id, action, weight, served_at_ms, arm FROM {ks}.outcomes "
                "WHERE at_ms >= ? ALLOW FILTERING",
                fetch_size=_SCAN_PAGE,
            ),
            delete_outcomes=prepare(f"DELETE FROM {ks}.outcomes WHERE user_id = ?"),
        )
    except Exception:
        cluster.shutdown()
        raise
    return _Connection(cluster, session, statements)


def _backend_error(exc: BaseException, op: str) -> BackendError:
    if isinstance(exc, BackendError):
        return exc
    # A query the cluster rejects as wrong will fail the same way on retry.
    transient = not isinstance(exc, InvalidRequest | SyntaxException | Unauthorized)
    return BackendError(_BACKEND, f"{op}: {type(exc).__name__}: {exc}", transient=transient)


# --- the store --------------------------------------------------------------------------------------------
class ScyllaProfileStore:
    """Implements the ProfileStore protocol over CQL. Connects on first use (or `connect()`)."""

    def __init__(
        self, config: ProfilesConfig, popularity_half_lives: Mapping[str, float] | None = None
    ) -> None:
        _check_identifier(config.keyspace, "profiles.keyspace")
        _consistency(config.consistency)
        if config.history_limit < 1:
            raise ValueError(f"profiles.history_limit must be at least 1, got {config.history_limit}")
        if config.seen_limit < 1:
            raise ValueError(f"profiles.seen_limit must be at least 1, got {config.seen_limit}")
        half_lives = PopularityConfig().lists if popularity_half_lives is None else popularity_half_lives
        for name, half_life_s in half_lives.items():
            if not half_life_s > 0:
                raise ValueError(f"popularity.lists.{name} must be > 0 seconds, got {half_life_s}")
        self.popularity_half_lives = dict(half_lives)
        self._trims: dict[str, asyncio.Task[None]] = {}
        # (write count it was read at, counts): item_popularity's last answer.
        self._popularity_answer: tuple[int, dict[str, dict[str, float]]] | None = None
        self.config = config
        self._read_cap_s = config.request_timeout_ms / 1000.0
        self._write_timeout_s = config.write_timeout_ms / 1000.0
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._retry_at = 0.0
        self._closed = False
        # Built inside a running loop (recd serve), start connecting at once, so that the first request
        # finds the session ready instead of spending its budget on the connect.
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop()
            self._start_connecting()

    # --- connection -------------------------------------------------------------------------------------
    async def connect(self, timeout_s: float | None = None) -> None:
        """Connects now (otherwise the first call does); raises BackendError when the cluster is down."""
        await self._connection(self.config.connect_timeout_s * 2 if timeout_s is None else timeout_s)

    async def _connection(self, timeout_s: float) -> _Connection:
        if self._conn is not None:
            return self._conn
        if self._closed:
            raise BackendError(_BACKEND, "the store is closed", transient=False)
        if self._connecting is None:
            if time.monotonic() < self._retry_at:
                raise BackendError(_BACKEND, "not connected to the cluster (the last attempt failed)")
            self._start_connecting()
        assert self._connecting is not None
        try:
            return await asyncio.wait_for(asyncio.shield(self._connecting), max(timeout_s, 0.0))
        except TimeoutError:
            raise BackendError(_BACKEND, "still connecting to the cluster") from None
        except Exception as exc:
            raise _backend_error(exc, "connect") from exc

    def _start_connecting(self) -> None:
        # Connecting blocks (sockets, schema metadata), so it runs in a thread, once for all callers.
        self._connecting = asyncio.ensure_future(asyncio.to_thread(_connect, self.config))
        self._connecting.add_done_callback(self._on_connected)

    def _on_connected(self, future: asyncio.Future[_Connection]) -> None:
        self._connecting = None
        if future.cancelled():
            return
        exc = future.exception()
        if exc is not None:
            self._retry_at = time.monotonic() + _CONNECT_RETRY_S
            # A missing keyspace or table fails the statements' preparation, not the connect itself.
            hint = " (has `recd schema apply` been run?)" if isinstance(exc, InvalidRequest) else ""
            log.warning("cannot connect to %s:%s: %s%s", self.config.hosts, self.config.port, exc, hint)
            return
        # Kept even when close() is running: it waits for this connect and then shuts the session down.
        self._conn = future.result()

    async def _execute(
        self,
        op: str,
        make: Callable[[_Statements], Any],
        params: Sequence[Any] | None,
        timeout_s: float,
        *,
        read: bool,
        paging_state: bytes | None = None,
    ) -> Any:
        """One round trip of the statement `make` builds from the prepared ones; the driver's ResultSet
        (this page's rows and the next page's state)."""
        if timeout_s <= 0:
            metrics.BACKEND_CALLS.labels(_METRIC, op, "error").inc()
            raise BackendError(_BACKEND, f"{op}: no time left in the budget")
        # Traced from here: a call refused for lack of budget never reached the cluster.
        with tracing.client_span("cassandra", op):
            try:
                conn = self._conn or await self._connection(timeout_s)
                loop = asyncio.get_running_loop()
                done: asyncio.Future[None] = loop.create_future()

                def wake(_: object) -> None:  # runs on the driver's I/O thread (or here, if already done)
                    # A closed loop raises RuntimeError: nobody waits for this answer any more.
                    with contextlib.suppress(RuntimeError):
                        loop.call_soon_threadsafe(_resolve, done)

                response = conn.session.execute_async(
                    make(conn.statements),
                    params,
                    timeout=timeout_s,
                    execution_profile=_READ_PROFILE if read else EXEC_PROFILE_DEFAULT,
                    paging_state=paging_state,
                )
                response.add_callbacks(wake, wake)
                async with asyncio.timeout(timeout_s + _GUARD_S):
                    await done
                # Done, so result() returns at once (or raises the driver's error).
                result = response.result()
            except asyncio.CancelledError:
                # The caller's budget ran out first; the request still went to the server, so it counts.
                metrics.BACKEND_CALLS.labels(_METRIC, op, "cancelled").inc()
                raise
            except Exception as exc:
                metrics.BACKEND_CALLS.labels(_METRIC, op, "error").inc()
                raise _backend_error(exc, op) from exc
            metrics.BACKEND_CALLS.labels(_METRIC, op, "ok").inc()
            return result

    async def _scan(
        self,
        op: str,
        make: Callable[[_Statements], Any],
        params: Sequence[Any] | None = None,
        deadline: float | None = None,
    ) -> AsyncIterator[list[tuple[Any, ...]]]:
        """A query of many rows (a table, a partition), page by page: each page one round trip, never
        all rows in memory; every round trip ends by the deadline (monotonic) when one is given."""
        paging_state: bytes | None = None
        while True:
            timeout_s = self._write_timeout_s
            if deadline is not None:
                timeout_s = min(timeout_s, deadline - time.monotonic())
            result = await self._execute(op, make, params, timeout_s, read=False, paging_state=paging_state)
            yield result.current_rows
            paging_state = result.paging_state
            if not paging_state:
                return

    # --- reads (request path) ---------------------------------------------------------------------------
    async def get_profile(self, user_id: str, timeout_s: float) -> UserProfile | None:
        result = await self._execute(
            "get_profile", _get_profile, [user_id], min(timeout_s, self._read_cap_s), read=True
        )
        row = result.one()
        if row is None:
            return None
        blob, attributes = row
        embedding = None if blob is None else np.frombuffer(blob, dtype="<f2").astype(np.float32)
        return UserProfile(user_id, embedding, dict(attributes or {}))

    async def recent_interactions(self, user_id: str, limit: int, timeout_s: float) -> list[Interaction]:
        # The configured limit bounds what one request can pull, whatever the caller asks for.
        limit = min(limit, self.config.history_limit)
        if limit <= 0:
            return []
        result = await self._execute(
            "recent_interactions",
            _recent_interactions,
            [user_id, limit],
            min(timeout_s, self._read_cap_s),
            read=True,
        )
        return [
            Interaction(user_id, item_id, action, weight, ts)
            for ts, item_id, action, weight in result.current_rows
        ]

    async def read_users(
        self, user_ids: Sequence[str], history_limit: int, timeout_s: float
    ) -> list[UserRecord]:
        return await read_users_by_partition(self, user_ids, history_limit, timeout_s)

    async def seen_items(self, user_id: str, timeout_s: float) -> ItemHashes:
        """One single-partition read of the user's map; entries past seen_limit (the oldest) are left
        out of the answer and removed in the background."""
        result = await self._execute(
            "seen_items", _seen_read, [user_id], min(timeout_s, self._read_cap_s), read=True
        )
        row = result.one()
        if row is None or not row[0]:
            return seen_sets.EMPTY[0]
        entries = row[0]
        n = len(entries)
        hashes = np.fromiter(entries.keys(), dtype=np.int64, count=n).view(np.uint64)
        times = np.fromiter(entries.values(), dtype=np.int64, count=n)
        if n <= self.config.seen_limit:
            order = np.argsort(hashes)  # CQL orders the keys as signed numbers
            return seen_sets.frozen(hashes[order], times[order])[0]
        kept, _ = seen_sets.from_pairs(hashes, times, self.config.seen_limit)
        evicted = ~np.isin(hashes, kept)
        self._trim_seen(user_id, hashes[evicted], times[evicted])
        return kept

    def _trim_seen(self, user_id: str, hashes: ItemHashes, times_ms: np.ndarray) -> None:
        """Removes evicted map entries, fire and forget: at most one trim per user and _MAX_TRIMS in all
        in flight, each bounded by the write timeout; a failure is logged and left to the next read."""
        if user_id in self._trims or len(self._trims) >= _MAX_TRIMS or self._closed:
            return
        oldest = np.argsort(times_ms, kind="stable")[:_TRIM_ENTRIES]
        keys = set(hashes[oldest].view(np.int64).tolist())
        # The tombstone's time: entries seen again later than this (a concurrent write) outlive it.
        at_us = int(times_ms[oldest].max()) * 1000
        task = asyncio.ensure_future(self._remove_seen(user_id, keys, at_us))
        self._trims[user_id] = task
        task.add_done_callback(lambda _: self._trims.pop(user_id, None))

    async def _remove_seen(self, user_id: str, keys: set[int], at_us: int) -> None:
        try:
            await self._execute(
                "trim_seen", _seen_remove, [at_us, keys, user_id], self._write_timeout_s, read=False
            )
        except Exception as exc:
            log.warning("trimming the seen set of a user failed (the next read retries): %s", exc)

    async def item_popularity(self, timeout_s: float) -> Mapping[str, Mapping[str, float]]:
        """The newest EPOCHS_READ epochs of every list, paged, decayed to the newest interaction.

        Reads whole partitions (every item with interactions in those epochs): for a background
        refresher, not for the request path. The whole call ends within `timeout_s`.
        """
        deadline = time.monotonic() + timeout_s
        timeout_s = min(timeout_s, self._write_timeout_s)
        # Reading every counted item of a few partitions costs the cluster and this process hundreds of
        # thousands of rows: done again only when some frontend's write bumped the write count since.
        result = await self._execute("item_popularity", _writes_read, [_CLOCK_ROW], timeout_s, read=True)
        row = result.one()
        writes = 0 if row is None or row[0] is None else int(row[0])
        if self._popularity_answer is not None and self._popularity_answer[0] == writes:
            return self._popularity_answer[1]
        result = await self._execute("item_popularity", _clock_read, [_CLOCK_ROW], timeout_s, read=True)
        row = result.one()
        if row is None or row[0] is None:
            return {name: {} for name in self.popularity_half_lives}
        reference_ms = int(row[0])

        async def read_epoch(name: str, epoch: int) -> tuple[str, int, dict[str, float]]:
            values: dict[str, float] = {}
            params = [name, epoch]
            async for page in self._scan("item_popularity", _popularity_read, params, deadline):
                for item_id, counter in page:
                    values[item_id] = popularity.from_fixed(counter)
            return name, epoch, values

        reads = [
            read_epoch(name, epoch)
            for name, half_life_s in self.popularity_half_lives.items()
            for epoch in popularity.epochs_to_read(reference_ms, half_life_s)
        ]
        by_list: dict[str, dict[int, dict[str, float]]] = {name: {} for name in self.popularity_half_lives}
        for name, epoch, values in await asyncio.gather(*reads):
            by_list[name][epoch] = values
        counts = {
            name: popularity.combine(epochs, reference_ms, self.popularity_half_lives[name])
            for name, epochs in by_list.items()
        }
        # The same object until the next write: the refresher then skips pushing it again.
        self._popularity_answer = (writes, counts)
        return counts

    async def export_user(self, user_id: str, interaction_limit: int, timeout_s: float) -> UserExport:
        """Single-partition reads at the configured consistency; the history is paged (not capped by
        history_limit: an access request gets what is held), the seen map read whole."""
        deadline = time.monotonic() + timeout_s
        limit = max(interaction_limit, 0)

        async def history() -> list[Interaction]:
            events: list[Interaction] = []
            # One row past the limit tells whether more are held.
            params = [user_id, limit + 1]
            async for page in self._scan("export_user", _recent_interactions, params, deadline):
                events.extend(
                    Interaction(user_id, item, action, weight, ts) for ts, item, action, weight in page
                )
            return events

        async def seen() -> tuple[ItemHashes, np.ndarray]:
            result = await self._execute("export_user", _seen_read, [user_id], timeout_s, read=True)
            return _seen_arrays(result.one())

        async def count(make: Callable[[_Statements], Any]) -> int:
            result = await self._execute("export_user", make, [user_id], timeout_s, read=True)
            row = result.one()
            return 0 if row is None else int(row[0])

        profile, events, (hashes, times), exposures_held, outcomes_held = await asyncio.gather(
            self.get_profile(user_id, timeout_s),
            history(),
            seen(),
            count(_exposures_count),
            count(_outcomes_count),
        )
        return UserExport(
            profile, events[:limit], len(events) > limit, hashes, times, exposures_held, outcomes_held
        )

    # --- the exposure log -------------------------------------------------------------------------------
    async def read_exposures(
        self, user_ids: Sequence[str], since_ms: int, limit: int, timeout_s: float
    ) -> list[list[Exposure]]:
        """One single-partition read per user (newest first from disk, LIMIT), all in flight at once."""
        if limit <= 0:
            return [[] for _ in user_ids]
        timeout_s = min(timeout_s, self._read_cap_s)

        async def one(user_id: str) -> list[Exposure]:
            result = await self._execute(
                "read_exposures", _exposures_read, [user_id, since_ms, limit], timeout_s, read=True
            )
            return [
                Exposure(user_id, served_at, tuple(items or ()), arm, latency_ms, diversity)
                for served_at, items, arm, latency_ms, diversity in result.current_rows
            ]

        return list(await asyncio.gather(*(one(u) for u in user_ids)))

    async def scan_exposures(self, since_ms: int) -> list[Exposure]:
        found: list[Exposure] = []
        async for page in self._scan("scan_exposures", _exposures_scan, [since_ms]):
            found.extend(
                Exposure(user_id, served_at, tuple(items or ()), arm, latency_ms, diversity)
                for user_id, served_at, items, arm, latency_ms, diversity in page
            )
        return found

    async def scan_outcomes(self, since_ms: int) -> list[Outcome]:
        found: list[Outcome] = []
        async for page in self._scan("scan_outcomes", _outcomes_scan, [since_ms]):
            found.extend(
                Outcome(user_id, item_id, action, weight, at_ms, served_at, arm)
                for user_id, at_ms, item_id, action, weight, served_at, arm in page
            )
        return found

    async def record_exposures(self, exposures: Sequence[Exposure], keep_per_user: int, ttl_s: float) -> None:
        """Single-partition UNLOGGED batches (per user, up to _BATCH_ROWS rows), concurrent, each row
        `USING TTL`. `keep_per_user` is not enforced (see the module's docstring): reads are limited."""
        if keep_per_user < 1:
            raise ValueError(f"keep_per_user must be at least 1, got {keep_per_user}")
        ttl = _ttl(ttl_s)
        if not exposures:
            return
        # Same items and arm at the same time: the same row, so a retried write adds nothing.
        nonces = _core.stable_hash64(["\x1f".join(e.item_ids) + "\x1e" + e.arm for e in exposures])
        by_user: dict[str, list[list[Any]]] = defaultdict(list)
        for e, nonce in zip(exposures, nonces.view(np.int64).tolist(), strict=True):
            row = [e.user_id, e.served_at_ms, nonce, list(e.item_ids), e.arm, e.latency_ms, e.diversity, ttl]
            by_user[e.user_id].append(row)
        work = _per_partition(_exposure_add, by_user.values(), _EXPOSURE_BATCH_ROWS)
        await self._write_all("record_exposures", work)

    async def record_outcomes(self, outcomes: Sequence[Outcome], ttl_s: float) -> None:
        """As record_exposures: per-user UNLOGGED batches, every row `USING TTL`."""
        ttl = _ttl(ttl_s)
        if not outcomes:
            return
        by_user: dict[str, list[list[Any]]] = defaultdict(list)
        for o in outcomes:
            row = [o.user_id, o.at_ms, o.item_id, o.action, o.weight, o.served_at_ms, o.arm, ttl]
            by_user[o.user_id].append(row)
        await self._write_all("record_outcomes", _per_partition(_outcome_add, by_user.values(), _BATCH_ROWS))

    # --- operator reads (full scans) --------------------------------------------------------------------
    async def count_users(self) -> int:
        """Users with a profile or any interaction: a scan of both tables' partition keys, O(users).

        For the Stats RPC and operators, not for the request path. CQL has no exact cheap count.
        """
        users: set[str] = set()
        for op, make in (("count_users", _profile_keys), ("count_users", _interaction_keys)):
            async for page in self._scan(op, make):
                users.update(row[0] for row in page)
        return len(users)

    async def iter_interactions(self) -> AsyncIterator[Interaction]:
        """Every stored interaction, partition by partition (newest first within a user), paged."""
        async for page in self._scan("iter_interactions", _all_interactions):
            for user_id, ts, item_id, action, weight in page:
                yield Interaction(user_id, item_id, action, weight, ts)

    # --- writes ---------------------------------------------------------------------------------------
    async def upsert_profiles(self, profiles: Sequence[UserProfile]) -> None:
        """One INSERT per profile (each its own partition), replacing the whole row; concurrent."""
        if not profiles:
            return
        now_ms = int(time.time() * 1000)
        rows = [
            [
                p.user_id,
                None if p.embedding is None else np.asarray(p.embedding, dtype="<f2").tobytes(),
                dict(p.attributes) or None,
                now_ms,
            ]
            for p in profiles
        ]
        await self._write_all("upsert_profiles", [(_upsert_profile, row) for row in rows])

    async def append_interactions(self, interactions: Sequence[Interaction]) -> None:
        """Single-partition UNLOGGED batches (one per user and up to _BATCH_ROWS rows), concurrent: the
        history rows, the seen-set entries and the popularity clock; once all of them are acknowledged,
        the popularity counters, in COUNTER batches per (list, epoch) partition.

        Acknowledged once the cluster has acknowledged every write at the configured consistency. All
        but the counters are idempotent (same key, same values, same write time); counters are not, so a
        caller that retries a call whose counter writes failed may count its interactions twice.
        """
        if not interactions:
            return
        by_user: dict[str, dict[tuple[int, str], Interaction]] = defaultdict(dict)
        for it in interactions:
            # One row per (ts, item) and the last one wins, as across calls; inside one batch the
            # server would otherwise break the tie by comparing values, not by order.
            by_user[it.user_id][(it.timestamp_ms, it.item_id)] = it
        work: list[tuple[Callable[[_Statements], Any], list[Any] | None]] = []
        for user_id, rows in by_user.items():
            events = list(rows.values())
            for start in range(0, len(events), _BATCH_ROWS):
                chunk = events[start : start + _BATCH_ROWS]
                if len(chunk) == 1:
                    it = chunk[0]
                    work.append(
                        (_append_interaction, [it.user_id, it.timestamp_ms, it.item_id, it.action, it.weight])
                    )
                else:
                    work.append((_batch_of(chunk), None))
            work.extend(_seen_writes(user_id, events))
        newest_ms = max(it.timestamp_ms for it in interactions)
        work.append((_clock_set, [newest_ms * 1000, newest_ms, _CLOCK_ROW]))
        await self._write_all("append_interactions", work)
        await self._write_all(
            "append_popularity",
            _popularity_writes(interactions, self.popularity_half_lives),
            idempotent=False,
        )
        # After the counters: a refresher that sees the new value reads counters that hold this call.
        await self._write_all("append_popularity", [(_writes_bump, [_CLOCK_ROW])], idempotent=False)

    async def delete_users(self, user_ids: Sequence[str]) -> None:
        """Per user, concurrently: one read of the seen map (which entries, at which write times), then
        the partition deletes and the seen entries' removals. Acknowledged once every delete is, at the
        configured consistency; all of them are idempotent, so a failed call is safe to repeat.

        An interaction recorded concurrently with the erasure (between the read and the deletes) may
        keep its seen entry while its history row goes: an erasure is meant for a user whose traffic
        has stopped, and repeating it removes the rest."""
        users = list(dict.fromkeys(user_ids))
        if not users:
            return
        window = asyncio.Semaphore(max(1, self.config.write_concurrency))

        async def seen_of(user_id: str) -> tuple[str, Any]:
            async with window:
                result = await self._execute(
                    "delete_users", _seen_read, [user_id], self._write_timeout_s, read=False
                )
            return user_id, result.one()

        reads = await asyncio.gather(*(seen_of(u) for u in users), return_exceptions=True)
        failed = [r for r in reads if isinstance(r, BaseException)]
        if failed:
            raise _backend_error(failed[0], f"delete_users: {len(failed)} of {len(users)} seen-set reads")
        work: list[tuple[Callable[[_Statements], Any], list[Any] | None]] = []
        for user_id, row in (r for r in reads if not isinstance(r, BaseException)):
            work.append((_delete_profile, [user_id]))
            work.append((_delete_interactions, [user_id]))
            work.append((_delete_exposures, [user_id]))
            work.append((_delete_outcomes, [user_id]))
            hashes, times = _seen_arrays(row)
            work.extend(_seen_removals(user_id, hashes.view(np.int64).tolist(), times.tolist()))
        await self._write_all("delete_users", work)

    async def _write_all(
        self,
        op: str,
        work: Sequence[tuple[Callable[[_Statements], Any], list[Any] | None]],
        *,
        idempotent: bool = True,
    ) -> None:
        """Runs every write, at most `write_concurrency` in flight; raises after all have finished."""
        window = asyncio.Semaphore(max(1, self.config.write_concurrency))

        async def one(make: Callable[[_Statements], Any], params: list[Any] | None) -> None:
            async with window:
                await self._execute(op, make, params, self._write_timeout_s, read=False)

        results = await asyncio.gather(*(one(make, params) for make, params in work), return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            first = failures[0]
            retry = "safe to retry" if idempotent else "a retry may count popularity twice"
            raise BackendError(
                _BACKEND,
                f"{op}: {len(failures)} of {len(work)} writes failed ({retry}): {first}",
                transient=getattr(first, "transient", True),
            ) from first

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._trims:
            await asyncio.gather(*self._trims.values(), return_exceptions=True)
        if self._connecting is not None:
            await asyncio.gather(self._connecting, return_exceptions=True)
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.to_thread(conn.cluster.shutdown)


def _resolve(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


# Statement builders: they pick a prepared statement once the connection exists.
def _get_profile(s: _Statements) -> Any:
    return s.get_profile


def _recent_interactions(s: _Statements) -> Any:
    return s.recent_interactions


def _upsert_profile(s: _Statements) -> Any:
    return s.upsert_profile


def _append_interaction(s: _Statements) -> Any:
    return s.append_interaction


def _seen_read(s: _Statements) -> Any:
    return s.seen_read


def _delete_profile(s: _Statements) -> Any:
    return s.delete_profile


def _delete_interactions(s: _Statements) -> Any:
    return s.delete_interactions


def _exposure_add(s: _Statements) -> Any:
    return s.exposure_add


def _exposures_read(s: _Statements) -> Any:
    return s.exposures_read


def _exposures_count(s: _Statements) -> Any:
    return s.exposures_count


def _exposures_scan(s: _Statements) -> Any:
    return s.exposures_scan


def _delete_exposures(s: _Statements) -> Any:
    return s.delete_exposures


def _outcome_add(s: _Statements) -> Any:
    return s.outcome_add


def _outcomes_count(s: _Statements) -> Any:
    return s.outcomes_count


def _outcomes_scan(s: _Statements) -> Any:
    return s.outcomes_scan


def _delete_outcomes(s: _Statements) -> Any:
    return s.delete_outcomes


def _ttl(ttl_s: float) -> int:
    """`ttl_s` as a CQL TTL: whole seconds, rounded up, at least 1 (0 would mean no TTL at all)."""
    if not (ttl_s > 0 and math.isfinite(ttl_s)):
        raise ValueError(f"ttl_s must be a positive number of seconds, got {ttl_s}")
    return min(max(1, math.ceil(ttl_s)), _MAX_TTL_S)


def _per_partition(
    make: Callable[[_Statements], Any], partitions: Iterable[Sequence[list[Any]]], batch_rows: int
) -> list[tuple[Callable[[_Statements], Any], list[Any] | None]]:
    """Each partition's rows in single-partition UNLOGGED batches of up to `batch_rows`."""
    work: list[tuple[Callable[[_Statements], Any], list[Any] | None]] = []
    for rows in partitions:
        for start in range(0, len(rows), batch_rows):
            chunk = rows[start : start + batch_rows]
            if len(chunk) == 1:
                work.append((make, chunk[0]))
            else:
                work.append((_unlogged_batch(make, chunk), None))
    return work


def _seen_arrays(row: Any) -> tuple[ItemHashes, np.ndarray]:
    """A user_seen row's map as (hashes sorted ascending, last-seen times aligned), however large."""
    if row is None or not row[0]:
        return seen_sets.EMPTY
    entries = row[0]
    n = len(entries)
    hashes = np.fromiter(entries.keys(), dtype=np.int64, count=n).view(np.uint64)
    times = np.fromiter(entries.values(), dtype=np.int64, count=n)
    order = np.argsort(hashes)  # CQL orders the keys as signed numbers
    return hashes[order], times[order]


def _seen_removals(
    user_id: str, keys: Sequence[int], times_ms: Sequence[int]
) -> list[tuple[Callable[[_Statements], Any], list[Any] | None]]:
    """The inverse of _seen_writes: each entry removed by a tombstone at the time it was written with
    (its last-seen time), one statement per distinct time, in single-partition UNLOGGED batches."""
    at_time: dict[int, set[int]] = defaultdict(set)
    for key, ts in zip(keys, times_ms, strict=True):
        at_time[ts].add(key)
    statements = [[ts * 1000, entries, user_id] for ts, entries in at_time.items()]
    work: list[tuple[Callable[[_Statements], Any], list[Any] | None]] = []
    for start in range(0, len(statements), _BATCH_ROWS):
        chunk = statements[start : start + _BATCH_ROWS]
        if len(chunk) == 1:
            work.append((_seen_remove, chunk[0]))
        else:
            work.append((_unlogged_batch(_seen_remove, chunk), None))
    return work


def _seen_remove(s: _Statements) -> Any:
    return s.seen_remove


def _clock_read(s: _Statements) -> Any:
    return s.clock_read


def _clock_set(s: _Statements) -> Any:
    return s.clock_set


def _writes_bump(s: _Statements) -> Any:
    return s.writes_bump


def _writes_read(s: _Statements) -> Any:
    return s.writes_read


def _popularity_read(s: _Statements) -> Any:
    return s.popularity_read


def _profile_keys(s: _Statements) -> Any:
    return s.profile_keys


def _interaction_keys(s: _Statements) -> Any:
    return s.interaction_keys


def _all_interactions(s: _Statements) -> Any:
    return s.all_interactions


def _batch_of(chunk: Sequence[Interaction]) -> Callable[[_Statements], Any]:
    def make(s: _Statements) -> Any:
        # UNLOGGED and single-partition: applied atomically by the replica, without the batch log.
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        for it in chunk:
            batch.add(s.append_interaction, (it.user_id, it.timestamp_ms, it.item_id, it.action, it.weight))
        batch.is_idempotent = True
        return batch

    return make


def _seen_writes(
    user_id: str, events: Sequence[Interaction]
) -> list[tuple[Callable[[_Statements], Any], list[Any] | None]]:
    """The user's seen-set entries, one statement per distinct interaction time (written USING
    TIMESTAMP of it), in single-partition UNLOGGED batches."""
    latest: dict[int, int] = {}
    hashes = _core.stable_hash64([it.item_id for it in events]).view(np.int64).tolist()
    for key, it in zip(hashes, events, strict=True):
        if it.timestamp_ms > latest.get(key, -1):
            latest[key] = it.timestamp_ms
    at_time: dict[int, dict[int, int]] = defaultdict(dict)
    for key, ts in latest.items():
        at_time[ts][key] = ts
    statements = [[ts * 1000, entries, user_id] for ts, entries in at_time.items()]
    work: list[tuple[Callable[[_Statements], Any], list[Any] | None]] = []
    for start in range(0, len(statements), _BATCH_ROWS):
        chunk = statements[start : start + _BATCH_ROWS]
        if len(chunk) == 1:
            work.append((_seen_add, chunk[0]))
        else:
            work.append((_unlogged_batch(_seen_add, chunk), None))
    return work


def _popularity_writes(
    interactions: Sequence[Interaction], half_lives: Mapping[str, float]
) -> list[tuple[Callable[[_Statements], Any], list[Any] | None]]:
    """Counter increments summed per (list, epoch, item), in COUNTER batches of one partition each."""
    partitions: dict[tuple[str, int], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for name, half_life_s in half_lives.items():
        for it in interactions:
            epoch, value = popularity.epoch_value(it.timestamp_ms, it.weight, half_life_s)
            partitions[name, epoch][it.item_id] += value
    work: list[tuple[Callable[[_Statements], Any], list[Any] | None]] = []
    for (name, epoch), values in partitions.items():
        fixed = ((popularity.to_fixed(v), item_id) for item_id, v in values.items())
        rows: list[list[Any]] = [
            [increment, name, epoch, item_id] for increment, item_id in fixed if increment > 0
        ]
        for start in range(0, len(rows), _BATCH_ROWS):
            chunk = rows[start : start + _BATCH_ROWS]
            if len(chunk) == 1:
                work.append((_popularity_add, chunk[0]))
            else:
                work.append((_counter_batch(chunk), None))
    return work


def _seen_add(s: _Statements) -> Any:
    return s.seen_add


def _popularity_add(s: _Statements) -> Any:
    return s.popularity_add


def _unlogged_batch(
    make: Callable[[_Statements], Any], rows: Sequence[Sequence[Any]]
) -> Callable[[_Statements], Any]:
    def build(s: _Statements) -> Any:
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        for row in rows:
            batch.add(make(s), row)
        batch.is_idempotent = True
        return batch

    return build


def _counter_batch(rows: Sequence[Sequence[Any]]) -> Callable[[_Statements], Any]:
    def build(s: _Statements) -> Any:
        batch = BatchStatement(batch_type=BatchType.COUNTER)
        for row in rows:
            batch.add(s.popularity_add, row)
        # Not idempotent: the driver must not replay a counter batch that may have been applied.
        batch.is_idempotent = False
        return batch

    return build

"""The cluster layout as one row in ScyllaDB (or Apache Cassandra), changed only by lightweight transactions.

`<keyspace>.cluster_layout` (created by `recd schema apply`, server/backends/scylla.py) holds the
document, its epoch and phase, and who wrote it when. A change is `UPDATE ... IF epoch = ?` (the first
one `INSERT ... IF NOT EXISTS`): Paxos decides between changes computed from the same epoch, so of two
rebalances started at once one is refused before it changed anything. Reads are at SERIAL consistency,
which also settles a transaction left in flight, so a reader never sees a layout that a later read could
take back.

A change whose outcome the driver could not learn (a timeout) is settled by reading the row again: it
either holds the new document (applied) or not (refused or not applied, and then it never will be).

Shard nodes and frontends poll the row (server/cluster/node/follower.py, membership/manager.py).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import socket
from typing import Any

from cassandra import ConsistencyLevel, InvalidRequest
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import DCAwareRoundRobinPolicy, ExponentialReconnectionPolicy, TokenAwarePolicy
from cassandra.query import tuple_factory

from server.cluster.layout import Layout
from server.cluster.layout_store.base import LayoutConflict, check_successor
from server.config import ProfilesConfig
from server.errors import BackendError
from server.security.tls import cql_options

log = logging.getLogger(__name__)

TABLE = "cluster_layout"
_ROW = "layout"
_BACKEND = "layout"


class CqlLayoutStore:
    polled = True

    def __init__(self, config: ProfilesConfig, timeout_s: float = 10.0) -> None:
        self.config = config
        self._timeout_s = timeout_s
        self._writer = f"{socket.gethostname()}:{os.getpid()}"
        self._session: Any = None
        self._statements: dict[str, Any] = {}
        self._lock: asyncio.Lock | None = None

    # --- connection -------------------------------------------------------------------------------------
    async def _ready(self) -> None:
        if self._session is not None:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._session is None:
                try:
                    await asyncio.to_thread(self._connect)
                except BackendError:
                    raise
                except Exception as exc:
                    raise _error("connect", exc) from exc

    def _connect(self) -> None:
        c = self.config
        profile = ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=c.local_dc)),
            consistency_level=_consistency(c.consistency),
            serial_consistency_level=ConsistencyLevel.SERIAL,
            request_timeout=self._timeout_s,
            row_factory=tuple_factory,
        )
        cluster = Cluster(
            c.hosts,
            port=c.port,
            protocol_version=c.protocol_version,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            connect_timeout=c.connect_timeout_s,
            control_connection_timeout=c.connect_timeout_s,
            reconnection_policy=ExponentialReconnectionPolicy(0.2, c.reconnect_max_s, max_attempts=None),
            **cql_options(c.tls, "profiles.tls"),
        )
        try:
            session = cluster.connect()
            table = f"{c.keyspace}.{TABLE}"
            try:
                read = session.prepare(f"SELECT epoch, phase, document FROM {table} WHERE name = ?")
                create = session.prepare(
                    f"INSERT INTO {table} (name, epoch, phase, document, updated_at, updated_by) "
                    "VALUES (?, ?, ?, ?, ?, ?) IF NOT EXISTS"
                )
                change = session.prepare(
                    f"UPDATE {table} SET epoch = ?, phase = ?, document = ?, updated_at = ?, updated_by = ? "
                    "WHERE name = ? IF epoch = ?"
                )
            except InvalidRequest as exc:
                raise BackendError(
                    _BACKEND, f"no table {table} ({exc}): run `recd schema apply`", transient=False
                ) from exc
            read.consistency_level = ConsistencyLevel.SERIAL
        except BaseException:
            cluster.shutdown()
            raise
        self._statements = {"read": read, "create": create, "change": change}
        self._session = session

    async def _execute(self, name: str, params: list[Any]) -> Any:
        await self._ready()
        statement = self._statements[name]
        try:
            return await asyncio.to_thread(self._session.execute, statement, params, timeout=self._timeout_s)
        except Exception as exc:
            raise _error(name, exc) from exc

    # --- LayoutStore ------------------------------------------------------------------------------------
    async def read(self) -> Layout | None:
        row = (await self._execute("read", [_ROW])).one()
        if row is None or row[2] is None:
            return None
        try:
            return Layout.from_json(row[2])
        except ValueError as exc:
            raise BackendError(_BACKEND, f"the stored layout is unusable: {exc}", transient=False) from exc

    async def compare_and_set(self, expected_epoch: int, layout: Layout) -> None:
        check_successor(expected_epoch, layout)
        now = datetime.datetime.now(datetime.UTC)
        document = layout.to_json()
        if expected_epoch == 0:
            name, params = "create", [_ROW, layout.epoch, layout.phase, document, now, self._writer]
        else:
            name = "change"
            params = [layout.epoch, layout.phase, document, now, self._writer, _ROW, expected_epoch]
        try:
            applied = bool((await self._execute(name, params)).was_applied)
        except BackendError as exc:
            # Applied or not? A SERIAL read settles it (and any Paxos round still in flight).
            stored = await self.read()
            if stored is not None and stored.to_json() == document:
                log.info("layout epoch %d stored (its transaction's answer was lost: %s)", layout.epoch, exc)
                return
            if (stored.epoch if stored is not None else 0) != expected_epoch:
                raise LayoutConflict(expected_epoch, stored) from exc
            raise
        if not applied:
            raise LayoutConflict(expected_epoch, await self.read())

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await asyncio.to_thread(session.cluster.shutdown)


def _consistency(name: str) -> int:
    try:
        return int(ConsistencyLevel.name_to_value[name.upper()])
    except KeyError:
        raise ValueError(f"profiles.consistency {name!r} is not a CQL consistency level") from None


def _error(op: str, exc: BaseException) -> BackendError:
    if isinstance(exc, BackendError):
        return exc
    return BackendError(_BACKEND, f"{op}: {type(exc).__name__}: {exc}", not isinstance(exc, InvalidRequest))

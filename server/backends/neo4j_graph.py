"""The item graph on Neo4j through the async Bolt driver.

- `(:Item {id})-[:SIMILAR_TO {score}]->(:Item)`, with a uniqueness constraint on `Item.id` (which is
  also the index every lookup by id uses), created on first use.
- Writes are UNWIND batches inside managed write transactions (the driver retries transient failures
  such as deadlocks between concurrent upserts of the same items).
- Neighbour queries are bounded whatever the graph's degree: per source, only the `limit_per_hop` best
  edges at or above `min_score` are followed, for at most two hops.
- Concurrent neighbour queries (one per Recommend) that arrive together are merged by a MicroBatcher
  into one UNWIND query, one round trip, and the rows are split per caller by request index.
- Each query runs under the caller's remaining budget (capped by `query_timeout_ms`), both in asyncio
  and as the server-side transaction timeout, so a slow Neo4j costs the budget and then stops working.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from neo4j import AsyncDriver, AsyncGraphDatabase, AsyncManagedTransaction, unit_of_work
from neo4j.exceptions import ClientError

from server import metrics, tracing
from server.backends.base import neighbours_each
from server.batching import MicroBatcher
from server.config import GraphConfig
from server.domain import Edge
from server.errors import BackendError
from server.security.tls import bolt_options

log = logging.getLogger(__name__)

_BACKEND = "graph"
_METRIC = "neo4j"
_LABEL = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")
# After a failed start (driver or constraint), callers fail fast for this long before trying again.
_START_RETRY_S = 1.0
# Room for the batch task itself beyond the server-side transaction timeout, before asyncio stops it.
_SLACK_S = 0.05
MAX_HOPS = 2


# Hop 1 keeps each seed's best `lim` edges; their targets (not seeds) form the frontier with their best
# score; hop 2 keeps each frontier item's best `lim` edges. An edge into a seed uses up a slot, as in
# the embedded graph. The ORDER BY breaks ties by id so that both implementations agree.
_NEIGHBOURS = """
UNWIND range(0, size($requests) - 1) AS idx
WITH idx, $requests[idx] AS req
WITH idx, req.seeds AS seeds, req.hops AS hops, req.limit AS lim, req.min_score AS min_score
UNWIND seeds AS seed_id
MATCH (s:`{label}` {{id: seed_id}})
CALL (s, lim, min_score) {{
  MATCH (s)-[r:SIMILAR_TO]->(n:`{label}`)
  WHERE r.score >= min_score
  WITH n, r.score AS score ORDER BY score DESC, n.id ASC
  WITH collect([n, score]) AS ranked
  UNWIND ranked[..lim] AS hop
  RETURN hop[0] AS n1, hop[1] AS s1
}}
WITH idx, seeds, hops, lim, min_score, n1, max(s1) AS s1
WHERE NOT n1.id IN seeds
CALL (seeds, hops, lim, min_score, n1, s1) {{
  RETURN n1.id AS id, s1 AS score
  UNION ALL
  WITH * WHERE hops >= 2
  MATCH (n1)-[r:SIMILAR_TO]->(n2:`{label}`)
  WHERE r.score >= min_score
  WITH n2, r.score AS s2 ORDER BY s2 DESC, n2.id ASC
  WITH collect([n2.id, s2]) AS ranked
  UNWIND ranked[..lim] AS hop
  WITH hop WHERE NOT hop[0] IN seeds
  RETURN hop[0] AS id, s1 * hop[1] AS score
}}
RETURN idx, id, max(score) AS score
"""

_UPSERT = """
UNWIND $edges AS e
MERGE (s:`{label}` {{id: e[0]}})
MERGE (d:`{label}` {{id: e[1]}})
MERGE (s)-[r:SIMILAR_TO]->(d)
SET r.score = e[2]
"""

# One labelled end: answered from Neo4j's count store, O(1), not by a scan.
_COUNT = "MATCH (:`{label}`)-[r:SIMILAR_TO]->() RETURN count(r)"
_CONSTRAINT = "CREATE CONSTRAINT {name} IF NOT EXISTS FOR (i:`{label}`) REQUIRE i.id IS UNIQUE"


@dataclass(frozen=True, slots=True)
class _NeighbourQuery:
    seeds: tuple[str, ...]
    hops: int
    limit: int
    min_score: float
    deadline: float  # time.monotonic()


def _backend_error(exc: BaseException, op: str) -> BackendError:
    if isinstance(exc, BackendError):
        return exc
    if isinstance(exc, TimeoutError):
        return BackendError(_BACKEND, f"{op}: timed out")
    # A client error (bad query, constraint violation) fails again on retry, except a transaction that
    # ran out of time; everything else (unavailable, transient, driver errors) may pass on retry.
    code = getattr(exc, "code", None) or ""
    transient = not isinstance(exc, ClientError) or ".Transaction." in code
    return BackendError(_BACKEND, f"{op}: {type(exc).__name__}: {exc}", transient=transient)


class Neo4jItemGraph:
    """Implements the ItemGraph protocol over Bolt. Connects on first use (or `start()`)."""

    def __init__(self, config: GraphConfig) -> None:
        if not _LABEL.match(config.item_label):
            raise ValueError(f"graph.item_label {config.item_label!r} must be letters, digits and _")
        self.config = config
        label = config.item_label
        self._neighbours_cypher = _NEIGHBOURS.format(label=label)
        self._upsert_cypher = _UPSERT.format(label=label)
        self._count_cypher = _COUNT.format(label=label)
        self._constraint_cypher = _CONSTRAINT.format(name=f"recd_{label.lower()}_id_unique", label=label)
        self._cap_s = config.query_timeout_ms / 1000.0
        self._driver: AsyncDriver | None = None
        self._started = False
        self._starting: asyncio.Task[None] | None = None
        self._replanning: asyncio.Task[None] | None = None
        self._replan_at = 0.0
        self._retry_at = 0.0
        self._closed = False
        batch = config.neighbour_batch
        self._batcher: MicroBatcher[_NeighbourQuery, dict[str, float]] = MicroBatcher(
            self._query_batch, batch.max_batch, batch.max_wait_ms / 1000.0
        )
        # Built inside a running loop (recd serve), connect and create the constraint at once, so that
        # the first request does not spend its budget on it.
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop()
            self._begin_start()

    # --- start ----------------------------------------------------------------------------------------
    async def start(self, timeout_s: float | None = None) -> None:
        """Connects and creates the constraint now (otherwise the first call does)."""
        await self._ready(self.config.connect_timeout_s * 2 if timeout_s is None else timeout_s)

    async def _ready(self, timeout_s: float) -> AsyncDriver:
        if self._started and self._driver is not None:
            return self._driver
        if self._closed:
            raise BackendError(_BACKEND, "the graph is closed", transient=False)
        if self._starting is None:
            if time.monotonic() < self._retry_at:
                raise BackendError(_BACKEND, "not connected to Neo4j (the last attempt failed)")
            self._begin_start()
        assert self._starting is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._starting), max(timeout_s, 0.0))
        except Exception as exc:
            raise _backend_error(exc, "start") from exc
        assert self._driver is not None
        return self._driver

    def _begin_start(self) -> None:
        self._starting = asyncio.ensure_future(self._start())
        self._starting.add_done_callback(self._on_started)

    async def _start(self) -> None:
        if self._driver is None:
            c = self.config
            self._driver = AsyncGraphDatabase.driver(
                c.uri,
                auth=(c.user, c.password) if c.password else None,
                connection_timeout=c.connect_timeout_s,
                connection_acquisition_timeout=c.connect_timeout_s,
                max_connection_pool_size=c.max_connections,
                # Managed transactions retry transient failures; on the request path the budget is
                # shorter anyway, and a write should not spin for the driver's default 30 s.
                max_transaction_retry_time=min(c.write_timeout_s, 15.0),
                # "constraint already exists" and the like are INFORMATION: not worth a log line each.
                notifications_min_severity="WARNING",
                **bolt_options(c.tls, "graph.tls"),
            )
        async with self._driver.session(database=self.config.database) as session:
            result = await session.run(self._constraint_cypher)
            await result.consume()
        await self._plan_neighbours_query()

    async def _plan_neighbours_query(self) -> None:
        """Runs the neighbour query once (for an item that does not exist), outside any request's budget.

        Planning it takes far longer than running it (hundreds of ms on a cold JVM), and a query that
        times out while being planned leaves no cached plan behind: under a tight budget every attempt
        would be cut short and the query would never become fast. A planned query stays in Neo4j's plan
        cache, so this runs at start and again after a failure (Neo4j may have restarted, plans lost).
        Plans are cached per query text and parameter types, so the request has the real ones' shape.
        """
        assert self._driver is not None
        probe = {"seeds": ["\x00recd-plan-probe"], "hops": MAX_HOPS, "limit": 1, "min_score": 1.0}
        async with self._driver.session(database=self.config.database, default_access_mode="READ") as s:
            result = await s.run(self._neighbours_cypher, requests=[probe])
            await result.consume()

    def _replan_in_background(self) -> None:
        now = time.monotonic()
        if self._replanning is not None or self._closed or self._driver is None or now < self._replan_at:
            return
        # At most twice a second: during an outage every batch fails, and each failure would retry.
        self._replan_at = now + _START_RETRY_S / 2

        async def replan() -> None:
            try:
                async with asyncio.timeout(self.config.write_timeout_s):
                    await self._plan_neighbours_query()
            except Exception as exc:  # still down: the next failure tries again
                log.debug("planning the neighbour query failed: %s", exc)
            finally:
                self._replanning = None

        self._replanning = asyncio.ensure_future(replan())

    def _on_started(self, task: asyncio.Task[None]) -> None:
        self._starting = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._retry_at = time.monotonic() + _START_RETRY_S
            log.warning("cannot start the Neo4j graph at %s: %s", self.config.uri, exc)
        else:
            self._started = True

    # --- reads ----------------------------------------------------------------------------------------
    async def neighbours_many(
        self,
        seed_lists: Sequence[Sequence[str]],
        hops: int,
        limit_per_hop: int,
        min_score: float,
        timeout_s: float,
    ) -> list[dict[str, float]]:
        return await neighbours_each(self, seed_lists, hops, limit_per_hop, min_score, timeout_s)

    async def neighbours(
        self,
        item_ids: Sequence[str],
        hops: int,
        limit_per_hop: int,
        min_score: float,
        timeout_s: float,
    ) -> dict[str, float]:
        """See ItemGraph.neighbours; at most MAX_HOPS hops (the traversal must stay bounded)."""
        if hops > MAX_HOPS:
            raise ValueError(f"hops must be at most {MAX_HOPS}, got {hops}")
        seeds = tuple(dict.fromkeys(item_ids))
        if hops <= 0 or limit_per_hop <= 0 or not seeds:
            return {}
        timeout_s = min(timeout_s, self._cap_s)
        if timeout_s <= 0:
            raise BackendError(_BACKEND, "neighbours: no time left in the budget")
        deadline = time.monotonic() + timeout_s
        query = _NeighbourQuery(seeds, hops, limit_per_hop, float(min_score), deadline)
        # Traced per caller, around its share of the batched UNWIND query (one query serves many callers).
        with tracing.client_span("neo4j", "neighbours"):
            try:
                async with asyncio.timeout(timeout_s):
                    await self._ready(timeout_s)
                    return await self._batcher.submit(query, deadline)
            except Exception as exc:
                raise _backend_error(exc, "neighbours") from exc

    async def _query_batch(self, queries: list[_NeighbourQuery]) -> list[dict[str, float]]:
        """One UNWIND query for every request of the batch; rows split back by request index."""
        remaining = max(q.deadline for q in queries) - time.monotonic()
        if remaining <= 0:
            raise BackendError(_BACKEND, "neighbours: the batch's deadline passed before it was sent")
        requests = [
            {"seeds": list(q.seeds), "hops": q.hops, "limit": q.limit, "min_score": q.min_score}
            for q in queries
        ]

        @unit_of_work(timeout=remaining)
        async def read(tx: AsyncManagedTransaction) -> list[list[Any]]:
            result = await tx.run(self._neighbours_cypher, requests=requests)
            return await result.values()

        try:
            assert self._driver is not None
            async with asyncio.timeout(remaining + _SLACK_S):
                async with self._driver.session(
                    database=self.config.database, default_access_mode="READ"
                ) as session:
                    rows = await session.execute_read(read)
        except Exception as exc:
            metrics.BACKEND_CALLS.labels(_METRIC, "neighbours", "error").inc()
            self._replan_in_background()
            raise _backend_error(exc, "neighbours") from exc
        metrics.BACKEND_CALLS.labels(_METRIC, "neighbours", "ok").inc()
        answers: list[dict[str, float]] = [{} for _ in queries]
        for idx, item_id, score in rows:
            answers[idx][item_id] = float(score)
        return answers

    async def count_edges(self) -> int:
        rows = await self._run_read("count_edges", self._count_cypher, {}, self.config.write_timeout_s)
        return int(rows[0][0]) if rows else 0

    async def _run_read(
        self, op: str, cypher: str, params: dict[str, Any], timeout_s: float
    ) -> list[list[Any]]:
        @unit_of_work(timeout=timeout_s)
        async def read(tx: AsyncManagedTransaction) -> list[list[Any]]:
            result = await tx.run(cypher, params)
            return await result.values()

        with tracing.client_span("neo4j", op):
            try:
                async with asyncio.timeout(timeout_s + _SLACK_S):
                    driver = await self._ready(timeout_s)
                    async with driver.session(database=self.config.database, default_access_mode="READ") as s:
                        rows = await s.execute_read(read)
            except Exception as exc:
                metrics.BACKEND_CALLS.labels(_METRIC, op, "error").inc()
                raise _backend_error(exc, op) from exc
        metrics.BACKEND_CALLS.labels(_METRIC, op, "ok").inc()
        return rows

    # --- writes ---------------------------------------------------------------------------------------
    async def upsert_edges(self, edges: Sequence[Edge]) -> None:
        """MERGE both items and the edge and set its score, `write_batch` edges per transaction.

        Batches run one after another, so within one call a later edge wins over an earlier one for the
        same pair; each batch is atomic, and the whole call is idempotent (safe to retry).
        """
        if not edges:
            return
        timeout_s = self.config.write_timeout_s
        rows = [[e.src_item_id, e.dst_item_id, float(e.score)] for e in edges]
        step = max(1, self.config.write_batch)

        @unit_of_work(timeout=timeout_s)
        async def write(tx: AsyncManagedTransaction, chunk: list[list[Any]]) -> None:
            result = await tx.run(self._upsert_cypher, edges=chunk)
            await result.consume()

        with tracing.client_span("neo4j", "upsert_edges"):
            try:
                driver = await self._ready(timeout_s)
                async with driver.session(database=self.config.database) as session:
                    for start in range(0, len(rows), step):
                        async with asyncio.timeout(timeout_s + _SLACK_S):
                            await session.execute_write(write, rows[start : start + step])
                        metrics.BACKEND_CALLS.labels(_METRIC, "upsert_edges", "ok").inc()
            except Exception as exc:
                metrics.BACKEND_CALLS.labels(_METRIC, "upsert_edges", "error").inc()
                raise _backend_error(exc, "upsert_edges") from exc

    async def drop_all(self) -> None:
        """Deletes every item of this label, its edges and its constraint (tests, full rebuilds)."""
        label = self.config.item_label
        driver = await self._ready(self.config.write_timeout_s)
        try:
            async with driver.session(database=self.config.database) as session:
                # CALL ... IN TRANSACTIONS: bounded memory whatever the graph's size (auto-commit only).
                result = await session.run(
                    f"MATCH (n:`{label}`) CALL (n) {{ DETACH DELETE n }} IN TRANSACTIONS OF 10000 ROWS"
                )
                await result.consume()
                result = await session.run(f"DROP CONSTRAINT recd_{label.lower()}_id_unique IF EXISTS")
                await result.consume()
        except Exception as exc:
            raise _backend_error(exc, "drop_all") from exc
        self._started = False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in (self._starting, self._replanning):
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
        if self._driver is not None:
            await self._driver.close()

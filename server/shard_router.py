"""Routes items to logical shards (consistent hashing) and fans queries out to the nodes hosting them.

One Search call per node carries every query of a micro-batch and the list of the shards that node
serves for it, so internal calls per Recommend are bounded by the number of nodes, never by the number
of shards, and shrink as concurrency grows. The per-shard top-k lists are merged (with dedup) by the
Rust core.

With replicas (server/cluster), each shard is read from one replica: among the replicas whose circuit is
closed, the one with the fewest shards assigned so far in this call (ring order breaks ties), which
spreads reads evenly while keeping one call per node. A node that errs has its shards asked of the next
replica at once (failover); a node later than its hedge delay has its shards also asked of the next
replica (a hedged request), and the first answer per shard wins. A shard that no replica answers before
the deadline is reported missing: the answer is partial, never an error, unless no shard answered.

Writes go to every replica of the item's shard (to both placements while a rebalance is under way) and
are acknowledged once `write_acks` replicas of each shard have them in their write-ahead log. They carry
the layout epoch they were routed by; a node on another epoch refuses them, and the write is retried
after the layout is refreshed.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from server import _core, metrics
from server.cluster.health import HedgePolicy, NodeHealth
from server.cluster.layout import Layout, Placement
from server.config import CandidatesConfig
from server.errors import BackendError
from shards.client import ShardClient
from shards.records import NO_LABEL, ErrorKind, QueryFilter, RecordBatch, ShardError, ShardHits

T = TypeVar("T")
_WRITE_ATTEMPTS = 4


def shard_names(count: int) -> list[str]:
    return [f"shard-{i:03d}" for i in range(count)]


def per_shard_k_for(k: int, shard_count: int, shard_k: int, factor: float) -> int:
    """Hits to ask of each shard for a merged top-k: `shard_k` (pipeline.candidates.shard_k), raised to
    ceil(k * factor / shards) once that is larger (a large k is spread over the shards, so each needs
    its share with slack, not all k), and never more than k."""
    return max(1, min(k, max(shard_k, math.ceil(k * factor / shard_count))))


@dataclass(frozen=True, slots=True)
class ShardNode:
    name: str
    client: ShardClient
    shard_ids: tuple[int, ...]


@dataclass(slots=True)
class SearchResult:
    labels: npt.NDArray[np.uint64]  # (Q, k), NO_LABEL padding
    scores: npt.NDArray[np.float32]  # (Q, k), -inf padding
    shards_total: int
    shards_ok: int
    errors: list[str]
    calls: int = 0  # Search RPCs sent, hedges and failovers included


@dataclass(frozen=True)
class Routing:
    """One placement as the router uses it: items -> shards, shards -> replica nodes in ring order."""

    shard_count: int
    ring: _core.HashRing
    replicas: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Topology:
    epoch: int  # 0: no cluster layout (embedded / static nodes); writes are not fenced
    read: Routing
    writes: tuple[Routing, ...]


@dataclass(frozen=True)
class RoutingPolicy:
    write_acks: int = 0  # 0: every replica
    hedge: HedgePolicy = field(default_factory=lambda: HedgePolicy("off"))
    node_deadline_fraction: float = 0.9
    node_deadline_margin_s: float = 0.001
    # 0: no breaker. The default for static nodes: an in-process host has no "down" to skip, and
    # opening on a few slow searches would turn a moment of overload into a second without ANN.
    breaker_failures: int = 0
    breaker_open_s: float = 1.0


class ClusterHooks(Protocol):
    """What the router asks of the cluster manager (server/cluster/manager.py)."""

    async def ensure_started(self) -> None: ...

    async def refresh_layout(self) -> bool:
        """Asks the nodes for a newer layout and applies it; True if the layout changed."""
        ...

    async def close(self) -> None: ...


class ShardRouter:
    def __init__(
        self,
        dim: int,
        shard_count: int,
        vnodes: int,
        nodes: Sequence[ShardNode],
        *,
        policy: RoutingPolicy | None = None,
    ) -> None:
        """Static nodes (embedded mode, tests): a shard's replicas are the nodes listing it, in order."""
        self.dim = dim
        self.policy = policy or RoutingPolicy()
        self._static_nodes: list[ShardNode] | None = list(nodes)
        self._hooks: ClusterHooks | None = None
        self._health: dict[str, NodeHealth] = {}
        self._clients: dict[str, ShardClient] = {}
        replicas = tuple(tuple(n.name for n in nodes if s in n.shard_ids) for s in range(shard_count))
        missing = [s for s, r in enumerate(replicas) if not r]
        if missing:
            raise ValueError(f"no node hosts shards {missing}")
        routing = Routing(shard_count, _core.HashRing(shard_names(shard_count), vnodes), replicas)
        self._topology = Topology(0, routing, (routing,))
        self._set_clients({n.name: n.client for n in nodes})

    @classmethod
    def for_cluster(
        cls,
        dim: int,
        topology: Topology,
        clients: Mapping[str, ShardClient],
        policy: RoutingPolicy,
        hooks: ClusterHooks,
    ) -> ShardRouter:
        router = cls.__new__(cls)
        router.dim = dim
        router.policy = policy
        router._static_nodes = None
        router._hooks = hooks
        router._health = {}
        router._clients = {}
        router._topology = topology
        router._set_clients(clients)
        return router

    # --- topology -------------------------------------------------------------------------------------
    def set_topology(self, topology: Topology, clients: Mapping[str, ShardClient]) -> None:
        """Swaps routing at once; calls already under way finish on the topology they started with."""
        self._set_clients(clients)
        self._topology = topology

    def _set_clients(self, clients: Mapping[str, ShardClient]) -> None:
        for name in clients:
            if name not in self._health:
                self._health[name] = NodeHealth(
                    name, self.policy.breaker_failures, self.policy.breaker_open_s
                )
        self._clients = dict(clients)

    @property
    def topology(self) -> Topology:
        return self._topology

    @property
    def epoch(self) -> int:
        return self._topology.epoch

    @property
    def shard_count(self) -> int:
        return self._topology.read.shard_count

    @property
    def ring(self) -> _core.HashRing:
        return self._topology.read.ring

    def health(self, node: str) -> NodeHealth:
        return self._health[node]

    @property
    def node_names(self) -> list[str]:
        return list(self._clients)

    def client(self, node: str) -> ShardClient:
        return self._clients[node]

    @property
    def nodes(self) -> list[ShardNode]:
        """What the frontend scans at start, asks for stats and closes at the end. With a cluster it is
        one logical node, the whole cluster, so each shard is read once, from a live replica."""
        if self._static_nodes is not None:
            return self._static_nodes
        from server.cluster.view import ClusterView

        return [ShardNode("cluster", ClusterView(self), tuple(range(self.shard_count)))]

    def shard_of(self, item_ids: Sequence[str]) -> npt.NDArray[np.uint32]:
        return self._topology.read.ring.owner(list(item_ids))

    def per_shard_k(self, k: int, factor: float, shard_k: int = CandidatesConfig.shard_k) -> int:
        """Hits to ask of each shard for a merged top-k (per_shard_k_for): callers pass the configured
        pipeline.candidates.shard_k and shard_k_factor; `shard_k` defaults to the config's default."""
        return per_shard_k_for(k, self.shard_count, shard_k, factor)

    async def ensure_started(self) -> None:
        """With a cluster: the first call resolves node addresses, adopts the newest layout the nodes
        follow and starts the background probes (all of which need a running event loop)."""
        if self._hooks is not None:
            await self._hooks.ensure_started()

    async def close(self) -> None:
        if self._hooks is not None:
            await self._hooks.close()  # it owns the clients
            return
        for client in self._clients.values():
            await client.close()

    # --- replica choice -------------------------------------------------------------------------------
    def _assign(
        self, routing: Routing, shards: Sequence[int], tried: Mapping[int, set[str]]
    ) -> tuple[dict[str, list[int]], list[int]]:
        """{node: its shards} for one wave of calls, and the shards no untried live replica can serve."""
        load: Counter[str] = Counter()
        plan: dict[str, list[int]] = defaultdict(list)
        stranded: list[int] = []
        for shard in shards:
            candidates = [
                (load[node], rank, node)
                for rank, node in enumerate(routing.replicas[shard])
                if node not in tried[shard] and node in self._clients and self._health[node].allow()
            ]
            if not candidates:
                stranded.append(shard)
                continue
            _, _, node = min(candidates)
            load[node] += 1
            plan[node].append(shard)
        return dict(plan), stranded

    def _node_timeout(self, deadline: float) -> float:
        left = deadline - time.monotonic()
        return max(0.0, left * self.policy.node_deadline_fraction - self.policy.node_deadline_margin_s)

    # --- search ---------------------------------------------------------------------------------------
    async def search(
        self,
        queries: npt.NDArray[np.float32],
        k: int,
        per_shard_k: int,
        ef: int,
        exclude: list[npt.NDArray[np.uint64]] | None,
        timeout_s: float,
        filters: Sequence[QueryFilter | None] | None = None,
    ) -> SearchResult:
        """Merged top-k per query. `exclude[i]`: sorted, unique labels query i must not return;
        `filters[i]`: the attribute filter its hits must pass, applied inside each shard's search."""
        await self.ensure_started()
        topology = self._topology
        routing = topology.read
        shard_count = routing.shard_count
        deadline = time.monotonic() + timeout_s
        hedge = self.policy.hedge

        found: dict[int, ShardHits] = {}
        errors: dict[int, ShardError] = {}
        tried: dict[int, set[str]] = {s: set() for s in range(shard_count)}
        in_flight: dict[asyncio.Task[dict[int, ShardHits | ShardError]], _Call] = {}
        calls = 0

        def launch(plan: Mapping[str, list[int]], kind: str) -> None:
            nonlocal calls
            for node, shards in plan.items():
                for shard in shards:
                    tried[shard].add(node)
                if kind != "first":
                    metrics.SHARD_EXTRA_CALLS.labels(kind).inc()
                task = asyncio.ensure_future(
                    self._search_node(
                        node, shards, queries, per_shard_k, ef, exclude, filters, self._node_timeout(deadline)
                    )
                )
                delay = hedge.delay_s(self._health[node]) if kind == "first" else None
                in_flight[task] = _Call(
                    node, shards, kind, None if delay is None else time.monotonic() + delay
                )
                calls += 1

        def strand(shards: Sequence[int]) -> None:
            for shard in shards:
                errors.setdefault(
                    shard,
                    ShardError(
                        f"no live replica left (tried {sorted(tried[shard]) or 'none'})",
                        ErrorKind.UNAVAILABLE,
                    ),
                )

        def covered(shard: int) -> bool:
            return any(shard in c.shards for c in in_flight.values())

        plan, stranded = self._assign(routing, range(shard_count), tried)
        strand(stranded)
        launch(plan, "first")
        hedge.on_calls(len(plan))
        try:
            while in_flight and len(found) < shard_count:
                now = time.monotonic()
                if now >= deadline:
                    break
                hedge_times = [c.hedge_at for c in in_flight.values() if c.hedge_at is not None]
                wake = min([deadline, *hedge_times])
                done, _ = await asyncio.wait(
                    in_flight, timeout=max(0.0, wake - now), return_when=asyncio.FIRST_COMPLETED
                )
                retry: list[int] = []
                for task in done:
                    call = in_flight.pop(task)
                    for shard, outcome in task.result().items():
                        if shard in found:
                            if call.kind == "hedge" and isinstance(outcome, ShardHits):
                                metrics.SHARD_HEDGES.labels(call.node, "lost").inc()
                            continue
                        if isinstance(outcome, ShardHits):
                            found[shard] = outcome
                            errors.pop(shard, None)
                            if call.kind == "hedge":
                                metrics.SHARD_HEDGES.labels(call.node, "won").inc()
                        else:
                            errors[shard] = outcome
                            # A node that ran out of time leaves too little for another replica to help
                            # (lateness is what hedges are for); an error arrives early enough to retry.
                            if outcome.kind is not ErrorKind.DEADLINE_EXCEEDED:
                                retry.append(shard)
                retry = [s for s in retry if not covered(s)]
                if retry:
                    plan, stranded = self._assign(routing, retry, tried)
                    strand(stranded)
                    if plan:
                        metrics.SHARD_FAILOVERS.labels("search").inc(sum(len(v) for v in plan.values()))
                        launch(plan, "failover")
                now = time.monotonic()
                for call in list(in_flight.values()):
                    if call.hedge_at is None or call.hedge_at > now:
                        continue
                    call.hedge_at = None  # one hedge per call at most
                    late = [s for s in call.shards if s not in found]
                    if not late:
                        continue
                    plan, _ = self._assign(routing, late, tried)
                    if plan and hedge.try_take(len(plan)):
                        launch(plan, "hedge")
        finally:
            for task in in_flight:
                task.cancel()

        for shard in range(shard_count):
            if shard not in found and shard not in errors:
                errors[shard] = ShardError(
                    f"no replica answered within {timeout_s:.3f}s", ErrorKind.DEADLINE_EXCEEDED
                )
        labels = np.full((len(queries), shard_count, per_shard_k), NO_LABEL, dtype=np.uint64)
        scores = np.full((len(queries), shard_count, per_shard_k), -np.inf, dtype=np.float32)
        for shard, hits in found.items():
            width = min(per_shard_k, hits.labels.shape[1])
            labels[:, shard, :width] = hits.labels[:, :width]
            scores[:, shard, :width] = hits.scores[:, :width]
        if len(found) < shard_count:
            reason = (
                "deadline"
                if all(e.kind is ErrorKind.DEADLINE_EXCEEDED for e in errors.values())
                else "unavailable"
            )
            metrics.SHARD_PARTIAL.labels(reason).inc()
        merged_labels, merged_scores = _core.merge_topk(labels, scores, k)
        return SearchResult(
            merged_labels,
            merged_scores,
            shard_count,
            len(found),
            [f"shard {s}: {e}" for s, e in sorted(errors.items()) if s not in found],
            calls,
        )

    async def _search_node(
        self,
        node: str,
        shards: list[int],
        queries: npt.NDArray[np.float32],
        k: int,
        ef: int,
        exclude: list[npt.NDArray[np.uint64]] | None,
        filters: Sequence[QueryFilter | None] | None,
        timeout_s: float,
    ) -> dict[int, ShardHits | ShardError]:
        started = time.perf_counter()
        health = self._health[node]
        outcome = "cancelled"
        try:
            try:
                result = await self._clients[node].search(
                    queries, shards, k, ef, exclude, timeout_s, filters=filters
                )
            except TimeoutError:
                error = ShardError(f"{node}: timed out after {timeout_s:.3f}s", ErrorKind.DEADLINE_EXCEEDED)
                result = dict.fromkeys(shards, error)
            except ShardError as exc:
                if exc.kind is ErrorKind.INVALID_ARGUMENT:
                    raise
                result = dict.fromkeys(shards, exc)
            ok = any(isinstance(r, ShardHits) for r in result.values())
            # A node that answers, even with per-shard errors such as an unknown shard, is up.
            node_failed = not ok and any(
                isinstance(r, ShardError) and r.kind in (ErrorKind.UNAVAILABLE, ErrorKind.DEADLINE_EXCEEDED)
                for r in result.values()
            )
            if node_failed:
                health.record_failure()
                outcome = "error"
            else:
                health.record_success(time.perf_counter() - started)
                outcome = "ok"
            return result
        finally:
            metrics.SHARD_LATENCY.labels(node, "search").observe(time.perf_counter() - started)
            metrics.SHARD_CALLS.labels(node, "search", outcome).inc()

    # --- writes ---------------------------------------------------------------------------------------
    async def upsert(self, batch: RecordBatch, timeout_s: float) -> int:
        """Durable once this returns: every record is in the write-ahead log of `write_acks` replicas
        of its shard (of each placement, while a rebalance is under way)."""
        await self.ensure_started()

        async def attempt(topology: Topology, deadline: float) -> int:
            per_node: dict[str, dict[int, list[npt.NDArray[np.intp]]]] = defaultdict(
                lambda: defaultdict(list)
            )
            groups = self._write_groups(topology, batch.item_ids, per_node)
            calls = {
                node: self._clients[node].upsert(
                    {shard: batch.take(np.unique(np.concatenate(rows))) for shard, rows in shards.items()},
                    _left(deadline),
                    layout_epoch=topology.epoch,
                )
                for node, shards in per_node.items()
            }
            await self._settle("upsert", calls, groups)
            return len(batch)

        return await self._write("upsert", attempt, timeout_s)

    async def delete(self, item_ids: Sequence[str], labels: npt.NDArray[np.uint64], timeout_s: float) -> int:
        await self.ensure_started()

        async def attempt(topology: Topology, deadline: float) -> int:
            per_node: dict[str, dict[int, list[npt.NDArray[np.intp]]]] = defaultdict(
                lambda: defaultdict(list)
            )
            groups = self._write_groups(topology, item_ids, per_node)
            calls: dict[str, Awaitable[dict[int, int]]] = {
                node: self._delete_on_node(node, shards, labels, deadline, topology.epoch)
                for node, shards in per_node.items()
            }
            counts = await self._settle("delete", calls, groups)
            # Replicas of one shard agree on what was live; count each shard of the first placement once.
            first = topology.writes[0]
            return sum(
                max((counts.get(node, {}).get(shard, 0) for node in first.replicas[shard]), default=0)
                for shard in {s for (w, s) in groups if w == 0}
            )

        return await self._write("delete", attempt, timeout_s)

    async def _delete_on_node(
        self,
        node: str,
        shards: Mapping[int, list[npt.NDArray[np.intp]]],
        labels: npt.NDArray[np.uint64],
        deadline: float,
        epoch: int,
    ) -> dict[int, int]:
        client = self._clients[node]
        items = {shard: labels[np.unique(np.concatenate(rows))] for shard, rows in shards.items()}
        counts = await asyncio.gather(
            *(
                client.delete(shard, shard_labels, _left(deadline), layout_epoch=epoch)
                for shard, shard_labels in items.items()
            )
        )
        return dict(zip(items, counts, strict=True))

    def _write_groups(
        self,
        topology: Topology,
        item_ids: Sequence[str],
        per_node: dict[str, dict[int, list[npt.NDArray[np.intp]]]],
    ) -> dict[tuple[int, int], tuple[tuple[str, ...], int]]:
        """Fills per_node (node -> shard -> rows) and returns the ack groups: (placement index, shard)
        -> (replicas, acks needed). A (node, shard) pair shared by both placements is written once."""
        groups: dict[tuple[int, int], tuple[tuple[str, ...], int]] = {}
        ids = list(item_ids)
        for w, routing in enumerate(topology.writes):
            shards = routing.ring.owner(ids)
            for shard in np.unique(shards).tolist():
                rows = np.flatnonzero(shards == shard)
                replicas = routing.replicas[shard]
                needed = min(self.policy.write_acks or len(replicas), len(replicas))
                groups[(w, shard)] = (replicas, needed)
                for node in replicas:
                    per_node[node][shard].append(rows)
        return groups

    async def _settle(
        self,
        op: str,
        calls: Mapping[str, Awaitable[T]],
        groups: Mapping[tuple[int, int], tuple[tuple[str, ...], int]],
    ) -> dict[str, T]:
        """Runs one call per node; raises unless every group has its acks. Returns the successes."""
        names = list(calls)
        outcomes = await asyncio.gather(
            *(self._call(node, op, call) for node, call in calls.items()), return_exceptions=True
        )
        ok: dict[str, T] = {}
        failed: dict[str, ShardError] = {}
        for node, outcome in zip(names, outcomes, strict=True):
            if isinstance(outcome, ShardError):
                failed[node] = outcome
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                ok[node] = outcome
        if any(e.kind is ErrorKind.STALE_LAYOUT for e in failed.values()):
            raise _StaleLayout(next(e for e in failed.values() if e.kind is ErrorKind.STALE_LAYOUT))
        short = [
            (shard, sum(n in ok for n in replicas), needed, replicas)
            for (_, shard), (replicas, needed) in groups.items()
            if sum(n in ok for n in replicas) < needed
        ]
        if short:
            shard, acks, needed, replicas = short[0]
            reasons = "; ".join(f"{n}: {e}" for n, e in failed.items() if n in replicas)
            raise _WriteShort(
                f"{op}: shard {shard} acknowledged by {acks} of {len(replicas)} replicas, {needed} needed"
                f" ({len(short)} shard(s) short): {reasons}",
                all(e.transient for e in failed.values()),
            )
        return ok

    async def _call(self, node: str, op: str, call: Awaitable[T]) -> T:
        health = self._health[node]
        if not health.allow():
            if asyncio.iscoroutine(call):
                call.close()  # never started: no "never awaited" warning
            metrics.SHARD_CALLS.labels(node, op, "skipped").inc()
            raise ShardError(f"{node} is down (circuit open)", ErrorKind.UNAVAILABLE)
        started = time.perf_counter()
        try:
            result = await call
        except ShardError as exc:
            metrics.SHARD_CALLS.labels(node, op, "error").inc()
            if exc.kind in (ErrorKind.UNAVAILABLE, ErrorKind.DEADLINE_EXCEEDED):
                health.record_failure()
            raise
        finally:
            metrics.SHARD_LATENCY.labels(node, op).observe(time.perf_counter() - started)
        health.record_success()
        metrics.SHARD_CALLS.labels(node, op, "ok").inc()
        return result

    async def _write(
        self, op: str, attempt: Callable[[Topology, float], Awaitable[T]], timeout_s: float
    ) -> T:
        """Retries a whole write (idempotent) after a stale layout, or while a node lags behind a layout
        change; any other failure is the caller's to retry."""
        deadline = time.monotonic() + timeout_s
        backoff = 0.02
        for n in range(_WRITE_ATTEMPTS):
            try:
                return await attempt(self._topology, deadline)
            except _StaleLayout as exc:
                last: ShardError = exc.error
                metrics.WRITE_RETRIES.labels("stale_layout").inc()
                if self._hooks is not None:
                    await self._hooks.refresh_layout()
            except _WriteShort as exc:
                raise BackendError("shards", str(exc), exc.transient) from None
            if n + 1 < _WRITE_ATTEMPTS and time.monotonic() + backoff < deadline:
                await asyncio.sleep(backoff)
                backoff *= 3
        raise BackendError("shards", f"{op}: layout kept changing: {last}", True)

    # --- point reads ----------------------------------------------------------------------------------
    async def fetch(
        self, item_ids: Sequence[str], labels: npt.NDArray[np.uint64], timeout_s: float
    ) -> RecordBatch:
        await self.ensure_started()
        routing = self._topology.read
        deadline = time.monotonic() + timeout_s
        shards = routing.ring.owner(list(item_ids))

        def fetch_from(shard: int) -> Callable[[ShardClient], Awaitable[RecordBatch]]:
            return lambda client: client.fetch(shard, labels[shards == shard], _left(deadline))

        parts = await asyncio.gather(
            *(
                self._read_replicas(routing, shard, "fetch", fetch_from(shard))
                for shard in np.unique(shards).tolist()
            )
        )
        return RecordBatch.concat(parts, self.dim)

    def replica_order(self, routing: Routing, shard: int) -> list[str]:
        """A shard's replicas to try, live ones first, ring order otherwise."""
        replicas = [n for n in routing.replicas[shard] if n in self._clients]
        return sorted(replicas, key=lambda n: not self._health[n].allow())

    async def _read_replicas(
        self, routing: Routing, shard: int, op: str, call: Callable[[ShardClient], Awaitable[T]]
    ) -> T:
        errors: list[str] = []
        last: ShardError | None = None
        for i, node in enumerate(self.replica_order(routing, shard)):
            if i:
                metrics.SHARD_FAILOVERS.labels(op).inc()
            try:
                return await self._call(node, op, call(self._clients[node]))
            except ShardError as exc:
                if not exc.transient and exc.kind is not ErrorKind.NOT_FOUND:
                    raise BackendError("shards", f"{op} on {node} failed: {exc}", False) from exc
                errors.append(f"{node}: {exc}")
                last = exc
        raise BackendError(
            "shards",
            f"{op} of shard {shard}: no replica answered ({'; '.join(errors) or 'none live'})",
            last.transient if last is not None else True,
        )


@dataclass(slots=True)
class _Call:
    node: str
    shards: list[int]
    kind: str  # first | failover | hedge
    hedge_at: float | None


class _StaleLayout(Exception):
    def __init__(self, error: ShardError) -> None:
        super().__init__(str(error))
        self.error = error


class _WriteShort(Exception):
    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def _left(deadline: float) -> float:
    return max(0.001, deadline - time.monotonic())


def routing_of(placement: Placement) -> Routing:
    return Routing(placement.shard_count, placement.item_ring, placement.replicas)


def topology_of(layout: Layout) -> Topology:
    """The router's view of a cluster layout."""
    return Topology(layout.epoch, routing_of(layout.read), tuple(routing_of(p) for p in layout.writes))

"""The nodes the router can reach, which replica of a shard to ask, and one call to a node.

Reads spread over replicas: within one fan-out each shard goes to the replica, among those whose circuit
is closed and that were not tried yet for it, with the fewest shards assigned so far (ring order breaks
ties), which keeps one call per node. Single-shard reads try replicas in ring order, live ones first.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Iterable, Mapping
from typing import TypeVar

from server import metrics
from server.routing.health import NodeHealth
from server.routing.topology import Routing, RoutingPolicy
from shards.client import ShardClient
from shards.records import ErrorKind, ShardError

T = TypeVar("T")


class Replicas:
    def __init__(self, policy: RoutingPolicy) -> None:
        self._policy = policy
        self._health: dict[str, NodeHealth] = {}
        self._clients: dict[str, ShardClient] = {}

    def set_clients(self, clients: Mapping[str, ShardClient]) -> None:
        """Follows the node set; a node keeps its health across client changes."""
        for name in clients:
            if name not in self._health:
                self._health[name] = NodeHealth(
                    name, self._policy.breaker_failures, self._policy.breaker_open_s
                )
        self._clients = dict(clients)

    @property
    def names(self) -> list[str]:
        return list(self._clients)

    def client(self, node: str) -> ShardClient:
        return self._clients[node]

    def health(self, node: str) -> NodeHealth:
        return self._health[node]

    def clients(self) -> dict[str, ShardClient]:
        return dict(self._clients)

    # --- choice ---------------------------------------------------------------------------------------
    def plan(
        self, routing: Routing, shards: Iterable[int], tried: Mapping[int, set[str]]
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

    def order(self, routing: Routing, shard: int) -> list[str]:
        """A shard's replicas to try, those with a closed (or half-open) circuit first, ring order
        otherwise."""
        replicas = [n for n in routing.replicas[shard] if n in self._clients]
        return sorted(replicas, key=lambda n: not self._health[n].allow())

    # --- one call -------------------------------------------------------------------------------------
    async def call(self, node: str, op: str, call: Awaitable[T]) -> T:
        """Awaits `call` (a request to `node`) through the node's breaker, with its metrics: a node whose
        circuit is open is not asked at all."""
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


def time_left(deadline: float) -> float:
    return max(0.001, deadline - time.monotonic())

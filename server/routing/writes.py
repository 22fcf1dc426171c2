"""Upserts and deletes: every replica of each item's shard is written, and the write is acknowledged once
each shard has its acks.

A write goes to every replica of its shard, to both placements while a rebalance is under way; the
replicas of one shard in one placement make an ack group, which needs `write_acks` of them (0: all) to
have the write in their write-ahead log. A (node, shard) pair in both placements is written once. Writes
carry the layout epoch they were routed by; a node on another epoch refuses them, and the whole write
(idempotent) is retried after the layout is refreshed.

What a replica missed (down, circuit open, deadline) is kept as a hint and replayed to it once it answers
(handoff.py), whether or not the write got its acks: a refused write is at-least-once, it may have been
applied by some replicas, and the rest get it too, so replicas converge either way; the caller retries.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from server import metrics
from server.errors import BackendError
from server.routing.handoff import HintedHandoff
from server.routing.replicas import Replicas, time_left
from server.routing.topology import RoutingPolicy, Topology
from shards.records import ErrorKind, RecordBatch, ShardError

T = TypeVar("T")
_ATTEMPTS = 4

# (placement index, shard) -> (its replicas, acks needed)
AckGroups = dict[tuple[int, int], tuple[tuple[str, ...], int]]
# node -> shard -> the rows of the write it takes
NodeRows = dict[str, dict[int, list[npt.NDArray[np.intp]]]]


class Writes:
    def __init__(
        self,
        replicas: Replicas,
        policy: RoutingPolicy,
        topology: Callable[[], Topology],
        refresh_layout: Callable[[], Awaitable[bool]] | None,
    ) -> None:
        """`topology`: the one to route by now; `refresh_layout`: fetches a newer layout after a node
        refused a write as stale (None: static nodes, nothing to refresh)."""
        self._replicas = replicas
        self._policy = policy
        self._topology = topology
        self._refresh_layout = refresh_layout
        self.handoff = HintedHandoff(replicas, topology, policy.hint_max_items, policy.hint_replay_interval_s)

    async def upsert(self, batch: RecordBatch, timeout_s: float) -> int:
        async def attempt(topology: Topology, deadline: float) -> int:
            per_node: NodeRows = defaultdict(lambda: defaultdict(list))
            groups = self._ack_groups(topology, batch.item_ids, per_node)
            calls = {
                node: self._upsert_on_node(
                    node,
                    {shard: batch.take(np.unique(np.concatenate(rows))) for shard, rows in shards.items()},
                    deadline,
                    topology.epoch,
                )
                for node, shards in per_node.items()
            }
            await self._settle("upsert", calls, groups)
            return len(batch)

        return await self._retrying("upsert", attempt, timeout_s)

    async def delete(self, item_ids: Sequence[str], labels: npt.NDArray[np.uint64], timeout_s: float) -> int:
        async def attempt(topology: Topology, deadline: float) -> int:
            per_node: NodeRows = defaultdict(lambda: defaultdict(list))
            groups = self._ack_groups(topology, item_ids, per_node)
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

        return await self._retrying("delete", attempt, timeout_s)

    async def _upsert_on_node(
        self, node: str, batches: dict[int, RecordBatch], deadline: float, epoch: int
    ) -> int:
        client = self._replicas.client(node)
        async with self.handoff.writing(node, [b.labels for b in batches.values()], deadline):
            try:
                written = await self._replicas.call(
                    node, "upsert", client.upsert(batches, time_left(deadline), layout_epoch=epoch)
                )
            except ShardError as exc:
                if _missed(exc):
                    for shard, part in batches.items():
                        self.handoff.missed_upsert(node, shard, part)
                raise
            for shard, part in batches.items():
                self.handoff.written(node, shard, part.labels)
            return written

    async def _delete_on_node(
        self,
        node: str,
        shards: Mapping[int, list[npt.NDArray[np.intp]]],
        labels: npt.NDArray[np.uint64],
        deadline: float,
        epoch: int,
    ) -> dict[int, int]:
        client = self._replicas.client(node)
        items = {shard: labels[np.unique(np.concatenate(rows))] for shard, rows in shards.items()}
        async with self.handoff.writing(node, items.values(), deadline):
            outcomes = await asyncio.gather(
                *(
                    self._replicas.call(
                        node,
                        "delete",
                        client.delete(shard, shard_labels, time_left(deadline), layout_epoch=epoch),
                    )
                    for shard, shard_labels in items.items()
                ),
                return_exceptions=True,
            )
            counts: dict[int, int] = {}
            failure: BaseException | None = None
            for (shard, shard_labels), outcome in zip(items.items(), outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    if isinstance(outcome, ShardError) and _missed(outcome):
                        self.handoff.missed_delete(node, shard, shard_labels)
                    failure = failure or outcome
                else:
                    self.handoff.written(node, shard, shard_labels)
                    counts[shard] = outcome
            if failure is not None:
                raise failure
            return counts

    def _ack_groups(self, topology: Topology, item_ids: Sequence[str], per_node: NodeRows) -> AckGroups:
        """Fills per_node and returns the ack groups."""
        groups: AckGroups = {}
        ids = list(item_ids)
        for w, routing in enumerate(topology.writes):
            shards = routing.ring.owner(ids)
            for shard in np.unique(shards).tolist():
                rows = np.flatnonzero(shards == shard)
                replicas = routing.replicas[shard]
                needed = min(self._policy.write_acks or len(replicas), len(replicas))
                groups[(w, shard)] = (replicas, needed)
                for node in replicas:
                    per_node[node][shard].append(rows)
        return groups

    async def _settle(self, op: str, calls: Mapping[str, Awaitable[T]], groups: AckGroups) -> dict[str, T]:
        """Runs one call per node (each through the node's breaker, hinting what it misses); raises
        unless every group has its acks. Returns the successes."""
        names = list(calls)
        outcomes = await asyncio.gather(*calls.values(), return_exceptions=True)
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

    async def _retrying(
        self, op: str, attempt: Callable[[Topology, float], Awaitable[T]], timeout_s: float
    ) -> T:
        """Retries a whole write (idempotent) after a stale layout, or while a node lags behind a layout
        change; any other failure is the caller's to retry."""
        deadline = time.monotonic() + timeout_s
        backoff = 0.02
        for n in range(_ATTEMPTS):
            try:
                return await attempt(self._topology(), deadline)
            except _StaleLayout as exc:
                last: ShardError = exc.error
                metrics.WRITE_RETRIES.labels("stale_layout").inc()
                if self._refresh_layout is not None:
                    await self._refresh_layout()
            except _WriteShort as exc:
                raise BackendError("shards", str(exc), exc.transient) from None
            if n + 1 < _ATTEMPTS and time.monotonic() + backoff < deadline:
                await asyncio.sleep(backoff)
                backoff *= 3
        raise BackendError("shards", f"{op}: layout kept changing: {last}", True)


def _missed(exc: ShardError) -> bool:
    """A failure after which the node may lack the write while its peers have it: worth a hint. (A stale
    layout retries the whole write; a refusal for good is refused by every replica alike.)"""
    return exc.transient and exc.kind is not ErrorKind.STALE_LAYOUT


class _StaleLayout(Exception):
    def __init__(self, error: ShardError) -> None:
        super().__init__(str(error))
        self.error = error


class _WriteShort(Exception):
    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient

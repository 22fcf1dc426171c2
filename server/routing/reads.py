"""Reads that need each logical shard once, from one live replica: point reads (fetch), whole-shard scans
(scan_all, what a frontend fills its catalogue replica from) and per-shard statistics.

Replicas are tried in read preference order (server/routing/replicas.py: ring order, open circuits last);
a replica that fails hands the shard to the next one. A node down costs nothing while its shards have
another replica.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from server import metrics
from server.errors import BackendError
from server.routing.replicas import Replicas, time_left
from server.routing.topology import Routing
from shards.client import ShardClient
from shards.records import ErrorKind, NodeStats, RecordBatch, ShardError, ShardStats

T = TypeVar("T")


async def fetch(
    replicas: Replicas,
    routing: Routing,
    dim: int,
    item_ids: Sequence[str],
    labels: npt.NDArray[np.uint64],
    timeout_s: float,
) -> RecordBatch:
    """The live items among `item_ids` (whose labels are `labels`), each asked of its shard."""
    deadline = time.monotonic() + timeout_s
    shards = routing.ring.owner(list(item_ids))

    def fetch_from(shard: int) -> Callable[[ShardClient], Awaitable[RecordBatch]]:
        return lambda client: client.fetch(shard, labels[shards == shard], time_left(deadline))

    parts = await asyncio.gather(
        *(
            read_with_failover(replicas, routing, shard, "fetch", fetch_from(shard))
            for shard in np.unique(shards).tolist()
        )
    )
    return RecordBatch.concat(parts, dim)


async def read_with_failover(
    replicas: Replicas,
    routing: Routing,
    shard: int,
    op: str,
    call: Callable[[ShardClient], Awaitable[T]],
) -> T:
    """`call` on the shard's first replica that answers. A replica that does not have the items (NOT_FOUND)
    or errs transiently hands over to the next; any other error is final."""
    errors: list[str] = []
    last: ShardError | None = None
    for i, node in enumerate(replicas.order(routing, shard)):
        if i:
            metrics.SHARD_FAILOVERS.labels(op).inc()
        try:
            return await replicas.call(node, op, call(replicas.client(node)))
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


async def scan_all(replicas: Replicas, routing: Routing, batch_size: int) -> AsyncIterator[RecordBatch]:
    """Every live item of every logical shard, shard by shard, each shard from one replica. A replica that
    fails part-way hands the shard to the next one, which is read from its start: items can come twice,
    and a caller applies them idempotently (an upsert into its replica)."""
    for shard in range(routing.shard_count):
        errors: list[str] = []
        for i, node in enumerate(replicas.order(routing, shard)):
            if i:
                metrics.SHARD_FAILOVERS.labels("scan").inc()
            try:
                async for batch in replicas.client(node).scan(shard, batch_size):
                    yield batch
                break
            except ShardError as exc:
                if exc.kind in (ErrorKind.UNAVAILABLE, ErrorKind.DEADLINE_EXCEEDED):
                    replicas.health(node).record_failure()
                errors.append(f"{node}: {exc}")
        else:
            raise BackendError(
                "shards", f"scan of shard {shard}: no replica answered ({'; '.join(errors) or 'none live'})"
            )


async def stats(
    replicas: Replicas, routing: Routing, dim: int, epoch: int, timeout_s: float | None
) -> NodeStats:
    """Each logical shard's statistics once, from its first replica (in read preference order) that
    answered; a shard no replica answered for is left out."""
    names = [n for n in replicas.names if any(n in r for r in routing.replicas)]
    answers = await asyncio.gather(
        *(replicas.client(n).stats(timeout_s) for n in names), return_exceptions=True
    )
    by_node: dict[str, dict[int, ShardStats]] = {}
    for name, answer in zip(names, answers, strict=True):
        if isinstance(answer, NodeStats):
            by_node[name] = {s.shard_id: s for s in answer.shards}
        elif not isinstance(answer, Exception):
            raise answer  # cancelled
    shards: list[ShardStats] = []
    for shard in range(routing.shard_count):
        for node in replicas.order(routing, shard):
            found = by_node.get(node, {}).get(shard)
            if found is not None:
                shards.append(found)
                break
    return NodeStats(dim, shards, "", epoch)

"""The fan-out of a batch of queries to every logical shard, merged into one top-k per query.

One Search call per node carries every query of a micro-batch and the list of the shards that node
serves for it, so internal calls per Recommend are bounded by the number of nodes, never by the number
of shards, and shrink as concurrency grows. The per-shard top-k lists are merged (with dedup) by the
Rust core.

Each shard is read from one replica (server/routing/replicas.py). A node that errs has its shards asked of
the next replica at once (failover); a node later than its hedge delay has its shards also asked of the
next replica (a hedged request), and the first answer per shard wins. A shard that no replica answers
before the deadline is reported missing: the answer is partial, never an error, unless no shard answered.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from server import _core, metrics
from server.routing.replicas import Replicas
from server.routing.topology import Routing, RoutingPolicy
from shards.records import NO_LABEL, ErrorKind, QueryFilter, ShardError, ShardHits


def per_shard_k_for(k: int, shard_count: int, shard_k: int, factor: float) -> int:
    """Hits to ask of each shard for a merged top-k: `shard_k` (pipeline.candidates.shard_k), raised to
    ceil(k * factor / shards) once that is larger (a large k is spread over the shards, so each needs
    its share with slack, not all k), and never more than k."""
    return max(1, min(k, max(shard_k, math.ceil(k * factor / shard_count))))


@dataclass(slots=True)
class SearchResult:
    labels: npt.NDArray[np.uint64]  # (Q, k), NO_LABEL padding
    scores: npt.NDArray[np.float32]  # (Q, k), -inf padding
    shards_total: int
    shards_ok: int
    errors: list[str]
    calls: int = 0  # Search RPCs sent, hedges and failovers included


@dataclass(slots=True)
class _Call:
    node: str
    shards: list[int]
    kind: str  # first | failover | hedge
    hedge_at: float | None


@dataclass(frozen=True)
class SearchRequest:
    queries: npt.NDArray[np.float32]
    k: int
    per_shard_k: int
    ef: int
    exclude: list[npt.NDArray[np.uint64]] | None
    filters: Sequence[QueryFilter | None] | None


async def fan_out(
    replicas: Replicas, routing: Routing, policy: RoutingPolicy, request: SearchRequest, timeout_s: float
) -> SearchResult:
    shard_count = routing.shard_count
    deadline = time.monotonic() + timeout_s
    hedge = policy.hedge

    found: dict[int, ShardHits] = {}
    errors: dict[int, ShardError] = {}
    tried: dict[int, set[str]] = {s: set() for s in range(shard_count)}
    in_flight: dict[asyncio.Task[dict[int, ShardHits | ShardError]], _Call] = {}
    calls = 0

    def node_timeout() -> float:
        left = deadline - time.monotonic()
        return max(0.0, left * policy.node_deadline_fraction - policy.node_deadline_margin_s)

    def launch(plan: Mapping[str, list[int]], kind: str) -> None:
        nonlocal calls
        for node, shards in plan.items():
            for shard in shards:
                tried[shard].add(node)
            if kind != "first":
                metrics.SHARD_EXTRA_CALLS.labels(kind).inc()
            task = asyncio.ensure_future(search_node(replicas, node, shards, request, node_timeout()))
            delay = hedge.delay_s(replicas.health(node)) if kind == "first" else None
            in_flight[task] = _Call(node, shards, kind, None if delay is None else time.monotonic() + delay)
            calls += 1

    def strand(shards: Sequence[int]) -> None:
        for shard in shards:
            errors.setdefault(
                shard,
                ShardError(
                    f"no live replica left (tried {sorted(tried[shard]) or 'none'})", ErrorKind.UNAVAILABLE
                ),
            )

    def covered(shard: int) -> bool:
        return any(shard in c.shards for c in in_flight.values())

    plan, stranded = replicas.plan(routing, range(shard_count), tried)
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
                plan, stranded = replicas.plan(routing, retry, tried)
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
                plan, _ = replicas.plan(routing, late, tried)
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
    return _merge(request, shard_count, found, errors, calls)


def _merge(
    request: SearchRequest,
    shard_count: int,
    found: Mapping[int, ShardHits],
    errors: Mapping[int, ShardError],
    calls: int,
) -> SearchResult:
    per_shard_k = request.per_shard_k
    queries = len(request.queries)
    labels = np.full((queries, shard_count, per_shard_k), NO_LABEL, dtype=np.uint64)
    scores = np.full((queries, shard_count, per_shard_k), -np.inf, dtype=np.float32)
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
    merged_labels, merged_scores = _core.merge_topk(labels, scores, request.k)
    return SearchResult(
        merged_labels,
        merged_scores,
        shard_count,
        len(found),
        [f"shard {s}: {e}" for s, e in sorted(errors.items()) if s not in found],
        calls,
    )


async def search_node(
    replicas: Replicas, node: str, shards: list[int], request: SearchRequest, timeout_s: float
) -> dict[int, ShardHits | ShardError]:
    """One node's Search call; its outcome feeds the node's health (a node that answers, even with
    per-shard errors such as an unknown shard, is up)."""
    started = time.perf_counter()
    health = replicas.health(node)
    outcome = "cancelled"
    try:
        try:
            result = await replicas.client(node).search(
                request.queries,
                shards,
                request.per_shard_k,
                request.ef,
                request.exclude,
                timeout_s,
                filters=request.filters,
            )
        except TimeoutError:
            error = ShardError(f"{node}: timed out after {timeout_s:.3f}s", ErrorKind.DEADLINE_EXCEEDED)
            result = dict.fromkeys(shards, error)
        except ShardError as exc:
            if exc.kind is ErrorKind.INVALID_ARGUMENT:
                raise
            result = dict.fromkeys(shards, exc)
        ok = any(isinstance(r, ShardHits) for r in result.values())
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

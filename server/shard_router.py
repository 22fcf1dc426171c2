"""Routes items to logical shards (consistent hashing) and fans queries out to the nodes hosting them.

One Search call per node carries every query of a micro-batch and the list of that node's shards, so
internal calls per Recommend are bounded by the number of nodes, never by the number of shards. The
per-shard top-k lists are merged (with dedup) by the Rust core.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from server import _core, metrics
from server.errors import BackendError
from shards.client import ShardClient
from shards.records import RecordBatch, ShardError, ShardHits

NO_LABEL = np.uint64(2**64 - 1)
T = TypeVar("T")


def shard_names(count: int) -> list[str]:
    return [f"shard-{i:03d}" for i in range(count)]


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


class ShardRouter:
    def __init__(self, dim: int, shard_count: int, vnodes: int, nodes: Sequence[ShardNode]) -> None:
        self.dim = dim
        self.shard_count = shard_count
        self.ring = _core.HashRing(shard_names(shard_count), vnodes)
        self.nodes = list(nodes)
        self._node_of_shard: dict[int, ShardNode] = {}
        for node in self.nodes:
            for shard in node.shard_ids:
                self._node_of_shard.setdefault(shard, node)
        missing = set(range(shard_count)) - set(self._node_of_shard)
        if missing:
            raise ValueError(f"no node hosts shards {sorted(missing)}")

    def shard_of(self, item_ids: Sequence[str]) -> npt.NDArray[np.uint32]:
        return self.ring.owner(list(item_ids))

    def per_shard_k(self, k: int, factor: float) -> int:
        """Each shard holds about 1/shards of the true top-k; ask for that share with slack, not all k."""
        return max(10, min(k, math.ceil(k * factor / self.shard_count)))

    # --- writes ---------------------------------------------------------------------------------------
    async def upsert(self, batch: RecordBatch, timeout_s: float) -> int:
        """Durable once this returns: every record is in its shard's write-ahead log."""
        by_node = self._split(batch)
        results = await asyncio.gather(
            *(self._call(node, "upsert", node.client.upsert(batches, timeout_s)) for node, batches in by_node)
        )
        return int(sum(results))

    async def delete(self, item_ids: Sequence[str], labels: npt.NDArray[np.uint64], timeout_s: float) -> int:
        shards = self.shard_of(item_ids)
        calls = []
        for shard in np.unique(shards).tolist():
            node = self._node_of_shard[shard]
            calls.append(
                self._call(node, "delete", node.client.delete(shard, labels[shards == shard], timeout_s))
            )
        return int(sum(await asyncio.gather(*calls)))

    async def fetch(
        self, item_ids: Sequence[str], labels: npt.NDArray[np.uint64], timeout_s: float
    ) -> RecordBatch:
        shards = self.shard_of(item_ids)
        calls = []
        for shard in np.unique(shards).tolist():
            node = self._node_of_shard[shard]
            calls.append(
                self._call(node, "fetch", node.client.fetch(shard, labels[shards == shard], timeout_s))
            )
        parts = await asyncio.gather(*calls)
        return RecordBatch.concat(parts, self.dim)

    def _split(self, batch: RecordBatch) -> list[tuple[ShardNode, dict[int, RecordBatch]]]:
        shards = self.shard_of(batch.item_ids)
        grouped: dict[str, dict[int, RecordBatch]] = defaultdict(dict)
        nodes: dict[str, ShardNode] = {}
        for shard in np.unique(shards).tolist():
            node = self._node_of_shard[shard]
            nodes[node.name] = node
            grouped[node.name][shard] = batch.take(np.flatnonzero(shards == shard))
        return [(nodes[name], batches) for name, batches in grouped.items()]

    # --- search ---------------------------------------------------------------------------------------
    async def search(
        self,
        queries: npt.NDArray[np.float32],
        k: int,
        per_shard_k: int,
        ef: int,
        exclude: list[npt.NDArray[np.uint64]] | None,
        timeout_s: float,
    ) -> SearchResult:
        n = queries.shape[0]
        calls = [self._search_node(node, queries, per_shard_k, ef, exclude, timeout_s) for node in self.nodes]
        per_node = await asyncio.gather(*calls)
        labels = np.full((n, self.shard_count, per_shard_k), NO_LABEL, dtype=np.uint64)
        scores = np.full((n, self.shard_count, per_shard_k), -np.inf, dtype=np.float32)
        ok = 0
        errors: list[str] = []
        for node_result in per_node:
            for shard, hits in node_result.items():
                if isinstance(hits, ShardError):
                    errors.append(f"shard {shard}: {hits}")
                    continue
                ok += 1
                width = min(per_shard_k, hits.labels.shape[1])
                labels[:, shard, :width] = hits.labels[:, :width]
                scores[:, shard, :width] = hits.scores[:, :width]
        merged_labels, merged_scores = _core.merge_topk(labels, scores, k)
        return SearchResult(merged_labels, merged_scores, self.shard_count, ok, errors)

    async def _search_node(
        self,
        node: ShardNode,
        queries: npt.NDArray[np.float32],
        k: int,
        ef: int,
        exclude: list[npt.NDArray[np.uint64]] | None,
        timeout_s: float,
    ) -> dict[int, ShardHits | ShardError]:
        started = time.perf_counter()
        try:
            result = await node.client.search(queries, list(node.shard_ids), k, ef, exclude, timeout_s)
            outcome = "ok"
        except (ShardError, TimeoutError) as exc:
            error = exc if isinstance(exc, ShardError) else ShardError(f"timed out after {timeout_s:.3f}s")
            result = dict.fromkeys(node.shard_ids, error)
            outcome = "error"
        metrics.SHARD_LATENCY.labels(node.name, "search").observe(time.perf_counter() - started)
        metrics.SHARD_CALLS.labels(node.name, "search", outcome).inc()
        return result

    async def _call(self, node: ShardNode, op: str, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            result = await call
        except ShardError as exc:
            metrics.SHARD_CALLS.labels(node.name, op, "error").inc()
            raise BackendError("shards", f"{op} on {node.name} failed: {exc}", exc.transient) from exc
        finally:
            metrics.SHARD_LATENCY.labels(node.name, op).observe(time.perf_counter() - started)
        metrics.SHARD_CALLS.labels(node.name, op, "ok").inc()
        return result

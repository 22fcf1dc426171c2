"""The embedded item graph: SIMILAR_TO adjacency (src -> {dst: score}) in process memory.

Durability (when a data directory is given) follows the embedded profile store: each `upsert_edges` call
is ONE write-ahead log record, acknowledged only after fsync and applied to memory after that, by a
single writer task that batches pending calls into one append and applies them in LSN order; `compact()`
writes one Arrow IPC snapshot (temp name, fsync, atomic rename) at a known LSN and drops the log below it,
in the background every `compact_after_records` records and from `close()`.

A source's adjacency is replaced, never mutated, on write, so traversals and snapshots read a consistent
map without locks. The edges of a source sorted best-first are cached until that source changes, because
traversals read far more often than edges change.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from server.backends.journal import Journal
from server.domain import Edge
from server.errors import BackendError

log = logging.getLogger(__name__)

_BACKEND = "graph"
SNAPSHOT_FILE = "graph.snapshot"
_SNAPSHOT_FORMAT = "recd-graph-1"

# Record: kind, format version, length of the JSON part; then the JSON part; then float64 scores.
_RECORD_HEADER = struct.Struct("<ccI")
_VERSION = b"\x01"
_EDGES = b"E"

Adjacency = dict[str, float]


class InMemoryItemGraph:
    """Implements the ItemGraph protocol; durable when `data_dir` is given."""

    def __init__(
        self,
        data_dir: Path | None,
        *,
        compact_after_records: int = 10_000,
        group_commit_window_s: float = 0.002,
    ) -> None:
        self._adjacency: dict[str, Adjacency] = {}
        self._ranked: dict[str, list[tuple[str, float]]] = {}
        self._edge_count = 0
        self._journal = Journal(
            _BACKEND,
            data_dir,
            SNAPSHOT_FILE,
            apply_record=lambda record, lsn: self._apply_edges(_decode_edges(record, lsn)),
            load_snapshot=self._load_snapshot,
            capture_snapshot=self._capture_snapshot,
            compact_after_records=compact_after_records,
            group_commit_window_s=group_commit_window_s,
        )

    # --- reads ----------------------------------------------------------------------------------------
    async def neighbours(
        self,
        item_ids: Sequence[str],
        hops: int,
        limit_per_hop: int,
        min_score: float,
        timeout_s: float,
    ) -> dict[str, float]:
        """See ItemGraph.neighbours. An edge into a seed still uses up one of its source's slots in the
        hop, as in a per-source `ORDER BY score DESC LIMIT n` query; seeds are never expanded twice."""
        # timeout_s is unused: the traversal is bounded by seeds x limit_per_hop^hops and never waits.
        return self._expand(item_ids, hops, limit_per_hop, min_score)

    async def neighbours_many(
        self,
        seed_lists: Sequence[Sequence[str]],
        hops: int,
        limit_per_hop: int,
        min_score: float,
        timeout_s: float,
    ) -> list[dict[str, float]]:
        # In memory: one pass, no coroutine per list.
        return [self._expand(seeds, hops, limit_per_hop, min_score) for seeds in seed_lists]

    def _expand(
        self, item_ids: Sequence[str], hops: int, limit_per_hop: int, min_score: float
    ) -> dict[str, float]:
        seeds = set(item_ids)
        best: dict[str, float] = {}
        frontier = dict.fromkeys(seeds, 1.0)
        for _ in range(hops):
            reached: dict[str, float] = {}
            for src, path_score in frontier.items():
                for dst, score in self._best_edges(src)[: max(limit_per_hop, 0)]:
                    if score < min_score:
                        break
                    if dst in seeds:
                        continue
                    candidate = path_score * score
                    if candidate > reached.get(dst, float("-inf")):
                        reached[dst] = candidate
            for dst, score in reached.items():
                if score > best.get(dst, float("-inf")):
                    best[dst] = score
            if not reached:
                break
            frontier = reached
        return best

    def _best_edges(self, src: str) -> list[tuple[str, float]]:
        ranked = self._ranked.get(src)
        if ranked is None:
            adjacency = self._adjacency.get(src)
            if adjacency is None:
                return []
            ranked = sorted(adjacency.items(), key=lambda edge: (-edge[1], edge[0]))
            self._ranked[src] = ranked
        return ranked

    async def count_edges(self) -> int:
        return self._edge_count

    # --- writes ---------------------------------------------------------------------------------------
    async def upsert_edges(self, edges: Sequence[Edge]) -> None:
        if not edges:
            return
        batch = [Edge(e.src_item_id, e.dst_item_id, float(e.score)) for e in edges]
        await self._journal.write(_encode_edges(batch), lambda: self._apply_edges(batch))

    def _apply_edges(self, edges: Sequence[Edge]) -> None:
        by_src: dict[str, list[Edge]] = {}
        for edge in edges:
            by_src.setdefault(edge.src_item_id, []).append(edge)
        for src, group in by_src.items():
            adjacency = dict(self._adjacency.get(src, {}))
            before = len(adjacency)
            for edge in group:
                adjacency[edge.dst_item_id] = edge.score
            self._edge_count += len(adjacency) - before
            self._adjacency[src] = adjacency
            self._ranked.pop(src, None)

    # --- durability (see server.backends.journal) ------------------------------------------------------
    async def compact(self) -> None:
        """Write a snapshot of the current edges and drop the log it makes redundant."""
        await self._journal.compact()

    def _capture_snapshot(self) -> Callable[[Path, int], None]:
        # A shallow copy suffices: adjacency maps are replaced on write, never mutated.
        adjacency = dict(self._adjacency)
        return lambda path, lsn: _write_snapshot(path, lsn, adjacency)

    def _load_snapshot(self, path: Path) -> int:
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_file(source).read_all()
        metadata = table.schema.metadata or {}
        if metadata.get(b"format") != _SNAPSHOT_FORMAT.encode():
            raise BackendError(_BACKEND, f"{path} is not an item graph snapshot", transient=False)
        sources = table.column("src_item_id").to_pylist()
        targets = table.column("dst_item_id").to_pylist()
        scores = table.column("score").to_pylist()
        # The snapshot is written grouped by source, so each adjacency map is built in one pass.
        adjacency: Adjacency | None = None
        current = None
        for src, dst, score in zip(sources, targets, scores, strict=True):
            if src != current:
                current = src
                adjacency = self._adjacency.setdefault(src, {})
            assert adjacency is not None
            adjacency[dst] = score
        self._edge_count = sum(len(a) for a in self._adjacency.values())
        return int(metadata[b"lsn"])

    async def close(self) -> None:
        await self._journal.close()


def _encode_edges(edges: Sequence[Edge]) -> bytes:
    meta = {"src": [e.src_item_id for e in edges], "dst": [e.dst_item_id for e in edges]}
    header = json.dumps(meta, separators=(",", ":"), ensure_ascii=False).encode()
    # float64: replay must rebuild exactly the scores the live graph applied.
    scores = np.array([e.score for e in edges], dtype="<f8").tobytes()
    return _RECORD_HEADER.pack(_EDGES, _VERSION, len(header)) + header + scores


def _decode_edges(record: bytes, lsn: int) -> list[Edge]:
    kind, version, json_len = _RECORD_HEADER.unpack_from(record)
    if kind != _EDGES or version != _VERSION:
        raise BackendError(_BACKEND, f"log record {lsn} has unknown kind/version {kind!r}/{version!r}", False)
    meta = json.loads(record[_RECORD_HEADER.size : _RECORD_HEADER.size + json_len])
    scores = np.frombuffer(record, dtype="<f8", offset=_RECORD_HEADER.size + json_len).tolist()
    return [Edge(s, d, w) for s, d, w in zip(meta["src"], meta["dst"], scores, strict=True)]


_SNAPSHOT_SCHEMA = pa.schema(
    [("src_item_id", pa.string()), ("dst_item_id", pa.string()), ("score", pa.float64())]
)
# Sources per record batch: building one batch holds the GIL, so small batches keep the event loop (which
# serves requests while the snapshot is written on a worker thread) from stalling.
SNAPSHOT_BATCH_SOURCES = 5000


def _write_snapshot(path: Path, lsn: int, adjacency: dict[str, Adjacency]) -> None:
    schema = _SNAPSHOT_SCHEMA.with_metadata({"format": _SNAPSHOT_FORMAT, "lsn": str(lsn)})
    sources = list(adjacency)
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "wb") as f:
        with pa.ipc.new_file(f, schema) as writer:
            for start in range(0, len(sources), SNAPSHOT_BATCH_SOURCES):
                chunk = [(src, adjacency[src]) for src in sources[start : start + SNAPSHOT_BATCH_SOURCES]]
                columns = [
                    pa.array([src for src, edges in chunk for _ in range(len(edges))], pa.string()),
                    pa.array([dst for _, edges in chunk for dst in edges], pa.string()),
                    pa.array([score for _, edges in chunk for score in edges.values()], pa.float64()),
                ]
                writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=_SNAPSHOT_SCHEMA))
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

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

import asyncio
import json
import logging
import os
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from server.domain import Edge
from server.errors import BackendError
from shards.wal import WriteAheadLog

log = logging.getLogger(__name__)

_BACKEND = "graph"
SNAPSHOT_FILE = "graph.snapshot"
WAL_DIR = "wal"
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
        self.compact_after_records = compact_after_records
        self._adjacency: dict[str, Adjacency] = {}
        self._ranked: dict[str, list[tuple[str, float]]] = {}
        self._edge_count = 0
        self._closed = False
        self._data_dir = data_dir
        self._wal: WriteAheadLog | None = None
        self._pending: list[tuple[bytes, Callable[[], None], asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._compaction: asyncio.Task[None] | None = None
        self._compact_lock = asyncio.Lock()
        self._applied_lsn = 0
        self._snapshot_lsn = 0
        if data_dir is not None:
            self._open(Path(data_dir), group_commit_window_s)

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
        await self._write(_encode_edges(batch), lambda: self._apply_edges(batch))

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

    async def _write(self, record: bytes, apply: Callable[[], None]) -> None:
        if self._closed:
            raise BackendError(_BACKEND, "the graph is closed", transient=False)
        if self._wal is None:
            apply()
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((record, apply, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        await done

    async def _drain(self) -> None:
        """The single writer: one log append for everything pending, then apply in LSN order."""
        assert self._wal is not None
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                last_lsn = await asyncio.to_thread(self._wal.append, [record for record, _, _ in batch])
            except Exception as exc:
                error = BackendError(_BACKEND, f"write-ahead log append failed: {exc}", transient=False)
                for _, _, done in batch:
                    if not done.done():
                        done.set_exception(error)
                continue
            for _, apply, done in batch:
                try:
                    apply()
                except Exception as exc:  # a bug, not bad input (validated before logging): stay alive
                    log.exception("applying a logged write failed")
                    if not done.done():
                        done.set_exception(exc)
                    continue
                if not done.done():
                    done.set_result(None)
            self._applied_lsn = last_lsn
            if (
                self._applied_lsn - self._snapshot_lsn >= self.compact_after_records
                and (self._compaction is None or self._compaction.done())
                and not self._closed
            ):
                self._compaction = asyncio.create_task(self._background_compact())

    # --- durability -----------------------------------------------------------------------------------
    def _open(self, data_dir: Path, group_commit_window_s: float) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        snapshot = data_dir / SNAPSHOT_FILE
        if snapshot.exists():
            self._snapshot_lsn = self._load_snapshot(snapshot)
        self._applied_lsn = self._snapshot_lsn
        wal = WriteAheadLog(data_dir / WAL_DIR, group_commit_window_s, first_lsn=self._snapshot_lsn + 1)
        if wal.first_lsn > self._snapshot_lsn + 1:
            raise BackendError(
                _BACKEND,
                f"{data_dir}: the log starts at LSN {wal.first_lsn} but the snapshot covers only up to "
                f"{self._snapshot_lsn}; records in between are missing",
                transient=False,
            )
        for lsn, record in wal.replay(after_lsn=self._snapshot_lsn):
            self._apply_edges(_decode_edges(record, lsn))
            self._applied_lsn = lsn
        self._wal = wal

    async def compact(self) -> None:
        """Write a snapshot of the current edges and drop the log it makes redundant."""
        if self._wal is None or self._data_dir is None:
            return
        async with self._compact_lock:
            lsn = self._applied_lsn
            if lsn == self._snapshot_lsn:
                return
            # A shallow copy suffices: adjacency maps are replaced on write, never mutated.
            adjacency = dict(self._adjacency)
            path = Path(self._data_dir) / SNAPSHOT_FILE
            await asyncio.to_thread(_write_snapshot, path, lsn, adjacency)
            self._snapshot_lsn = lsn
            await asyncio.to_thread(self._wal.rotate)
            await asyncio.to_thread(self._wal.drop_before, lsn + 1)

    async def _background_compact(self) -> None:
        try:
            await self.compact()
        except Exception:
            # The log still holds everything, so a failed snapshot costs only replay time at the next start.
            log.exception("item graph snapshot failed; will retry after more writes")

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
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            await self._writer
        if self._compaction is not None:
            await self._compaction
        if self._wal is not None:
            try:
                await self.compact()
            finally:
                await asyncio.to_thread(self._wal.close)


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

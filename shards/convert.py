"""The one place where shard types meet protobuf and gRPC status codes (the codes of ErrorKind's one table,
server/errors.py).

Vectors travel as raw little-endian float32 bytes and labels as packed uint64, except a search's
exclusions, which travel as little-endian uint64 bytes (10,000 of them encode in microseconds, where a
repeated field takes about a millisecond each way). A per-shard search error
travels inside ShardHits.error as "<ErrorKind name>: <message>", so the client can tell a transient
failure from a permanent one (the proto has no field for it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import grpc
import numpy as np
from numpy.typing import NDArray

from server.errors import kind_of_status
from server.gen.recd.v1 import shard_pb2 as pb
from shards.changes import Change, FeedRead
from shards.records import (
    AttributeFilter,
    ErrorKind,
    NodeLayout,
    NodeStats,
    QueryFilter,
    RecordBatch,
    ShardError,
    ShardHits,
    ShardStats,
    as_labels,
    invalid,
)

# From a shard node these mean "try another replica", which callers (the router) do for UNAVAILABLE: a call
# cancelled on the node's side, or turned away by its load.
_UNAVAILABLE_FROM_A_NODE = frozenset({grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED})


def status_of(error: ShardError) -> grpc.StatusCode:
    return error.kind.status


def error_of_status(code: grpc.StatusCode | None, details: str | None) -> ShardError:
    kind = ErrorKind.UNAVAILABLE if code in _UNAVAILABLE_FROM_A_NODE else kind_of_status(code)
    return ShardError(details or (code.name if code is not None else "unknown gRPC error"), kind)


# ---------------------------------------------------------------------- arrays
def f32_bytes(array: NDArray[np.float32]) -> bytes:
    return np.ascontiguousarray(array, dtype="<f4").tobytes()


def queries_from_bytes(data: bytes, n_queries: int, dim: int) -> NDArray[np.float32]:
    if len(data) != n_queries * dim * 4:
        raise invalid(
            f"queries: expected n_queries*dim*4 = {n_queries}*{dim}*4 = {n_queries * dim * 4} bytes, "
            f"got {len(data)}"
        )
    return np.frombuffer(data, dtype="<f4").astype(np.float32).reshape(n_queries, dim)


def labels_from(repeated: Iterable[int]) -> NDArray[np.uint64]:
    return np.fromiter(repeated, dtype=np.uint64)


# ---------------------------------------------------------------------- records
def batch_to_proto(shard_id: int, batch: RecordBatch) -> pb.ShardRecords:
    vectors = np.ascontiguousarray(batch.vectors, dtype="<f4")
    return pb.ShardRecords(
        shard_id=shard_id,
        records=[
            pb.ShardRecord(label=label, item_id=item_id, vector=vectors[i].tobytes(), payload=payload)
            for i, (label, item_id, payload) in enumerate(
                zip(as_labels(batch.labels).tolist(), batch.item_ids, batch.payloads, strict=True)
            )
        ],
    )


def batch_from_proto(records: Sequence[pb.ShardRecord], dim: int | None, where: str) -> RecordBatch:
    """`dim=None` infers it from the first record (client side, where the node's dim is implied)."""
    if not records:
        return RecordBatch.empty(dim or 0)
    width = dim if dim is not None else len(records[0].vector) // 4
    for i, record in enumerate(records):
        if len(record.vector) != width * 4:
            raise invalid(
                f"{where}.records[{i}].vector: expected {width * 4} bytes (dim {width} float32), "
                f"got {len(record.vector)}"
            )
    vectors = np.frombuffer(b"".join(r.vector for r in records), dtype="<f4").astype(np.float32)
    return RecordBatch(
        np.fromiter((r.label for r in records), dtype=np.uint64, count=len(records)),
        [r.item_id for r in records],
        vectors.reshape(len(records), width),
        [r.payload for r in records],
    )


# ---------------------------------------------------------------------- search
def changes_to_proto(shard_id: int, read: FeedRead) -> pb.ShardChanges:
    return pb.ShardChanges(
        incarnation=read.incarnation,
        position=read.position,
        reset=read.reset,
        changes=[
            pb.ShardChange(
                lsn=change.lsn,
                applied_at=change.applied_at,
                upserts=batch_to_proto(shard_id, change.upserts).records
                if change.upserts is not None
                else (),
                deleted_labels=as_labels(change.deletes).tolist() if change.deletes is not None else (),
            )
            for change in read.changes
        ],
    )


def changes_from_proto(msg: pb.ShardChanges, dim: int | None) -> FeedRead:
    changes = tuple(
        Change(change.lsn, change.applied_at, upserts=batch_from_proto(change.upserts, dim, "upserts"))
        if change.upserts
        else Change(change.lsn, change.applied_at, deletes=labels_from(change.deleted_labels))
        for change in msg.changes
    )
    return FeedRead(msg.incarnation, msg.position, changes, msg.reset)


def search_request(
    queries: NDArray[np.float32],
    shard_ids: Sequence[int],
    k: int,
    ef: int,
    exclude: Sequence[NDArray[np.uint64]] | None,
    filters: Sequence[QueryFilter | None] | None = None,
) -> pb.ShardSearchRequest:
    q = np.asarray(queries)
    if q.ndim != 2:
        raise invalid(f"queries: expected a 2-D array, got shape {q.shape}")
    return pb.ShardSearchRequest(
        queries=f32_bytes(q),
        n_queries=q.shape[0],
        dim=q.shape[1],
        shard_ids=list(shard_ids),
        k=k,
        ef=ef,
        constraints=constraints_to_proto(exclude, filters),
    )


def constraints_to_proto(
    exclude: Sequence[NDArray[np.uint64]] | None, filters: Sequence[QueryFilter | None] | None
) -> list[pb.QueryConstraints]:
    """One entry per query, or none when no query has exclusions or a filter. Counts that disagree are
    sent as they are: the node refuses them with the same message as the in-process host."""
    if not exclude and not filters:
        return []
    count = max(len(exclude or ()), len(filters or ()))
    out = []
    for i in range(count):
        message = pb.QueryConstraints()
        if exclude and i < len(exclude):
            message.exclude_labels = np.ascontiguousarray(as_labels(exclude[i]), dtype="<u8").tobytes()
        f = filters[i] if filters and i < len(filters) else None
        if f is not None:
            terms = f.terms if isinstance(f, AttributeFilter) else f.items()
            message.filter.extend(pb.AttributeValues(attribute=a, values=sorted(v)) for a, v in terms)
        out.append(message)
    return out


def constraints_from_proto(
    request: pb.ShardSearchRequest,
) -> tuple[list[NDArray[np.uint64]] | None, list[QueryFilter | None] | None]:
    """(exclude, filters) of a search request, each one entry per listed query or None. The filters are
    checked by the host, as for an in-process caller, so both report a bad one the same way."""
    if not request.constraints:
        return [labels_from(e.labels) for e in request.exclude] or None, None
    exclude: list[NDArray[np.uint64]] = []
    filters: list[QueryFilter | None] = []
    for i, message in enumerate(request.constraints):
        raw = message.exclude_labels
        if len(raw) % 8:
            raise invalid(
                f"constraints[{i}].exclude_labels: {len(raw)} bytes is not a whole number of uint64"
            )
        exclude.append(np.frombuffer(raw, dtype="<u8").astype(np.uint64, copy=False))
        allowed: dict[str, list[str]] = {}
        for term in message.filter:
            allowed.setdefault(term.attribute, []).extend(term.values)
        filters.append(allowed or None)
    return exclude, filters


def hits_to_proto(shard_id: int, result: ShardHits | ShardError) -> pb.ShardHits:
    if isinstance(result, ShardError):
        return pb.ShardHits(shard_id=shard_id, ok=False, error=f"{result.kind.name}: {result.message}")
    return pb.ShardHits(
        shard_id=shard_id,
        ok=True,
        labels=result.labels.ravel().tolist(),
        scores=result.scores.ravel().tolist(),
    )


def hits_from_proto(msg: pb.ShardHits, n_queries: int, k: int) -> ShardHits | ShardError:
    if not msg.ok:
        kind_name, sep, message = msg.error.partition(": ")
        if sep and kind_name in ErrorKind.__members__:
            return ShardError(message, ErrorKind[kind_name])
        return ShardError(msg.error, ErrorKind.INTERNAL)
    if len(msg.labels) != n_queries * k or len(msg.scores) != n_queries * k:
        return ShardError(
            f"shard {msg.shard_id}: malformed response ({len(msg.labels)} labels for {n_queries}x{k})",
            ErrorKind.INTERNAL,
        )
    return ShardHits(
        np.fromiter(msg.labels, dtype=np.uint64, count=n_queries * k).reshape(n_queries, k),
        np.fromiter(msg.scores, dtype=np.float32, count=n_queries * k).reshape(n_queries, k),
    )


# ---------------------------------------------------------------------- stats
def stats_to_proto(stats: NodeStats) -> pb.ShardStatsResponse:
    return pb.ShardStatsResponse(
        dim=stats.dim,
        node_name=stats.node_name,
        layout_epoch=stats.layout_epoch,
        shards=[
            pb.ShardStats(
                shard_id=s.shard_id,
                items=s.items,
                deleted=s.deleted,
                capacity=s.capacity,
                wal_bytes=s.wal_bytes,
            )
            for s in stats.shards
        ],
    )


def stats_from_proto(msg: pb.ShardStatsResponse) -> NodeStats:
    return NodeStats(
        msg.dim,
        [ShardStats(s.shard_id, s.items, s.deleted, s.capacity, s.wal_bytes) for s in msg.shards],
        msg.node_name,
        msg.layout_epoch,
    )


def layout_to_proto(layout: NodeLayout) -> pb.ShardLayout:
    return pb.ShardLayout(
        epoch=layout.epoch,
        layout_json=layout.layout_json,
        shard_ids=layout.shard_ids,
        node_name=layout.node_name,
        incarnation=layout.incarnation,
    )


def layout_from_proto(msg: pb.ShardLayout) -> NodeLayout:
    return NodeLayout(msg.epoch, msg.layout_json, list(msg.shard_ids), msg.node_name, msg.incarnation)

"""Shard operations as write-ahead-log records: an explicit little-endian binary layout (never pickle), so a
log written by one version can be read by the next and a damaged record can't execute anything.

Upsert: header `<B version, B op, 2 pad, u32 n, u32 dim>`, then n u64 labels, n*dim f32 vectors, n u32
item-id lengths, n u32 payload lengths, the UTF-8 item ids back to back, the payloads back to back.
Delete: header `<B version, B op, 2 pad, u32 n>`, then n u64 labels.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from shards.records import RecordBatch

_VERSION = 1
_OP_UPSERT = 1
_OP_DELETE = 2
_UPSERT_HEADER = struct.Struct("<BBxxII")
_DELETE_HEADER = struct.Struct("<BBxxI")


@dataclass
class UpsertOp:
    batch: RecordBatch


@dataclass
class DeleteOp:
    labels: NDArray[np.uint64]


class OpDecodeError(ValueError):
    pass


def encode_upsert(batch: RecordBatch) -> bytes:
    n, dim = batch.vectors.shape
    ids = [s.encode("utf-8") for s in batch.item_ids]
    return b"".join(
        [
            _UPSERT_HEADER.pack(_VERSION, _OP_UPSERT, n, dim),
            batch.labels.astype("<u8", copy=False).tobytes(),
            batch.vectors.astype("<f4", copy=False).tobytes(),
            np.fromiter((len(b) for b in ids), dtype="<u4", count=n).tobytes(),
            np.fromiter((len(p) for p in batch.payloads), dtype="<u4", count=n).tobytes(),
            *ids,
            *batch.payloads,
        ]
    )


def encode_delete(labels: NDArray[np.uint64]) -> bytes:
    return _DELETE_HEADER.pack(_VERSION, _OP_DELETE, len(labels)) + labels.astype("<u8", copy=False).tobytes()


def _split(blob: memoryview, lengths: NDArray[np.uint32], start: int) -> tuple[list[bytes], int]:
    out: list[bytes] = []
    off = start
    for length in lengths.tolist():
        out.append(bytes(blob[off : off + length]))
        off += length
    return out, off


def decode(record: bytes) -> UpsertOp | DeleteOp:
    view = memoryview(record)
    if len(record) < 2 or record[0] != _VERSION:
        raise OpDecodeError(f"unknown shard op record version {record[0] if record else None}")
    try:
        if record[1] == _OP_DELETE:
            (_, _, n) = _DELETE_HEADER.unpack_from(view)
            labels = np.frombuffer(view, dtype="<u8", count=n, offset=_DELETE_HEADER.size)
            return DeleteOp(labels.astype(np.uint64))
        if record[1] == _OP_UPSERT:
            (_, _, n, dim) = _UPSERT_HEADER.unpack_from(view)
            off = _UPSERT_HEADER.size
            labels = np.frombuffer(view, dtype="<u8", count=n, offset=off).astype(np.uint64)
            off += 8 * n
            vectors = np.frombuffer(view, dtype="<f4", count=n * dim, offset=off).astype(np.float32)
            off += 4 * n * dim
            id_lens = np.frombuffer(view, dtype="<u4", count=n, offset=off)
            off += 4 * n
            payload_lens = np.frombuffer(view, dtype="<u4", count=n, offset=off)
            off += 4 * n
            raw_ids, off = _split(view, id_lens, off)
            payloads, off = _split(view, payload_lens, off)
            if off != len(record):
                raise OpDecodeError(f"upsert record has {len(record) - off} unexpected trailing bytes")
            ids = [b.decode("utf-8") for b in raw_ids]
            return UpsertOp(RecordBatch(labels, ids, vectors.reshape(n, dim), payloads))
    except (struct.error, ValueError) as exc:
        raise OpDecodeError(f"malformed shard op record: {exc}") from exc
    raise OpDecodeError(f"unknown shard op {record[1]}")

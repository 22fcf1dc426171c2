"""Test data, the exact brute-force oracle, and a host behind either client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
from numpy.typing import NDArray

from shards.client import GrpcShardClient, InProcessShardClient, ShardClient
from shards.host import ShardHost
from shards.records import NO_LABEL, RecordBatch
from shards.service import ShardNodeServer, serve_node


@asynccontextmanager
async def connected(
    host: ShardHost, transport: str
) -> AsyncIterator[tuple[ShardClient, ShardNodeServer | None]]:
    """(client, node) for `host`: in process, or over gRPC through a node on an ephemeral port (closed,
    with the host, on exit), so one test runs against both transports."""
    node = None
    client: ShardClient
    if transport == "grpc":
        node = await serve_node(host, "127.0.0.1:0")
        client = GrpcShardClient(f"127.0.0.1:{node.port}")
    else:
        client = InProcessShardClient(host)
    try:
        yield client, node
    finally:
        await client.close()
        if node is not None:
            await node.stop(0)
        host.close()


def unit(rows: NDArray[np.floating]) -> NDArray[np.float32]:
    rows = np.asarray(rows, dtype=np.float32)
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def clustered(
    n: int, dim: int, clusters: int = 50, seed: int = 0, spread: float = 0.6, n_queries: int = 0
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Unit vectors around `clusters` gaussian centres (harder for HNSW than uniform noise), and queries
    drawn the same way but not in the data."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(clusters, dim)))

    def draw(count: int) -> NDArray[np.float32]:
        return unit(
            centres[rng.integers(0, clusters, count)] + spread * rng.normal(size=(count, dim)) / np.sqrt(dim)
        )

    return draw(n), draw(n_queries)


def exact_top_k(data: NDArray[np.float32], queries: NDArray[np.float32], k: int) -> NDArray[np.intp]:
    """Row indices of the k largest inner products, best first: the oracle."""
    scores = queries @ data.T
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def recall(found: NDArray[np.uint64], expected: NDArray[np.uint64]) -> float:
    hits = sum(
        len(set(f.tolist()) & set(e.tolist()) - {int(NO_LABEL)}) for f, e in zip(found, expected, strict=True)
    )
    return hits / expected.size


def batch_of(
    labels: NDArray[np.uint64] | list[int], vectors: NDArray[np.float32], tag: str = ""
) -> RecordBatch:
    labels = np.asarray(labels, dtype=np.uint64)
    return RecordBatch(
        labels,
        [f"item-{label}{tag}" for label in labels.tolist()],
        np.asarray(vectors, dtype=np.float32),
        [f"payload-{label}{tag}".encode() + bytes([0, 255]) for label in labels.tolist()],
    )

"""Sharded ANN: recall@10 against exact search and QPS at several ef, 20 shards vs one index."""

from __future__ import annotations

import time

import numpy as np

from server import _core
from server.bench.data import dataset_dir, exact_top_k, item_vectors, query_vectors
from server.bench.report import table
from server.shard_router import shard_names
from shards.host import ShardHost
from shards.records import IndexParams, RecordBatch, ShardError

K = 10
BATCH = 64


def _build(ids: list[str], vectors: np.ndarray, shards: int) -> tuple[ShardHost, float]:
    ring = _core.HashRing(shard_names(shards), 1024)
    owner = ring.owner(ids)
    labels = _core.stable_hash64(ids)
    params = IndexParams(dim=vectors.shape[1], initial_capacity=len(ids) // shards + 1024)
    host = ShardHost(params, None, range(shards))
    started = time.perf_counter()
    for start in range(0, len(ids), 20_000):
        sl = slice(start, start + 20_000)
        batches = {}
        for shard in range(shards):
            idx = np.flatnonzero(owner[sl] == shard) + start
            if len(idx):
                batches[shard] = RecordBatch(
                    labels[idx], [ids[i] for i in idx], vectors[idx], [b""] * len(idx)
                )
        host.upsert(batches)
    return host, time.perf_counter() - started


def _search(
    host: ShardHost, shards: int, queries: np.ndarray, ef: int, per_shard_k: int
) -> tuple[np.ndarray, float]:
    labels_out = np.empty((len(queries), K), dtype=np.uint64)
    started = time.perf_counter()
    for start in range(0, len(queries), BATCH):
        q = queries[start : start + BATCH]
        hits = host.search(q, list(range(shards)), per_shard_k, ef)
        failed = [s for s, h in hits.items() if isinstance(h, ShardError)]
        if failed:
            raise RuntimeError(f"shards {failed} failed: {hits[failed[0]]}")
        lab = np.stack([hits[s].labels for s in range(shards)], axis=1)  # type: ignore[union-attr]
        sc = np.stack([hits[s].scores for s in range(shards)], axis=1)  # type: ignore[union-attr]
        merged, _ = _core.merge_topk(np.ascontiguousarray(lab), np.ascontiguousarray(sc), K)
        labels_out[start : start + BATCH] = merged
    return labels_out, time.perf_counter() - started


def run_ann_bench(quick: bool = False) -> tuple[str, list[dict[str, float]]]:
    items = 20_000 if quick else 200_000
    ids, vectors = item_vectors(dataset_dir(items, 2_000 if quick else 20_000, 64))
    queries = query_vectors(vectors, 500 if quick else 2000)
    truth_rows = exact_top_k(vectors, queries, K)
    labels = _core.stable_hash64(ids)
    truth = labels[truth_rows]
    results = []
    for shards in (20, 1):
        host, build_s = _build(ids, vectors, shards)
        per_shard_k = K
        for ef in (50, 100, 200):
            got, elapsed = _search(host, shards, queries, ef, per_shard_k)
            recall = np.mean(
                [len(set(got[i].tolist()) & set(truth[i].tolist())) / K for i in range(len(queries))]
            )
            results.append(
                {
                    "shards": shards,
                    "ef": ef,
                    "recall": float(recall),
                    "qps": len(queries) / elapsed,
                    "build_s": build_s,
                }
            )
        host.close()
    body = table(
        ["index", "ef", "recall@10 vs exact", "QPS (batches of 64)", "build s"],
        [
            [
                f"{r['shards']} shard{'s' if r['shards'] > 1 else ''}",
                r["ef"],
                f"{r['recall']:.4f}",
                r["qps"],
                f"{r['build_s']:.0f}",
            ]
            for r in results
        ],
    )
    body += (
        f"\n\n{len(ids):,} clustered items of dimension {vectors.shape[1]} (the demo dataset), {len(queries):,}"
        " user-like queries; exact top-10 by brute-force inner product is the oracle. 20 shards: each shard"
        " answers its top-10 and the Rust k-way merge keeps the global top-10; shards are searched in parallel"
        " threads (hnswlib releases the GIL)."
    )
    return body, results

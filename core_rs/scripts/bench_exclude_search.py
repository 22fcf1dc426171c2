"""CPU cost of an unfiltered, excluding search on an in-process ShardHost.

20 shards x 10,000 items, d=64; batches of 16 queries, each excluding 50 sorted labels of the index;
k=10, ef=50. Prints process CPU ms per query (time.process_time over 200 batches, every thread of
the process counted) and wall ms per batch. Run from the repository root:
    .venv/bin/python core_rs/scripts/bench_exclude_search.py [--near | --plain]
--near makes half of each query's exclusions its nearest items (most queries then search twice);
--plain excludes nothing (the floor: hnswlib and the host's plumbing).
"""

from __future__ import annotations

import sys
import time

import numpy as np

from server import _core
from shards.host import ShardHost
from shards.records import IndexParams, RecordBatch
from shards.tests.helpers import clustered

SHARDS, PER_SHARD, DIM = 20, 10_000, 64
BATCH, EXCLUDED, K, EF, BATCHES = 16, 50, 10, 50, 200


def build() -> tuple[ShardHost, np.ndarray, np.ndarray, np.ndarray]:
    n = SHARDS * PER_SHARD
    data, queries = clustered(n, DIM, clusters=200, seed=1, n_queries=BATCH * BATCHES)
    ids = [f"item-{i}" for i in range(n)]
    labels = _core.stable_hash64(ids)
    params = IndexParams(dim=DIM, ef_construction=100, initial_capacity=PER_SHARD + 1024)
    host = ShardHost(params, None, range(SHARDS))
    batches = {}
    for s in range(SHARDS):
        sl = slice(s * PER_SHARD, (s + 1) * PER_SHARD)
        batches[s] = RecordBatch(labels[sl], ids[sl], data[sl], [b""] * PER_SHARD)
    host.upsert(batches)
    return host, labels, data, queries


def main() -> None:
    plain = "--plain" in sys.argv  # no exclusions at all: the floor (hnswlib and the host's plumbing)
    near = "--near" in sys.argv  # half of each exclusion list: the query's nearest items (refetches)
    started = time.perf_counter()
    host, labels, data, queries = build()
    print(f"built {SHARDS} x {PER_SHARD} in {time.perf_counter() - started:.1f}s", flush=True)
    rng = np.random.default_rng(7)
    shard_ids = list(range(SHARDS))
    excludes = []
    for b in range(BATCHES):
        batch = queries[b * BATCH : (b + 1) * BATCH]
        nearest = np.argsort(-(batch @ data.T), axis=1)[:, : EXCLUDED // 2] if near else None
        rows = []
        for i in range(len(batch)):
            picked = rng.choice(labels, EXCLUDED, replace=False)
            if nearest is not None:
                picked[: EXCLUDED // 2] = labels[nearest[i]]
            rows.append(np.unique(picked).astype(np.uint64))
        excludes.append(None if plain else rows)
    try:
        for b in range(5):  # warm up (ef set, pools started)
            host.search(queries[b * BATCH : (b + 1) * BATCH], shard_ids, K, EF, excludes[b])
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for b in range(BATCHES):
            hits = host.search(queries[b * BATCH : (b + 1) * BATCH], shard_ids, K, EF, excludes[b])
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        assert all(not isinstance(h, Exception) for h in hits.values())
        print(
            f"CPU {1000 * cpu / (BATCHES * BATCH):.3f} ms/query, "
            f"wall {1000 * wall / BATCHES:.2f} ms/batch ({BATCHES} batches of {BATCH})"
        )
    finally:
        host.close()


if __name__ == "__main__":
    main()

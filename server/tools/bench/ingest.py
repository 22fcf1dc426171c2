"""Durable ingest throughput: items acknowledged per second through UpsertItems, fsync on vs memory-only."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import numpy as np

from server.client import RecdClient
from server.domain import ItemRecord
from server.tools.bench.report import table
from server.tools.bench.serverproc import recd_server

BATCH = 500
IN_FLIGHT = 4


async def _ingest(address: str, vectors: np.ndarray) -> float:
    client = RecdClient(address, timeout_s=120)
    records = [ItemRecord(f"b{i:07d}", vectors[i], {"k": str(i % 7)}, 1.0, 0) for i in range(len(vectors))]
    batches = [records[i : i + BATCH] for i in range(0, len(records), BATCH)]
    sem = asyncio.Semaphore(IN_FLIGHT)

    async def send(batch: list[ItemRecord]) -> int:
        async with sem:
            return await client.upsert_items(batch)

    started = time.perf_counter()
    acknowledged = sum(await asyncio.gather(*(send(b) for b in batches)))
    elapsed = time.perf_counter() - started
    await client.close()
    assert acknowledged == len(records)
    return acknowledged / elapsed


def run_ingest_bench(quick: bool = False) -> tuple[str, dict[str, float]]:
    n = 10_000 if quick else 50_000
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(n, 64)).astype(np.float32)
    results = {}
    for label, data_dir in (("durable (WAL + fsync)", "data/bench/ingest"), ("memory only", "")):
        if data_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
            Path(data_dir).mkdir(parents=True)
        with recd_server({"RECD_DATA_DIR": data_dir}) as (address, _, _):
            results[label] = asyncio.run(_ingest(address, vectors))
        if data_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
    body = table(["mode", "items/s acknowledged"], [[k, v] for k, v in results.items()])
    durable = results["durable (WAL + fsync)"] / results["memory only"]
    body += (
        f"\n\n{n:,} items of dimension 64 over gRPC UpsertItems, batches of {BATCH}, {IN_FLIGHT} in flight, into"
        " an empty 20-shard `recd serve`. An item counts once its UpsertItems returned, i.e. once it is in its"
        " shard's fsynced write-ahead log and in the HNSW index. Durable / memory-only:"
        f" {durable:.2f}."
    )
    return body, {
        "durable_items_s": results["durable (WAL + fsync)"],
        "memory_items_s": results["memory only"],
    }

"""Bounded indexes under churn: a shard under steady upserts of new items and deletes of old ones.

One shard (hnswlib index, write-ahead log, snapshots) holds a catalogue of N items; then, round after
round, the oldest items are deleted and as many new ones are upserted, until 10 x N items have passed
through it. Deleted items' slots are reused by new ones (shards/index.py), so the index's capacity, its
element count and the process's RSS must stay flat while the items written grow tenfold. Recall against
the exact top-k of the live items is measured before and after the churn.
"""

from __future__ import annotations

import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from server.tools.bench.report import table
from shards.index import ShardIndex
from shards.records import IndexParams, RecordBatch

DIM = 64
K = 10


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _vectors(rng: np.random.Generator, n: int) -> npt.NDArray[np.float32]:
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _batch(labels: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> RecordBatch:
    return RecordBatch(labels.astype(np.uint64), [f"c{int(x)}" for x in labels], vectors, [b""] * len(labels))


def _recall(index: ShardIndex, labels: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> float:
    queries = _vectors(np.random.default_rng(99), 200)
    scores = queries @ vectors.T
    top = np.argpartition(-scores, K - 1, axis=1)[:, :K]
    expected = labels[top]
    found = index.search(queries, K).labels.astype(np.int64)
    return float(np.mean([len(set(f) & set(e)) / K for f, e in zip(found, expected, strict=True)]))


def run_churn_bench(quick: bool = False) -> tuple[str, dict[str, float]]:
    n = 2_000 if quick else 20_000
    step = n // 10  # deleted and upserted per round
    rng = np.random.default_rng(1)
    data_dir = Path(tempfile.mkdtemp(prefix="recd-churn-"))
    params = IndexParams(dim=DIM, initial_capacity=n)
    index = ShardIndex(0, params, data_dir, snapshot_every_records=2 * n)
    try:
        labels = np.arange(n, dtype=np.int64)
        vectors = _vectors(rng, n)
        started = time.perf_counter()
        for start in range(0, n, step):
            index.upsert(_batch(labels[start : start + step], vectors[start : start + step]))
        load_rate = n / (time.perf_counter() - started)
        recall_before = _recall(index, labels, vectors)
        rows: list[list[object]] = []
        figures: dict[str, float] = {}

        def checkpoint(written: int) -> None:
            stats = index.stats()
            used = stats.items + stats.deleted
            rows.append([f"{written / n:.0f}x", stats.items, used, stats.capacity, f"{_rss_mib():.0f}"])
            figures[f"capacity_{written // n}x"] = stats.capacity
            figures[f"rss_mib_{written // n}x"] = _rss_mib()

        checkpoint(n)
        written, next_label = n, n
        started = time.perf_counter()
        while written < 10 * n:
            index.delete(labels[:step].astype(np.uint64))
            new_labels = np.arange(next_label, next_label + step, dtype=np.int64)
            new_vectors = _vectors(rng, step)
            index.upsert(_batch(new_labels, new_vectors))
            labels = np.concatenate([labels[step:], new_labels])
            vectors = np.concatenate([vectors[step:], new_vectors])
            next_label += step
            written += step
            if written % n == 0:
                checkpoint(written)
        elapsed = time.perf_counter() - started
        churn_rate = 2 * (written - n) / elapsed
        recall_after = _recall(index, labels, vectors)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    finally:
        index.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    body = table(["items written", "live", "slots used", "index capacity", "process RSS MiB"], rows)
    body += (
        f"\n\nOne shard (dimension {DIM}, M {params.m}, write-ahead log with fsync, snapshots every {2 * n:,}"
        f" records) with {n:,} items; then rounds of {step:,} deletes of the oldest items and {step:,}"
        f" upserts of new ones until {10 * n:,} items were written ({elapsed:.1f} s of churn). Deleted"
        " items' slots are reused by new ones, so the capacity and the slots used stay at the catalogue's"
        f" size. Recall@{K} against the exact top-{K} of the live items: {recall_before:.3f} before the"
        f" churn, {recall_after:.3f} after. Peak RSS {peak:.0f} MiB. Write cost: the first {n:,} items"
        f" (new slots) went in at {load_rate:,.0f} items/s; during the churn, {churn_rate:,.0f} items/s"
        " (deletes and upserts) — an upsert into a reused slot costs what an update of an existing item"
        " costs (hnswlib re-links the slot's neighbours)."
    )
    figures.update(
        recall_before=recall_before,
        recall_after=recall_after,
        load_items_s=load_rate,
        churn_items_s=churn_rate,
    )
    return body, figures

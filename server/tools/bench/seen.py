"""The seen set: what excluding everything a user has seen costs per Recommend and per RecordInteractions,
and whether heavy users (histories up to 10,000 items) still get k unseen items.

In-process, on the embedded defaults, so the figures are the frontend's own work without gRPC around it:
the same user is asked for with `include_seen=false` (everything seen excluded) and with
`include_seen=true` (nothing excluded) in the same run; the difference is the seen-set check. Seen items
are drawn from the user's own neighbourhood, the worst case: they are exactly what ANN finds first.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np

from server.config import Config, load_config
from server.domain import Interaction, ItemRecord, RecommendQuery
from server.runtime import Recd
from server.tools.bench.report import table

K = 10
DIM = 32
SEEN_SIZES = (0, 100, 1_000, 10_000)


def _config() -> Config:
    config = load_config(environ={})
    config.dim = DIM
    config.data_dir = None
    config.ranking.ranker = "cpu"
    config.profiles.seen_limit = 10_000
    return config


async def _catalogue(recd: Recd, n_items: int, rng: np.random.Generator) -> np.ndarray:
    centres = rng.normal(size=(50, DIM)).astype(np.float32)
    vectors = centres[rng.integers(0, 50, n_items)] + 0.6 * rng.normal(size=(n_items, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    for start in range(0, n_items, 5000):
        await recd.catalog.upsert_items(
            [
                ItemRecord(f"i{i:07d}", vectors[i], {}, float(rng.pareto(1.5)), 0)
                for i in range(start, min(n_items, start + 5000))
            ]
        )
    return vectors


async def _run(n_items: int, requests: int) -> tuple[list[list[object]], dict[str, float]]:
    from server.wiring import build_recd

    rng = np.random.default_rng(17)
    recd = build_recd(_config())
    vectors = await _catalogue(recd, n_items, rng)
    await recd.warm_up()
    rows: list[list[object]] = []
    result: dict[str, float] = {}
    for size in SEEN_SIZES:
        user = f"heavy-{size}"
        anchor = vectors[rng.integers(0, n_items)]
        # The user's `size` nearest items, seen oldest-first over the last `size` minutes.
        nearest = np.argsort(-(vectors @ anchor))[: max(size, 1)]
        seen_ids = [f"i{i:07d}" for i in nearest[:size]]
        base_ms = 1_700_000_000_000
        append_s = []
        for start in range(0, size, 1000):
            chunk = seen_ids[start : start + 1000]
            events = [
                Interaction(user, item, "view", 1.0, base_ms + (start + j) * 60_000)
                for j, item in enumerate(chunk)
            ]
            t = time.perf_counter()
            await recd.recommender.record_interactions(events)
            append_s.append(time.perf_counter() - t)
        # One more interaction, timed alone: the cost a user with this seen set pays per feedback event.
        single = []
        for j in range(50):
            event = Interaction(user, f"i{int(nearest[0]):07d}", "view", 1.0, base_ms + (size + j) * 60_000)
            t = time.perf_counter()
            await recd.recommender.record_interactions([event])
            single.append(time.perf_counter() - t)
        seen_set = set(seen_ids) | {f"i{int(nearest[0]):07d}"}
        timings: dict[bool, list[float]] = {False: [], True: []}
        served_seen = 0
        short = 0
        for _ in range(requests):
            for include_seen in (False, True):
                query = RecommendQuery(user, K, {}, frozenset(), {}, 0.0, include_seen)
                t = time.perf_counter()
                answer = await recd.recommender.recommend(query)
                timings[include_seen].append(time.perf_counter() - t)
                if not include_seen:
                    served_seen += sum(1 for item in answer.items if item.item_id in seen_set)
                    short += len(answer.items) < K
        excl_ms = float(np.mean(timings[False]) * 1e3)
        incl_ms = float(np.mean(timings[True]) * 1e3)
        one_ms = float(np.median(single) * 1e3)
        rows.append([f"{len(seen_set):,}", excl_ms, incl_ms, excl_ms - incl_ms, served_seen, short, one_ms])
        result.update(
            {
                f"seen{size}_recommend_ms": excl_ms,
                f"seen{size}_include_seen_ms": incl_ms,
                f"seen{size}_served_seen": served_seen,
                f"seen{size}_short_answers": short,
                f"seen{size}_record_ms": one_ms,
            }
        )
    await recd.close()
    return rows, result


def run_seen_bench(quick: bool = False) -> tuple[str, dict[str, float]]:
    n_items, requests = (20_000, 20) if quick else (100_000, 100)
    rows, result = asyncio.run(_run(n_items, requests))
    body = table(
        [
            "items seen by the user",
            "Recommend ms (seen excluded)",
            "Recommend ms (include_seen, reference)",
            "cost of the seen-set check ms",
            "seen items served",
            "answers short of k",
            "RecordInteractions ms (1 event)",
        ],
        rows,
    )
    body += (
        f"\n\nIn-process (no gRPC), embedded stores, {n_items:,} items x {DIM} dims in 20 shards, k={K},"
        f" {requests} Recommends per row and mode, alternating, mean latency. The seen items are the user's"
        " nearest neighbours (the worst case: ANN finds them first, so each shard must over-fetch past them)."
        " RecordInteractions: median of 50 single-event calls for that user (log append + fsync-free"
        " in-memory store, seen set and popularity updated, cached state invalidated)."
    )
    return body, result

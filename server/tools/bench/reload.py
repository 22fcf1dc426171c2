"""Hot model reload under load: failed requests and latency while the model swaps, beside none swapping.

A `recd serve` child ranks with a model file that it watches (`ranking.reload_interval_s`). Recommends
arrive on an open-loop Poisson schedule at a fixed rate (so a slow answer cannot hold later requests
back); the same rate runs twice in one server: once with the file left alone, once while the file is
rewritten with a new version every SWAP_EVERY_S. Each answer's model_version is recorded, so the run
also shows the answers switching version.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
from collections import Counter
from pathlib import Path

import numpy as np

from server.client import RecdClient
from server.domain import Interaction, ItemRecord
from server.gen.recd.v1 import recommender_pb2, recommender_pb2_grpc
from server.ranking.model import DEFAULT_MODEL_FILE
from server.tools.bench.loadgen import LoadResult, open_loop
from server.tools.bench.report import table
from server.tools.bench.serverproc import recd_server, scrape

DIM = 32
USERS = 500
SWAP_EVERY_S = 0.5
RELOAD_INTERVAL_S = 0.1
SEGMENTS = 3


def _pooled(results: list[LoadResult]) -> LoadResult:
    return LoadResult(
        sum(r.requests for r in results),
        sum(r.errors for r in results),
        sum(r.seconds for r in results),
        np.concatenate([r.latencies_s for r in results]),
    )


def _write_model(path: Path, version: str, similarity: float) -> None:
    text = DEFAULT_MODEL_FILE.read_text()
    lines = [f"version: {version}" if line.startswith("version:") else line for line in text.splitlines()]
    text = "\n".join(lines).replace("  similarity: 1.0", f"  similarity: {similarity}") + "\n"
    temp = path.with_suffix(".tmp")
    temp.write_text(text)
    os.replace(temp, path)  # atomic: the watcher never reads half a file


async def _load(address: str, items: int, rng: np.random.Generator) -> None:
    client = RecdClient(address, timeout_s=120)
    centres = rng.normal(size=(50, DIM)).astype(np.float32)
    vectors = centres[rng.integers(0, 50, items)] + 0.6 * rng.normal(size=(items, DIM)).astype(np.float32)
    for start in range(0, items, 1000):
        await client.upsert_items(
            [
                ItemRecord(f"i{i:06d}", vectors[i], {}, float(rng.pareto(1.5)), 0)
                for i in range(start, min(items, start + 1000))
            ]
        )
    interactions = [
        Interaction(f"u{u}", f"i{int(i):06d}", "click", 1.0, 0)
        for u in range(USERS)
        for i in rng.integers(0, items, 10)
    ]
    for start in range(0, len(interactions), 1000):
        await client.record_interactions(interactions[start : start + 1000])
    await client.close()


def run_reload_bench(quick: bool = False) -> tuple[str, dict[str, float]]:
    items = 10_000 if quick else 100_000
    rate = 100.0 if quick else 300.0
    duration = 9.0 if quick else 30.0
    workdir = Path(tempfile.mkdtemp(prefix="recd-reload-"))
    model = workdir / "model.yaml"
    _write_model(model, "bench-0", 1.0)
    env = {
        "RECD_DIM": str(DIM),
        "RECD_DATA_DIR": "",
        "RECD_RANKING__MODEL_FILE": str(model),
        "RECD_RANKING__RELOAD_INTERVAL_S": str(RELOAD_INTERVAL_S),
    }
    versions: Counter[str] = Counter()  # answers per model version, all phases

    async def recommend(channel, i):  # type: ignore[no-untyped-def]
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        reply = await stub.Recommend(
            recommender_pb2.RecommendRequest(user_id=f"u{i % USERS}", k=10), timeout=2
        )
        versions[reply.model_version] += 1
        return reply

    try:
        with recd_server(env) as (address, metrics_address, _):
            asyncio.run(_load(address, items, np.random.default_rng(5)))
            asyncio.run(open_loop(recommend, address, rate, duration / 2))  # warm-up, not measured
            before = scrape(metrics_address)
            steady: list[LoadResult] = []
            swapping: list[LoadResult] = []
            swaps = 0
            # Alternating segments, so a slow spell of the shared machine hits both phases alike.
            for _ in range(SEGMENTS):
                steady.append(
                    asyncio.run(open_loop(recommend, address, rate, duration / SEGMENTS, warmup_s=0))
                )
                stop = threading.Event()

                def swapper(stop: threading.Event) -> None:
                    nonlocal swaps
                    # Alternating weights: every swap changes the ranking, not only the version string.
                    while not stop.wait(SWAP_EVERY_S):
                        swaps += 1
                        _write_model(model, f"bench-{swaps}", 1.0 + (swaps % 2))

                thread = threading.Thread(target=swapper, args=(stop,), daemon=True)
                thread.start()
                try:
                    swapping.append(
                        asyncio.run(open_loop(recommend, address, rate, duration / SEGMENTS, warmup_s=0))
                    )
                finally:
                    stop.set()
                    thread.join()
            after = scrape(metrics_address)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    loaded = after.get('recd_model_reloads_total{outcome="loaded"}', 0.0) - before.get(
        'recd_model_reloads_total{outcome="loaded"}', 0.0
    )
    alone, swapped = _pooled(steady), _pooled(swapping)
    rows: list[list[object]] = [
        [phase, r.requests, r.errors, r.percentile_ms(50), r.percentile_ms(99)]
        for phase, r in (("model file left alone", alone), (f"rewritten every {SWAP_EVERY_S} s", swapped))
    ]
    body = table(["phase", "Recommends", "failed", "p50 ms", "p99 ms"], rows)
    body += (
        f"\n\nOne `recd serve` process (embedded backends, CPU ranker), {items:,} items of dimension {DIM},"
        f" {USERS} users with 10 interactions each; Recommend (k=10) at {rate:.0f}/s on an open-loop Poisson"
        f" schedule for {duration:.0f} s per phase, in {SEGMENTS} alternating segments of each, after"
        f" {duration / 2:.0f} s of warm-up, all in the same server."
        f" The server watches its model file every {RELOAD_INTERVAL_S} s; in the second phase the file was"
        f" rewritten (atomically, by rename) {swaps} times with a new version and alternating similarity"
        f" weight, and the server loaded {loaded:.0f} new versions while serving; the answers carried"
        f" {len(versions)} distinct model versions. Failed: any Recommend that did not return OK."
    )
    return body, {
        "steady_p99_ms": alone.percentile_ms(99),
        "swapping_p99_ms": swapped.percentile_ms(99),
        "steady_failed": float(alone.errors),
        "swapping_failed": float(swapped.errors),
        "reloads_loaded": loaded,
        "versions_answered": float(len(versions)),
    }

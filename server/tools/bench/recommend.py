"""Recommend QPS and latency on the demo dataset, beside an empty RPC on the same server and client."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.config import load_config
from server.gen.recd.v1 import recommender_pb2, recommender_pb2_grpc
from server.routing.search import per_shard_k_for
from server.tools.bench import profile
from server.tools.bench.loadgen import LoadResult, closed_loop, open_loop
from server.tools.bench.report import table
from server.tools.bench.serverproc import recd_server, scrape

CONCURRENCY = 16


def ensure_demo_state(root: Path, items: int, users: int) -> None:
    """Generates and loads the demo dataset once (the same path `make demo` takes), then reuses it."""
    if (root / "state" / "loaded.json").exists():
        return
    subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            "demo",
            "--dir",
            str(root),
            "--items",
            str(items),
            "--users",
            str(users),
            "--exit-after",
            "0",
        ],
        check=True,
    )


def user_ids(root: Path) -> list[str]:
    return (
        pq.read_table(root / "dataset" / "users.parquet", columns=["user_id"]).column("user_id").to_pylist()
    )


def zipf_order(n: int, count: int, seed: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ranks = rng.zipf(1.2, size=count)
    return (ranks - 1) % n


def _step_profile(before: dict[str, float], after: dict[str, float]) -> list[list[object]]:
    rows = []
    for key, total in after.items():
        if key.startswith("recd_step_latency_seconds_sum{") and 'pipeline="recommend"' in key:
            count_key = key.replace("_sum{", "_count{")
            n = after.get(count_key, 0) - before.get(count_key, 0)
            if n > 0:
                step = key.split('step="')[1].split('"')[0]
                rows.append([step, (total - before.get(key, 0.0)) / n * 1e3, int(n)])
    return sorted(rows, key=lambda r: -float(r[1]))  # type: ignore[arg-type]


def _mean(before: dict[str, float], after: dict[str, float], name: str) -> float:
    s = sum(v - before.get(k, 0) for k, v in after.items() if k.startswith(f"{name}_sum"))
    c = sum(v - before.get(k, 0) for k, v in after.items() if k.startswith(f"{name}_count"))
    return s / c if c else float("nan")


def run_recommend_bench(
    quick: bool = False, env: dict[str, str] | None = None, label: str = "embedded"
) -> tuple[str, dict[str, float]]:
    root = Path("data/bench/quick-demo") if quick else Path("data/demo")
    ensure_demo_state(root, 20_000 if quick else 200_000, 2_000 if quick else 20_000)
    users = user_ids(root)
    order = zipf_order(len(users), 1_000_000)
    duration = 5.0 if quick else 20.0
    overrides = {"RECD_DATA_DIR": str(root / "state"), **(env or {})}
    profile_out = Path("data/bench") / f"recommend-{label}.pyspy.txt"
    profile_out.parent.mkdir(parents=True, exist_ok=True)
    profile_out.unlink(missing_ok=True)
    # The settings the server runs with: the defaults, with the same RECD_* overrides it gets.
    config = load_config(environ={**os.environ, **overrides})
    c = config.pipeline.candidates
    per_shard_k = per_shard_k_for(c.ann_k, config.shards.count, c.shard_k, c.shard_k_factor)
    with recd_server(overrides) as (address, metrics_address, pid):

        async def recommend(channel, i):  # type: ignore[no-untyped-def]
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            user = users[int(order[i % len(order)])]
            return await stub.Recommend(recommender_pb2.RecommendRequest(user_id=user, k=10), timeout=2)

        async def empty(channel, i):  # type: ignore[no-untyped-def]
            return await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)

        before = scrape(metrics_address)
        rec: LoadResult = asyncio.run(closed_loop(recommend, address, CONCURRENCY, duration))
        after = scrape(metrics_address)
        base: LoadResult = asyncio.run(closed_loop(empty, address, CONCURRENCY, duration))
        after_empty = scrape(metrics_address)
        # Latency at half the Recommend's saturation QPS, for both RPCs at the same rate.
        half = rec.qps / 2
        rec_half = asyncio.run(open_loop(recommend, address, half, duration / 2))
        empty_half = asyncio.run(open_loop(empty, address, half, duration / 2))
        if profile.available():
            # A separate Recommend phase under the profiler: sampling native stacks pauses the process
            # at every sample, so the figures above come from the unprofiled phase.
            seconds = min(duration, 8.0)
            with profile.sampled(pid, seconds - 1.0, profile_out, delay_s=1.0):
                asyncio.run(closed_loop(recommend, address, CONCURRENCY, seconds))
    # Server CPU per request is steadier than QPS on a shared machine (it does not depend on who else
    # had the cores); the warm-up second is included in both, so it slightly overstates both.
    cpu = "process_cpu_seconds_total"
    rec_cpu_ms = (after[cpu] - before[cpu]) / max(1, rec.requests) * 1e3
    base_cpu_ms = (after_empty[cpu] - after[cpu]) / max(1, base.requests) * 1e3
    ratio = rec.qps / base.qps
    result = {
        "recommend_qps": rec.qps,
        "recommend_p50_ms": rec.percentile_ms(50),
        "recommend_p99_ms": rec.percentile_ms(99),
        "empty_qps": base.qps,
        "empty_p50_ms": base.percentile_ms(50),
        "empty_p99_ms": base.percentile_ms(99),
        "ratio": ratio,
        "errors": rec.errors + base.errors,
        "ann_batch": _mean(before, after, "recd_ann_batch_size"),
        "rank_batch": _mean(before, after, "recd_rank_batch_size"),
        "recommend_cpu_ms": rec_cpu_ms,
        "cpu_ratio": rec_cpu_ms / base_cpu_ms,
        "half_rate": half,
        "recommend_half_p50_ms": rec_half.percentile_ms(50),
        "recommend_half_p99_ms": rec_half.percentile_ms(99),
        "empty_half_p50_ms": empty_half.percentile_ms(50),
        "empty_half_p99_ms": empty_half.percentile_ms(99),
        "empty_cpu_ms": base_cpu_ms,
    }
    headers = ["RPC", "QPS", "p50 ms", "p99 ms", "errors", "server CPU ms / request"]
    rows: list[list[object]] = [
        [f"Recommend k=10 ({label})", rec.qps, rec.percentile_ms(50), rec.percentile_ms(99), rec.errors],
        [
            "empty RPC (grpc.health Check)",
            base.qps,
            base.percentile_ms(50),
            base.percentile_ms(99),
            base.errors,
        ],
    ]
    rows[0].append(f"{rec_cpu_ms:.2f}")
    rows[1].append(f"{base_cpu_ms:.2f}")
    body = table(headers, rows)
    body += (
        f"\n\nServer CPU per Recommend / per empty RPC: **{rec_cpu_ms / base_cpu_ms:.1f}** (target <= 3.0)."
        f" Ratio Recommend / empty RPC QPS: **{ratio:.2f}** (target >= 0.33)."
    )
    body += f"\n\nAt half the Recommend's saturation QPS ({half:,.0f} requests/s, open loop, Poisson arrivals):\n\n"
    body += table(["RPC", "p50 ms", "p99 ms", "errors"], [
        ["Recommend k=10", rec_half.percentile_ms(50), rec_half.percentile_ms(99), rec_half.errors],
        ["empty RPC", empty_half.percentile_ms(50), empty_half.percentile_ms(99), empty_half.errors],
    ])  # fmt: skip
    body += (
        f"\n\nClosed loop, {CONCURRENCY} concurrent callers from one grpc.aio client process, {duration:.0f} s each"
        f" after 1 s warm-up; Zipf-distributed users of the demo dataset ({len(users):,} users); the server is"
        f" `recd serve` on the demo snapshot ({config.shards.count} shards, ef {config.shards.index.ef_search},"
        f" per-shard k {per_shard_k}, pipeline batches of up to {config.pipeline.batch.max_batch},"
        f" {config.pipeline.batch.in_flight} in flight). Mean ANN micro-batch:"
        f" {result['ann_batch']:.1f} queries; mean rank batch: {result['rank_batch']:.1f} requests."
    )
    search_cpu_ms = (
        (
            after.get("recd_shard_search_cpu_seconds_total", 0.0)
            - before.get("recd_shard_search_cpu_seconds_total", 0.0)
        )
        / max(1, rec.requests)
        * 1e3
    )
    result["shard_search_cpu_ms"] = search_cpu_ms
    body += (
        f"\n\nOf the {rec_cpu_ms:.2f} ms of CPU per Recommend, the shard searches (hnswlib and the Python"
        f" around it, on the search threads' own CPU clocks) took **{search_cpu_ms:.2f} ms**; the other"
        f" {rec_cpu_ms - search_cpu_ms:.2f} ms is gRPC, the event loop and the pipeline."
    )
    batches = _mean(before, after, "recd_request_batch_size")
    result["request_batch"] = batches
    body += (
        f" Mean pipeline batch: {batches:.1f} requests. Wall time per step, mean per batch (a step runs"
        " once for a whole batch):\n\n"
    )
    body += table(["step", "mean ms per batch", "batches"], _step_profile(before, after))
    if profile_out.exists():
        shares, idle = profile.categorise(profile_out.read_text())
        body += (
            "\n\nWhere the server's CPU goes (py-spy with native frames, 100 Hz, every thread, during a"
            f" separate Recommend phase after the measured ones; {idle:.0%} of the samples were idle waits and"
            " are left out; the last column spreads the measured CPU per Recommend by these shares; py-spy"
            " cannot unwind through hnswlib's optimised code, so samples inside it are mostly lost: the"
            f" shard searches' own CPU clock above is the figure for them; the raw stacks are in `{profile_out}`):\n\n"
        )
        body += table(["where", "share of CPU samples", "ms per Recommend"], [
            [name, f"{share:.1%}", f"{share * rec_cpu_ms:.3f}"] for name, share in shares
        ])  # fmt: skip
        result.update({f"cpu_share {name}": share for name, share in shares})
    return body, result


def run_ranker_comparison(quick: bool = False) -> tuple[str, dict[str, float]]:
    """The same Recommend run with `ranking.ranker: gpu` and then `cpu`, on the same machine and data."""
    results = {}
    bodies = {}
    for ranker in ("gpu", "cpu"):
        bodies[ranker], results[ranker] = run_recommend_bench(quick, {"RECD_RANKING__RANKER": ranker}, ranker)
    rows = [
        [f"Recommend, ranker {r}", v["recommend_qps"], v["recommend_p50_ms"], v["recommend_p99_ms"],
         v["empty_qps"], v["ratio"], v["rank_batch"], int(v["errors"]),
         f"{v['recommend_cpu_ms']:.2f} / {v['empty_cpu_ms']:.2f}", f"{v['cpu_ratio']:.1f}"]
        for r, v in results.items()
    ]  # fmt: skip
    body = table(
        [
            "run",
            "QPS",
            "p50 ms",
            "p99 ms",
            "empty RPC QPS",
            "ratio",
            "mean rank batch",
            "errors",
            "server CPU ms / request (Recommend / empty)",
            "CPU ratio",
        ],
        rows,
    )
    gpu, cpu = results["gpu"], results["cpu"]
    body += (
        f"\n\nThe GPU run answers {gpu['recommend_qps'] / cpu['recommend_qps']:.2f}x the CPU run's QPS and takes"
        f" {cpu['recommend_cpu_ms'] - gpu['recommend_cpu_ms']:+.3f} ms of CPU per Recommend off the host"
        " (positive: the GPU run uses less)."
    )
    body += (
        "\n\nEach row is a full `recd bench recommend` run (closed loop, 16 callers, Zipf users of the demo"
        " dataset) against `recd serve` with `RECD_RANKING__RANKER` set; the empty RPC is measured against"
        " the same server in the same run."
    )
    for ranker, text in bodies.items():
        body += f"\n\n### The {ranker} run\n\n{text}"
    return body, {f"{r}_{k}": v for r, d in results.items() for k, v in d.items()}

"""The cost of tracing: Recommend QPS, p50/p99 and server CPU per request with tracing off, on at 1% and on
at 100% sampling, on the same demo data, machine and client, in one run.

Each mode is its own `recd serve` (tracing is set up when a process starts); with tracing on it exports
over OTLP/gRPC to a receiver in this process (server/tools/otlp_receiver.py), so export costs what it
costs against a real collector. The full run measures every mode twice, the second round in reverse
order, so that a drift of the shared machine does not fall on one mode only.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np

from server.config import load_config
from server.gen.recd.v1 import recommender_pb2, recommender_pb2_grpc
from server.tools.bench.loadgen import LoadResult, closed_loop
from server.tools.bench.recommend import CONCURRENCY, ensure_demo_state, user_ids, zipf_order
from server.tools.bench.report import table
from server.tools.bench.serverproc import recd_server, scrape
from server.tools.otlp_receiver import OtlpReceiver

MODES: list[tuple[str, float | None]] = [("off", None), ("on, 1% sampled", 0.01), ("on, 100% sampled", 1.0)]


def _env(ratio: float | None, endpoint: str) -> dict[str, str]:
    if ratio is None:
        return {"RECD_TRACING__ENABLED": "false"}
    return {
        "RECD_TRACING__ENABLED": "true",
        "RECD_TRACING__ENDPOINT": endpoint,
        "RECD_TRACING__SAMPLING_RATIO": str(ratio),
    }


def run_tracing_bench(quick: bool = False) -> tuple[str, dict[str, float]]:
    root = Path("data/bench/quick-demo") if quick else Path("data/demo")
    ensure_demo_state(root, 20_000 if quick else 200_000, 2_000 if quick else 20_000)
    users = user_ids(root)
    order = zipf_order(len(users), 1_000_000)
    duration = 4.0 if quick else 15.0
    rounds = 1 if quick else 2
    base = {"RECD_DATA_DIR": str(root / "state")}
    config = load_config(environ={**os.environ, **base})

    async def recommend(channel, i):  # type: ignore[no-untyped-def]
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        user = users[int(order[i % len(order)])]
        return await stub.Recommend(recommender_pb2.RecommendRequest(user_id=user, k=10), timeout=2)

    runs: dict[str, list[LoadResult]] = {name: [] for name, _ in MODES}
    cpu_s: dict[str, float] = dict.fromkeys(runs, 0.0)
    spans: dict[str, int] = dict.fromkeys(runs, 0)
    with OtlpReceiver(keep=False) as receiver:
        for r in range(rounds):
            for name, ratio in MODES if r % 2 == 0 else MODES[::-1]:
                received_before = receiver.count
                with recd_server({**base, **_env(ratio, receiver.endpoint)}) as (address, metrics_address, _):
                    before = scrape(metrics_address)
                    result = asyncio.run(closed_loop(recommend, address, CONCURRENCY, duration))
                    after = scrape(metrics_address)
                # Stopped (SIGTERM, drained): the server flushed its last spans on the way out.
                spans[name] += receiver.count - received_before
                runs[name].append(result)
                cpu_s[name] += after["process_cpu_seconds_total"] - before["process_cpu_seconds_total"]

    rows: list[list[object]] = []
    out: dict[str, float] = {}
    off_qps = 0.0
    for name, ratio in MODES:
        parts = runs[name]
        requests = sum(p.requests for p in parts)
        pooled = LoadResult(
            requests,
            sum(p.errors for p in parts),
            sum(p.seconds for p in parts),
            np.concatenate([p.latencies_s for p in parts]),
        )
        if ratio is None:
            off_qps = pooled.qps
        cpu_ms = cpu_s[name] / max(1, requests) * 1e3
        key = "off" if ratio is None else f"on_{ratio:g}"
        out |= {
            f"{key}_qps": pooled.qps,
            f"{key}_p50_ms": pooled.percentile_ms(50),
            f"{key}_p99_ms": pooled.percentile_ms(99),
            f"{key}_cpu_ms": cpu_ms,
            f"{key}_errors": pooled.errors,
            f"{key}_spans_per_request": spans[name] / max(1, requests),
        }
        rows.append([
            f"Recommend k=10, tracing {name}", pooled.qps, f"{pooled.qps / off_qps:.2f}",
            pooled.percentile_ms(50), pooled.percentile_ms(99), f"{cpu_ms:.2f}", pooled.errors,
            f"{spans[name] / max(1, requests):.2f}",
        ])  # fmt: skip
    body = table(
        [
            "run",
            "QPS",
            "QPS / off",
            "p50 ms",
            "p99 ms",
            "server CPU ms / request",
            "errors",
            "spans / request",
        ],
        rows,
    )
    body += (
        f"\n\nClosed loop, {CONCURRENCY} concurrent callers from one grpc.aio client process, {duration:.0f} s per"
        f" mode and round ({rounds} round{'s' if rounds > 1 else ''}; a second round runs the modes in reverse"
        " order) after 1 s warm-up, Zipf-distributed users of the demo dataset"
        f" ({len(users):,} users); each mode is its own `recd serve --workers 0` on the demo snapshot"
        f" ({config.shards.count} in-process shards), exporting over OTLP/gRPC to an in-process receiver."
        " Spans per request counts what the receiver got (each traced batch records its steps once, however"
        " many requests it carried: server/tracing/spans.py); the callers send no trace context, so the"
        " frontend's RPC span is the root where the sampling ratio applies."
    )
    return body, out

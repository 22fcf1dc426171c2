"""Recommend with the real backends (ScyllaDB/Cassandra, Neo4j, Redis) beside the embedded mode.

One run: the embedded mode on the demo snapshot; then the same snapshot's shards with every other role
on its real server, first with empty caches (a fresh frontend process, Redis flushed), then warm (the
same process again). Backend round trips per Recommend come from recd_backend_calls_total.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from server.gen.recd.v1 import recommender_pb2, recommender_pb2_grpc
from server.tools.bench.loadgen import LoadResult, closed_loop
from server.tools.bench.recommend import CONCURRENCY, ensure_demo_state, user_ids, zipf_order
from server.tools.bench.report import table
from server.tools.bench.serverproc import recd_server, scrape

STACK = Path("deploy/scripts/stack.sh")
REAL_CONFIG = "deploy/config/real.yaml"


def _stack(*args: str) -> str:
    # Full JIT: the JVMs run for minutes here, so steady-state speed matters more than start-up time.
    env = {**os.environ, "RECD_PYTHON": sys.executable, "RECD_STACK_FULL_JIT": "1"}
    return subprocess.run([str(STACK), *args], check=True, capture_output=True, text=True, env=env).stdout


def _recd_env() -> dict[str, str]:
    out = {}
    for line in _stack("recd-env").splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        out[key] = value.strip('"')
    return out


def _backend_calls(metrics: dict[str, float]) -> float:
    return sum(v for k, v in metrics.items() if k.startswith("recd_backend_calls_total{"))


def _recommends(metrics: dict[str, float]) -> float:
    return sum(
        v for k, v in metrics.items() if k.startswith("recd_rpc_latency_seconds_count{") and "Recommend" in k
    )


async def _load_real(address: str, dataset: Path) -> None:
    from server.client import RecdClient
    from server.tools.loading.load import load_dataset

    client = RecdClient(address, timeout_s=300.0)
    try:
        files = [dataset / "users.parquet", dataset / "interactions.parquet", dataset / "edges.parquet"]
        summary = await load_dataset(files, client, batch_size=2000, progress=False)
        if not summary.ok:
            raise RuntimeError(f"loading the real stores failed: {summary}")
    finally:
        await client.close()


def run_backends_bench(quick: bool = False) -> tuple[str, dict[str, float]]:
    root = Path("data/bench/quick-demo") if quick else Path("data/demo")
    ensure_demo_state(root, 20_000 if quick else 200_000, 2_000 if quick else 20_000)
    users = user_ids(root)
    order = zipf_order(len(users), 1_000_000)
    duration = 5.0 if quick else 20.0

    async def recommend(channel, i):  # type: ignore[no-untyped-def]
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        user = users[int(order[i % len(order)])]
        return await stub.Recommend(recommender_pb2.RecommendRequest(user_id=user, k=10), timeout=2)

    def measure(address: str, metrics_address: str) -> tuple[LoadResult, float, float]:
        """The load's result, backend round trips per Recommend, and frontend CPU ms per Recommend (which
        tells the frontend's own cost apart from the machine being shared with the backend servers)."""
        before = scrape(metrics_address)
        result = asyncio.run(closed_loop(recommend, address, CONCURRENCY, duration))
        after = scrape(metrics_address)
        calls = _backend_calls(after) - _backend_calls(before)
        served = max(1.0, _recommends(after) - _recommends(before))
        cpu = "process_cpu_seconds_total"
        return result, calls / served, (after[cpu] - before[cpu]) / served * 1e3

    state = {"RECD_DATA_DIR": str(root / "state")}
    with recd_server(state) as (address, metrics_address, _):
        embedded, embedded_trips, embedded_cpu = measure(address, metrics_address)

    _stack("up")
    try:
        real = {**state, **_recd_env()}
        subprocess.run([sys.executable, "-m", "server.cli", "schema", "apply", "--config", REAL_CONFIG],
                       check=True, env={**os.environ, **real})  # fmt: skip
        with recd_server(real, config=REAL_CONFIG) as (address, _, _):
            asyncio.run(_load_real(address, root / "dataset"))
        redis_port = real["RECD_CACHE__URL"].rsplit(":", 1)[1].split("/")[0]
        subprocess.run(["redis-cli", "-p", redis_port, "FLUSHALL"], check=True, capture_output=True)
        with recd_server(real, config=REAL_CONFIG) as (address, metrics_address, _):
            cold, cold_trips, cold_cpu = measure(address, metrics_address)
            warm, warm_trips, warm_cpu = measure(address, metrics_address)
    finally:
        _stack("down")

    rows = []
    for label, r, trips, cpu_ms in (
        ("embedded (all in process)", embedded, embedded_trips, embedded_cpu),
        ("real backends, cold cache", cold, cold_trips, cold_cpu),
        ("real backends, warm cache", warm, warm_trips, warm_cpu),
    ):
        rows.append(
            [
                label,
                r.qps,
                r.percentile_ms(50),
                r.percentile_ms(99),
                r.errors,
                f"{trips:.2f}",
                f"{cpu_ms:.2f}",
            ]
        )
    ratio = warm.qps / embedded.qps
    headers = ["mode", "Recommend QPS", "p50 ms", "p99 ms", "errors", "backend round trips / Recommend"]
    body = table([*headers, "frontend CPU ms / Recommend"], rows)
    body += (
        f"\n\nWarm real / embedded QPS: **{ratio:.2f}** (target >= 0.60). Same demo snapshot for the shards in"
        " every mode; the real mode runs Cassandra 5 (the CQL stand-in for ScyllaDB), Neo4j 5 and Redis 7"
        " from `deploy/scripts/stack.sh` on the same 127.0.0.1 machine, with the demo's users, interactions"
        " and edges loaded through the API. Cold: a fresh frontend and a flushed Redis; warm: the same"
        f" frontend for the next {duration:.0f} s. Round trips count every call to ScyllaDB, Neo4j and Redis"
        " (recd_backend_calls_total) divided by Recommends served; frontend CPU is the frontend process's"
        " CPU time (process_cpu_seconds_total) per Recommend. The three servers share this machine's 2 cores"
        " with the frontend and the load generator."
    )
    result = {
        "embedded_qps": embedded.qps, "cold_qps": cold.qps, "warm_qps": warm.qps, "ratio": ratio,
        "cold_trips": cold_trips, "warm_trips": warm_trips,
        "warm_p99_ms": warm.percentile_ms(99),
        "embedded_cpu_ms": embedded_cpu, "warm_cpu_ms": warm_cpu, "errors": float(embedded.errors + cold.errors + warm.errors),
    }  # fmt: skip
    return body, result


if __name__ == "__main__":
    print(run_backends_bench(quick="--quick" in sys.argv)[0])

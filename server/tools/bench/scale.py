"""`recd bench scale`: Recommend throughput of `recd serve --workers N` by N, and how long a write through
one frontend takes to be visible through another.

Throughput: one worker group per N on the same data (the demo's data directory, served as it is), loaded
by several generator processes on the same machine (loadgen), each run measured over the same window. Scaling efficiency is QPS(N) / (N x QPS(1)) from the same run.

Visibility: two frontends as separate processes over the same shard nodes. Each write is acknowledged by
frontend A; frontend B is then polled with GetItems (its catalogue replica answers it) until the item is
there (upserts) or gone (deletes); the lag is from A's acknowledgement to B's first answer showing it,
so it includes up to one polling interval and one GetItems round trip.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from server.client import RecdClient
from server.cluster.local import LocalCluster, free_port, wait_healthy
from server.domain import ItemRecord
from server.gen.recd.v1 import recommender_pb2
from server.tools.bench.cpumeter import GROUP_ROLES, CpuMeter, cpu_by_role
from server.tools.bench.loadgen import LoadResult, RawCalls, multiprocess_closed_loop
from server.tools.bench.recommend import ensure_demo_state, user_ids, zipf_order
from server.tools.bench.report import table

ROOT = Path("data/bench/scale")
RECOMMEND = "/recd.v1.Recommender/Recommend"
GENERATORS = "load generators"


def worker_levels(cores: int) -> list[int]:
    """1, 2, 4, 8 and 12 workers where the machine has the cores for them (and 2 on a 2-core box)."""
    return [n for n in (1, 2, 4, 8, 12) if n <= max(2, cores - 2) or n <= 2]


# --- the worker group -------------------------------------------------------------------------------
@contextmanager
def worker_group(config_path: Path, workers: int, timeout_s: float = 600.0) -> Iterator[tuple[str, int]]:
    """(address, pid) of `recd serve --workers N` with this config (the root of the group's processes);
    stopped afterwards."""
    address, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "RECD_SERVER__ADDRESS": address,
        "RECD_SERVER__METRICS_ADDRESS": metrics,
        "RECD_SERVER__LOG_LEVEL": "WARNING",
    }
    log = config_path.parent / f"group-{workers}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server.cli",
                "serve",
                "--workers",
                str(workers),
                "--config",
                str(config_path),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_healthy(address, proc, timeout_s, log)
        yield address, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _recommend_requests(root: Path, count: int = 200_000) -> list[bytes]:
    users = user_ids(root)
    order = zipf_order(len(users), count)
    return [recommender_pb2.RecommendRequest(user_id=users[int(u)], k=10).SerializeToString() for u in order]


def run_throughput(
    root: Path, config_path: Path, levels: list[int], duration_s: float, generators: int, concurrency: int
) -> list[dict[str, Any]]:
    calls = RawCalls(RECOMMEND, _recommend_requests(root))
    out = []
    for workers in levels:
        with worker_group(config_path, workers) as (address, group):
            multiprocess_closed_loop(calls, address, generators, concurrency, 3.0, warmup_s=1.0)  # warm
            with CpuMeter(lambda: cpu_by_role(group)) as meter:
                result: LoadResult = multiprocess_closed_loop(
                    calls, address, generators, concurrency, duration_s
                )
            cpu = meter.between(result.window_start, result.window_start + result.seconds)
        cpu[GENERATORS] = result.client_cpu_s
        per_request = {role: seconds * 1e3 / max(1, result.requests) for role, seconds in cpu.items()}
        out.append(
            {
                "workers": workers,
                "qps": result.qps,
                "p50_ms": result.percentile_ms(50),
                "p99_ms": result.percentile_ms(99),
                "errors": result.errors,
                "cpu_ms_per_request": per_request,
                "cores_busy": sum(cpu.values()) / result.seconds,
            }
        )
        print(
            f"workers {workers}: {result.qps:,.0f} QPS, p99 {result.percentile_ms(99):.1f} ms, "
            f"{sum(cpu.values()) / result.seconds:.1f} cores busy, CPU ms per Recommend "
            + ", ".join(f"{role} {ms:.2f}" for role, ms in sorted(per_request.items())),
            flush=True,
        )
    return out


def cpu_table(rows: list[dict[str, Any]]) -> str:
    roles = [name for _, name in GROUP_ROLES] + [GENERATORS]
    return table(
        ["workers", *(f"{role} ms" for role in roles), "total ms", "cores busy"],
        [
            [
                r["workers"],
                *(f"{r['cpu_ms_per_request'].get(role, 0.0):.2f}" for role in roles),
                f"{sum(r['cpu_ms_per_request'].values()):.2f}",
                f"{r['cores_busy']:.1f}",
            ]
            for r in rows
        ],
    )


# --- visibility across frontends ------------------------------------------------------------------------
async def visibility_lag(a: str, b: str, writes: int, dim: int, poll_s: float = 0.001) -> dict[str, Any]:
    """Seconds from an acknowledged write through `a` to `b` showing it, for upserts then deletes."""
    ca, cb = RecdClient(a, timeout_s=10.0), RecdClient(b, timeout_s=10.0)
    rng = np.random.default_rng(17)
    upserts: list[float] = []
    deletes: list[float] = []
    try:
        ids = [f"lag-{os.getpid()}-{i}" for i in range(writes)]
        for item_id in ids:
            vector = rng.normal(size=dim).astype(np.float32)
            await ca.upsert_items([ItemRecord(item_id, vector, {}, 1.0, 0)])
            upserts.append(await _until(cb, item_id, present=True, poll_s=poll_s))
        for item_id in ids:
            await ca.delete_items([item_id])
            deletes.append(await _until(cb, item_id, present=False, poll_s=poll_s))
    finally:
        await ca.close()
        await cb.close()
    return {"upsert": _percentiles(upserts), "delete": _percentiles(deletes), "writes": writes}


async def _until(
    client: RecdClient, item_id: str, present: bool, poll_s: float, timeout_s: float = 30.0
) -> float:
    acked = time.monotonic()
    while time.monotonic() - acked < timeout_s:
        found, _ = await client.get_items([item_id])
        if bool(found) == present:
            return time.monotonic() - acked
        await asyncio.sleep(poll_s)
    raise TimeoutError(f"{item_id} not {'visible' if present else 'gone'} through the second frontend")


def _percentiles(lags: list[float]) -> dict[str, float]:
    arr = np.asarray(lags) * 1e3
    return {
        "p50_ms": float(np.percentile(arr, 50)),
        "p99_ms": float(np.percentile(arr, 99)),
        "max_ms": float(arr.max()),
    }


def run_visibility(root: Path, writes: int, dim: int) -> dict[str, Any]:
    """Two single-process frontends over two shard nodes (replication 2), on the embedded stores."""
    with LocalCluster(root, 2, 2, {"dim": dim}) as cluster:
        cluster.up()
        second = cluster.start_another_frontend("frontend-b")
        return asyncio.run(visibility_lag(cluster.frontend_address, second, writes, dim))


# --- the suite ----------------------------------------------------------------------------------------
def run_scale_bench(quick: bool = False) -> tuple[str, dict[str, Any]]:
    cores = os.cpu_count() or 2
    demo = Path("data/bench/quick-demo") if quick else Path("data/demo")
    ensure_demo_state(demo, 20_000 if quick else 200_000, 2_000 if quick else 20_000)
    shutil.rmtree(ROOT, ignore_errors=True)
    ROOT.mkdir(parents=True)
    # The group serves the demo's data directory as it is: its shard nodes hold `data_dir/shards` and its
    # state node `profiles/` and `graph/`, as a single process does.
    config_path = ROOT / "group.yaml"
    config_path.write_text(yaml.safe_dump({"data_dir": str((demo / "state").resolve())}))
    levels = (
        [int(n) for n in os.environ["RECD_BENCH_WORKERS"].split(",")]
        if "RECD_BENCH_WORKERS" in os.environ
        else ([1, 2] if quick or cores <= 4 else worker_levels(cores))
    )
    generators = max(2, cores // 4)
    # Requests in flight per generator: a closed loop's QPS is in flight / latency, so a group whose
    # latency holds at more load needs more of them to show it (the 16-core sweep used 64).
    in_flight = int(os.environ.get("RECD_BENCH_CONCURRENCY", "32"))
    duration = 5.0 if quick else 10.0
    rows = run_throughput(demo, config_path, levels, duration, generators, in_flight)
    lag = run_visibility(ROOT / "visibility", 50 if quick else 300, 64)
    one = next((r["qps"] for r in rows if r["workers"] == 1), rows[0]["qps"] / rows[0]["workers"])
    result: dict[str, Any] = {"cores": cores, "generators": generators, "levels": rows, "visibility": lag}
    body = table(
        ["workers", "Recommend QPS", "p50 ms", "p99 ms", "errors", "scaling efficiency"],
        [
            [
                r["workers"],
                r["qps"],
                r["p50_ms"],
                r["p99_ms"],
                r["errors"],
                f"{r['qps'] / (r['workers'] * one):.2f}",
            ]
            for r in rows
        ],
    )
    body += (
        f"\n\n{generators} generator processes x {in_flight} requests in flight, on the same {cores}-core machine; "
        "scaling efficiency is QPS / (workers x the 1-worker QPS of this run).\n\n"
        + cpu_table(rows)
        + "\n\nCPU ms per Recommend by role over the same window (/proc of every process of the group, and "
        "the generators' own clocks, divided by the Recommends answered); cores busy is their sum over the window.\n\n"
        + table(
            ["write through frontend A, seen through frontend B (GetItems)", "p50 ms", "p99 ms", "max ms"],
            [[op, lag[op]["p50_ms"], lag[op]["p99_ms"], lag[op]["max_ms"]] for op in ("upsert", "delete")],
        )
        + f"\n\n{lag['writes']} writes of each kind, one at a time, B polled every millisecond."
    )
    return body, result

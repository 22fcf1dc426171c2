"""Shard nodes as processes: Recommend on a local 4-node cluster beside embedded mode, internal RPCs per
Recommend as concurrency grows, recall across the cluster, and an online 20 -> 22 reshard under load.

Both modes load the same generated dataset through the same frontend API into fresh data directories
(data/bench/cluster), then take the same closed-loop Recommend load.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pyarrow.parquet as pq

from server import _core
from server.client import RecdClient
from server.cluster.layout import Placement, layout_from_config
from server.cluster.local import LocalCluster
from server.cluster.membership.manager import ClusterManager
from server.config import load_config
from server.gen.recd.v1 import recommender_pb2, recommender_pb2_grpc
from server.tools.bench.data import dataset_dir, exact_top_k, item_vectors, query_vectors
from server.tools.bench.loadgen import LoadResult, closed_loop
from server.tools.bench.recommend import zipf_order
from server.tools.bench.report import table
from server.tools.bench.serverproc import scrape
from server.tools.cluster.commands import newest_layout
from server.tools.cluster.rebalance import Rebalancer, RebalanceReport
from server.tools.loading.load import load_dataset
from shards.client import GrpcShardClient, ShardClient

NODES = 4
CONCURRENCY = 16
LEVELS = (1, 8, 64)
ROOT = Path("data/bench/cluster")
EF = load_config(environ={}).shards.index.ef_search


def _config() -> dict[str, Any]:
    # The frontend as one process, as these rows have always measured it (not a worker group).
    return {"server": {"log_level": "WARNING"}, "ranking": {"ranker": "cpu"}, "workers": {"count": 0}}


def _sum(metrics: dict[str, float], name: str, *labels: str) -> float:
    return sum(v for k, v in metrics.items() if k.startswith(name + "{") and all(x in k for x in labels))


def _codes(before: dict[str, float], after: dict[str, float]) -> dict[str, int]:
    """Recommend answers by status code (frontend metrics), other than OK."""
    out = {}
    for key, value in after.items():
        if key.startswith("recd_rpc_latency_seconds_count{") and 'method="Recommend"' in key:
            code = key.split('code="')[1].split('"')[0]
            if code != "OK" and value - before.get(key, 0.0) > 0:
                out[code] = int(value - before.get(key, 0.0))
    return out


def _deltas(before: dict[str, float], after: dict[str, float]) -> tuple[float, float, float, float]:
    """(shard Search RPCs, of which hedges, of which failovers, Recommends) between two scrapes."""
    calls = _sum(after, "recd_shard_calls_total", 'op="search"') - _sum(
        before, "recd_shard_calls_total", 'op="search"'
    )
    recs = _sum(after, "recd_rpc_latency_seconds_count", 'method="Recommend"') - _sum(
        before, "recd_rpc_latency_seconds_count", 'method="Recommend"'
    )
    extra = "recd_shard_extra_search_calls_total"
    hedges = _sum(after, extra, 'kind="hedge"') - _sum(before, extra, 'kind="hedge"')
    failovers = _sum(after, extra, 'kind="failover"') - _sum(before, extra, 'kind="failover"')
    return calls, hedges, failovers, recs


async def load_through(address: str, dataset: Path) -> float:
    started = time.perf_counter()
    client = RecdClient(address, timeout_s=300)
    try:
        summary = await load_dataset(dataset, client, batch_size=2000, progress=False)
    finally:
        await client.close()
    if not summary.ok:
        raise RuntimeError(f"loading {dataset} failed: {summary}")
    return time.perf_counter() - started


def _recommend_call(
    users: list[str], order: np.ndarray
) -> Callable[[grpc.aio.Channel, int], Awaitable[object]]:
    async def call(channel: grpc.aio.Channel, i: int) -> object:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        user = users[int(order[i % len(order)])]
        return await stub.Recommend(recommender_pb2.RecommendRequest(user_id=user, k=10), timeout=2)

    return call


@dataclass
class Run:
    load: LoadResult
    search_rpcs: float  # Search RPCs the frontend sent to shard nodes
    hedge_rpcs: float  # of which hedges
    failover_rpcs: float  # and failovers
    recommends: float  # Recommends the frontend answered (any status)
    codes: dict[str, int]  # failed Recommends by status

    def row(self, label: str) -> list[object]:
        load = self.load
        failed = ", ".join(f"{n} {c}" for c, n in sorted(self.codes.items())) or "0"
        return [label, load.qps, load.percentile_ms(50), load.percentile_ms(99), failed]

    def summary(self) -> dict[str, Any]:
        return {
            "qps": self.load.qps,
            "p50_ms": self.load.percentile_ms(50),
            "p99_ms": self.load.percentile_ms(99),
            "errors": self.load.errors,
            "error_codes": self.codes,
            "rpcs_per_recommend": self.search_rpcs / max(self.recommends, 1),
        }


def _run(
    cluster: LocalCluster, call: Callable[..., Awaitable[object]], concurrency: int, seconds: float
) -> Run:
    before = scrape(cluster.metrics_address)
    result = asyncio.run(closed_loop(call, cluster.frontend_address, concurrency, seconds))
    after = scrape(cluster.metrics_address)
    return Run(result, *_deltas(before, after), _codes(before, after))


async def _recall(
    config_path: Path, labels: np.ndarray, queries: np.ndarray, truth: np.ndarray
) -> tuple[float, int]:
    config = load_config(config_path)
    router = ClusterManager(config).router
    ef = config.shards.index.ef_search  # what the frontend searches with
    try:
        got = []
        for start in range(0, len(queries), 64):
            result = await router.search(queries[start : start + 64], 10, 10, ef, None, 30)
            got.append(result.labels)
        found = np.concatenate(got)
        hits = [len(set(found[i].tolist()) & set(labels[truth[i]].tolist())) for i in range(len(queries))]
        return float(np.mean(hits)) / 10, result.shards_total
    finally:
        await router.close()


async def _reshard_under_load(
    cluster: LocalCluster, call: Callable[..., Awaitable[object]]
) -> tuple[RebalanceReport, LoadResult]:
    configured = layout_from_config(load_config(cluster.config_path))
    clients: dict[str, ShardClient] = {n: GrpcShardClient(a) for n, a in configured.addresses.items()}
    done = asyncio.Event()
    latencies: list[float] = []
    errors = 0
    count = 0
    began = time.monotonic()

    async def load() -> None:
        nonlocal errors, count
        async with grpc.aio.insecure_channel(cluster.frontend_address) as channel:

            async def worker(w: int) -> None:
                nonlocal errors, count
                i = w
                while not done.is_set():
                    started = time.monotonic()
                    try:
                        await call(channel, i)
                        latencies.append(time.monotonic() - started)
                    except grpc.aio.AioRpcError:
                        errors += 1
                    i += 8

            await asyncio.gather(*(worker(w) for w in range(8)))

    async def reshard() -> RebalanceReport:
        try:
            layout, _ = await newest_layout(clients, configured)
            target = Placement(22, layout.current.nodes, layout.current.replication, layout.current.vnodes)
            rebalancer = Rebalancer(clients, grace_s=2.0)
            await rebalancer.run(layout, target, {})
            return rebalancer.report
        finally:
            done.set()

    try:
        report, _ = await asyncio.gather(reshard(), load())
    finally:
        for client in clients.values():
            await client.close()
    seconds = time.monotonic() - began
    return report, LoadResult(len(latencies), errors, seconds, np.asarray(latencies))


def run_cluster_bench(quick: bool = False) -> tuple[str, dict[str, Any]]:
    items, n_users = (20_000, 2_000) if quick else (200_000, 20_000)  # full: the demo dataset
    dataset = dataset_dir(items, n_users, 64)
    users = pq.read_table(dataset / "users.parquet", columns=["user_id"]).column("user_id").to_pylist()
    call = _recommend_call(users, zipf_order(len(users), 1_000_000))
    duration = 4.0 if quick else 15.0
    level_s = 3.0 if quick else 8.0
    shutil.rmtree(ROOT, ignore_errors=True)
    out: dict[str, Any] = {
        "items": items,
        "users": n_users,
        "nodes": NODES,
        "load_avg_start": os.getloadavg()[0],
    }
    rows = []

    with LocalCluster(ROOT / "embedded", 0, 0, _config()) as embedded:
        embedded.up()
        out["embedded_load_s"] = asyncio.run(load_through(embedded.frontend_address, dataset))
        _run(embedded, call, CONCURRENCY, 2.0)  # warm-up
        run = _run(embedded, call, CONCURRENCY, duration)
        out["embedded"] = run.summary()
        rows.append(run.row("embedded (1 process, 20 shards in-process)"))

    with LocalCluster(ROOT / "cluster", NODES, 2, _config()) as cluster:
        cluster.up()
        out["cluster_load_s"] = asyncio.run(load_through(cluster.frontend_address, dataset))
        _run(cluster, call, CONCURRENCY, 2.0)
        run = _run(cluster, call, CONCURRENCY, duration)
        out["cluster"] = run.summary()
        rows.append(run.row(f"cluster ({NODES} shard nodes, replication 2, + frontend)"))

        rpc_rows = []
        out["rpcs_per_recommend"] = {}
        for level in LEVELS:
            run = _run(cluster, call, level, level_s)
            res, recs = run.load, run.recommends
            per = run.search_rpcs / max(recs, 1)
            hedges, failovers = run.hedge_rpcs / max(recs, 1), run.failover_rpcs / max(recs, 1)
            out["rpcs_per_recommend"][level] = {"all": per, "hedges": hedges, "failovers": failovers}
            rpc_rows.append(
                [
                    level,
                    f"{per:.2f}",
                    f"{per - hedges - failovers:.2f}",
                    f"{hedges:.2f}",
                    f"{failovers:.2f}",
                    int(recs),
                    res.qps,
                    res.percentile_ms(99),
                ]
            )

        ids, raw = item_vectors(dataset)
        vectors = (raw / np.linalg.norm(raw, axis=1, keepdims=True)).astype(np.float32)
        queries = query_vectors(vectors, 500 if quick else 2000)
        truth = exact_top_k(vectors, queries, 10)
        labels = _core.stable_hash64(ids)
        recall, shards = asyncio.run(_recall(cluster.config_path, labels, queries, truth))
        before = scrape(cluster.metrics_address)
        report, during = asyncio.run(_reshard_under_load(cluster, call))
        codes_during = _codes(before, scrape(cluster.metrics_address))
        recall_after, shards_after = asyncio.run(_recall(cluster.config_path, labels, queries, truth))
        out.update(
            recall_at_10=recall,
            recall_at_10_after_reshard=recall_after,
            shards_before=shards,
            shards_after=shards_after,
            reshard={
                "items_scanned": report.items_scanned,
                "items_moved": report.items_moved,
                "moved_fraction": report.items_moved / max(report.items_scanned, 1),
                "ideal_fraction": 2 / 22,
                "records_copied": report.records_copied,
                "records_deleted": report.records_deleted,
                "seconds": report.seconds,
                "recommends_during": during.requests,
                "errors_during": during.errors,
                "error_codes_during": codes_during,
                "p99_ms_during": during.percentile_ms(99),
            },
        )

    r = out["reshard"]
    out["load_avg_end"] = os.getloadavg()[0]
    body = table(["mode", "Recommend QPS", "p50 ms", "p99 ms", "failed (status)"], rows)
    body += (
        f"\n\nBoth modes run on this one machine with **2 cores**: the cluster is {NODES} shard-node processes,"
        f" a frontend and the load generator sharing them, so it measures the cost of the fan-out (serialisation,"
        f" loopback RPCs, more processes) rather than the capacity a cluster of real machines adds. Closed loop,"
        f" {CONCURRENCY} concurrent callers, {duration:.0f} s after a 2 s warm-up, Zipf-distributed users;"
        f" {items:,} items x 64 dims, {n_users:,} users, loaded through the API into fresh data directories"
        f" ({out['embedded_load_s']:.0f} s embedded, {out['cluster_load_s']:.0f} s into the cluster, where every"
        " write waits for both replicas' WAL fsync). Failed Recommends by status code, from the frontend's"
        f" metrics. 1-minute load average of the box: {out['load_avg_start']:.1f} at the start,"
        f" {out['load_avg_end']:.1f} at the end (the benchmark's own processes and any other work on the box).\n\n"
    )
    body += 'Internal Search RPCs per Recommend on the cluster (frontend metrics: `recd_shard_calls_total{op="search"}` over Recommends):\n\n'
    body += table(
        [
            "concurrent callers",
            "Search RPCs per Recommend",
            "first wave",
            "hedges",
            "failovers",
            "Recommends",
            "QPS",
            "p99 ms",
        ],
        rpc_rows,
    )
    body += (
        f"\n\nThe first wave is at most one call per node per micro-batch ({NODES} nodes), fewer per Recommend as"
        " concurrent requests share batches; hedges (sent when a node is later than its recent p95, at most 10%"
        " of RPCs by the hedge budget) and failovers (after an error) come on top.\n\n"
    )
    body += table(
        ["measure", "value"],
        [
            [f"recall@10 vs exact, across the cluster (20 shards, ef {EF})", f"{recall:.4f}"],
            ["recall@10 after the reshard (22 shards)", f"{recall_after:.4f}"],
            [
                "items moved by 20 -> 22 (changed shard)",
                f"{r['items_moved']:,} of {r['items_scanned']:,} = {r['moved_fraction']:.2%}",
            ],
            ["ideal (2/22)", f"{r['ideal_fraction']:.2%}"],
            ["reshard wall time (copy, switch, cleanup, 2 s grace)", f"{r['seconds']:.1f} s"],
            [
                "Recommends during the reshard (8 callers): count / failed (status) / p99",
                f"{r['recommends_during']:,} / {', '.join(f'{n} {c}' for c, n in codes_during.items()) or 0}"
                f" / {r['p99_ms_during']:.1f} ms",
            ],
        ],
    )
    body += (
        "\n\nRecall: the frontend's router in the benchmark process, batches of 64 user-like queries, each shard"
        " answering its top-10 and the Rust merge keeping the global top-10; exact top-10 by brute force is the"
        " oracle. The reshard is `recd shards rebalance --shards 22` run online (dual writes, copy by Scan with"
        " backfill that yields to live writes, switch, delete) while the Recommend load runs."
    )
    return body, out


TITLE = "Shard nodes as processes: cluster vs embedded, fan-out, resharding"


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    from server.tools.bench.report import write_section

    parser = argparse.ArgumentParser(prog="python -m server.tools.bench.cluster", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run (writes nothing)")
    parser.add_argument("--out", default="BENCHMARKS.md")
    args = parser.parse_args(argv)
    body, result = run_cluster_bench(quick=args.quick)
    if not args.quick:
        write_section(args.out, "cluster", TITLE, "python -m server.tools.bench.cluster", body)
    print(f"## {TITLE}\n\n{body}\n")
    print(json.dumps(result, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

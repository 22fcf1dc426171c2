"""The edge tier: hit and miss latency and QPS beside an empty RPC on the same edge process and client;
hit rate under the Zipf mix for two TTLs; origin calls for 1,000 concurrent identical requests.

The workload model (Zipf users, the RPC mix, the filters) lives here and the Locust load test imports it,
so the simulated hit rates and the load test describe the same traffic.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from server.client import allowed_values
from server.gen.recd.v1 import common_pb2, recommender_pb2, recommender_pb2_grpc
from server.tools.bench.loadgen import LoadResult, closed_loop
from server.tools.bench.recommend import ensure_demo_state
from server.tools.bench.report import table
from server.tools.bench.serverproc import free_port, recd_server, scrape, wait_serving

# --- the workload ---------------------------------------------------------------------------------------
# Classic Zipf (s = 1): the most active user sends ~10% of the traffic of 20,000 users, the top 1% of
# users about half of it.
ZIPF_EXPONENT = 1.0
MIX = {"Recommend": 0.90, "RecordInteractions": 0.08, "SimilarItems": 0.02}
FILTER_SHARE = 0.2
# Filters on the demo catalogue's attributes, as a storefront would send them (language, price, shelf).
FILTERS: list[dict[str, list[str]]] = [
    {"lang": ["en"]},
    {"lang": ["de"]},
    {"lang": ["es", "fr"]},
    {"price_band": ["low"]},
    {"price_band": ["mid", "high"]},
    {"category": ["audio"]},
    {"category": ["shoes", "sports"]},
    {"lang": ["en"], "price_band": ["low"]},
]


def user_ids(dataset: Path | None = None, fallback: int = 20_000) -> list[str]:
    """The demo dataset's users when it is there, else ids of the same form (u00000, u00001, ...)."""
    users = (dataset or Path("data/demo/dataset")) / "users.parquet"
    if users.exists():
        return list(pq.read_table(users, columns=["user_id"]).column("user_id").to_pylist())
    return [f"u{i:05d}" for i in range(fallback)]


class ZipfUsers:
    """Draws user ids with P(rank r) proportional to 1 / r^s, over a fixed, shuffled ranking."""

    def __init__(self, ids: Sequence[str], exponent: float = ZIPF_EXPONENT, seed: int = 5) -> None:
        rng = np.random.default_rng(seed)
        # Shuffled, so that popularity is not the dataset's id order.
        self.ids = [ids[i] for i in rng.permutation(len(ids))]
        weights = 1.0 / np.arange(1, len(ids) + 1) ** exponent
        self._cdf = np.cumsum(weights / weights.sum())
        self._rng = rng
        self._batch: list[int] = []

    def draw(self) -> str:
        if not self._batch:
            picks = np.searchsorted(self._cdf, self._rng.random(4096), side="right")
            self._batch = np.minimum(picks, len(self.ids) - 1).tolist()
        return self.ids[self._batch.pop()]


def recommend_request(
    user: str, rng: np.random.Generator, context: dict[str, str] | None = None
) -> recommender_pb2.RecommendRequest:
    filter_ = FILTERS[int(rng.integers(len(FILTERS)))] if rng.random() < FILTER_SHARE else {}
    return recommender_pb2.RecommendRequest(
        user_id=user, k=10, filter=allowed_values(filter_), context=context or {}
    )


# --- processes ------------------------------------------------------------------------------------------
@contextmanager
def edge_process(origins: Sequence[str], env: dict[str, str] | None = None) -> Iterator[tuple[str, str, int]]:
    """Yields (grpc address, metrics address, pid) of a `recd edge` child; stops it (SIGTERM) afterwards."""
    address = f"127.0.0.1:{free_port()}"
    metrics = f"127.0.0.1:{free_port()}"
    child_env = {
        **os.environ,
        "RECD_EDGE__ADDRESS": address,
        "RECD_EDGE__METRICS_ADDRESS": metrics,
        "RECD_SERVER__LOG_LEVEL": "WARNING",
        **(env or {}),
    }
    command = [sys.executable, "-m", "server.cli", "edge"]
    for origin in origins:
        command += ["--origin", origin]
    proc = subprocess.Popen(command, env=child_env)
    try:
        wait_serving(address, 60.0, proc)
        yield address, metrics, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _delta(before: dict[str, float], after: dict[str, float], prefix: str, *must: str) -> float:
    return sum(
        v - before.get(k, 0.0) for k, v in after.items() if k.startswith(prefix) and all(m in k for m in must)
    )


def _edge_outcomes(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    name = "recd_edge_cache_requests_total{"
    return {
        f"{level}_{outcome}": _delta(before, after, name, f'level="{level}"', f'outcome="{outcome}"')
        for level, outcome in (("l1", "hit"), ("l1", "stale"), ("l1", "miss"), ("origin", "coalesced"))
    }


def _origin_recommends(before: dict[str, float], after: dict[str, float]) -> float:
    return _delta(before, after, "recd_rpc_latency_seconds_count{", 'method="Recommend"')


# --- measured on real processes -------------------------------------------------------------------------
CONCURRENCY = 16
HOT_USERS = 200
# Each row is measured in several slices taken in turn, so that load from other processes on the
# machine falls on every row alike instead of on whichever row ran while it lasted.
ROUNDS = 4


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), to compare server work per request."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _warm(address: str, requests: list[recommender_pb2.RecommendRequest]) -> int:
    """Caches `requests` on the edge; returns how many answers stayed degraded (cached only briefly)."""
    import grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        pending = list(requests)
        # A few callers at a time: an origin pushed past its budget answers degraded, and a degraded
        # answer is cached for seconds only; those are asked for again.
        for _ in range(3):
            degraded = []
            for start in range(0, len(pending), 4):
                batch = pending[start : start + 4]
                answers = await asyncio.gather(*(stub.Recommend(r, timeout=10) for r in batch))
                degraded += [r for r, a in zip(batch, answers, strict=True) if a.coverage.degraded_reasons]
            pending = degraded
            if not pending:
                break
        return len(pending)


async def _burst(address: str, request: recommender_pb2.RecommendRequest, n: int) -> int:
    """n identical Recommends at once on one channel; the number that failed."""
    import grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        results = await asyncio.gather(
            *(stub.Recommend(request, timeout=30) for _ in range(n)), return_exceptions=True
        )
    return sum(isinstance(r, BaseException) for r in results)


def _row(label: str, r: LoadResult) -> list[object]:
    return [label, r.qps, r.percentile_ms(50), r.percentile_ms(99), r.errors]


def _measure_processes(
    root: Path, users: list[str], duration: float
) -> tuple[list[list[object]], dict[str, float]]:
    hot = [recommender_pb2.RecommendRequest(user_id=u, k=10) for u in users[:HOT_USERS]]
    # A context no one else sends makes every request a distinct key: the miss path, every time.
    run_id = str(time.time_ns())

    def unique(i: int) -> recommender_pb2.RecommendRequest:
        return recommender_pb2.RecommendRequest(
            user_id=users[i % len(users)], k=10, context={"bench": f"{run_id}-{i}"}
        )

    async def empty(channel, i):  # type: ignore[no-untyped-def]
        return await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)

    async def hit(channel, i):  # type: ignore[no-untyped-def]
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        return await stub.Recommend(hot[i % len(hot)], timeout=2)

    def miss(offset: int):  # type: ignore[no-untyped-def]
        async def call(channel, i):  # type: ignore[no-untyped-def]
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            return await stub.Recommend(unique(offset + i), timeout=2)

        return call

    overrides = {"RECD_DATA_DIR": str(root / "state"), "RECD_RESPONSE__CACHE_TTL_SECONDS": "300"}
    with (
        recd_server(overrides) as (origin, origin_metrics, _),
        edge_process([origin]) as (edge, edge_metrics, edge_pid),
    ):
        still_degraded = asyncio.run(_warm(edge, hot))
        slices: dict[str, list[LoadResult]] = {name: [] for name in ("empty", "hit", "miss", "direct")}
        cpu: dict[str, float] = dict.fromkeys(("empty", "hit", "miss"), 0.0)
        outcomes: dict[str, dict[str, float]] = {"hit": {}, "miss": {}}
        for round_ in range(ROUNDS):
            plan = [
                ("empty", empty, edge),
                ("hit", hit, edge),
                ("miss", miss(round_ * 10_000_000), edge),
                ("direct", miss(round_ * 10_000_000 + 5_000_000), origin),
            ]
            for name, call, address in plan:
                before, cpu_before = scrape(edge_metrics), _cpu_seconds(edge_pid)
                part = asyncio.run(closed_loop(call, address, CONCURRENCY, duration / ROUNDS, warmup_s=0.5))
                slices[name].append(part)
                if name in cpu:
                    # Includes the 0.5 s warm-up's requests in neither count nor time: a close estimate.
                    cpu[name] += (_cpu_seconds(edge_pid) - cpu_before) / max(1, part.requests)
                if name in outcomes:
                    for k, v in _edge_outcomes(before, scrape(edge_metrics)).items():
                        outcomes[name][k] = outcomes[name].get(k, 0.0) + v

        burst_request = recommender_pb2.RecommendRequest(
            user_id=users[1], k=10, context={"bench": f"{run_id}-burst"}
        )
        before_origin, before_edge = scrape(origin_metrics), scrape(edge_metrics)
        burst_errors = asyncio.run(_burst(edge, burst_request, 1000))
        after_origin, after_edge = scrape(origin_metrics), scrape(edge_metrics)
        burst_origin_calls = _origin_recommends(before_origin, after_origin)
        burst = _edge_outcomes(before_edge, after_edge)

    base, hits, misses, direct = (LoadResult.merged(slices[n]) for n in ("empty", "hit", "miss", "direct"))
    cpu_us = {name: total / ROUNDS * 1e6 for name, total in cpu.items()}
    rows = [
        [*_row("empty RPC (grpc.health Check) on the edge", base), f"{cpu_us['empty']:.0f}"],
        [*_row("Recommend, edge hit (L1)", hits), f"{cpu_us['hit']:.0f}"],
        [*_row("Recommend, edge miss -> origin", misses), f"{cpu_us['miss']:.0f}"],
        [*_row("Recommend, origin directly (reference)", direct), ""],
    ]
    hit_total = max(1.0, sum(outcomes["hit"].values()))
    miss_total = max(1.0, sum(outcomes["miss"].values()))
    result = {
        "empty_qps": base.qps,
        "hit_qps": hits.qps,
        "hit_p50_ms": hits.percentile_ms(50),
        "hit_p99_ms": hits.percentile_ms(99),
        "miss_qps": misses.qps,
        "miss_p50_ms": misses.percentile_ms(50),
        "miss_p99_ms": misses.percentile_ms(99),
        "origin_qps": direct.qps,
        "origin_p50_ms": direct.percentile_ms(50),
        "hit_ratio_vs_empty": hits.qps / base.qps,
        "edge_cpu_us_empty": cpu_us["empty"],
        "edge_cpu_us_hit": cpu_us["hit"],
        "edge_cpu_us_miss": cpu_us["miss"],
        "hit_phase_served_from_l1": (outcomes["hit"].get("l1_hit", 0) + outcomes["hit"].get("l1_stale", 0))
        / hit_total,
        "miss_phase_l1_miss_share": outcomes["miss"].get("l1_miss", 0) / miss_total,
        "warm_still_degraded": float(still_degraded),
        "burst_origin_calls": burst_origin_calls,
        "burst_coalesced": burst["origin_coalesced"],
        "burst_l1_hits": burst["l1_hit"],
        "burst_errors": float(burst_errors),
        "errors": float(base.errors + hits.errors + misses.errors),
    }
    return rows, result


# --- simulated hit rate ---------------------------------------------------------------------------------
class _InstantOrigin:
    """Answers every Recommend at once with a fixed answer carrying the TTL under test."""

    def __init__(self, ttl_s: int) -> None:
        self.calls = 0
        self._answer = recommender_pb2.RecommendResponse(
            items=[common_pb2.ScoredItem(item_id=f"i{i:06d}", score=1.0 - i / 100) for i in range(10)],
            coverage=common_pb2.Coverage(shards_total=20, shards_ok=20),
            cache_ttl_seconds=ttl_s,
            model_version="bench",
        ).SerializeToString()

    async def start(self) -> None:
        pass

    async def call(self, method: str, request: bytes, timeout_s: float, retryable: bool) -> bytes:
        self.calls += 1
        return self._answer

    async def close(self) -> None:
        pass


def _counter(level: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value("recd_edge_cache_requests_total", {"level": level, "outcome": outcome})
    return value or 0.0


async def _simulate(
    users: list[str], ttl_s: int, rate_per_s: float, warmup_s: float, measure_s: float, seed: int = 9
) -> dict[str, float]:
    """The edge's own cache logic (L1, versions, time buckets, SWR) on a simulated clock: Poisson arrivals
    at `rate_per_s` of the mix; Recommend/RecordInteractions go to the edge, SimilarItems is not cached."""
    from server.config import EdgeConfig
    from server.edge.cache import EdgeCache

    clock_now = [1_800_000_000.0]
    origin = _InstantOrigin(ttl_s)
    edge = EdgeCache(EdgeConfig(), origin, None, clock=lambda: clock_now[0])
    rng = np.random.default_rng(seed)
    zipf = ZipfUsers(users, seed=seed)
    kinds = rng.choice(len(MIX), size=int(rate_per_s * (warmup_s + measure_s)) + 1, p=list(MIX.values()))
    gaps = rng.exponential(1.0 / rate_per_s, size=len(kinds))
    names = list(MIX)
    start = clock_now[0]
    counts: dict[str, float] = {}
    snapshot: dict[str, float] = {}
    for n, (kind, gap) in enumerate(zip(kinds, gaps, strict=True)):
        clock_now[0] += gap
        if not snapshot and clock_now[0] - start >= warmup_s:
            snapshot = {o: _counter("l1", o) for o in ("hit", "stale", "miss")}
            snapshot["origin"] = origin.calls
        name = names[int(kind)]
        if name == "Recommend":
            await edge.recommend(recommend_request(zipf.draw(), rng).SerializeToString())
        elif name == "RecordInteractions":
            await edge.invalidate_users([zipf.draw()])
        if n % 64 == 0:
            await asyncio.sleep(0)  # lets background refreshes run, 64 arrivals later in simulated time
    await edge.drain()
    for outcome in ("hit", "stale", "miss"):
        counts[outcome] = _counter("l1", outcome) - snapshot[outcome]
    total = sum(counts.values())
    await edge.close()
    return {
        "requests": total,
        "hit": counts["hit"] / total,
        "stale": counts["stale"] / total,
        "miss": counts["miss"] / total,
        "origin_per_recommend": (origin.calls - snapshot["origin"]) / total,
    }


# --- the suite ------------------------------------------------------------------------------------------
def run_edge_bench(quick: bool = False) -> tuple[str, dict[str, float]]:
    root = Path("data/bench/quick-demo") if quick else Path("data/demo")
    ensure_demo_state(root, 20_000 if quick else 200_000, 2_000 if quick else 20_000)
    users = user_ids(root / "dataset")
    duration = 3.0 if quick else 10.0
    rows, result = _measure_processes(root, users, duration)

    rates = [100.0] if quick else [100.0, 1000.0]
    warmup_s, measure_s = (600.0, 600.0) if quick else (900.0, 1800.0)
    sim_rows: list[list[object]] = []
    for rate in rates:
        for ttl in (60, 300):
            sim = asyncio.run(_simulate(users, ttl, rate, warmup_s, measure_s))
            served = sim["hit"] + sim["stale"]
            sim_rows.append(
                [
                    f"{rate:,.0f}/s",
                    f"{ttl} s",
                    f"{sim['hit']:.1%}",
                    f"{sim['stale']:.1%}",
                    f"{served:.1%}",
                    f"{sim['origin_per_recommend']:.3f}",
                ]
            )
            result[f"sim_rate{rate:.0f}_ttl{ttl}_served_from_cache"] = served
            result[f"sim_rate{rate:.0f}_ttl{ttl}_fresh_hit"] = sim["hit"]

    ratio = result["hit_ratio_vs_empty"]
    body = table(
        [
            "RPC (through one `recd edge`, L1 only)",
            "QPS",
            "p50 ms",
            "p99 ms",
            "errors",
            "edge CPU µs / request",
        ],
        rows,
    )
    body += (
        f"\n\nHits / empty RPC QPS: **{ratio:.2f}** (target >= 0.80). "
        f"{result['hit_phase_served_from_l1']:.1%} of the hit rows' lookups were answered from L1 and"
        f" {result['miss_phase_l1_miss_share']:.1%} of the miss rows' were misses (edge metrics)."
        f"\n\nClosed loop, {CONCURRENCY} concurrent callers from one grpc.aio client process, {duration:.0f} s"
        f" per row in {ROUNDS} slices taken in turn (0.5 s warm-up each), all rows in one run against the"
        f" same edge process. Hits: the {HOT_USERS} first demo users, cached before. Misses: each request"
        " carries a context value no other request has, so every one goes to the origin (`recd serve` on the"
        " demo snapshot); the last row sends the same kind of requests to the origin directly. Edge CPU is"
        " the edge process's user + system time per answered request (from /proc), which other load on"
        " the machine disturbs less than QPS. Errors in the miss rows are the origin's own"
        " DEADLINE_EXCEEDED: 16 callers keep one frontend past its capacity and its 80 ms budget."
        "\n\n**1,000 concurrent identical Recommends** (a key not yet cached) through the edge:"
        f" **{result['burst_origin_calls']:.0f}** Recommend call(s) reached the origin (its own"
        f" `recd_rpc_latency_seconds_count`); {result['burst_coalesced']:.0f} requests waited on that call"
        f" (coalesced), {result['burst_l1_hits']:.0f} arrived after it had answered and were L1 hits,"
        f" {result['burst_errors']:.0f} failed."
    )
    body += (
        "\n\n**Hit rate under the Zipf mix** (simulated clock, the edge's own cache code with an instant"
        f" origin): {len(users):,} users drawn Zipf (s = {ZIPF_EXPONENT}), Poisson arrivals of"
        f" {MIX['Recommend']:.0%} Recommend / {MIX['RecordInteractions']:.0%} RecordInteractions (each"
        f" invalidates its user) / {MIX['SimilarItems']:.0%} SimilarItems (not cached), filters on"
        f" {FILTER_SHARE:.0%} of Recommends ({len(FILTERS)} kinds), 1-hour time buckets, 30 s"
        f" stale grace; measured over {measure_s / 60:.0f} min after {warmup_s / 60:.0f} min of warm-up."
        " Stale = served from cache while one refresh ran.\n\n"
    )
    body += table(
        [
            "total rate",
            "origin TTL",
            "fresh hits",
            "stale hits",
            "served from cache",
            "origin calls / Recommend",
        ],
        sim_rows,
    )
    body += "\n\nThe load test's latency over time: [loadtests/results/loadtest.png](loadtests/results/loadtest.png)."
    return body, result


def main(argv: list[str] | None = None) -> int:
    """`python -m server.tools.bench.edge [--quick] [--out BENCHMARKS.md]`, until `recd bench edge` runs it."""
    import argparse
    import json

    from server.tools.bench.report import write_section

    parser = argparse.ArgumentParser(description="edge tier benchmarks; results go to BENCHMARKS.md")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run (not written)")
    parser.add_argument("--out", default="BENCHMARKS.md")
    args = parser.parse_args(argv)
    body, result = run_edge_bench(quick=args.quick)
    if not args.quick:
        command = "python -m server.tools.bench.edge"
        write_section(
            args.out, "edge", "Edge tier: cache hits vs an empty RPC, hit rate, coalescing", command, body
        )
    print(body)
    print(json.dumps(result, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`make loadtest`: recd on the demo data, Locust headless for a bounded time, a summary and a verdict.

    python -m loadtests.run [--target edge|frontend] [--scenario warm|cold] [--users 20]
                            [--spawn-rate 10] [--run-time 30s] [--p99-ms 100]

Starts `recd serve` on the demo snapshot (generated and loaded first when missing, as `make demo` does)
and, with --target edge, `recd edge` in front of it, all on free 127.0.0.1 ports; runs Locust
(loadtests/locustfile.py) against the target; stops everything. Writes to --out: Locust's CSV files
(loadtest_stats.csv, loadtest_stats_history.csv, loadtest_failures.csv, loadtest_exceptions.csv),
summary.md / summary.json (RPS and p50/p95/p99 per RPC, the edge's hit rate) and loadtest.png.
Exit status: 0 when every request succeeded and each RPC's p99 is within --p99-ms; 1 when not;
2 when the run itself broke.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

from loadtests.plot import write_plot
from server.gen.recd.v1 import recommender_pb2, recommender_pb2_grpc
from server.tools.bench.edge import ZipfUsers, edge_process, user_ids
from server.tools.bench.recommend import ensure_demo_state
from server.tools.bench.report import table, write_section
from server.tools.bench.serverproc import recd_server, scrape

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
PREFIX = "loadtest"
FINAL_JSON = "loadtest_final.json"


def run_seconds(text: str) -> int:
    """Locust's --run-time syntax (30s, 2m, 1h30m, or plain seconds) in seconds."""
    if text.isdigit():
        return int(text)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text)
    if not parts or not any(parts.groups()):
        raise argparse.ArgumentTypeError(f"run time like 30s, 2m or 1h30m, got {text!r}")
    h, m, s = (int(g or 0) for g in parts.groups())
    return h * 3600 + m * 60 + s


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", choices=["edge", "frontend"], default="edge")
    p.add_argument("--scenario", choices=["warm", "cold"], default="warm")
    p.add_argument("--users", type=int, default=20, help="concurrent Locust users")
    p.add_argument("--spawn-rate", type=float, default=10.0, help="users started per second")
    p.add_argument("--run-time", default="30s", help="Locust --run-time (default 30s)")
    p.add_argument("--p99-ms", type=float, default=None, help="fail when an RPC's p99 exceeds this")
    p.add_argument("--think-ms", type=float, default=100.0, help="mean pause between a user's calls")
    p.add_argument("--prewarm", type=int, default=1000, help="warm scenario: most active users cached first")
    p.add_argument("--demo-dir", type=Path, default=Path("data/demo"))
    p.add_argument("--out", type=Path, default=Path("loadtests/results"))
    p.add_argument("--benchmarks", type=Path, default=None, help="also write a section of this BENCHMARKS.md")
    args = p.parse_args(argv)
    args.run_seconds = run_seconds(args.run_time)
    return args


async def prewarm(address: str, users: list[str]) -> None:
    """The warm scenario's premise: the most active users' plain Recommend is already cached."""
    import grpc

    async with grpc.aio.insecure_channel(address) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        for start in range(0, len(users), 8):
            await asyncio.gather(
                *(
                    stub.Recommend(recommender_pb2.RecommendRequest(user_id=u, k=10), timeout=10)
                    for u in users[start : start + 8]
                ),
                return_exceptions=True,
            )


def read_final_stats(path: Path) -> list[dict[str, float | str]]:
    """Per-RPC figures written by the locustfile when Locust quits, the "all" row last."""
    rows: list[dict[str, float | str]] = json.loads(path.read_text())
    return rows


def edge_hit_rate(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    def delta(level: str, outcome: str) -> float:
        key = f'recd_edge_cache_requests_total{{level="{level}",outcome="{outcome}"}}'
        return after.get(key, 0.0) - before.get(key, 0.0)

    hit, stale, miss = (delta("l1", o) for o in ("hit", "stale", "miss"))
    looked_up = hit + stale + miss
    return {
        "lookups": looked_up,
        "served_from_cache": (hit + stale) / looked_up if looked_up else float("nan"),
        "stale": stale / looked_up if looked_up else float("nan"),
        "coalesced": delta("origin", "coalesced"),
    }


def verdict(rows: list[dict[str, float | str]], p99_budget_ms: float | None) -> list[str]:
    problems = []
    failed = sum(int(r["failures"]) for r in rows if r["rpc"] == "all")
    if failed:
        problems.append(f"{failed} request(s) failed")
    if p99_budget_ms is not None:
        for r in rows:
            if r["rpc"] != "all" and float(r["p99_ms"]) > p99_budget_ms:
                problems.append(f"{r['rpc']} p99 {float(r['p99_ms']):.0f} ms > budget {p99_budget_ms:g} ms")
    return problems


def markdown(
    args: argparse.Namespace, rows: list[dict[str, float | str]], hits: dict[str, float] | None
) -> str:
    body = table(
        ["RPC", "requests", "failures", "RPS", "p50 ms", "p95 ms", "p99 ms", "max ms"],
        [
            [r[c] for c in ("rpc", "requests", "failures", "rps", "p50_ms", "p95_ms", "p99_ms", "max_ms")]
            for r in rows
        ],
    )
    body += (
        f"\n\nTarget: {'`recd edge` in front of `recd serve`' if args.target == 'edge' else '`recd serve`'}"
        f" on the demo snapshot; scenario {args.scenario}; {args.users} Locust users (spawn rate"
        f" {args.spawn_rate:g}/s, mean think time {args.think_ms:g} ms), {args.run_time}; Locust and the"
        " servers share the machine."
    )
    if hits is not None:
        body += (
            f" Edge: {hits['served_from_cache']:.1%} of {hits['lookups']:,.0f} Recommends served from its"
            f" cache ({hits['stale']:.1%} stale while refreshing), {hits['coalesced']:,.0f} coalesced."
        )
    return body


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ensure_demo_state(args.demo_dir, 200_000, 20_000)
    args.out.mkdir(parents=True, exist_ok=True)
    for old in [*args.out.glob(f"{PREFIX}_*.csv"), args.out / FINAL_JSON]:
        old.unlink(missing_ok=True)
    env = {
        **os.environ,
        "LOADTEST_SCENARIO": args.scenario,
        "LOADTEST_DATASET": str(args.demo_dir / "dataset"),
        "LOADTEST_THINK_MS": str(args.think_ms),
        "LOADTEST_FINAL_JSON": str(args.out / FINAL_JSON),
    }
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "-u", str(args.users), "-r", str(args.spawn_rate), "--run-time", args.run_time,
        "--csv", str(args.out / PREFIX), "--csv-full-history", "--only-summary",
        "--stop-timeout", "5", "--loglevel", "WARNING",
    ]  # fmt: skip
    hits = None
    with ExitStack() as stack:
        overrides = {"RECD_DATA_DIR": str(args.demo_dir / "state")}
        frontend, _, _ = stack.enter_context(recd_server(overrides))
        target, edge_metrics = frontend, None
        if args.target == "edge":
            target, edge_metrics, _ = stack.enter_context(edge_process([frontend]))
        if args.scenario == "warm" and args.prewarm > 0:
            ranked = ZipfUsers(user_ids(args.demo_dir / "dataset")).ids
            asyncio.run(prewarm(target, ranked[: args.prewarm]))
        before = scrape(edge_metrics) if edge_metrics else {}
        print(f"locust: {args.users} users against {args.target} {target} for {args.run_time}", flush=True)
        try:
            # Locust stops itself after --run-time; the timeout only guards against a hung run.
            subprocess.run([*command, "--host", target], env=env, timeout=args.run_seconds + 120, check=False)
        except subprocess.TimeoutExpired:
            print("locust did not stop in time", file=sys.stderr)
            return 2
        if edge_metrics:
            hits = edge_hit_rate(before, scrape(edge_metrics))

    final = args.out / FINAL_JSON
    if not final.exists():
        print(f"locust wrote no {final}: it did not run to its end", file=sys.stderr)
        return 2
    rows = read_final_stats(final)
    png = write_plot(
        args.out / f"{PREFIX}_stats_history.csv",
        args.out / f"{PREFIX}.png",
        f"recd load test: {args.target}, {args.scenario} cache, {args.users} users",
    )
    body = markdown(args, rows, hits)
    problems = verdict(rows, args.p99_ms)
    (args.out / "summary.md").write_text(body + "\n")
    (args.out / "summary.json").write_text(
        json.dumps({"args": vars(args) | {"out": str(args.out), "demo_dir": str(args.demo_dir),
                                           "benchmarks": str(args.benchmarks)},
                    "rpcs": rows, "edge": hits, "problems": problems}, indent=2, default=str) + "\n"
    )  # fmt: skip
    print(body)
    print(f"\nplot: {png}")
    if args.benchmarks is not None:
        command_line = (
            f"make loadtest LOADTEST_TARGET={args.target} LOADTEST_SCENARIO={args.scenario}"
            f" USERS={args.users} SPAWN_RATE={args.spawn_rate:g} RUN_TIME={args.run_time}"
        )
        link = f"\n\n![latency and throughput over the run]({png.as_posix()})"
        write_section(args.benchmarks, "loadtest", "Load test (Locust)", command_line, body + link)
    if problems:
        print("FAIL: " + "; ".join(problems), file=sys.stderr)
        return 1
    print("PASS" + (f": every RPC's p99 within {args.p99_ms:g} ms" if args.p99_ms is not None else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

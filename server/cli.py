"""The `recd` command: serve, shard, demo, recommend, similar, gen, load, eval, tune, bench, experiments,
config show."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from server.config import Config, ConfigError, dump_config
from server.logs import setup_logging
from server.security.credentials import load_process_config
from server.tools.bench.main import SUITES as BENCH_SUITES
from server.tools.experiments_cli import add_parsers as add_experiments_parsers
from server.tracing.setup import setup_tracing

log = logging.getLogger("recd")


def run_server_loop(main: Coroutine[Any, Any, None], config: Config) -> None:
    """Runs a server's main coroutine on uvloop when configured (or "auto" and installed), else asyncio."""
    choice = config.server.event_loop
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise SystemExit("server.event_loop is 'uvloop' but uvloop is not installed") from None
        else:
            uvloop.run(main)
            return
    asyncio.run(main)


def _config(args: argparse.Namespace) -> Config:
    return load_process_config(getattr(args, "config", None))


# --- serve / shard ---------------------------------------------------------------------------------
async def _serve(config: Config, on_ready: Any = None) -> None:
    from server.api.server import RecdServer
    from server.lifecycle import run_until_signalled
    from server.metrics import serve_metrics
    from server.security.tls import check_listener
    from server.wiring import build_recd

    check_listener(config.server.address, config.server.tls, "server.tls")  # before the costly part
    recd = build_recd(config)
    await recd.sync_catalogue()
    # The items' popularity counts (then every popularity.refresh_s), before the first request.
    await recd.popularity_sync.start()
    await recd.warm_up()
    # The catalogue replica is hundreds of thousands of long-lived objects; frozen, the collector stops
    # walking them at every full collection.
    gc.collect()
    gc.freeze()
    server = RecdServer(recd, config)
    serve_metrics(config.server.metrics_address)
    await run_until_signalled(server, on_ready)


def serve_workers(args: argparse.Namespace, config: Config) -> int:
    """Frontend processes for `recd serve`: --single-process or --workers 0 -> 0 (this one process),
    else --workers, else workers.count, else one per core."""
    if args.single_process:
        return 0
    if args.workers is not None:
        return int(args.workers)
    if config.workers.count is not None:
        return config.workers.count
    from server.workers.supervisor import default_worker_count

    return default_worker_count()


def cmd_serve(args: argparse.Namespace) -> int:
    config = _config(args)
    workers = serve_workers(args, config)
    if workers < 0:
        raise SystemExit(f"--workers must be >= 0 (0: one process), got {workers}")
    if workers == 0:
        setup_logging(config.server.log_level, config.server.log_format)
        setup_tracing(config.tracing, "frontend")
        run_server_loop(_serve(config), config)
        return 0
    from server.workers.supervisor import run_group

    setup_logging(config.server.log_level, config.server.log_format, {"process": "supervisor"})
    return run_group(config, workers, getattr(args, "config", None))


def cmd_shard(args: argparse.Namespace) -> int:
    from server.lifecycle import wait_for_stop_signal
    from server.security.tls import check_listener
    from server.wiring import build_shard_host
    from shards.service import serve_node

    config = _config(args)
    setup_logging(config.server.log_level, config.server.log_format)
    setup_tracing(config.tracing, "shard")
    metrics_address = args.metrics_address or config.cluster.node_metrics_address
    if metrics_address:
        import shards.metrics  # noqa: F401  (registers the per-shard collector)
        from server.metrics import serve_metrics

        serve_metrics(metrics_address)
    if args.node_id is not None:
        # A cluster node: its shards come from the placement ring (server/cluster/node).
        from server.cluster.node.process import run_node

        if args.shards:
            raise SystemExit("--node-id takes its shards from the cluster layout; drop --shards")
        run_server_loop(run_node(config, args.node_id, args.address), config)
        return 0
    address = args.address or "127.0.0.1:50061"
    shard_ids = _parse_ranges(args.shards) if args.shards else None
    check_listener(address, config.cluster.tls, "cluster.tls")  # before its shards are opened
    host = build_shard_host(config, shard_ids)

    async def run() -> None:
        server = await serve_node(
            host,
            address,
            max_message_bytes=config.server.max_message_bytes,
            tls=config.cluster.tls,
            auth=config.auth,
        )
        log.info("shard node serving shards %s on %s", args.shards or "all", address)
        try:
            await wait_for_stop_signal()
        finally:
            await server.stop(config.server.grace_s)
            host.close()

    asyncio.run(run())
    return 0


def cmd_edge(args: argparse.Namespace) -> int:
    from server.edge.server import serve_edge
    from server.experiments.registry import ExperimentRegistry

    config = _config(args)
    if args.origin:
        config.edge.origins = list(args.origin)
    if args.address:
        config.edge.address = args.address
    setup_logging(config.server.log_level, config.server.log_format)
    setup_tracing(config.tracing, "edge")
    experiments = ExperimentRegistry(config)  # model versions are checked by the frontends
    run_server_loop(serve_edge(config.edge, auth=config.auth, experiments=experiments), config)
    return 0


def _parse_ranges(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


# --- demo --------------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    config = _config(args)
    root = Path(args.dir)
    config.data_dir = str(root / "state")
    setup_logging(config.server.log_level, "text")
    setup_tracing(config.tracing, "frontend")
    dataset = root / "dataset"
    marker = root / "state" / "loaded.json"
    if not marker.exists() and not (dataset / "manifest.json").exists():
        from server.tools.datagen import generate

        print(f"generating {args.items} items x {config.dim} dims and {args.users} users in {dataset} ...")
        started = time.monotonic()
        generate(dataset, items=args.items, users=args.users, dim=config.dim, seed=args.seed)
        print(f"generated in {time.monotonic() - started:.1f}s")

    async def run() -> None:
        from server.api.server import RecdServer
        from server.lifecycle import wait_for_stop_signal
        from server.metrics import serve_metrics
        from server.wiring import build_recd

        recd = build_recd(config)
        started = time.monotonic()
        await recd.sync_catalogue()
        await recd.popularity_sync.start()
        await recd.warm_up()
        server = RecdServer(recd, config)
        serve_metrics(config.server.metrics_address)
        await server.start()
        if marker.exists():
            print(
                f"reused the snapshot in {root / 'state'}: {len(recd.items)} items "
                f"in {time.monotonic() - started:.1f}s"
            )
        else:
            await _demo_load(server.address, dataset, recd, marker)
        _print_demo_help(server.address, config)
        await wait_for_stop_signal(args.exit_after)
        await server.stop()

    run_server_loop(run(), config)
    return 0


async def _demo_load(address: str, dataset: Path, recd: Any, marker: Path) -> None:
    from server.client import RecdClient
    from server.tools.loading.load import load_dataset

    client = RecdClient(address, timeout_s=120.0, tls=recd.config.server.client_tls)
    try:
        summary = await load_dataset(dataset, client, batch_size=2000, progress=True)
    finally:
        await client.close()
    print(summary)
    # A snapshot now makes the next start load indexes instead of rebuilding them from the log.
    for node in recd.router.node_names:
        host = getattr(recd.router.client(node), "host", None)
        if host is not None:
            await asyncio.to_thread(host.snapshot_all)
    marker.write_text(json.dumps({"loaded_at": time.time(), "items": len(recd.items)}))


def _print_demo_help(address: str, config: Config) -> None:
    metrics = config.server.metrics_address
    print(
        f"""
recd is serving on {address} (metrics: http://{metrics}/metrics). Try, in another terminal:

  .venv/bin/recd recommend --user u00042 -k 10
  .venv/bin/recd recommend --user u00042 -k 10 --filter lang=en --diversity 0.3
  .venv/bin/recd recommend --user someone-new -k 5 --context lang=de
  .venv/bin/recd similar --item i000123 -k 5
  grpcurl -plaintext -d '{{"user_id": "u00042", "k": 5}}' {address} recd.v1.Recommender/Recommend
  grpcurl -plaintext {address} recd.v1.Catalog/Stats
  grpcurl -plaintext {address} grpc.health.v1.Health/Check

Ctrl-C stops it (health goes NOT_SERVING, in-flight RPCs finish, then it exits).
""",
        flush=True,
    )


# --- client commands ---------------------------------------------------------------------------------
def _parse_filter(values: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for value in values:
        name, sep, allowed = value.partition("=")
        if not sep:
            raise SystemExit(f"--filter wants attr=v1,v2, got {value!r}")
        out.setdefault(name, []).extend(allowed.split(","))
    return out


def _parse_pairs(values: list[str]) -> dict[str, str]:
    return dict(v.partition("=")[::2] for v in values)


def _print_items(response: Any, as_json: bool) -> None:
    from google.protobuf import json_format

    if as_json:
        print(json_format.MessageToJson(response, preserving_proto_field_name=True))
        return
    names = {1: "ann", 2: "graph", 3: "popular"}
    for rank, item in enumerate(response.items, 1):
        sources = "+".join(names.get(s, "?") for s in item.sources)
        c = item.components
        print(
            f"{rank:3d}. {item.item_id:<14} score={item.score:7.4f}  [{sources}]  "
            f"sim={c.similarity:.3f} graph={c.graph:.3f} pop={c.popularity:.3f} fresh={c.freshness:.3f}"
        )
    cov = response.coverage
    print(
        f"coverage: {cov.shards_ok}/{cov.shards_total} shards"
        f"{' (partial)' if cov.partial else ''}; degraded: {list(cov.degraded_reasons) or 'none'}"
    )
    retrieval = {1: "hnsw", 2: "hnsw, filtered in the shards", 3: "exact scan of the filtered items"}
    print(f"retrieval: {retrieval.get(response.retrieval, 'none')}")


def cmd_recommend(args: argparse.Namespace) -> int:
    from server.client import RecdClient

    async def run() -> None:
        client = RecdClient(args.address, tls=_config(args).server.client_tls)
        try:
            response = await client.recommend(
                args.user, args.k, _parse_filter(args.filter), args.diversity, _parse_pairs(args.context)
            )
            _print_items(response, args.json)
            if not args.json:
                print(
                    f"model: {response.model_version}; cache: {response.cache_key} "
                    f"ttl={response.cache_ttl_seconds}s"
                )
        finally:
            await client.close()

    return _run_client(run)


def cmd_similar(args: argparse.Namespace) -> int:
    from server.client import RecdClient

    async def run() -> None:
        client = RecdClient(args.address, tls=_config(args).server.client_tls)
        try:
            _print_items(await client.similar(args.item, args.k, _parse_filter(args.filter)), args.json)
        finally:
            await client.close()

    return _run_client(run)


def _run_client(run: Any) -> int:
    import grpc

    try:
        asyncio.run(run())
    except grpc.aio.AioRpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    return 0


def cmd_gen(args: argparse.Namespace) -> int:
    from server.tools.datagen import generate

    started = time.monotonic()
    manifest = generate(Path(args.out), items=args.items, users=args.users, dim=args.dim, seed=args.seed)
    print(f"wrote {args.out} in {time.monotonic() - started:.1f}s: {manifest}")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from server.client import RecdClient
    from server.tools.loading.load import load_dataset

    async def run() -> bool:
        client = RecdClient(args.address, timeout_s=120.0, tls=_config(args).server.client_tls)
        try:
            summary = await load_dataset(Path(args.path), client, batch_size=args.batch_size, progress=True)
        finally:
            await client.close()
        print(summary)
        return bool(summary.ok)

    return 0 if asyncio.run(run()) else 1


def cmd_hash_token(args: argparse.Namespace) -> int:
    """Issues a token (or hashes an existing one): the token goes to its caller, the hash to the config."""
    from server.security.auth import hash_token, new_token
    from server.security.credentials import read_token_file

    if args.token_file:
        token = read_token_file(args.token_file, "--token-file")
    else:
        token = new_token()
        if args.out:
            # Created 0600 before the secret is written, never readable by others even for a moment.
            fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(token + "\n")
            print(
                f"token written to {args.out} (give it to the caller: their auth.token_file)", file=sys.stderr
            )
        else:
            print(f"token: {token}")
            print(
                "  shown once: give it to the caller (the file their auth.token_file names)", file=sys.stderr
            )
    print(f"hash: {hash_token(token)}")
    print("  add the hash to the caller's auth.callers[].token_hashes (or the callers file)", file=sys.stderr)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from server.tools.bench.main import run_bench

    return run_bench(args)


def cmd_config_show(args: argparse.Namespace) -> int:
    print(dump_config(_config(args)), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recd", description="recd recommendation server")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", help="YAML config file (defaults -> file -> RECD_* variables)")
        return p

    p = with_config(sub.add_parser("serve", help="run the gRPC frontend: a worker group, or one process"))
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--workers",
        type=int,
        help="frontend worker processes on the one port, over shard-node processes and a state node "
        "(default: workers.count, else one per core; 0 = --single-process)",
    )
    how.add_argument(
        "--single-process",
        action="store_true",
        help="everything in this one process: the frontend, every shard and the embedded stores",
    )
    p.set_defaults(func=cmd_serve)

    p = with_config(sub.add_parser("shard", help="run a shard node hosting logical shards"))
    p.add_argument(
        "--address", help="listen on host:port (default: its cluster.nodes entry, else 127.0.0.1:50061)"
    )
    p.add_argument("--node-id", type=int, help="cluster node N: host the shards the placement ring gives it")
    p.add_argument(
        "--metrics-address", help="serve /metrics on host:port (default: cluster.node_metrics_address; none)"
    )
    p.add_argument("--shards", help="shard ids to host, e.g. 0-9,15 (default: all; without --node-id)")
    p.set_defaults(func=cmd_shard)

    from server.tools.cluster.commands import add_commands
    from server.tools.evaluation.commands import add_commands as add_evaluation_commands

    add_commands(sub, with_config)
    add_evaluation_commands(sub, with_config)

    p = with_config(sub.add_parser("edge", help="run the edge cache tier in front of frontends"))
    p.add_argument("--origin", action="append", default=[], help="frontend host:port (repeatable)")
    p.add_argument("--address", help="listen on host:port (default: edge.address)")
    p.set_defaults(func=cmd_edge)

    p = with_config(sub.add_parser("demo", help="the whole system on embedded defaults, with generated data"))
    p.add_argument("--dir", default="data/demo")
    p.add_argument("--items", type=int, default=200_000)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--exit-after", type=float, default=None, help="stop after this many seconds")
    p.set_defaults(func=cmd_demo)

    for name, func, target in (("recommend", cmd_recommend, "--user"), ("similar", cmd_similar, "--item")):
        # --config: for server.client_tls (how to reach a frontend that serves TLS).
        p = with_config(sub.add_parser(name, help=f"call {name} on a running server"))
        p.add_argument(target, required=True)
        p.add_argument("-k", type=int, default=10)
        p.add_argument("--filter", action="append", default=[], help="attr=v1,v2 (repeatable)")
        if name == "recommend":
            p.add_argument("--diversity", type=float, default=0.0)
            p.add_argument("--context", action="append", default=[], help="key=value (repeatable)")
        p.add_argument("--address", default="127.0.0.1:50051")
        p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)

    p = sub.add_parser("gen", help="write a synthetic dataset (Parquet)")
    p.add_argument("--out", default="data/dataset")
    p.add_argument("--items", type=int, default=200_000)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=cmd_gen)

    p = with_config(
        sub.add_parser("load", help="bulk-load items, users, interactions, edges into a running server")
    )
    p.add_argument("path", help="a dataset directory or files (Parquet, CSV, JSONL)")
    p.add_argument("--address", default="127.0.0.1:50051")
    p.add_argument("--batch-size", type=int, default=1000)
    p.set_defaults(func=cmd_load)

    p = with_config(sub.add_parser("bench", help="benchmarks; results go to BENCHMARKS.md"))
    p.add_argument(
        "suite",
        nargs="?",
        default="all",
        # Every suite main.py registers, so a new suite needs no second list here.
        choices=["all", "rank", *BENCH_SUITES],
    )
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument("--out", default="BENCHMARKS.md")
    p.set_defaults(func=cmd_bench)

    from server.tools.schema_cli import add_graph_build_arguments, cmd_graph_build, cmd_schema_apply

    schema = sub.add_parser("schema", help="database schema of the real backends").add_subparsers(
        dest="schema_command", required=True
    )
    with_config(
        schema.add_parser("apply", help="create the CQL schema and the Neo4j constraint")
    ).set_defaults(func=cmd_schema_apply)
    graph = sub.add_parser("graph", help="the item graph").add_subparsers(dest="graph_command", required=True)
    p = with_config(graph.add_parser("build", help="derive SIMILAR_TO edges from co-interactions"))
    add_graph_build_arguments(p)
    p.set_defaults(func=cmd_graph_build)

    security = sub.add_parser("security", help="callers' credentials").add_subparsers(
        dest="security_command", required=True
    )
    p = security.add_parser(
        "hash-token", help="issue a bearer token and print its salted hash for the config"
    )
    p.add_argument("--out", help="write the new token to this file (created 0600) instead of printing it")
    p.add_argument("--token-file", help="hash this existing token instead of issuing a new one")
    p.set_defaults(func=cmd_hash_token)

    add_experiments_parsers(sub, with_config)

    config_parser = sub.add_parser("config", help="configuration")
    config_sub = config_parser.add_subparsers(dest="config_command", required=True)
    with_config(config_sub.add_parser("show", help="print the effective config")).set_defaults(
        func=cmd_config_show
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        # A configuration mistake (a bad key, a listener refused, certificates that do not load): what to
        # fix, without a traceback.
        print(f"recd: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

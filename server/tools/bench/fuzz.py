"""The fuzz run, measured: every public RPC of a real frontend on 127.0.0.1 (a 2,000-item toy catalogue)
gets Hypothesis-drawn raw and structured requests (server/tools/fuzz); per RPC, the requests tried, the
answers by status, the unexpected ones (INTERNAL/UNKNOWN/DATA_LOSS/UNAVAILABLE), the hangs (no answer
within 10 s) and whether the server was healthy after. Then the oversized requests of the security
review, each timed from send to refusal, with the server's resident memory before and after."""

from __future__ import annotations

import gc
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc

from server.config import load_config
from server.gen.recd.v1 import catalog_pb2, common_pb2, recommender_pb2
from server.tools.bench.report import table
from server.tools.fuzz.run import MODES, fuzz
from server.tools.fuzz.target import FuzzTarget, frontend, shard_node, toy_items

DIM = 16
SHARD_DIM = 8


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _oversized() -> list[tuple[str, str, Any]]:
    unit = [1.0] + [0.0] * (DIM - 1)
    return [
        (
            "UpsertItems, one item with 100,000 attribute names",
            "/recd.v1.Catalog/UpsertItems",
            catalog_pb2.UpsertItemsRequest(
                items=[
                    catalog_pb2.Item(
                        item_id="big", embedding=unit, attributes={f"attr{n}": "v" for n in range(100_000)}
                    )
                ]
            ),
        ),
        (
            "UpsertItems, one 1 MB attribute value",
            "/recd.v1.Catalog/UpsertItems",
            catalog_pb2.UpsertItemsRequest(
                items=[catalog_pb2.Item(item_id="big", embedding=unit, attributes={"desc": "x" * 2**20})]
            ),
        ),
        (
            "Recommend, a filter naming 100,000 attributes",
            "/recd.v1.Recommender/Recommend",
            recommender_pb2.RecommendRequest(
                user_id="u", filter={f"a{n}": common_pb2.AllowedValues(values=["x"]) for n in range(100_000)}
            ),
        ),
        (
            "GetItems, 1,000,000 ids",
            "/recd.v1.Catalog/GetItems",
            catalog_pb2.GetItemsRequest(item_ids=[f"i{n}" for n in range(1_000_000)]),
        ),
        (
            "UpsertItems, an embedding of 1e-30s (norm underflows in float32)",
            "/recd.v1.Catalog/UpsertItems",
            catalog_pb2.UpsertItemsRequest(items=[catalog_pb2.Item(item_id="tiny", embedding=[1e-30] * DIM)]),
        ),
        (
            "UpsertUsers, one user id twice",
            "/recd.v1.Catalog/UpsertUsers",
            catalog_pb2.UpsertUsersRequest(
                users=[catalog_pb2.User(user_id="d"), catalog_pb2.User(user_id="d")]
            ),
        ),
    ]


def _time_oversized(target: FuzzTarget) -> tuple[list[list[object]], dict[str, Any]]:
    rows: list[list[object]] = []
    result: dict[str, Any] = {}
    # Encoded before the memory is read: client and server share this process.
    requests = [(name, path, request.SerializeToString()) for name, path, request in _oversized()]
    gc.collect()
    result["rss_mib_before"] = _rss_mib()
    for name, path, raw in requests:
        started = time.perf_counter()
        try:
            target.channel.unary_unary(path)(raw, timeout=60)
            code = grpc.StatusCode.OK
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
        ms = (time.perf_counter() - started) * 1000
        rows.append([name, f"{len(raw) / 2**20:.1f} MB", code.name, ms])
        result[name] = {"code": code.name, "ms": ms, "bytes": len(raw)}
    gc.collect()
    result["rss_mib_after"] = _rss_mib()
    return rows, result


def _fuzz_all(
    target: FuzzTarget, dim: int, examples: int
) -> tuple[list[list[object]], Counter[str], dict[str, Any]]:
    """Per method: a table row, and its counts; with the totals over all methods."""
    rows: list[list[object]] = []
    totals: Counter[str] = Counter()
    per_method: dict[str, Any] = {}
    for method in target.methods:
        runs = [fuzz(target, method, mode, dim=dim, examples=examples, strict=False) for mode in MODES]
        codes: Counter[str] = sum((r.codes for r in runs), Counter())
        requests, bad = sum(r.requests for r in runs), sum(r.bad for r in runs)
        # A stream that sends nothing for 10 s is waiting for changes, not hung.
        hangs = 0 if method.streaming else sum(r.hangs for r in runs)
        healthy = all(r.healthy_after for r in runs)
        answers = ", ".join(f"{c} {n}" for c, n in codes.most_common())
        seconds = sum(r.seconds for r in runs)
        rows.append([method.name, requests, answers, bad, hangs, "yes" if healthy else "NO", seconds])
        per_method[method.name] = {
            "requests": requests,
            "codes": dict(codes),
            "unexpected": bad,
            "hangs": hangs,
            "healthy_after": healthy,
        }
        totals.update(
            {"requests": requests, "unexpected": bad, "hangs": hangs, "unhealthy": int(not healthy)}
        )
    return rows, totals, per_method


HEADERS = ["RPC", "requests", "answers", "unexpected", "hangs", "healthy after", "seconds"]


def _summary(totals: Counter[str], alive: bool, what: str) -> str:
    return (
        f"In all: {totals['requests']:,} requests, {totals['unexpected']} unexpected answers, "
        f"{totals['hangs']} hangs, {what} crashed: {'no' if alive else 'YES'}."
    )


def run_fuzz_bench(quick: bool = False) -> tuple[str, dict[str, Any]]:
    examples = 100 if quick else 500
    config = load_config(environ={})
    config.dim = DIM
    config.data_dir = None
    config.server.address = "127.0.0.1:0"
    config.ranking.ranker = "cpu"
    result: dict[str, Any] = {"examples_per_mode": examples}
    target = frontend(config, toy_items(2000, DIM))
    try:
        rows, totals, result["methods"] = _fuzz_all(target, DIM, examples)
        oversized, result["oversized"] = _time_oversized(target)
        alive = target.healthy()
    finally:
        target.close()
    node = shard_node(SHARD_DIM)
    try:
        shard_rows, shard_totals, result["shard_methods"] = _fuzz_all(node, SHARD_DIM, examples)
        node_alive = node.healthy()
    finally:
        node.close()
    result.update(
        totals=dict(totals), alive_after=alive, shard_totals=dict(shard_totals), shard_alive_after=node_alive
    )
    rss_before, rss_after = result["oversized"]["rss_mib_before"], result["oversized"]["rss_mib_after"]
    body = "\n\n".join(
        [
            f"{examples} raw + {examples} structured requests per RPC (derandomised Hypothesis; `make test` "
            f"makes the same run with 100 each, 50 on the Shard API); unexpected = INTERNAL, UNKNOWN, "
            f"DATA_LOSS or UNAVAILABLE; hang = no answer in 10 s (a stream counts once its first message "
            f"arrives). Healthy after = health SERVING and (frontend) a normal Recommend answered.",
            "A frontend (embedded defaults, 2,000 toy items, dimension 16), every public RPC:",
            table(HEADERS, rows),
            _summary(totals, alive, "server"),
            "A shard node (4 in-memory shards, 400 items, dimension 8), every Shard API RPC:",
            table(HEADERS, shard_rows),
            _summary(shard_totals, node_alive, "node"),
            "Oversized and malformed requests to the frontend, time from send to answer (client and server "
            "in one process):",
            table(["request", "size", "answer", "ms"], oversized),
            f"Resident memory of the process (client and server), the requests already encoded: "
            f"{rss_before:,.0f} MiB before these requests, {rss_after:,.0f} MiB after.",
        ]
    )
    return body, result

"""`recd bench SUITE`: runs a suite and rewrites its section of BENCHMARKS.md."""

from __future__ import annotations

import argparse
import json

from server.tools.bench.report import write_section

SUITES = {
    "score": ("CPU FP16 scoring vs NumPy FP32", "server.tools.bench.score", "run_score_bench"),
    "ann": ("Sharded ANN: recall and QPS", "server.tools.bench.ann", "run_ann_bench"),
    "ingest": ("Durable ingest", "server.tools.bench.ingest", "run_ingest_bench"),
    "recommend": ("Recommend vs an empty RPC", "server.tools.bench.recommend", "run_recommend_bench"),
    "edge": (
        "Edge tier: cache hits vs an empty RPC, hit rate, coalescing",
        "server.tools.bench.edge",
        "run_edge_bench",
    ),
    "cluster": (
        "Shard nodes as processes: a local 4-node cluster",
        "server.tools.bench.cluster",
        "run_cluster_bench",
    ),
    "availability": (
        "Write availability: a shard node down under writes, and back",
        "server.tools.bench.availability",
        "run_availability_bench",
    ),
    "seen": ("The seen set: cost and heavy users", "server.tools.bench.seen", "run_seen_bench"),
    "quality": (
        "Recommendation quality through the serving path (recd eval)",
        "server.tools.bench.quality",
        "run_quality_bench",
    ),
    "filters": (
        "Filters inside retrieval: filtered Recommend by selectivity",
        "server.tools.bench.filters",
        "run_filters_bench",
    ),
    "backends": ("Recommend with the real backends", "server.tools.bench.backends", "run_backends_bench"),
    "scale": (
        "Many frontends: the worker group by workers, and visibility across frontends",
        "server.tools.bench.scale",
        "run_scale_bench",
    ),
    "reload": ("Hot model reload under load", "server.tools.bench.reload", "run_reload_bench"),
    "churn": ("Bounded indexes under churn", "server.tools.bench.churn", "run_churn_bench"),
    "fuzz": (
        "Fuzzed inputs: every RPC of a frontend and a shard node",
        "server.tools.bench.fuzz",
        "run_fuzz_bench",
    ),
    "tls": (
        "The cost of security: Recommend over mutual TLS, and with tokens, beside plaintext",
        "server.tools.bench.tls",
        "run_tls_bench",
    ),
    "tracing": (
        "The cost of tracing: Recommend with tracing off, on at 1% and at 100%",
        "server.tools.bench.tracing",
        "run_tracing_bench",
    ),
    "experiments": (
        "The cost of experiments: assignment, the exposure log and attribution",
        "server.tools.bench.experiments",
        "run_experiments_bench",
    ),
    "rankers": (
        "Recommend end to end: GPU ranker vs CPU ranker",
        "server.tools.bench.recommend",
        "run_ranker_comparison",
    ),
}


def run_bench(args: argparse.Namespace) -> int:
    import importlib

    names = (
        [n for n in SUITES if n not in ("rankers", "backends", "edge", "scale")]
        if args.suite == "all"
        else [args.suite]
    )
    if args.suite == "rank":
        from server.tools.bench.rank import main as rank_main

        return int(rank_main(["--out", args.out] + (["--quick"] if args.quick else [])) or 0)
    for name in names:
        title, module, func = SUITES[name]
        body, result = getattr(importlib.import_module(module), func)(quick=args.quick)
        command = f"recd bench {name}" + (" --quick" if args.quick else "")
        if not args.quick:
            write_section(args.out, name, title, command, body)
        print(f"## {title}\n\n{body}\n")
        print(json.dumps(result, default=float))
    return 0

"""`recd bench experiments`: what experiments cost per Recommend and per RecordInteractions.

Five `recd serve` processes on copies of the demo snapshot run at once, measured in alternating phases:
- off: no experiment (the reference);
- one pipeline: every user in an experiment whose two variants run the same pipeline, so the cost is
  assignment, the exposure log (a queue, then batched writes to the profile store) and the per-variant
  metrics;
- another model: the second variant ranks with another model version, in the same batches as the first
  (one ranker call per version);
- another retrieval depth: the second variant searches with another ef and k, in the same batches (one
  shard search per set of parameters);
- two pipelines: the second variant overrides a graph size, which needs a pipeline of its own, so the two
  variants' requests are batched apart.
Each phase: Recommend in a closed loop, then RecordInteractions of one click each on an item the user was
served (the worst case for attribution: every interaction is attributed and makes an outcome; the
attribution runs off the write path, in batches). Server CPU per call comes from each server's own counter.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from server.gen.recd.v1 import recommender_pb2, recommender_pb2_grpc
from server.ranking.model import DEFAULT_MODEL_FILE
from server.security.tls import aio_channel
from server.tools.bench.loadgen import LoadResult, closed_loop
from server.tools.bench.recommend import CONCURRENCY, ensure_demo_state, user_ids, zipf_order
from server.tools.bench.report import table
from server.tools.bench.serverproc import recd_server, scrape

CPU = "process_cpu_seconds_total"
CLICK_USERS = 2_000  # users served once before the phases, whose clicks the interaction phases send


def _experiment(second: dict[str, object]) -> list[dict[str, object]]:
    return [
        {
            "name": "bench",
            "salt": "bench",
            "traffic": 1.0,
            "variants": [{"name": "control"}, {"name": "treatment", "overrides": second}],
        }
    ]


@dataclass
class _Mode:
    name: str
    key: str
    experiments: list[dict[str, object]] | None
    address: str = ""
    metrics_address: str = ""
    recommend: list[LoadResult] = field(default_factory=list)
    interactions: list[LoadResult] = field(default_factory=list)
    recommend_cpu_s: float = 0.0
    interactions_cpu_s: float = 0.0
    clicks: list[tuple[str, str]] = field(default_factory=list)


async def _served(address: str, users: list[str]) -> list[tuple[str, str]]:
    """(user, the first item served to them) for each user: what the interaction phases click."""
    async with aio_channel(address, None) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        out = []
        for user in users:
            answer = await stub.Recommend(recommender_pb2.RecommendRequest(user_id=user, k=10), timeout=5)
            if answer.items:
                out.append((user, answer.items[0].item_id))
        return out


def run_experiments_bench(quick: bool = False) -> tuple[str, dict[str, float]]:
    root = Path("data/bench/quick-demo") if quick else Path("data/demo")
    ensure_demo_state(root, 20_000 if quick else 200_000, 2_000 if quick else 20_000)
    users = user_ids(root)
    order = zipf_order(len(users), 1_000_000)
    rounds, phase_s = (2, 3.0) if quick else (3, 5.0)

    async def recommend(channel, i):  # type: ignore[no-untyped-def]
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        request = recommender_pb2.RecommendRequest(user_id=users[int(order[i % len(order)])], k=10)
        return await stub.Recommend(request, timeout=2)

    def click(mode: _Mode):  # type: ignore[no-untyped-def]
        async def call(channel, i):  # type: ignore[no-untyped-def]
            user, item = mode.clicks[i % len(mode.clicks)]
            interaction = recommender_pb2.Interaction(user_id=user, item_id=item, action="click")
            request = recommender_pb2.RecordInteractionsRequest(interactions=[interaction])
            return await recommender_pb2_grpc.RecommenderStub(channel).RecordInteractions(request, timeout=2)

        return call

    modes = [
        _Mode("no experiment", "off", None),
        _Mode("experiment, one pipeline", "same", _experiment({})),
        _Mode("experiment, another model", "model", _experiment({"model_version": "bench-other"})),
        _Mode("experiment, another retrieval depth", "ann", _experiment({"ef_search": 24, "ann_k": 150})),
        _Mode("experiment, two pipelines", "split", _experiment({"graph_limit_per_hop": 5})),
    ]
    with (
        tempfile.TemporaryDirectory(prefix="recd-bench-experiments-") as directory,
        contextlib.ExitStack() as servers,
    ):
        other_model = Path(directory) / "other_model.yaml"
        shipped = yaml.safe_load(DEFAULT_MODEL_FILE.read_text())
        shipped["version"] = "bench-other"
        shipped["weights"]["popularity"] = shipped["weights"]["popularity"] * 2
        other_model.write_text(yaml.safe_dump(shipped))
        for mode in modes:
            # Each server writes its exposures and interactions to its own copy of the snapshot.
            state = Path(directory) / mode.key
            shutil.copytree(root / "state", state)
            env = {"RECD_DATA_DIR": str(state)}
            if mode.experiments is not None:
                path = Path(directory) / f"{mode.key}.yaml"
                path.write_text(yaml.safe_dump(mode.experiments))
                env["RECD_EXPERIMENTS__FILE"] = str(path)
                env["RECD_RANKING__EXTRA_MODEL_FILES"] = f"[{other_model}]"
            mode.address, mode.metrics_address, _ = servers.enter_context(recd_server(env))
            mode.clicks = asyncio.run(_served(mode.address, users[:CLICK_USERS]))
        for _ in range(rounds):
            for mode in modes:
                before = scrape(mode.metrics_address)[CPU]
                mode.recommend.append(asyncio.run(closed_loop(recommend, mode.address, CONCURRENCY, phase_s)))
                middle = scrape(mode.metrics_address)[CPU]
                mode.interactions.append(
                    asyncio.run(closed_loop(click(mode), mode.address, CONCURRENCY, phase_s))
                )
                mode.recommend_cpu_s += middle - before
                mode.interactions_cpu_s += scrape(mode.metrics_address)[CPU] - middle
        attributed = {
            mode.key: sum(
                v
                for k, v in scrape(mode.metrics_address).items()
                if k.startswith("recd_experiment_actions_total{")
            )
            for mode in modes
        }

    result: dict[str, float] = {}
    rows: list[list[object]] = []
    for mode in modes:
        rec, clicks = LoadResult.merged(mode.recommend), LoadResult.merged(mode.interactions)
        rec_cpu_ms = mode.recommend_cpu_s / max(1, rec.requests) * 1e3
        click_cpu_ms = mode.interactions_cpu_s / max(1, clicks.requests) * 1e3
        key = mode.key
        result |= {
            f"{key}_recommend_qps": rec.qps,
            f"{key}_recommend_p99_ms": rec.percentile_ms(99),
            f"{key}_recommend_cpu_ms": rec_cpu_ms,
            f"{key}_interactions_qps": clicks.qps,
            f"{key}_interactions_p99_ms": clicks.percentile_ms(99),
            f"{key}_interactions_cpu_ms": click_cpu_ms,
            f"{key}_attributed": attributed[key],
            f"{key}_errors": float(rec.errors + clicks.errors),
        }
        rows.append(
            [f"Recommend k=10, {mode.name}", rec.qps, rec.percentile_ms(50), rec.percentile_ms(99), rec.errors,
             f"{rec_cpu_ms:.2f}"]
        )  # fmt: skip
        rows.append(
            [f"RecordInteractions (1 click), {mode.name}", clicks.qps, clicks.percentile_ms(50),
             clicks.percentile_ms(99), clicks.errors, f"{click_cpu_ms:.2f}"]
        )  # fmt: skip
    for key in ("same", "model", "ann", "split"):
        result[f"{key}_recommend_cpu_ratio"] = (
            result[f"{key}_recommend_cpu_ms"] / result["off_recommend_cpu_ms"]
        )
        result[f"{key}_recommend_qps_ratio"] = result[f"{key}_recommend_qps"] / result["off_recommend_qps"]
        result[f"{key}_interactions_cpu_ratio"] = (
            result[f"{key}_interactions_cpu_ms"] / result["off_interactions_cpu_ms"]
        )
    body = table(["RPC", "QPS", "p50 ms", "p99 ms", "errors", "server CPU ms / call"], rows)
    body += (
        "\n\nAgainst no experiment, in the same run: with every user in an experiment whose variants share"
        f" one pipeline, server CPU per Recommend **{result['same_recommend_cpu_ratio']:.2f}x** (QPS"
        f" {result['same_recommend_qps_ratio']:.2f}x): assignment, the exposure log, per-variant metrics;"
        " with a variant ranking by another model (the same batches, one ranker call per version)"
        f" **{result['model_recommend_cpu_ratio']:.2f}x** (QPS {result['model_recommend_qps_ratio']:.2f}x);"
        " with a variant searching deeper (ef 24, k 150: the same batches, one shard search per set of"
        f" parameters) **{result['ann_recommend_cpu_ratio']:.2f}x** (QPS {result['ann_recommend_qps_ratio']:.2f}x);"
        f" with two pipelines (the variants batched apart) **{result['split_recommend_cpu_ratio']:.2f}x**"
        f" (QPS {result['split_recommend_qps_ratio']:.2f}x). Per RecordInteractions with every click"
        " attributed (off the write path, in batches: one read of the users' exposures and one write of"
        " outcomes per batch):"
        f" **{result['same_interactions_cpu_ratio']:.2f}x** CPU"
        f" ({result['same_attributed']:,.0f} clicks attributed by the one-pipeline server,"
        f" {result['off_attributed']:,.0f} by the reference). Five `recd serve` processes (one process"
        " each, embedded backends, each on its own copy of the demo snapshot) run at once and the phases"
        f" alternate between them: {rounds} rounds of {phase_s:.0f} s Recommend then {phase_s:.0f} s"
        f" RecordInteractions per mode (each after 1 s of warm-up). Closed loop, {CONCURRENCY} concurrent"
        f" callers, Zipf-distributed users of the demo dataset ({len(users):,} users); the clicks are on the"
        f" first item served to each of {CLICK_USERS:,} users before the phases. Machine: {os.cpu_count()}"
        " cores."
    )
    return body, result

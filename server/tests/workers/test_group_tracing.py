"""Tracing in a worker group: every worker and every shard node exports its own spans, and a Recommend's
trace crosses from the worker that took it to the group's shard nodes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

from server.tests.workers.group import Group, prepare_demo_state, until_every_worker_answers
from server.tools.otlp_receiver import OtlpReceiver, ReceivedSpan

WORKERS = 2
SERVER = ProtoSpan.SpanKind.SPAN_KIND_SERVER


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


@pytest.fixture(scope="module")
def traced_group(
    tmp_path_factory: pytest.TempPathFactory, receiver: OtlpReceiver
) -> Iterator[tuple[Group, str]]:
    root = tmp_path_factory.mktemp("traced-group")
    demo = prepare_demo_state(root, items=1000, users=50)
    user = pq.read_table(demo / "dataset" / "users.parquet", columns=["user_id"]).column(0)[0].as_py()
    tracing = {
        "enabled": True,
        "endpoint": receiver.endpoint,
        "sampling_ratio": 1.0,
        "export_interval_ms": 100.0,
    }
    group = Group(root, Path(demo / "state"), WORKERS, {"tracing": tracing})
    try:
        group.start()
        yield group, user
    finally:
        group.close()


async def test_every_worker_and_shard_node_exports_and_traces_reach_the_shard_nodes(
    traced_group: tuple[Group, str], receiver: OtlpReceiver
) -> None:
    group, user = traced_group
    await until_every_worker_answers(group, user, WORKERS)

    def recommends_by_instance(spans: list[ReceivedSpan]) -> set[str]:
        return {
            s.instance
            for s in spans
            if s.service == "recd-frontend" and s.name == "recd.v1.Recommender/Recommend" and s.kind == SERVER
        }

    def crossing_searches(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
        traced_recommends = {
            s.trace_id
            for s in spans
            if s.service == "recd-frontend" and s.name == "recd.v1.Recommender/Recommend"
        }
        return [
            s
            for s in spans
            if s.service == "recd-shard"
            and s.name == "recd.v1.Shard/Search"
            and s.kind == SERVER
            and s.trace_id in traced_recommends
        ]

    workers = {f"worker-{i}" for i in range(WORKERS)}
    # Every process exports on its own schedule: the workers' spans and the nodes' arrive in any order.
    spans = await asyncio.to_thread(
        receiver.wait_for,
        lambda got: len(recommends_by_instance(got) & workers) >= WORKERS and bool(crossing_searches(got)),
        30.0,
    )
    instances = recommends_by_instance(spans)
    assert len(instances & workers) == WORKERS, f"Recommend spans came from {instances}"

    # Each Recommend's trace goes on into a shard node's process: the node's own Search span, exported by
    # the node, is in the same trace, under the worker's client span.
    by_id = {s.span_id: s for s in spans}
    node_searches = [
        s
        for s in spans
        if s.service == "recd-shard" and s.name == "recd.v1.Shard/Search" and s.kind == SERVER
    ]
    assert node_searches, (
        f"no shard node exported a Search span; services: {sorted({s.service for s in spans})}"
    )
    assert all(s.instance.startswith("shard-node-") for s in node_searches)
    crossing = crossing_searches(spans)
    assert crossing, "no shard node Search span belongs to a Recommend's trace"
    for search in crossing:
        caller = by_id.get(search.parent_span_id)
        assert caller is not None and caller.service == "recd-frontend" and caller.instance in workers

"""A Recommend through the edge, a frontend and a shard node over gRPC, traced and exported over OTLP to a
real receiver: its spans arrive as one trace, each hop the child of the one before."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as ProtoStatus

from server import tracing
from server.api.server import RecdServer
from server.client import RecdClient
from server.config import Config
from server.domain import Interaction
from server.edge.server import EdgeServer, build_edge
from server.gen.recd.v1 import recommender_pb2, recommender_pb2_grpc
from server.logs import JsonFormatter
from server.routing.router import ShardRouter
from server.routing.topology import ShardNode
from server.runtime import Recd
from server.tests.api.test_end_to_end import cluster_items, load_toy
from server.tests.conftest import ToyCatalogue, make_config
from server.tests.edge.fakes import edge_config
from server.tools.otlp_receiver import OtlpReceiver, ReceivedSpan
from server.wiring import _frontend_parts, build_cache, build_graph, build_profiles, build_shard_host
from shards.client import GrpcShardClient
from shards.service import ShardNodeServer, serve_node

SERVER = ProtoSpan.SpanKind.SPAN_KIND_SERVER
CLIENT = ProtoSpan.SpanKind.SPAN_KIND_CLIENT
# The caller's own trace: the edge must continue it, not start another.
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@dataclass
class Stack:
    receiver: OtlpReceiver
    edge: EdgeServer
    frontend: RecdServer
    node: ShardNodeServer


def traced_config(receiver: OtlpReceiver) -> Config:
    config = make_config()
    config.tracing.enabled = True
    config.tracing.endpoint = receiver.endpoint
    config.tracing.sampling_ratio = 1.0
    config.tracing.export_interval_ms = 50.0
    return config


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    """edge -> frontend -> one shard node (every shard) over gRPC, all traced, exporting to a receiver."""
    receiver = OtlpReceiver().start()
    config = traced_config(receiver)
    # Before any server or client is built: they decide at construction whether to trace.
    assert tracing.setup_tracing(config.tracing, "test")
    host = build_shard_host(config)
    node = await serve_node(host, "127.0.0.1:0")
    shard_client = GrpcShardClient(f"127.0.0.1:{node.port}")
    router = ShardRouter(
        config.dim,
        config.shards.count,
        config.shards.vnodes,
        [ShardNode("node-0", shard_client, tuple(range(config.shards.count)))],
    )
    recd = Recd(
        config,
        router,
        build_profiles(config),
        build_graph(config),
        build_cache(config),
        *_frontend_parts(config),
    )
    frontend = RecdServer(recd, config)
    await frontend.start()
    edge = build_edge(edge_config(origins=[frontend.address]))
    await edge.start()
    try:
        yield Stack(receiver, edge, frontend, node)
    finally:
        await edge.stop()
        await frontend.stop()
        await node.stop(0)
        host.close()
        tracing.shutdown_tracing()
        receiver.stop()


def only(spans: list[ReceivedSpan], name: str, kind: int | None = None) -> ReceivedSpan:
    found = [s for s in spans if s.name == name and (kind is None or s.kind == kind)]
    assert len(found) == 1, (
        f"expected one {name} span (kind {kind}), got {len(found)}: {[s.name for s in spans]}"
    )
    return found[0]


async def test_a_recommend_through_edge_frontend_and_shard_node_arrives_as_one_trace(
    stack: Stack, toy: ToyCatalogue
) -> None:
    frontend_client = RecdClient(stack.frontend.address, timeout_s=20.0)
    try:
        await load_toy(frontend_client, toy)
        # A history, so the user has a vector and the ANN source (the shard nodes) answers.
        history = cluster_items(toy, 3, 8)
        await frontend_client.record_interactions([Interaction("tina", i, "click", 1.0, 0) for i in history])
    finally:
        await frontend_client.close()

    async with grpc.aio.insecure_channel(stack.edge.address) as channel:
        answer = await recommender_pb2_grpc.RecommenderStub(channel).Recommend(
            recommender_pb2.RecommendRequest(user_id="tina", k=10),
            metadata=(("traceparent", f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"),),
            timeout=20,
        )
    assert len(answer.items) == 10 and answer.coverage.shards_ok == answer.coverage.shards_total > 0

    def complete(spans: list[ReceivedSpan]) -> bool:
        return any(
            s.trace_id == CALLER_TRACE and s.name == "recd.v1.Shard/Search" and s.kind == SERVER
            for s in spans
        )

    assert tracing.flush_tracing(10.0)
    received = stack.receiver.wait_for(complete, timeout_s=10.0)
    trace = [s for s in received if s.trace_id == CALLER_TRACE]
    assert trace, f"no span of the caller's trace among {len(received)} received"
    by_id = {s.span_id: s for s in trace}

    # The chain, hop by hop: each span's parent is the one before it.
    edge_server = next(
        s
        for s in trace
        if s.name == "recd.v1.Recommender/Recommend" and s.kind == SERVER and s.parent_span_id == CALLER_SPAN
    )
    edge_client = only(trace, "recd.v1.Recommender/Recommend", CLIENT)
    frontend_server = next(
        s
        for s in trace
        if s.name == "recd.v1.Recommender/Recommend" and s.kind == SERVER and s is not edge_server
    )
    batch = only(trace, "recommend batch")
    assert edge_client.parent_span_id == edge_server.span_id
    assert frontend_server.parent_span_id == edge_client.span_id
    assert batch.parent_span_id == frontend_server.span_id
    assert batch.attributes["recd.batch.size"] == 1

    steps = {s.name: s for s in trace if s.name.startswith("recommend/")}
    for step in ("hydrate_user", "candidates", "filter", "rank", "select"):
        assert steps[f"recommend/{step}"].parent_span_id == batch.span_id, step
    ann = steps["recommend/ann"]
    assert ann.parent_span_id == steps["recommend/candidates"].span_id

    shard_client = only(trace, "recd.v1.Shard/Search", CLIENT)
    shard_server = only(trace, "recd.v1.Shard/Search", SERVER)
    assert shard_client.parent_span_id == ann.span_id
    assert shard_server.parent_span_id == shard_client.span_id
    assert shard_server.attributes["rpc.service"] == "recd.v1.Shard"

    # Every span of the trace hangs off the caller's span: no orphan, no second root.
    for s in trace:
        ancestor = s
        while ancestor.parent_span_id in by_id:
            ancestor = by_id[ancestor.parent_span_id]
        assert ancestor.parent_span_id == CALLER_SPAN, f"{s.name} does not lead back to the caller"
    # Nothing of this Recommend leaked into another trace.
    assert not [s for s in received if s.trace_id != CALLER_TRACE and s.name.startswith("recommend")]


async def test_log_lines_inside_a_traced_request_carry_its_trace_id(stack: Stack) -> None:
    formatter = JsonFormatter()
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "inside", None, None)
    with tracing.span("unit of work") as current:
        line = json.loads(formatter.format(record))
    context = current.get_span_context()
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")
    assert "trace_id" not in json.loads(formatter.format(record))  # outside any span


async def test_rpc_spans_carry_the_status_code_and_only_server_faults_are_errors(stack: Stack) -> None:
    trace_id = "5bf92f3577b34da6a3ce929d0e0e4737"
    async with grpc.aio.insecure_channel(stack.edge.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await recommender_pb2_grpc.RecommenderStub(channel).Recommend(
                recommender_pb2.RecommendRequest(user_id="", k=10),
                metadata=(("traceparent", f"00-{trace_id}-{CALLER_SPAN}-01"),),
                timeout=20,
            )
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert tracing.flush_tracing(10.0)
    servers = [
        s
        for s in stack.receiver.wait_for(
            lambda got: sum(s.trace_id == trace_id and s.kind == SERVER for s in got) >= 2, 10.0
        )
        if s.trace_id == trace_id and s.kind == SERVER
    ]
    assert len(servers) == 2  # the edge's and the frontend's
    for s in servers:
        assert s.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert (
            s.status_code == ProtoStatus.StatusCode.STATUS_CODE_UNSET
        )  # the caller's fault, not the server's

"""Calls to Redis, Cassandra/ScyllaDB and Neo4j are CLIENT spans under the caller's span; a failed call is
an ERROR span even where the backend fails open (the cache answers a miss)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as ProtoStatus

from server import tracing
from server.backends.neo4j_graph import Neo4jItemGraph
from server.backends.redis_cache import RedisCache
from server.backends.scylla import ScyllaProfileStore
from server.config import CacheConfig, GraphConfig, ProfilesConfig
from server.tests.backends.real_backends import redis_cache
from server.tests.conftest import make_config
from server.tools.otlp_receiver import OtlpReceiver, ReceivedSpan

CLIENT = ProtoSpan.SpanKind.SPAN_KIND_CLIENT
ERROR = ProtoStatus.StatusCode.STATUS_CODE_ERROR


def refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        config = make_config()
        config.tracing.enabled = True
        config.tracing.endpoint = r.endpoint
        config.tracing.sampling_ratio = 1.0
        assert tracing.setup_tracing(config.tracing, "test")
        try:
            yield r
        finally:
            tracing.shutdown_tracing()


def under(caller: str, receiver: OtlpReceiver) -> list[ReceivedSpan]:
    """The spans whose parent is the span named `caller`."""
    assert tracing.flush_tracing(10.0)
    spans = receiver.spans()
    parents = {s.span_id for s in spans if s.name == caller}
    assert len(parents) == 1
    return [s for s in spans if s.parent_span_id in parents]


async def test_calls_to_unreachable_backends_are_error_client_spans(receiver: OtlpReceiver) -> None:
    cache = RedisCache(
        CacheConfig(backend="redis", url=f"redis://127.0.0.1:{refused_port()}/0", timeout_ms=200.0)
    )
    profiles = ScyllaProfileStore(
        ProfilesConfig(backend="scylla", port=refused_port(), connect_timeout_s=1.0)
    )
    graph = Neo4jItemGraph(GraphConfig(backend="neo4j", uri=f"bolt://127.0.0.1:{refused_port()}"))
    try:
        with tracing.span("caller"):
            assert await cache.get("k") is None  # fails open: a miss
            with pytest.raises(Exception, match="profiles"):
                await profiles.get_profile("u1", 1.0)
            with pytest.raises(Exception, match="graph"):
                await graph.neighbours(["i1"], 1, 5, 0.0, 1.0)
    finally:
        await cache.close()
        await profiles.close()
        await graph.close()
    spans = {s.name: s for s in under("caller", receiver)}
    assert set(spans) == {"redis get", "cassandra get_profile", "neo4j neighbours"}
    for span in spans.values():
        assert span.kind == CLIENT and span.status_code == ERROR, span
    assert spans["redis get"].attributes["db.system.name"] == "redis"
    assert spans["cassandra get_profile"].attributes["db.operation.name"] == "get_profile"


@pytest.mark.real
async def test_redis_calls_are_client_spans(receiver: OtlpReceiver) -> None:
    cache = await redis_cache()
    try:
        with tracing.span("caller"):
            await cache.set("k", b"v", ttl_s=60)
            assert await cache.get("k") == b"v"
    finally:
        await cache.close()
    spans = under("caller", receiver)
    assert [(s.name, s.kind, s.status_code) for s in sorted(spans, key=lambda s: s.start_ns)] == [
        ("redis set", CLIENT, ProtoStatus.StatusCode.STATUS_CODE_UNSET),
        ("redis get", CLIENT, ProtoStatus.StatusCode.STATUS_CODE_UNSET),
    ]

"""A minimal OTLP/gRPC trace receiver: the collector side of the OpenTelemetry protocol, keeping what it
receives in memory. Tests point recd's exporter at it to see the spans recd really sends; `recd bench
tracing` points the servers it measures at it, so that export costs what it costs against a collector.

It runs gRPC's threaded server (not asyncio): the SDK exports from a thread of its own, and a receiver
independent of any event loop can serve a process whose loop is busy or not running.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str  # hex
    span_id: str
    parent_span_id: str  # "" for a root span
    name: str
    kind: int  # opentelemetry.proto.trace.v1.Span.SpanKind
    service: str  # the resource's service.name
    instance: str  # the resource's service.instance.id
    attributes: dict[str, Any]
    links: tuple[tuple[str, str], ...]  # (trace id, span id) each
    status_code: int  # opentelemetry.proto.trace.v1.Status.StatusCode
    start_ns: int
    end_ns: int


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs if isinstance(kv, KeyValue)}


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, sink: Callable[[list[ReceivedSpan]], None]) -> None:
        self._sink = sink

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        received = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            s.trace_id.hex(),
                            s.span_id.hex(),
                            s.parent_span_id.hex(),
                            s.name,
                            int(s.kind),
                            str(resource.get("service.name", "")),
                            str(resource.get("service.instance.id", "")),
                            _attributes(s.attributes),
                            tuple((link.trace_id.hex(), link.span_id.hex()) for link in s.links),
                            int(s.status.code),
                            int(s.start_time_unix_nano),
                            int(s.end_time_unix_nano),
                        )
                    )
        self._sink(received)
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    """Listens on `address` ("127.0.0.1:0" picks a port: see `endpoint`) until `stop`. `keep`: whether to
    keep the spans (False: only count them, for benchmarks that send millions)."""

    def __init__(self, address: str = "127.0.0.1:0", keep: bool = True) -> None:
        self._keep = keep
        self._spans: list[ReceivedSpan] = []
        self._count = 0
        self._exports = 0
        self._changed = threading.Condition()
        self._server = grpc.server(cf.ThreadPoolExecutor(4, "otlp-receiver"))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self._add), self._server)
        self.port = self._server.add_insecure_port(address)
        if self.port == 0:
            raise RuntimeError(f"cannot listen on {address}")
        self.endpoint = f"{address.rsplit(':', 1)[0]}:{self.port}"

    def _add(self, spans: list[ReceivedSpan]) -> None:
        with self._changed:
            self._count += len(spans)
            self._exports += 1
            if self._keep:
                self._spans.extend(spans)
            self._changed.notify_all()

    def start(self) -> OtlpReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(None)

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def count(self) -> int:
        """Spans received so far (kept or not)."""
        with self._changed:
            return self._count

    @property
    def exports(self) -> int:
        """Export calls received so far."""
        with self._changed:
            return self._exports

    def spans(self) -> list[ReceivedSpan]:
        with self._changed:
            return list(self._spans)

    def wait_for(self, done: Callable[[list[ReceivedSpan]], bool], timeout_s: float) -> list[ReceivedSpan]:
        """Blocks until `done(spans so far)` holds, or the timeout passes; returns the spans either way."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not done(self._spans):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            return list(self._spans)


def traces(spans: list[ReceivedSpan]) -> Iterator[tuple[str, list[ReceivedSpan]]]:
    """The spans grouped by trace id, in order of first appearance."""
    by_trace: dict[str, list[ReceivedSpan]] = {}
    for s in spans:
        by_trace.setdefault(s.trace_id, []).append(s)
    yield from by_trace.items()

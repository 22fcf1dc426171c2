"""The server side of tracing over gRPC: one SERVER span per unary RPC, continuing the caller's trace.

The caller's W3C trace context (`traceparent`, `tracestate` metadata, put there by
server.tracing.spans.outgoing_call or any OpenTelemetry client) is the parent of the RPC's span, which is
current while the handler runs, so everything the handler does (pipeline steps, shard calls, backend
calls) lands in the caller's trace. Health checks and reflection are not traced: probes every few
seconds would only add root spans. Streams (the change feed, WatchDeletes) live for hours and are not
traced either.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from server.tracing import spans

_PROPAGATED = frozenset({"traceparent", "tracestate"})
_UNTRACED_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# The codes that say the server failed (OpenTelemetry's RPC conventions): the rest are the caller's
# problem (INVALID_ARGUMENT, NOT_FOUND, ...) and leave the span's status unset.
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def server_interceptors() -> list[grpc.aio.ServerInterceptor]:
    """What a server built now installs: the tracing interceptor while tracing is on, else nothing (so a
    server pays nothing for tracing when it is off)."""
    tracer = spans.tracer()
    return [] if tracer is None else [TracingInterceptor(tracer)]


def extract(metadata: Any) -> Context:
    """The caller's trace context from invocation metadata (an empty context when it sent none)."""
    carrier = {key: value for key, value in metadata or () if key in _PROPAGATED}
    if not carrier:
        return Context()
    return spans.PROPAGATOR.extract(carrier, context=Context())


class TracingInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        method: str = details.method
        if handler is None or handler.unary_unary is None or method.startswith(_UNTRACED_PREFIXES):
            return handler
        parent = extract(details.invocation_metadata)  # type: ignore[attr-defined]
        name = method.lstrip("/")
        service, _, rpc = name.rpartition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc}
        inner = handler.unary_unary
        tracer = self._tracer

        async def traced(request: Any, context: grpc.aio.ServicerContext) -> Any:
            with tracer.start_as_current_span(
                name,
                context=parent,
                kind=SpanKind.SERVER,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                code = grpc.StatusCode.OK
                try:
                    return await inner(request, context)
                except BaseException as exc:
                    # An abort has set the code; anything else reaches the caller as UNKNOWN.
                    status = context.code()
                    if isinstance(status, grpc.StatusCode):
                        code = status
                    elif isinstance(exc, asyncio.CancelledError):
                        code = grpc.StatusCode.CANCELLED  # the caller went away
                    else:
                        code = grpc.StatusCode.UNKNOWN
                    if code in _SERVER_ERRORS:
                        span.record_exception(exc)
                    raise
                finally:
                    span.set_attribute("rpc.grpc.status_code", int(code.value[0]))
                    if code in _SERVER_ERRORS:
                        span.set_status(Status(StatusCode.ERROR, code.name))

        return grpc.unary_unary_rpc_method_handler(
            traced,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

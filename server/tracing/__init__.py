"""OpenTelemetry tracing: a span per RPC (frontend, edge, shard node), per pipeline step and per backend
call, with W3C trace context carried over every gRPC hop, exported over OTLP by each process.

Off by default (tracing.enabled). Off, no tracer exists: the helpers hand back one shared no-op context
and no interceptor is installed, so the request path allocates nothing for tracing. `setup_tracing`
(server/tracing/setup.py) turns it on for a process; `span`, `client_span`, `outgoing_call` and
`batch_span` (server/tracing/spans.py) are what the request path uses; server/tracing/interceptor.py
holds the server interceptor and the W3C extraction.
"""

from opentelemetry.trace import Span

from server.tracing.setup import flush_tracing, setup_tracing, shutdown_tracing
from server.tracing.spans import (
    batch_span,
    client_span,
    current_span,
    enabled,
    log_ids,
    outgoing_call,
    span,
)

__all__ = [
    "Span",
    "batch_span",
    "client_span",
    "current_span",
    "enabled",
    "flush_tracing",
    "log_ids",
    "outgoing_call",
    "setup_tracing",
    "shutdown_tracing",
    "span",
]

"""Turning tracing on in a process: the SDK's tracer provider, its sampler and the OTLP/gRPC exporter.

Each process exports its own spans (a frontend worker, an edge, a shard node), named by role and told
apart by `service.instance.id`; the receiver puts them back together by trace id. The SDK is imported only
here and only when tracing is on. The provider is kept by this module rather than made OpenTelemetry's
global one: the global can be set once per process, and tests turn tracing on and off several times.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from server.config import TracingConfig
from server.tracing import spans

log = logging.getLogger(__name__)

_provider: Any = None  # opentelemetry.sdk.trace.TracerProvider while on


def setup_tracing(config: TracingConfig, role: str, instance: str | None = None) -> bool:
    """Tracing for this process as `config` says; True when it is on. `role`: frontend, edge or shard
    (the service name, unless tracing.service_name sets one); `instance`: which process of its role
    ("worker-3", "shard-node-1"; default host:pid). Call it before the process builds its servers and
    clients: they decide at construction whether to trace. Replaces (and flushes) an earlier setup."""
    shutdown_tracing()
    if not config.enabled:
        return False
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    global _provider
    resource = Resource.create(
        {
            "service.name": config.service_name or f"recd-{role}",
            "service.namespace": "recd",
            "service.instance.id": instance or f"{socket.gethostname()}:{os.getpid()}",
        }
    )
    # Sampled at the root (the edge, or whichever process a trace starts in) and then followed: a
    # frontend or a shard node never records part of a trace its caller dropped, nor drops part of one
    # it kept.
    sampler = ParentBased(TraceIdRatioBased(config.sampling_ratio))
    # shutdown_on_exit: the last spans are flushed when the process exits normally (a drained SIGTERM).
    provider = TracerProvider(sampler=sampler, resource=resource, shutdown_on_exit=True)
    exporter = OTLPSpanExporter(
        endpoint=config.endpoint, insecure=config.insecure, timeout=config.export_timeout_s
    )
    provider.add_span_processor(
        BatchSpanProcessor(
            exporter,
            max_queue_size=config.max_queue_size,
            schedule_delay_millis=config.export_interval_ms,
            export_timeout_millis=config.export_timeout_s * 1000.0,
        )
    )
    _provider = provider
    spans.install(provider.get_tracer("recd"))
    log.info(
        "tracing on: OTLP to %s, sampling %.4g of new traces, service %s",
        config.endpoint,
        config.sampling_ratio,
        resource.attributes["service.name"],
    )
    return True


def flush_tracing(timeout_s: float = 10.0) -> bool:
    """Exports every span ended so far; False if that did not finish in time (or tracing is off)."""
    if _provider is None:
        return False
    return bool(_provider.force_flush(int(timeout_s * 1000)))


def shutdown_tracing() -> None:
    """Flushes what is queued and turns tracing off (servers built earlier keep their interceptor, which
    then records nothing: the provider is shut down)."""
    global _provider
    spans.install(None)
    provider, _provider = _provider, None
    if provider is not None:
        provider.shutdown()

"""The spans the request path opens, and the process's tracer they come from (None while tracing is off).

Every helper returns a context manager. With tracing off each returns the same module-level no-op one,
whose span is OpenTelemetry's INVALID_SPAN (every method a no-op): callers write one `with` and pay a
function call, never an allocation.

How per-request traces meet per-batch work. A frontend runs its pipeline once per batch of concurrent
requests (server/recommender.py), and one Shard.Search RPC carries the whole batch's queries, so the
batch's work can have only one parent. The batch span is therefore a child of one member's RPC span:
the first sampled member's (the "lead"). Its step spans and the shard nodes' Search spans follow under
it, so the lead's trace reads edge -> frontend RPC -> batch -> steps -> shard Search in one tree. Every
other sampled member is tied to that work by span links both ways (the batch span links to each of
their RPC spans, each of their RPC spans links to the batch span): a trace viewer jumps from any
request to the batch that served it, and the batch's attributes say how many requests it carried.
Recording the steps once per member instead would multiply spans by the batch size (64) exactly under
load, and still could not give the shard nodes more than one parent per RPC.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager as ContextManager
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Setter
from opentelemetry.trace import INVALID_SPAN, Link, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

Attributes = Mapping[str, Any]
# gRPC metadata as grpc.aio takes it.
Metadata = tuple[tuple[str, str], ...]

_tracer: Tracer | None = None
_NOOP_SPAN: ContextManager[Span] = contextlib.nullcontext(INVALID_SPAN)
_NO_METADATA: ContextManager[Metadata | None] = contextlib.nullcontext(None)
PROPAGATOR = TraceContextTextMapPropagator()


def install(tracer: Tracer | None) -> None:
    """The tracer every helper uses from now on (None: tracing off). Only server.tracing.setup calls it."""
    global _tracer
    _tracer = tracer


def enabled() -> bool:
    return _tracer is not None


def tracer() -> Tracer | None:
    return _tracer


def current_span() -> Span:
    return trace.get_current_span()


def span(name: str, attributes: Attributes | None = None) -> ContextManager[Span]:
    """An internal span under the current one, current inside the `with`; an exception ends it as ERROR."""
    if _tracer is None:
        return _NOOP_SPAN
    return _tracer.start_as_current_span(name, attributes=attributes)


def client_span(system: str, operation: str, attributes: Attributes | None = None) -> ContextManager[Span]:
    """A CLIENT span around one call to a backend ("redis GET", "cassandra get_profile")."""
    if _tracer is None:
        return _NOOP_SPAN
    attrs = {"db.system.name": system, "db.operation.name": operation, **(attributes or {})}
    return _tracer.start_as_current_span(f"{system} {operation}", kind=SpanKind.CLIENT, attributes=attrs)


def outgoing_call(method: str, peer: str) -> ContextManager[Metadata | None]:
    """A CLIENT span around one outgoing gRPC call to `method` ("/recd.v1.Shard/Search") at `peer`; yields
    the metadata that carries its W3C trace context (None while tracing is off: send no metadata)."""
    if _tracer is None:
        return _NO_METADATA
    return _outgoing(_tracer, method, peer)


class _TupleSetter(Setter[list[tuple[str, str]]]):
    def set(self, carrier: list[tuple[str, str]], key: str, value: str) -> None:
        carrier.append((key, value))


_SETTER = _TupleSetter()


@contextlib.contextmanager
def _outgoing(tracer: Tracer, method: str, peer: str) -> Iterator[Metadata]:
    name = method.lstrip("/")
    service, _, rpc = name.rpartition("/")
    attrs = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc, "server.address": peer}
    with tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attrs) as client:
        carrier: list[tuple[str, str]] = []
        # Injected also when this span is not sampled: the flags tell the callee not to record either.
        PROPAGATOR.inject(carrier, setter=_SETTER)
        try:
            yield tuple(carrier)
        except grpc.RpcError as exc:
            code = exc.code() if callable(getattr(exc, "code", None)) else None
            if isinstance(code, grpc.StatusCode):
                client.set_attribute("rpc.grpc.status_code", int(code.value[0]))
            raise


def batch_span(
    name: str, members: Sequence[Span | None], attributes: Attributes | None = None
) -> ContextManager[Span]:
    """The span of one batch's run, current inside the `with` (see the module's docstring for how it
    relates to its members' traces). `members`: each request's RPC span, None where it had none."""
    if _tracer is None:
        return _NOOP_SPAN
    return _batch(_tracer, name, members, attributes)


@contextlib.contextmanager
def _batch(
    tracer: Tracer, name: str, members: Sequence[Span | None], attributes: Attributes | None
) -> Iterator[Span]:
    present = [m for m in members if m is not None]
    sampled = [m for m in present if m.get_span_context().trace_flags.sampled]
    lead = sampled[0] if sampled else (present[0] if present else None)
    # Explicit, never the context the batch task inherited: that is whichever request or batch happened
    # to start the task, and its trace may be long over. An unsampled lead makes the whole batch
    # unsampled (the sampler follows the parent); no lead at all (in-process callers) starts a trace.
    parent = trace.set_span_in_context(lead, Context()) if lead is not None else Context()
    others = sampled[1:]
    attrs = {
        "recd.batch.size": len(members),
        "recd.batch.sampled_members": len(sampled),
        **(attributes or {}),
    }
    links = [Link(m.get_span_context()) for m in others]
    with tracer.start_as_current_span(name, context=parent, links=links, attributes=attrs) as batch:
        if batch.is_recording():
            served_by = batch.get_span_context()
            for member in others:
                # A request answered early (its deadline passed) has ended its span: nothing to link.
                if member.is_recording():
                    member.add_link(served_by, {"recd.link": "served_by_batch"})
        yield batch


def mark_failed(target: Span, failure: BaseException, outcome: str) -> None:
    """A unit that failed without raising (a fail-open step): ERROR status and what happened."""
    target.set_attribute("recd.outcome", outcome)
    target.set_status(Status(StatusCode.ERROR, f"{type(failure).__name__}: {failure}"))


def log_ids() -> tuple[str, str] | None:
    """(trace id, span id) of the current span, hex, for log lines; None outside any trace."""
    if _tracer is None:
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")

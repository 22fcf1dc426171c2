"""Method handlers that decode their own requests, for every recd gRPC service (frontend, edge, shards).

The generated registration (`add_*Servicer_to_server`) hands gRPC the message's parser: bytes that do not
parse (a corrupt wire format, a string field that is not UTF-8) then fail inside gRPC before any handler
or interceptor runs, and the caller gets UNKNOWN ("Unexpected DecodeError") while the server logs a
traceback at ERROR and the RPC metrics never see the call. Registered here, a handler receives the bytes
and parses them itself: a request that does not parse is INVALID_ARGUMENT like any other bad input,
answered inside the interceptors (so counted by method and code), and logged at DEBUG only.

A service may also give a precheck per method: cheap size checks on the parsed message (map sizes,
repeated-field lengths) that run before the servicer converts it, so an oversized request is refused
before any work is done on it.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message

from server.errors import RecdError, invalid

log = logging.getLogger(__name__)

# Raises a RecdError (INVALID_ARGUMENT) for a request past a limit.
Precheck = Callable[[Any], None]


def parse(message_type: type[Message], raw: bytes) -> Message:
    """`raw` as a `message_type`; RecdError(INVALID_ARGUMENT) naming the type when it is not one."""
    try:
        return message_type.FromString(raw)
    except DecodeError as exc:
        # The parser's own text says what is wrong ("Wire format was corrupt", "String field had bad UTF-8").
        reason = str(exc).rsplit(": ", 1)[-1]
        raise invalid(
            f"the request is not a valid {message_type.DESCRIPTOR.full_name}: {reason}; send a message "
            f"encoded by the protobuf definitions of proto/recd/v1"
        ) from exc


async def parse_or_abort(
    message_type: type[Message],
    raw: bytes,
    context: grpc.aio.ServicerContext,
    precheck: Precheck | None = None,
) -> Any:
    """`raw` parsed and prechecked; otherwise the call is aborted with the error's status."""
    try:
        request = parse(message_type, raw)
        if precheck is not None:
            precheck(request)
        return request
    except RecdError as exc:
        log.debug("refused %s request: %s", message_type.DESCRIPTOR.full_name, exc.message)
        await context.abort(exc.kind.status, exc.message)
        raise AssertionError("unreachable: abort raises") from exc


def _unary(
    behaviour: Callable[..., Any], request_type: type[Message], precheck: Precheck | None
) -> Callable[[bytes, grpc.aio.ServicerContext], Any]:
    async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        request = await parse_or_abort(request_type, raw, context, precheck)
        reply = behaviour(request, context)
        # A servicer's own methods are coroutines; the generated base class's UNIMPLEMENTED stubs are not.
        return await reply if inspect.isawaitable(reply) else reply

    return handle


def _server_stream(
    behaviour: Callable[..., Any], request_type: type[Message], precheck: Precheck | None
) -> Callable[[bytes, grpc.aio.ServicerContext], AsyncIterator[Any]]:
    async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        request = await parse_or_abort(request_type, raw, context, precheck)
        async for reply in behaviour(request, context):
            yield reply

    return handle


def method_handlers(
    servicer: object, service: ServiceDescriptor, prechecks: Mapping[str, Precheck] | None = None
) -> dict[str, grpc.RpcMethodHandler]:
    """A handler per method of `service` (from its descriptor, so an RPC added to the proto is covered
    at once), calling the servicer's method of the same name with the parsed request."""
    prechecks = prechecks or {}
    unknown = set(prechecks) - set(service.methods_by_name)
    if unknown:
        raise ValueError(f"prechecks for methods {sorted(unknown)} that {service.full_name} does not have")
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        behaviour = getattr(servicer, method.name)
        precheck = prechecks.get(method.name)
        if method.client_streaming:
            raise NotImplementedError(f"{method.full_name}: client-streaming RPCs are not supported here")
        if method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(
                _server_stream(behaviour, request_type, precheck),
                response_serializer=response_type.SerializeToString,
            )
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _unary(behaviour, request_type, precheck),
                response_serializer=response_type.SerializeToString,
            )
    return handlers


def add_service(
    server: grpc.aio.Server,
    service: ServiceDescriptor,
    handlers: dict[str, grpc.RpcMethodHandler],
) -> None:
    # Registered as well as generic, as generated code does: a registered method is matched in gRPC's
    # core, without a per-call lookup in Python.
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    server.add_registered_method_handlers(service.full_name, handlers)


def add_servicer(
    server: grpc.aio.Server,
    servicer: object,
    service: ServiceDescriptor,
    prechecks: Mapping[str, Precheck] | None = None,
) -> None:
    """What `add_<Service>Servicer_to_server` does, with requests parsed (and prechecked) by the handler."""
    add_service(server, service, method_handlers(servicer, service, prechecks))

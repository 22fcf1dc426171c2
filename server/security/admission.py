"""The one server interceptor that decides whether a call runs: credentials, role, quota, concurrency cap.

Installed first (outermost) on the frontend, the edge and the shard nodes. Per call, in this order:

1. health checks pass untouched (balancers and the kubelet probe without credentials, and a cap must
   never fail a probe); reflection passes as `auth.reflection` says;
2. who is calling (server/security/auth.py) -> UNAUTHENTICATED;
3. a role of the caller that the method needs -> PERMISSION_DENIED;
4. the concurrency cap (server.max_concurrent_rpcs / edge.max_concurrent_rpcs) -> RESOURCE_EXHAUSTED at
   once, rather than queueing. It lives here rather than in gRPC's `maximum_concurrent_rpcs`, whose
   refusals no interceptor or handler ever sees, so they could not be counted;
5. the caller's quota for that role (server/security/quotas.py) -> RESOURCE_EXHAUSTED with
   `retry-after-ms` in the trailing metadata;
6. the request is decoded only now: nothing of an unauthenticated caller's payload is parsed, and bytes
   that do not decode are INVALID_ARGUMENT.

Every refusal is counted in `recd_rpc_rejections_total{reason, caller, method}`, and so are the handlers'
answers that are refusals too (INVALID_ARGUMENT, DEADLINE_EXCEEDED). Refusals of steps 2, 3 and 5 are the
caller's doing and are left out of `recd_rpc_latency_seconds`, whose error ratio pages; the cap's
refusals are the server's overload and go into it as RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from server import metrics
from server.config import AuthConfig
from server.security.auth import (
    EVERYONE,
    OPEN_SERVICES,
    REFLECTION_SERVICES,
    Authenticator,
    Caller,
    Rejection,
    authorize,
)
from server.security.quotas import Quotas, retry_after_ms

log = logging.getLogger(__name__)

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


class AdmissionInterceptor(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        auth: AuthConfig,
        *,
        max_concurrent_rpcs: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`clock` (monotonic seconds) drives the quota buckets and the callers file's reload checks."""
        self.authenticator = Authenticator(auth, clock)
        self.quotas = Quotas(auth.quotas, clock)
        self._reflection = auth.reflection
        self._cap = max_concurrent_rpcs
        self.in_flight = 0
        # Wrapped handlers by method: built once per method, not per call.
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}
        if not auth.enabled:
            log.warning(
                "auth is off (auth.enabled): every caller is %r with every role; for the embedded demo on "
                "this machine only",
                "anonymous",
            )
        else:
            log.info("auth on: %d callers configured", len(self.authenticator.caller_names))

    async def intercept_service(
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method = details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        service = method[1:].rpartition("/")[0]
        if service in OPEN_SERVICES or (service in REFLECTION_SERVICES and self._reflection == "open"):
            return await continuation(details)
        handler = await continuation(details)
        if handler is None:
            return None  # an unknown method: gRPC answers UNIMPLEMENTED
        wrapped = self._wrap(method, handler, needs_role=service not in REFLECTION_SERVICES)
        self._wrapped[method] = wrapped
        return wrapped

    # --- the checks ---------------------------------------------------------------------------------
    async def _admitted(
        self, method: str, short: str, context: grpc.aio.ServicerContext, needs_role: bool, started: float
    ) -> Caller:
        """The caller, once admitted; a refusal aborts the call (and is counted) here."""
        try:
            return await self._admit(method, context, needs_role)
        except Rejection as rejection:
            await self._refuse(rejection, short, context, started)
            raise AssertionError("unreachable: abort raises") from None

    async def _admit(self, method: str, context: grpc.aio.ServicerContext, needs_role: bool) -> Caller:
        """Steps 2-5; raises Rejection. The caller holds a concurrency slot when this returns."""
        if self.authenticator.enabled:
            caller = await self.authenticator.authenticate(
                context.invocation_metadata(), context.auth_context()
            )
        else:
            caller = EVERYONE
        role = authorize(caller, method) if needs_role else None
        # The cap before the quota: a call the server cannot take now does not spend the caller's quota.
        if self._cap is not None and self.in_flight >= self._cap:
            raise Rejection(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "concurrency",
                f"the server is at its limit of {self._cap} concurrent calls; retry with backoff",
                caller.name,
            )
        if role is not None:
            wait_s = self.quotas.admit(caller, role)
            if wait_s > 0:
                retry_ms = retry_after_ms(wait_s)
                quota = self.quotas.limit(caller, role)
                assert quota is not None
                raise Rejection(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "quota",
                    f"quota exhausted: caller {caller.name!r} may make {quota.rate_per_s:g} {role} calls a "
                    f"second (burst {quota.burst or quota.rate_per_s:g}); retry in {retry_ms} ms",
                    caller.name,
                    (("retry-after-ms", str(retry_ms)),),
                )
        self.in_flight += 1
        return caller

    async def _refuse(
        self, rejection: Rejection, short: str, context: grpc.aio.ServicerContext, started: float
    ) -> None:
        metrics.RPC_REJECTIONS.labels(rejection.reason, rejection.caller, short).inc()
        if rejection.reason == "concurrency":
            # The server's overload, unlike the caller-made refusals: it belongs in the error ratio.
            metrics.RPC_LATENCY.labels(short, rejection.code.name).observe(time.perf_counter() - started)
        await context.abort(rejection.code, rejection.message, rejection.trailing)

    def _settle(self, short: str, caller: Caller, context: grpc.aio.ServicerContext, failed: bool) -> None:
        """Releases the slot and counts a handler's answer that is a refusal (bad input, deadline)."""
        self.in_flight -= 1
        if not failed:
            return
        code = context.code()
        if code == grpc.StatusCode.INVALID_ARGUMENT:
            reason = "invalid_argument"
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED or (
            code is None and (left := context.time_remaining()) is not None and left <= 0
        ):
            reason = "deadline"
        else:
            return
        metrics.RPC_REJECTIONS.labels(reason, caller.name, short).inc()

    async def _decode(
        self,
        deserialize: Callable[[bytes], Any] | None,
        raw: bytes,
        short: str,
        context: grpc.aio.ServicerContext,
        started: float,
    ) -> Any:
        if deserialize is None:
            return raw
        try:
            return deserialize(raw)
        except Exception as exc:  # protobuf's DecodeError, or a deserializer's own check
            # Never reaches the handlers' metrics interceptor, so it is observed here.
            metrics.RPC_LATENCY.labels(short, "INVALID_ARGUMENT").observe(time.perf_counter() - started)
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request bytes are not a valid {short} request message ({type(exc).__name__})",
            )

    # --- wrapping by kind -------------------------------------------------------------------------------
    def _wrap(self, method: str, handler: grpc.RpcMethodHandler, needs_role: bool) -> grpc.RpcMethodHandler:
        short = method.rsplit("/", 1)[-1]
        deserialize = handler.request_deserializer

        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def unary_unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
                started = time.perf_counter()
                caller = await self._admitted(method, short, context, needs_role, started)
                failed = True
                try:
                    request = await self._decode(deserialize, raw, short, context, started)
                    answer = await unary(request, context)
                    failed = context.code() not in (None, grpc.StatusCode.OK)
                    return answer
                finally:
                    self._settle(short, caller, context, failed)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, request_deserializer=None, response_serializer=handler.response_serializer
            )

        if handler.unary_stream is not None:
            stream = handler.unary_stream

            async def unary_stream(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                started = time.perf_counter()
                caller = await self._admitted(method, short, context, needs_role, started)
                failed = True
                try:
                    request = await self._decode(deserialize, raw, short, context, started)
                    async for answer in _responses(stream(request, context)):
                        yield answer
                    failed = context.code() not in (None, grpc.StatusCode.OK)
                finally:
                    self._settle(short, caller, context, failed)

            return grpc.unary_stream_rpc_method_handler(
                unary_stream, request_deserializer=None, response_serializer=handler.response_serializer
            )

        # Streamed requests (server reflection): admitted as a whole, the requests decoded by gRPC.
        inner = handler.stream_stream or handler.stream_unary
        assert inner is not None

        async def streamed(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            started = time.perf_counter()
            try:
                caller = await self._admit(method, context, needs_role)
            except Rejection as rejection:
                await self._refuse(rejection, short, context, started)
                raise AssertionError("unreachable: abort raises") from None
            try:
                async for answer in _responses(inner(requests, context)):
                    yield answer
            finally:
                self._settle(short, caller, context, failed=False)

        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                streamed,
                request_deserializer=deserialize,
                response_serializer=handler.response_serializer,
            )

        async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            try:
                caller = await self._admit(method, context, needs_role)
            except Rejection as rejection:
                await self._refuse(rejection, short, context, started)
                raise AssertionError("unreachable: abort raises") from None
            try:
                return await inner(requests, context)
            finally:
                self._settle(short, caller, context, failed=False)

        return grpc.stream_unary_rpc_method_handler(
            stream_unary, request_deserializer=deserialize, response_serializer=handler.response_serializer
        )


async def _responses(result: Any) -> AsyncIterator[Any]:
    """A streaming handler's answers, whether it is an async generator or writes with context.write."""
    if inspect.isasyncgen(result):
        async for answer in result:
            yield answer
    elif inspect.isawaitable(result):
        await result
    else:
        for answer in result:
            yield answer

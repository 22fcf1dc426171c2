"""`recd edge`: a gRPC server with the frontend's API whose Recommend answers come from the edge cache.

Built from the frontend server's parts (MetricsInterceptor, the life cycle of server/lifecycle.py). Handlers
are registered per method rather than as servicers so that requests and answers can stay bytes:
pass-through RPCs are forwarded without being decoded, and a cache hit is returned without being encoded.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

import grpc
from google.protobuf.message import DecodeError

from server.api.server import SERVICE_NAMES, MetricsInterceptor
from server.backends.base import Cache
from server.client import MAX_MESSAGE_BYTES
from server.config import EdgeConfig
from server.edge.cache import EdgeCache
from server.edge.deletes import DeleteWatch
from server.edge.origin import Origin, OriginError, OriginPool, RetryBudget
from server.edge.resolve import Resolver, resolve_target
from server.edge.shared import open_shared_cache
from server.gen.recd.v1 import catalog_pb2, recommender_pb2
from server.lifecycle import ServerLifecycle, run_until_signalled

log = logging.getLogger(__name__)

Handler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


def _recorded_users(raw: bytes) -> Iterable[str]:
    return (x.user_id for x in recommender_pb2.RecordInteractionsRequest.FromString(raw).interactions)


def _upserted_users(raw: bytes) -> Iterable[str]:
    return (u.user_id for u in catalog_pb2.UpsertUsersRequest.FromString(raw).users)


# Writes about users: forwarded, then those users' cached answers are invalidated.
USER_WRITES: dict[str, Callable[[bytes], Iterable[str]]] = {
    "/recd.v1.Recommender/RecordInteractions": _recorded_users,
    "/recd.v1.Catalog/UpsertUsers": _upserted_users,
}
# Everything else the edge forwards is an upsert, a delete or a read, which an origin may see twice
# without harm, so UNAVAILABLE is retried on another origin; RecordInteractions appends, and a repeat
# could count an interaction twice.
NOT_RETRYABLE = frozenset({"/recd.v1.Recommender/RecordInteractions"})


class EdgeServer:
    def __init__(
        self,
        config: EdgeConfig,
        cache: EdgeCache,
        origin: Origin,
        shared: Cache | None,
        watch: DeleteWatch | None = None,
    ) -> None:
        self.config = config
        self.cache = cache
        self.origin = origin
        self.shared = shared
        self.watch = watch
        self.lifecycle = ServerLifecycle(
            config.address,
            self._register,
            SERVICE_NAMES,
            options=[
                # As large as the frontend takes: catalogue writes pass through whole.
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
            interceptors=[MetricsInterceptor()],
            maximum_concurrent_rpcs=config.max_concurrent_rpcs,
            reflection_enabled=True,
            on_close=[
                cache.close,
                *([watch.close] if watch is not None else []),
                origin.close,
                *([shared.close] if shared is not None else []),
            ],
        )

    @property
    def port(self) -> int:
        return self.lifecycle.port

    @property
    def address(self) -> str:
        return self.lifecycle.address

    # --- handlers -----------------------------------------------------------------------------------
    def _register(self, server: grpc.aio.Server) -> None:
        for service_name, handlers in self._service_handlers():
            # Registered as well as generic, as generated code does: a registered method is matched in
            # gRPC's core, without a per-call lookup in Python.
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_name, handlers),))
            server.add_registered_method_handlers(service_name, handlers)

    def _service_handlers(self) -> Iterable[tuple[str, dict[str, grpc.RpcMethodHandler]]]:
        # Every unary method of both services, from the protos: an RPC added there is forwarded at once.
        # Streams are not relayed: WatchDeletes is between the edge and the frontends (deletes.py), and
        # a relayed stream would hold every edge drain for its whole grace period.
        for module, name in ((recommender_pb2, "Recommender"), (catalog_pb2, "Catalog")):
            service = module.DESCRIPTOR.services_by_name[name]
            handlers = {}
            handler: Handler
            for method in service.methods:
                if method.client_streaming or method.server_streaming:
                    continue
                path = f"/{service.full_name}/{method.name}"
                if path == "/recd.v1.Recommender/Recommend":
                    handler = self._recommend
                elif path in USER_WRITES:
                    handler = self._user_write(path, USER_WRITES[path])
                else:
                    handler = self._forward(path)
                # No (de)serializers: the handlers take and return bytes.
                handlers[method.name] = grpc.unary_unary_rpc_method_handler(handler)
            yield service.full_name, handlers

    def _origin_timeout(self, context: grpc.aio.ServicerContext) -> float:
        ceiling = self.config.origin_timeout_ms / 1000.0
        remaining = context.time_remaining()
        return ceiling if remaining is None else min(ceiling, remaining)

    async def _recommend(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            return await self.cache.recommend(raw, context.time_remaining())
        except OriginError as exc:
            await context.abort(exc.code, exc.details)
        except DecodeError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the request is not a RecommendRequest")
        raise AssertionError("unreachable: abort raises")

    def _forward(self, path: str) -> Handler:
        retryable = path not in NOT_RETRYABLE

        async def forward(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                return await self.origin.call(path, raw, self._origin_timeout(context), retryable)
            except OriginError as exc:
                await context.abort(exc.code, exc.details)
            raise AssertionError("unreachable: abort raises")

        return forward

    def _user_write(self, path: str, users_of: Callable[[bytes], Iterable[str]]) -> Handler:
        forward = self._forward(path)

        async def write(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            try:
                users = list(users_of(raw))
            except DecodeError:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed request for {path}")
                raise
            try:
                return await forward(raw, context)
            finally:
                # Also after an error: a timed-out write may still have been applied, and a needless
                # invalidation costs these users one miss each.
                await self.cache.invalidate_users(users)

        return write

    # --- life cycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.origin.start()
        if self.watch is not None:
            await self.watch.start()
        await self.lifecycle.start()
        log.info("recd edge serving on %s, origins %s", self.address, ", ".join(self.config.origins))

    async def stop(self) -> None:
        """Drains within edge.grace_s (see ServerLifecycle.stop), then closes the cache and the origins."""
        await self.lifecycle.stop(self.config.grace_s)
        log.info("recd edge stopped")


def build_edge(config: EdgeConfig, resolver: Resolver = resolve_target) -> EdgeServer:
    """`resolver` maps an origin target to its addresses (tests inject one instead of DNS)."""
    shared = open_shared_cache(config.cache)
    budget = RetryBudget(
        config.retry_budget_ratio, config.retry_budget_min_per_s, config.retry_budget_window_s
    )
    origin = OriginPool(
        config.origins,
        config.balancing,
        budget,
        config.max_attempts,
        resolver=resolver,
        resolve_interval_s=config.resolve_interval_s,
        drain_s=config.origin_drain_s,
        connections_per_origin=config.connections_per_origin,
    )
    cache = EdgeCache(config, origin, shared)
    watch = None
    if config.watch_deletes:
        watch = DeleteWatch(origin, cache.deletes, idle_timeout_s=config.watch_idle_timeout_s)
    return EdgeServer(config, cache, origin, shared, watch)


async def serve_edge(config: EdgeConfig, on_ready: Callable[[], None] | None = None) -> None:
    from server.metrics import serve_metrics

    server = build_edge(config)
    serve_metrics(config.metrics_address)
    await run_until_signalled(server, on_ready)

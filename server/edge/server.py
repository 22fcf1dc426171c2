"""`recd edge`: a gRPC server with the frontend's API whose Recommend answers come from the edge cache.

Built from the frontend server's parts (MetricsInterceptor, the life cycle of server/lifecycle.py). Handlers
are registered per method rather than as servicers so that requests and answers can stay bytes:
pass-through RPCs are forwarded without being decoded, and a cache hit is returned without being encoded.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Iterable

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message

from server.api import prechecks
from server.api.handlers import parse_or_abort
from server.api.server import CATALOG, RECOMMENDER, SERVICE_NAMES, MetricsInterceptor, metadata_limit
from server.backends.base import Cache
from server.client import MAX_MESSAGE_BYTES
from server.config import AuthConfig, EdgeConfig
from server.edge.cache import EdgeCache
from server.edge.deletes import DeleteWatch, ErasureWatch
from server.edge.origin import Origin, OriginError, OriginPool, RetryBudget
from server.edge.resolve import Resolver, resolve_target
from server.edge.shared import open_shared_cache
from server.experiments.registry import ExperimentRegistry
from server.gen.recd.v1 import catalog_pb2, recommender_pb2
from server.lifecycle import ServerLifecycle, run_until_signalled
from server.security.admission import AdmissionInterceptor
from server.validation import Limits

log = logging.getLogger(__name__)


@functools.cache
def _request_types() -> dict[str, type[Message]]:
    """Each public method's path -> its request message class."""
    return {
        f"/{method.containing_service.full_name}/{method.name}": message_factory.GetMessageClass(
            method.input_type
        )
        for service in (RECOMMENDER, CATALOG)
        for method in service.methods
    }


Handler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


def _recorded_users(raw: bytes) -> Iterable[str]:
    return (x.user_id for x in recommender_pb2.RecordInteractionsRequest.FromString(raw).interactions)


def _upserted_users(raw: bytes) -> Iterable[str]:
    return (u.user_id for u in catalog_pb2.UpsertUsersRequest.FromString(raw).users)


def _erased_user(raw: bytes) -> Iterable[str]:
    return (catalog_pb2.DeleteUserRequest.FromString(raw).user_id,)


def _erased_users(raw: bytes) -> Iterable[str]:
    return catalog_pb2.DeleteUsersRequest.FromString(raw).user_ids


# Writes about users: forwarded, then those users' cached answers are invalidated.
USER_WRITES: dict[str, Callable[[bytes], Iterable[str]]] = {
    "/recd.v1.Recommender/RecordInteractions": _recorded_users,
    "/recd.v1.Catalog/UpsertUsers": _upserted_users,
}
# Erasures: forwarded, then those users' cached answers are invalidated and dropped from memory.
USER_ERASURES: dict[str, Callable[[bytes], Iterable[str]]] = {
    "/recd.v1.Catalog/DeleteUser": _erased_user,
    "/recd.v1.Catalog/DeleteUsers": _erased_users,
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
        auth: AuthConfig | None = None,
        erasures: ErasureWatch | None = None,
    ) -> None:
        """`auth`: who may call the edge (the config's `auth`; None: everyone). The edge authenticates its
        callers itself and calls the origins as itself, with this process's token (auth.token_file)."""
        self.config = config
        self.cache = cache
        self.origin = origin
        self.shared = shared
        self.watch = watch
        self.erasures = erasures
        # Recommend's sizes only (filter, context, exclusions): the embedding dimension and batch sizes
        # are the frontends' to check, on the writes the edge forwards.
        self._recommend_precheck = prechecks.recommender(
            Limits.with_limits(dim=0, max_batch=0, max_id_bytes=0, limits=config.limits)
        )["Recommend"]
        self.lifecycle = ServerLifecycle(
            config.address,
            self._register,
            SERVICE_NAMES,
            options=[
                # As large as the frontend takes: catalogue writes pass through whole.
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
                *metadata_limit(config.limits.max_metadata_bytes),
            ],
            interceptors=[
                AdmissionInterceptor(auth or AuthConfig(), max_concurrent_rpcs=config.max_concurrent_rpcs),
                MetricsInterceptor(),
            ],
            tls=config.tls,
            tls_key="edge.tls",
            reflection_enabled=auth is None or auth.reflection != "off",
            on_close=[
                cache.close,
                *([watch.close] if watch is not None else []),
                *([erasures.close] if erasures is not None else []),
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
                    handler = self._user_write(path, USER_WRITES[path], self.cache.invalidate_users)
                elif path in USER_ERASURES:
                    handler = self._user_write(path, USER_ERASURES[path], self.cache.erase_users)
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
        # What a frontend would refuse for its sizes is refused here, before a cache key is built from it.
        request = await parse_or_abort(
            recommender_pb2.RecommendRequest, raw, context, self._recommend_precheck
        )
        try:
            return await self.cache.recommend(raw, context.time_remaining(), parsed=request)
        except OriginError as exc:
            await context.abort(exc.code, exc.details)
        raise AssertionError("unreachable: abort raises")

    def _forward(self, path: str) -> Handler:
        retryable = path not in NOT_RETRYABLE
        request_type = _request_types()[path]

        async def forward(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            # Parsed only to be checked: what is not a request of this method never reaches an origin.
            await parse_or_abort(request_type, raw, context)
            try:
                return await self.origin.call(path, raw, self._origin_timeout(context), retryable)
            except OriginError as exc:
                await context.abort(exc.code, exc.details)
            raise AssertionError("unreachable: abort raises")

        return forward

    def _user_write(
        self,
        path: str,
        users_of: Callable[[bytes], Iterable[str]],
        invalidate: Callable[[Iterable[str]], Awaitable[None]],
    ) -> Handler:
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
                await invalidate(users)

        return write

    # --- life cycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.origin.start()
        if self.watch is not None:
            await self.watch.start()
        if self.erasures is not None:
            await self.erasures.start()
        await self.lifecycle.start()
        log.info("recd edge serving on %s, origins %s", self.address, ", ".join(self.config.origins))

    async def stop(self) -> None:
        """Drains within edge.grace_s (see ServerLifecycle.stop), then closes the cache and the origins."""
        await self.lifecycle.stop(self.config.grace_s)
        log.info("recd edge stopped")


def build_edge(
    config: EdgeConfig,
    resolver: Resolver = resolve_target,
    auth: AuthConfig | None = None,
    experiments: ExperimentRegistry | None = None,
) -> EdgeServer:
    """`resolver` maps an origin target to its addresses (tests inject one instead of DNS).
    `experiments`: the frontends' experiments (the same config), so cached answers are kept apart by
    the variant that served them."""
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
        tls=config.origin_tls,
    )
    cache = EdgeCache(config, origin, shared, experiments=experiments)
    watch = erasures = None
    if config.watch_deletes:
        watch = DeleteWatch(origin, cache.deletes, idle_timeout_s=config.watch_idle_timeout_s)
        # Erasures sent straight to any frontend: each streams only its own, so all are followed.
        erasures = ErasureWatch(
            origin, cache.erase_users, cache.deletes, idle_timeout_s=config.watch_idle_timeout_s
        )
    return EdgeServer(config, cache, origin, shared, watch, auth, erasures)


async def serve_edge(
    config: EdgeConfig,
    on_ready: Callable[[], None] | None = None,
    auth: AuthConfig | None = None,
    experiments: ExperimentRegistry | None = None,
) -> None:
    from server.metrics import serve_metrics

    server = build_edge(config, auth=auth, experiments=experiments)
    serve_metrics(config.metrics_address)
    await run_until_signalled(server, on_ready)

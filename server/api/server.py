"""The frontend's gRPC server: its services, the metrics interceptor and the admission cap, on the life
cycle every recd server shares (server/lifecycle.py: health, reflection, graceful stop)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from server import metrics
from server.api.services import CatalogService, RecommenderService
from server.catalog.deletions import DeletionLog
from server.config import Config
from server.gen.recd.v1 import catalog_pb2, catalog_pb2_grpc, recommender_pb2, recommender_pb2_grpc
from server.lifecycle import ServerLifecycle
from server.runtime import Recd

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    recommender_pb2.DESCRIPTOR.services_by_name["Recommender"].full_name,
    catalog_pb2.DESCRIPTOR.services_by_name["Catalog"].full_name,
)


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Latency by method and status code, and RPCs in flight; cross-cutting, so it lives here."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = details.method.rsplit("/", 1)[-1]
        inner = handler.unary_unary

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            metrics.RPC_IN_FLIGHT.inc()
            code = "OK"
            try:
                return await inner(request, context)
            except BaseException:
                status = context.code()
                code = status.name if isinstance(status, grpc.StatusCode) else "UNKNOWN"
                raise
            finally:
                metrics.RPC_IN_FLIGHT.dec()
                metrics.RPC_LATENCY.labels(method, code).observe(time.perf_counter() - started)

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class RecdServer:
    def __init__(
        self, recd: Recd, config: Config, *, reuse_port: bool = False, extra_addresses: Sequence[str] = ()
    ) -> None:
        """`reuse_port`: share the port with other processes (a worker of `recd serve --workers N`);
        a single frontend keeps it off, so a second one on a taken port fails loudly.
        `extra_addresses`: more ports for the same services (a worker's private address)."""
        self.recd = recd
        self.config = config
        # What Catalog.WatchDeletes streams to the edge tier: every delete this catalogue applies.
        self.deletions = DeletionLog(recd.items)

        def register(server: grpc.aio.Server) -> None:
            recommender = RecommenderService(recd.recommender)
            recommender_pb2_grpc.add_RecommenderServicer_to_server(recommender, server)
            catalog = CatalogService(recd.catalog, self.deletions)
            catalog_pb2_grpc.add_CatalogServicer_to_server(catalog, server)

        self.lifecycle = ServerLifecycle(
            config.server.address,
            register,
            SERVICE_NAMES,
            options=[
                ("grpc.max_receive_message_length", config.server.max_message_bytes),
                ("grpc.max_send_message_length", config.server.max_message_bytes),
            ],
            reuse_port=reuse_port,
            extra_addresses=extra_addresses,
            interceptors=[MetricsInterceptor()],
            # Past the cap gRPC answers RESOURCE_EXHAUSTED at once instead of queueing without bound.
            maximum_concurrent_rpcs=config.server.max_concurrent_rpcs,
            reflection_enabled=True,
            on_close=[recd.close],
        )

    @property
    def port(self) -> int:
        return self.lifecycle.port

    @property
    def address(self) -> str:
        return self.lifecycle.address

    async def start(self, serving: bool = True) -> None:
        """`serving=False`: health stays NOT_SERVING until `lifecycle.set_serving()`."""
        await self.lifecycle.start(serving)
        log.info("recd serving on %s", self.address)

    async def stop(self) -> None:
        """Drains within server.grace_s (see ServerLifecycle.stop), then closes the backends."""
        # WatchDeletes streams never end on their own: ended first, they do not hold the drain, and
        # their watchers resume on another frontend.
        self.deletions.close()
        await self.lifecycle.stop(self.config.server.grace_s)
        log.info("recd stopped")

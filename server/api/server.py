"""The frontend's gRPC server: its services, the metrics interceptor and the admission cap, on the life
cycle every recd server shares (server/lifecycle.py: health, reflection, graceful stop)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from server import metrics
from server.api import prechecks
from server.api.handlers import add_servicer
from server.api.services import CatalogService, RecommenderService
from server.catalog.deletions import DeletionLog
from server.config import Config
from server.gen.recd.v1 import catalog_pb2, recommender_pb2
from server.lifecycle import ServerLifecycle
from server.runtime import Recd
from server.security.admission import AdmissionInterceptor
from server.validation import Limits

log = logging.getLogger(__name__)

RECOMMENDER = recommender_pb2.DESCRIPTOR.services_by_name["Recommender"]
CATALOG = catalog_pb2.DESCRIPTOR.services_by_name["Catalog"]
SERVICE_NAMES = (RECOMMENDER.full_name, CATALOG.full_name)


def metadata_limit(max_bytes: int) -> list[tuple[str, int]]:
    """gRPC options bounding a call's metadata: past the soft limit gRPC refuses a share of calls at
    random (up to all at the hard one); equal, every call over it is RESOURCE_EXHAUSTED."""
    return [("grpc.max_metadata_size", max_bytes), ("grpc.absolute_max_metadata_size", max_bytes)]


HEALTH_PREFIX = "/grpc.health.v1.Health/"


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Latency by method and status code, and RPCs in flight; cross-cutting, so it lives here."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        # Health checks (the kubelet's probes, balancers) are not traffic: counted, they would dilute
        # the error ratios that page.
        if handler is None or handler.unary_unary is None or details.method.startswith(HEALTH_PREFIX):
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

        limits = Limits.of(config)

        def register(server: grpc.aio.Server) -> None:
            recommender = RecommenderService(recd.recommender)
            # Not the generated add_*Servicer_to_server: requests are parsed by the handlers (see there).
            add_servicer(server, recommender, RECOMMENDER, prechecks.recommender(limits))
            catalog = CatalogService(recd.catalog, self.deletions)
            add_servicer(server, catalog, CATALOG, prechecks.catalog(limits))

        self.lifecycle = ServerLifecycle(
            config.server.address,
            register,
            SERVICE_NAMES,
            options=[
                ("grpc.max_receive_message_length", config.server.max_message_bytes),
                ("grpc.max_send_message_length", config.server.max_message_bytes),
                *metadata_limit(config.server.limits.max_metadata_bytes),
            ],
            reuse_port=reuse_port,
            extra_addresses=extra_addresses,
            tls=config.server.tls,
            # Admission first: who calls, their role and quota, and the concurrency cap (past it,
            # RESOURCE_EXHAUSTED at once instead of queueing without bound), all counted when refused.
            interceptors=[
                AdmissionInterceptor(config.auth, max_concurrent_rpcs=config.server.max_concurrent_rpcs),
                MetricsInterceptor(),
            ],
            reflection_enabled=config.auth.reflection != "off",
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

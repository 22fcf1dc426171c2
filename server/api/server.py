"""The gRPC server: services, health, reflection, metrics interceptor, admission cap, graceful stop."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server import metrics
from server.api.services import CatalogService, RecommenderService
from server.config import Config
from server.gen.recd.v1 import catalog_pb2, catalog_pb2_grpc, recommender_pb2, recommender_pb2_grpc
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
    def __init__(self, recd: Recd, config: Config) -> None:
        self.recd = recd
        self.config = config
        options = [
            ("grpc.max_receive_message_length", config.server.max_message_bytes),
            ("grpc.max_send_message_length", config.server.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        # Past the cap gRPC answers RESOURCE_EXHAUSTED at once instead of queueing without bound.
        self.server = grpc.aio.server(
            interceptors=[MetricsInterceptor()],
            options=options,
            maximum_concurrent_rpcs=config.server.max_concurrent_rpcs,
        )
        self.health = health.aio.HealthServicer()
        recommender_pb2_grpc.add_RecommenderServicer_to_server(RecommenderService(recd), self.server)
        catalog_pb2_grpc.add_CatalogServicer_to_server(CatalogService(recd), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.port = self.server.add_insecure_port(config.server.address)
        if self.port == 0:
            raise RuntimeError(f"cannot listen on {config.server.address}")

    @property
    def address(self) -> str:
        host = self.config.server.address.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def _set_health(self, status: int) -> None:
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)

    async def start(self) -> None:
        await self.server.start()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("recd serving on %s", self.address)

    async def stop(self) -> None:
        """Health NOT_SERVING first so balancers drain us, then stop with grace, then close backends."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.stop(self.config.server.grace_s)
        await self.recd.close()
        log.info("recd stopped")


async def run_until_signalled(server: RecdServer, on_ready: Callable[[], None] | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    if on_ready is not None:
        on_ready()
    await stop.wait()
    log.info("signal received; draining")
    await server.stop()

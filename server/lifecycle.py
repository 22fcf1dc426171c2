"""The life cycle of one gRPC server, shared by the frontend, the edge tier and the shard nodes.

build (options, interceptors, admission cap) -> register the owner's services, health (and reflection)
-> bind (`port`, `address`) -> start -> health SERVING -> ... -> stop: health NOT_SERVING first, so that
balancers stop sending; then stop accepting and give in-flight RPCs a grace period to finish (what is
still running after it is cancelled); then the owner's close hooks, in order. A call that finished within
the grace period has ended by then; one cancelled after it may still be unwinding (gRPC does not wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from server.config import TlsConfig
from server.security import tls as transport
from server.tracing.interceptor import server_interceptors as tracing_interceptors

CloseHook = Callable[[], Awaitable[object]]


class ServerLifecycle:
    """A bound, not yet started, gRPC server on `address` ("host:0" picks a free port: see `port`)."""

    def __init__(
        self,
        address: str,
        register: Callable[[grpc.aio.Server], None],
        service_names: Sequence[str],
        *,
        options: Sequence[tuple[str, Any]] = (),
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        maximum_concurrent_rpcs: int | None = None,
        reflection_enabled: bool = False,
        on_close: Sequence[CloseHook] = (),
        reuse_port: bool | None = None,
        extra_addresses: Sequence[str] = (),
        tls: TlsConfig | None = None,
        tls_key: str = "server.tls",
    ) -> None:
        """`register` adds the owner's services; `service_names` (full names) are what health reports
        on, besides the whole server (""), and what reflection lists; `on_close` runs after the drain.

        `reuse_port`: SO_REUSEPORT on the listening sockets, set explicitly either way (None leaves
        gRPC's default, which is on). On, several processes share one port and the kernel spreads new
        connections over them (the workers of `recd serve --workers N`); off, a second server on a
        taken port fails at once instead of silently sharing it. `extra_addresses`: more ports for the
        same services (a worker's private address, where its supervisor checks this one process).
        `tls`: every address's TLS (server/security/tls.py; None: plaintext, loopback only), and
        `tls_key` the config key it came from, which error messages name."""
        options = list(options)
        if reuse_port is not None:
            options = [o for o in options if o[0] != "grpc.so_reuseport"]
            options.append(("grpc.so_reuseport", 1 if reuse_port else 0))
        self.server = grpc.aio.server(
            # Tracing outermost (when on): a call refused by an inner interceptor is still in its trace.
            interceptors=[*tracing_interceptors(), *interceptors],
            options=options,
            maximum_concurrent_rpcs=maximum_concurrent_rpcs,
        )
        register(self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        if reflection_enabled:
            reflection.enable_server_reflection(
                (*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
            )
        self._health_names = ("", *service_names)
        self._on_close = tuple(on_close)
        # gRPC raises RuntimeError itself when the address is taken; 0 is its older way of saying so.
        self.port = transport.bind(self.server, address, tls, tls_key)
        if self.port == 0:
            raise RuntimeError(f"cannot listen on {address}")
        # A unix socket has no port to fill in.
        self.address = address if address.startswith("unix:") else f"{address.rsplit(':', 1)[0]}:{self.port}"
        self.extra_ports: list[int] = []
        for extra in extra_addresses:
            port = transport.bind(self.server, extra, tls, tls_key)
            if port == 0:
                raise RuntimeError(f"cannot listen on {extra}")
            self.extra_ports.append(port)

    async def start(self, serving: bool = True) -> None:
        """`serving=False`: calls are answered, but health says NOT_SERVING until `set_serving()` (a
        worker of a group waits for its supervisor: the group serves once every worker can)."""
        if not serving:
            # gRPC's health servicer starts with the whole server ("") SERVING.
            for name in self._health_names:
                await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        if serving:
            await self.set_serving()

    async def set_serving(self) -> None:
        """Health SERVING for the server and its services (a no-op once the stop has begun)."""
        for name in self._health_names:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace_s: float | None) -> None:
        """`grace_s`: how long in-flight RPCs may take to finish (None: cancel them at once)."""
        # Every service NOT_SERVING, and it stays so: a late set() cannot turn one back on mid-drain.
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        for close in self._on_close:
            await close()

    async def wait_for_termination(self, timeout_s: float | None = None) -> bool:
        return await self.server.wait_for_termination(timeout_s)


def stop_signal() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM. Where the loop cannot take signal handlers (a thread other than
    the main one), nothing sets it: the wait on it ends only by a timeout or a cancellation."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop


async def wait_for_stop_signal(timeout_s: float | None = None) -> None:
    """Returns when SIGINT or SIGTERM arrives, or after `timeout_s`."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop_signal().wait(), timeout_s)


class Servable(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def run_until_signalled(server: Servable, on_ready: Callable[[], None] | None = None) -> None:
    """Starts `server`, serves until SIGINT or SIGTERM, then stops it (which drains it)."""
    stop = stop_signal()  # before the start: a signal while starting still stops gracefully
    await server.start()
    if on_ready is not None:
        on_ready()
    await stop.wait()
    # Under the server's own logger, beside its "serving on" and "stopped" lines.
    logging.getLogger(type(server).__module__).info("signal received; draining")
    await server.stop()

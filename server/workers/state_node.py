"""A state node: the process that holds a worker group's embedded profile store, item graph or cache, so
that every worker reads and writes the same ones (`python -m server.workers.state_node --role R`). A group
runs one per role left embedded, so that every worker's calls for the three roles do not share one event
loop and one core (one state node for all three took 0.16-0.19 ms of CPU per Recommend in `recd bench
scale --quick` on the 2-core box: a whole core at about 6,000 Recommends/s).

The stores are the embedded ones of server/backends (memory_profiles, memory_graph, memory_cache), built
by server/wiring.py exactly as a single frontend builds them, with their data under data_dir as there.
Only the roles the config leaves embedded are hosted: with ScyllaDB, Neo4j and Redis configured, the
supervisor starts no state node at all. The wire is server/workers/state_wire.py (pickle over a private
unix socket: see there why that is acceptable, and only there).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import grpc

from server.backends.base import Cache, ItemGraph, ProfileStore
from server.cli import run_server_loop
from server.config import Config, load_config
from server.lifecycle import ServerLifecycle, stop_signal
from server.logs import setup_logging
from server.workers import state_wire
from server.workers.control import follow_supervisor

log = logging.getLogger("server.workers.state_node")  # also when run as __main__

Handler = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


class StateNode:
    """Serves the given stores (any of them may be None: not hosted) on `unix:<socket_path>`."""

    def __init__(
        self,
        socket_path: str,
        profiles: ProfileStore | None,
        graph: ItemGraph | None,
        cache: Cache | None,
        *,
        max_message_bytes: int = 64 * 1024 * 1024,
        close_stores: bool = True,
    ) -> None:
        self.socket_path = socket_path
        self._profiles = profiles
        targets: dict[str, Any] = {
            state_wire.PROFILES: profiles,
            state_wire.GRAPH: graph,
            state_wire.CACHE: cache,
        }
        self._hosted = {service: target for service, target in targets.items() if target is not None}
        # The popularity answer last sent: (object the store answered, its version, its pickle).
        self._popularity: tuple[object, tuple[int, int], bytes] | None = None
        self._popularity_lock = asyncio.Lock()
        # A version no earlier run of a state node used: a worker holding counts from before a restart
        # of this node never mistakes them for current ones.
        self._popularity_epoch = time.time_ns()
        self._popularity_serial = 0

        def register(server: grpc.aio.Server) -> None:
            handlers = []
            for service, target in self._hosted.items():
                methods = {
                    name: grpc.unary_unary_rpc_method_handler(self._handler(service, name, target))
                    for name in state_wire.METHODS[service]
                }
                handlers.append(grpc.method_handlers_generic_handler(service, methods))
            server.add_generic_rpc_handlers(tuple(handlers))

        async def close() -> None:
            if close_stores:
                for target in self._hosted.values():
                    await target.close()

        # A stale socket file (a node that died) would make the bind fail.
        if os.path.exists(socket_path):
            os.unlink(socket_path)
        self.lifecycle = ServerLifecycle(
            f"unix:{socket_path}",
            register,
            tuple(self._hosted),
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
            ],
            on_close=[close],
        )

    @property
    def hosted(self) -> tuple[str, ...]:
        return tuple(self._hosted)

    async def start(self) -> None:
        await self.lifecycle.start()
        # Only this user: the directory (0700) is the real fence, this is the second one.
        os.chmod(self.socket_path, 0o600)
        log.info("state node serving %s on %s", ", ".join(self._hosted), self.socket_path)

    async def stop(self, grace_s: float | None) -> None:
        """Drains, then closes the stores (their final snapshots)."""
        await self.lifecycle.stop(grace_s)
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        log.info("state node stopped")

    # --- calls ------------------------------------------------------------------------------------------
    def _handler(self, service: str, name: str, target: Any) -> Handler:
        call: Callable[..., Awaitable[Any]]
        if service == state_wire.PROFILES and name == "item_popularity":
            call = self._item_popularity
        elif service == state_wire.CACHE and name == "set_many":
            call = self._cache_set_many
        else:
            call = getattr(target, name)

        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            args = state_wire.decode_args(service, name, await state_wire.loads_async(request))
            try:
                result = await call(*args)
            except Exception as exc:
                code = state_wire.status_of(exc)
                if code == grpc.StatusCode.INTERNAL:
                    log.exception("state node %s.%s failed", service, name)
                await context.abort(code, f"{type(exc).__name__}: {exc}")
            return state_wire.dumps(state_wire.encode_result(service, name, result))

        return handle

    async def _cache_set_many(self, entries: list[tuple[str, bytes, float]]) -> None:
        cache: Cache = self._hosted[state_wire.CACHE]
        for key, value, ttl_s in entries:
            await cache.set(key, value, ttl_s)

    async def _item_popularity(
        self, timeout_s: float, known: tuple[int, int] | None
    ) -> tuple[Any, bytes | None]:
        assert self._profiles is not None
        counts = await self._profiles.item_popularity(timeout_s)
        async with self._popularity_lock:
            # An embedded store answers with the same object until a write: pickled once per version,
            # off the loop, whatever the number of workers asking.
            if self._popularity is None or self._popularity[0] is not counts:
                payload = await state_wire.dumps_async(counts, off_loop=True)
                self._popularity_serial += 1
                self._popularity = (counts, (self._popularity_epoch, self._popularity_serial), payload)
            _, version, payload = self._popularity
        return version, (None if known == version else payload)


def embedded_roles(config: Config) -> tuple[str, ...]:
    """The roles (state_wire.ROLES) this config leaves embedded: those a group's state nodes host."""
    backends = {
        "profiles": config.profiles.backend,
        "graph": config.graph.backend,
        "cache": config.cache.backend,
    }
    return tuple(role for role in state_wire.ROLES if backends[role] == "embedded")


def embedded_stores(
    config: Config, roles: Collection[str]
) -> tuple[ProfileStore | None, ItemGraph | None, Cache | None]:
    """The stores of `roles` (each left embedded by the config) for one state node to host."""
    from server.wiring import build_cache, build_graph, build_profiles

    unknown = set(roles) - set(embedded_roles(config))
    if unknown:
        raise ValueError(f"a state node hosts only roles the config leaves embedded, not {sorted(unknown)}")
    config.workers.state_socket = None  # built here, in-process: never a proxy to ourselves
    return (
        build_profiles(config) if "profiles" in roles else None,
        build_graph(config) if "graph" in roles else None,
        build_cache(config) if "cache" in roles else None,
    )


async def run_state_node(config: Config, socket_path: str, roles: Collection[str]) -> None:
    """Serves until SIGTERM/SIGINT (or the supervisor's end), then drains and closes the stores."""
    stop = stop_signal()
    stores = embedded_stores(config, roles)
    node = StateNode(socket_path, *stores, max_message_bytes=config.server.max_message_bytes)
    await node.start()
    await stop.wait()
    await node.stop(config.server.grace_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.workers.state_node")
    parser.add_argument("--config")
    parser.add_argument("--socket", required=True)
    parser.add_argument(
        "--role",
        action="append",
        choices=list(state_wire.ROLES),
        help="a role to host (repeat for several; default: every role the config leaves embedded)",
    )
    args = parser.parse_args(argv)
    config = load_config(args.config)
    roles = tuple(args.role) if args.role else embedded_roles(config)
    process = "state-node-" + "-".join(roles) if args.role else "state-node"
    setup_logging(config.server.log_level, config.server.log_format, {"process": process})

    async def run() -> None:
        follow_supervisor()
        await run_state_node(config, args.socket, roles)

    run_server_loop(run(), config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

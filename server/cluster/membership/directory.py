"""Node names to gRPC clients, following DNS.

An address may name its host by IP or by DNS name (under Kubernetes, a StatefulSet pod's stable name
through a headless service). A DNS name is resolved here, at start and then periodically, and the client
is replaced when the name points elsewhere (the pod was rescheduled), rather than left to gRPC's resolver,
which re-resolves only after a connection breaks and may keep talking to a stale address meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping

from server.addresses import is_ip, join_address, resolve_host, split_address
from shards.client import ShardClient

log = logging.getLogger(__name__)

Resolver = Callable[[str, int], Awaitable[list[str]]]
# In-flight calls on a replaced client get this long before it is closed.
RETIRE_AFTER_S = 30.0


class NodeDirectory:
    def __init__(self, make_client: Callable[[str], ShardClient], resolver: Resolver = resolve_host) -> None:
        self._make_client = make_client
        self._resolver = resolver
        self._addresses: dict[str, str] = {}
        self._targets: dict[str, str] = {}
        self._clients: dict[str, ShardClient] = {}
        self._retiring: dict[asyncio.Task[None], ShardClient] = {}

    def clients(self) -> dict[str, ShardClient]:
        return dict(self._clients)

    def target(self, node: str) -> str:
        return self._targets[node]

    def set_unresolved(self, addresses: Mapping[str, str]) -> None:
        """Clients for the addresses as written (before an event loop runs; gRPC resolves names itself
        until `update` does it here)."""
        for node, address in addresses.items():
            if node not in self._clients:
                self._addresses[node] = address
                self._targets[node] = address
                self._clients[node] = self._make_client(address)

    async def update(self, addresses: Mapping[str, str]) -> bool:
        """Follows `addresses` (and what their names resolve to now); True if any client changed."""
        changed = False
        for node, address in addresses.items():
            target = await self._target_of(address, self._targets.get(node))
            if self._targets.get(node) == target and node in self._clients:
                self._addresses[node] = address
                continue
            old = self._clients.get(node)
            self._addresses[node] = address
            self._targets[node] = target
            self._clients[node] = self._make_client(target)
            changed = True
            if old is not None:
                log.info("shard node %s now at %s (%s)", node, target, address)
                self._retire(old)
        for node in [n for n in self._clients if n not in addresses]:
            self._retire(self._clients.pop(node))
            self._targets.pop(node, None)
            self._addresses.pop(node, None)
            changed = True
        return changed

    def renew_all(self) -> None:
        """Remakes every client on its current target (their TLS files changed on disk: gRPC reads them
        only when a channel is made); the old ones retire as replaced ones do in `update`."""
        for node, target in self._targets.items():
            old = self._clients.get(node)
            self._clients[node] = self._make_client(target)
            if old is not None:
                self._retire(old)

    async def _target_of(self, address: str, previous: str | None) -> str:
        host, port = split_address(address)
        if is_ip(host):
            return address
        try:
            ips = await self._resolver(host, port)
        except OSError as exc:
            log.warning("cannot resolve %s (%s); keeping %s", host, exc, previous or address)
            return previous or address
        if not ips:
            return previous or address
        if previous is not None and split_address(previous)[0] in ips:
            return previous  # several records: stay where we are while it is still listed
        return join_address(ips[0], port)

    def _retire(self, client: ShardClient) -> None:
        async def close_later() -> None:
            await asyncio.sleep(RETIRE_AFTER_S)
            await client.close()

        task = asyncio.get_running_loop().create_task(close_later())
        self._retiring[task] = client
        task.add_done_callback(lambda t: self._retiring.pop(t, None))

    async def close(self) -> None:
        for task, client in list(self._retiring.items()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await client.close()
        for client in self._clients.values():
            await client.close()
        self._clients.clear()

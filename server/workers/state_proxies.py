"""A worker's profile store, item graph and cache: the state node's, reached over its unix socket.

Each proxy implements its role's Protocol (server/backends/base.py) by calling the same method on the
state node (server/workers/state_node.py), so every worker of a group reads and writes one store. Reads
carry their `timeout_s` as the call's deadline and fail at once while the state node is down (the
pipeline fails open on them); writes wait for it (a restart takes a moment) up to
`workers.state_write_timeout_s`. Failures raise BackendError, as the real backends' do, except in the
cache, which never raises: a failure is a miss, as with Redis.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from server import metrics
from server.backends.base import ItemHashes, UserExport, UserRecord
from server.domain import Edge, Exposure, Interaction, Outcome, UserProfile
from server.workers import state_wire

log = logging.getLogger(__name__)

_BACKEND = "state_node"


class _StateCalls:
    """Calls to one role's service on the state node, over one channel."""

    def __init__(self, socket_path: str, service: str, max_message_bytes: int) -> None:
        self._service = service
        self._channel = grpc.aio.insecure_channel(
            f"unix:{socket_path}",
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                # A restarted state node is found again within about this long.
                ("grpc.max_reconnect_backoff_ms", 1000),
            ],
        )
        self._stubs = {
            name: self._channel.unary_unary(f"/{service}/{name}") for name in state_wire.METHODS[service]
        }

    async def call(self, method: str, args: tuple[Any, ...], timeout_s: float, *, write: bool = False) -> Any:
        # A write's arguments may be a whole batch (thousands of interactions): pickled off the loop.
        wire_args = state_wire.encode_args(self._service, method, args)
        request = await state_wire.dumps_async(wire_args, off_loop=write)
        try:
            reply = await self._stubs[method](request, timeout=timeout_s, wait_for_ready=write)
        except grpc.aio.AioRpcError as exc:
            metrics.BACKEND_CALLS.labels(_BACKEND, method, "error").inc()
            raise state_wire.error_of(_BACKEND, method, exc) from None
        return state_wire.decode_result(self._service, method, args, await state_wire.loads_async(reply))

    async def close(self) -> None:
        await self._channel.close()


class StateProfileStore:
    """The ProfileStore protocol, on the state node."""

    def __init__(self, socket_path: str, write_timeout_s: float, max_message_bytes: int) -> None:
        self._calls = _StateCalls(socket_path, state_wire.PROFILES, max_message_bytes)
        self._write_timeout_s = write_timeout_s
        self._popularity: Mapping[str, Mapping[str, float]] = {}
        self._popularity_version: object = None

    async def read_users(
        self, user_ids: Sequence[str], history_limit: int, timeout_s: float
    ) -> list[UserRecord]:
        result: list[UserRecord] = await self._calls.call(
            "read_users", (list(user_ids), history_limit, timeout_s), timeout_s
        )
        return result

    async def get_profile(self, user_id: str, timeout_s: float) -> UserProfile | None:
        result: UserProfile | None = await self._calls.call("get_profile", (user_id, timeout_s), timeout_s)
        return result

    async def upsert_profiles(self, profiles: Sequence[UserProfile]) -> None:
        if profiles:
            await self._calls.call("upsert_profiles", (list(profiles),), self._write_timeout_s, write=True)

    async def append_interactions(self, interactions: Sequence[Interaction]) -> None:
        if interactions:
            args = (list(interactions),)
            await self._calls.call("append_interactions", args, self._write_timeout_s, write=True)

    async def recent_interactions(self, user_id: str, limit: int, timeout_s: float) -> list[Interaction]:
        result: list[Interaction] = await self._calls.call(
            "recent_interactions", (user_id, limit, timeout_s), timeout_s
        )
        return result

    async def seen_items(self, user_id: str, timeout_s: float) -> ItemHashes:
        result: ItemHashes = await self._calls.call("seen_items", (user_id, timeout_s), timeout_s)
        return result

    async def item_popularity(self, timeout_s: float) -> Mapping[str, Mapping[str, float]]:
        # The same object back until the counts change, as the embedded store does: the frontend's
        # popularity refresh skips its work when it gets the object it applied last time.
        version, payload = await self._calls.call(
            "item_popularity", (timeout_s, self._popularity_version), timeout_s
        )
        if payload is not None:
            self._popularity = await state_wire.loads_async(payload)
            self._popularity_version = version
        return self._popularity

    async def count_users(self) -> int:
        return int(await self._calls.call("count_users", (), self._write_timeout_s))

    async def delete_users(self, user_ids: Sequence[str]) -> None:
        # A write: waits for a restarting state node, and returns once the node's store has logged it.
        if user_ids:
            await self._calls.call("delete_users", (list(user_ids),), self._write_timeout_s, write=True)

    async def export_user(self, user_id: str, interaction_limit: int, timeout_s: float) -> UserExport:
        result: UserExport = await self._calls.call(
            "export_user", (user_id, interaction_limit, timeout_s), timeout_s
        )
        return result

    async def record_exposures(self, exposures: Sequence[Exposure], keep_per_user: int, ttl_s: float) -> None:
        if exposures:
            args = (list(exposures), keep_per_user, ttl_s)
            await self._calls.call("record_exposures", args, self._write_timeout_s, write=True)

    async def read_exposures(
        self, user_ids: Sequence[str], since_ms: int, limit: int, timeout_s: float
    ) -> list[list[Exposure]]:
        if not user_ids:
            return []
        result: list[list[Exposure]] = await self._calls.call(
            "read_exposures", (list(user_ids), since_ms, limit, timeout_s), timeout_s
        )
        return result

    async def record_outcomes(self, outcomes: Sequence[Outcome], ttl_s: float) -> None:
        if outcomes:
            args = (list(outcomes), ttl_s)
            await self._calls.call("record_outcomes", args, self._write_timeout_s, write=True)

    async def scan_exposures(self, since_ms: int) -> list[Exposure]:
        # The report's scan: as long as a write may take (it reads the whole log), not a request budget.
        result: list[Exposure] = await self._calls.call("scan_exposures", (since_ms,), self._write_timeout_s)
        return result

    async def scan_outcomes(self, since_ms: int) -> list[Outcome]:
        result: list[Outcome] = await self._calls.call("scan_outcomes", (since_ms,), self._write_timeout_s)
        return result

    async def close(self) -> None:
        await self._calls.close()


class StateItemGraph:
    """The ItemGraph protocol, on the state node."""

    def __init__(self, socket_path: str, write_timeout_s: float, max_message_bytes: int) -> None:
        self._calls = _StateCalls(socket_path, state_wire.GRAPH, max_message_bytes)
        self._write_timeout_s = write_timeout_s

    async def upsert_edges(self, edges: Sequence[Edge]) -> None:
        if edges:
            await self._calls.call("upsert_edges", (list(edges),), self._write_timeout_s, write=True)

    async def neighbours(
        self, item_ids: Sequence[str], hops: int, limit_per_hop: int, min_score: float, timeout_s: float
    ) -> dict[str, float]:
        args = (list(item_ids), hops, limit_per_hop, min_score, timeout_s)
        result: dict[str, float] = await self._calls.call("neighbours", args, timeout_s)
        return result

    async def neighbours_many(
        self,
        seed_lists: Sequence[Sequence[str]],
        hops: int,
        limit_per_hop: int,
        min_score: float,
        timeout_s: float,
    ) -> list[dict[str, float]]:
        args = ([list(s) for s in seed_lists], hops, limit_per_hop, min_score, timeout_s)
        result: list[dict[str, float]] = await self._calls.call("neighbours_many", args, timeout_s)
        return result

    async def count_edges(self) -> int:
        return int(await self._calls.call("count_edges", (), self._write_timeout_s))

    async def close(self) -> None:
        await self._calls.close()


class StateCache:
    """The Cache protocol, on the state node: best effort, never raises (a failure is a miss)."""

    def __init__(self, socket_path: str, timeout_s: float, max_message_bytes: int) -> None:
        self._calls = _StateCalls(socket_path, state_wire.CACHE, max_message_bytes)
        self._timeout_s = timeout_s
        # Sets issued together (a batch caching the state of each user it read) go as one call.
        self._pending: list[tuple[str, bytes, float]] = []
        self._sent: asyncio.Future[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()

    async def get(self, key: str) -> bytes | None:
        return (await self.get_many([key]))[0]

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        try:
            result: list[bytes | None] = await self._calls.call("get_many", (list(keys),), self._timeout_s)
            return result
        except Exception as exc:
            log.debug("state cache get_many failed: %s", exc)
            metrics.CACHE_REQUESTS.labels("state_node", "error").inc()
            return [None] * len(keys)

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        if self._sent is None:
            loop = asyncio.get_running_loop()
            self._sent = loop.create_future()
            # After the tasks already scheduled have run to their first await: every set of one gather.
            loop.call_soon(self._send_pending)
        sent = self._sent
        self._pending.append((key, value, ttl_s))
        await asyncio.shield(sent)

    def _send_pending(self) -> None:
        entries, sent = self._pending, self._sent
        self._pending, self._sent = [], None
        task = asyncio.ensure_future(self._set_many(entries, sent))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _set_many(
        self, entries: list[tuple[str, bytes, float]], sent: asyncio.Future[None] | None
    ) -> None:
        try:
            if len(entries) == 1:
                await self._calls.call("set", entries[0], self._timeout_s)
            else:
                await self._calls.call("set_many", (entries,), self._timeout_s)
        except Exception as exc:
            log.debug("state cache set failed: %s", exc)
            metrics.CACHE_REQUESTS.labels("state_node", "error").inc()
        finally:
            if sent is not None and not sent.done():
                sent.set_result(None)

    async def delete(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        try:
            await self._calls.call("delete", (list(keys),), self._timeout_s)
        except Exception as exc:
            log.debug("state cache delete failed: %s", exc)
            metrics.CACHE_REQUESTS.labels("state_node", "error").inc()

    async def close(self) -> None:
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)
        await self._calls.close()

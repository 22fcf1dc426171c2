"""The Shard gRPC service: a ShardHost behind grpc.aio, on the life cycle every recd server shares
(server/lifecycle.py: health checking, graceful shutdown).

Validation lives in the host (so the in-process client behaves the same); this layer only checks what
exists on the wire alone (byte lengths) and maps ShardError kinds to status codes, once, in `_guard`.

A node that follows a cluster layout (a LayoutKeeper, see server/cluster/node/keeper.py) also fences writes by
layout epoch: a write carrying another epoch than the node's (older: the writer must refresh; newer: the
node has not been moved yet) is refused with STALE_LAYOUT, and the writer retries. A layout
change waits for the writes already past the check, so once SetLayout returns, every later write was
routed by the new layout.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, TypeVar

import grpc

from server.api.handlers import add_servicer
from server.config import AuthConfig, TlsConfig
from server.gen.recd.v1 import shard_pb2 as pb
from server.gen.recd.v1 import shard_pb2_grpc
from server.lifecycle import ServerLifecycle
from server.security.admission import AdmissionInterceptor
from shards import convert, metrics
from shards.client import DEFAULT_MAX_MESSAGE_BYTES, gather_search
from shards.host import ShardHost
from shards.records import ErrorKind, NodeLayout, NodeStats, RecordBatch, ShardError

log = logging.getLogger(__name__)

T = TypeVar("T")
SHARD_SERVICE = pb.DESCRIPTOR.services_by_name["Shard"]
SERVICE_NAME = SHARD_SERVICE.full_name


def _inner_timeout(remaining_s: float | None) -> float | None:
    """Stop waiting for slow shards a little before the caller's deadline, leaving time to answer with
    the shards that did finish (they are worth more than a DEADLINE_EXCEEDED for all)."""
    if remaining_s is None:
        return None
    return max(0.0, remaining_s * 0.9 - 0.001)


async def _guard(context: grpc.aio.ServicerContext, handler: Callable[[], Awaitable[T]]) -> T:
    try:
        return await handler()
    except ShardError as exc:
        await context.abort(convert.status_of(exc), exc.message)
    except Exception as exc:
        log.exception("shard service: unexpected error")
        await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
    raise AssertionError("unreachable: abort raises")


class LayoutKeeper(Protocol):
    """A node's cluster layout: what it follows now, and how it moves to a newer one."""

    @property
    def epoch(self) -> int: ...

    def current(self) -> NodeLayout: ...

    def adopt(self, layout_json: str, drop_unplaced: bool) -> NodeLayout:
        """Blocking: persists the layout, opens (or drops) shards. ShardError(INVALID_ARGUMENT) for a
        malformed document or an older epoch."""
        ...


class _WriteFence:
    """Writes pass together; a layout change passes alone, after the writes already admitted finish, and
    holds back new ones until it is done (so they are checked against the new epoch)."""

    def __init__(self) -> None:
        self._writes = 0
        self._changing = False
        self._cond = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._changing)
            self._writes += 1
        try:
            yield
        finally:
            async with self._cond:
                self._writes -= 1
                self._cond.notify_all()

    @contextlib.asynccontextmanager
    async def change(self) -> AsyncIterator[None]:
        async with self._cond:
            await self._cond.wait_for(lambda: not self._changing)
            self._changing = True
            await self._cond.wait_for(lambda: self._writes == 0)
        try:
            yield
        finally:
            async with self._cond:
                self._changing = False
                self._cond.notify_all()


class ShardServicer(shard_pb2_grpc.ShardServicer):
    def __init__(
        self,
        host: ShardHost,
        executor: cf.ThreadPoolExecutor | None = None,
        layout: LayoutKeeper | None = None,
    ) -> None:
        self._host = host
        # Blocking host calls (fsync, locks) run here, never on the event loop.
        self._executor = executor or cf.ThreadPoolExecutor(8, "shard-service")
        self._layout = layout
        self._fence = _WriteFence()

    async def _blocking(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def _check_epoch(self, epoch: int) -> None:
        if self._layout is None or epoch == 0:
            return
        mine = self._layout.epoch
        if epoch < mine:
            raise ShardError(
                f"layout epoch {epoch} is stale: this node follows epoch {mine}; refresh the layout",
                ErrorKind.STALE_LAYOUT,
            )
        if epoch > mine:
            # The rebalancer is moving nodes to the writer's epoch and has not reached this one yet: the
            # same answer, so the writer refreshes (nothing newer) and retries a moment later.
            raise ShardError(
                f"this node follows layout epoch {mine} and has not adopted epoch {epoch} yet",
                ErrorKind.STALE_LAYOUT,
            )

    def _node_layout(self) -> NodeLayout:
        if self._layout is None:
            return NodeLayout(0, "", self._host.shard_ids, "")
        return self._layout.current()

    async def Search(
        self, request: pb.ShardSearchRequest, context: grpc.aio.ServicerContext
    ) -> pb.ShardSearchResponse:
        async def run() -> pb.ShardSearchResponse:
            queries = convert.queries_from_bytes(request.queries, request.n_queries, request.dim)
            exclude, filters = convert.constraints_from_proto(request)
            started = self._host.start_search(
                queries, list(request.shard_ids), request.k, request.ef, exclude, filters
            )
            results = await gather_search(started, _inner_timeout(context.time_remaining()))
            return pb.ShardSearchResponse(
                shards=[convert.hits_to_proto(shard_id, result) for shard_id, result in results.items()]
            )

        with metrics.OP_LATENCY.labels("search").time():
            return await _guard(context, run)

    async def Upsert(
        self, request: pb.ShardUpsertRequest, context: grpc.aio.ServicerContext
    ) -> pb.ShardUpsertResponse:
        async def run() -> pb.ShardUpsertResponse:
            parts: dict[int, list[RecordBatch]] = {}
            for i, message in enumerate(request.batches):
                batch = convert.batch_from_proto(message.records, None, f"batches[{i}]")
                parts.setdefault(message.shard_id, []).append(batch)
            batches = {shard_id: RecordBatch.concat(b, self._host.dim) for shard_id, b in parts.items()}
            async with self._fence.write():
                self._check_epoch(request.layout_epoch)
                upserted = await self._blocking(
                    functools.partial(self._host.upsert, batches, backfill=request.backfill)
                )
            return pb.ShardUpsertResponse(upserted=upserted)

        with metrics.OP_LATENCY.labels("upsert").time():
            return await _guard(context, run)

    async def Delete(
        self, request: pb.ShardDeleteRequest, context: grpc.aio.ServicerContext
    ) -> pb.ShardDeleteResponse:
        async def run() -> pb.ShardDeleteResponse:
            labels = convert.labels_from(request.labels)
            async with self._fence.write():
                self._check_epoch(request.layout_epoch)
                deleted = await self._blocking(functools.partial(self._host.delete, request.shard_id, labels))
            return pb.ShardDeleteResponse(deleted=deleted)

        with metrics.OP_LATENCY.labels("delete").time():
            return await _guard(context, run)

    async def Fetch(
        self, request: pb.ShardFetchRequest, context: grpc.aio.ServicerContext
    ) -> pb.ShardFetchResponse:
        async def run() -> pb.ShardFetchResponse:
            labels = convert.labels_from(request.labels)
            batch = await self._blocking(functools.partial(self._host.fetch, request.shard_id, labels))
            return pb.ShardFetchResponse(records=convert.batch_to_proto(request.shard_id, batch).records)

        return await _guard(context, run)

    async def Scan(
        self, request: pb.ShardScanRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ShardRecords]:
        batches = await _guard(
            context,
            lambda: self._blocking(lambda: self._host.scan(request.shard_id, request.batch_size or 1024)),
        )
        while True:
            batch = await _guard(context, lambda: self._blocking(lambda: next(batches, None)))
            if batch is None:
                return
            yield convert.batch_to_proto(request.shard_id, batch)

    async def Changes(
        self, request: pb.ShardChangesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ShardChanges]:
        feed = self._host.follow(request.shard_id, request.incarnation, request.after_lsn)
        while True:
            read = await _guard(context, lambda: anext(feed, None))
            if read is None:
                return
            yield convert.changes_to_proto(request.shard_id, read)

    async def Stats(
        self, request: pb.ShardStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ShardStatsResponse:
        def stats() -> pb.ShardStatsResponse:
            node_stats = self._host.stats()
            if self._layout is not None:
                layout = self._layout.current()
                node_stats = NodeStats(node_stats.dim, node_stats.shards, layout.node_name, layout.epoch)
            return convert.stats_to_proto(node_stats)

        return await _guard(context, lambda: self._blocking(stats))

    async def GetLayout(
        self, request: pb.ShardGetLayoutRequest, context: grpc.aio.ServicerContext
    ) -> pb.ShardLayout:
        async def run() -> pb.ShardLayout:
            return convert.layout_to_proto(self._node_layout())

        return await _guard(context, run)

    async def SetLayout(
        self, request: pb.ShardSetLayoutRequest, context: grpc.aio.ServicerContext
    ) -> pb.ShardLayout:
        async def run() -> pb.ShardLayout:
            keeper = self._layout
            if keeper is None:
                raise ShardError(
                    "this node was started without a cluster layout (recd shard --shards); "
                    "start it with --node-id to rebalance it",
                    ErrorKind.INVALID_ARGUMENT,
                )
            async with self._fence.change():
                adopted = await self._blocking(
                    functools.partial(keeper.adopt, request.layout_json, request.drop_unplaced)
                )
            return convert.layout_to_proto(adopted)

        return await _guard(context, run)


class ShardNodeServer:
    """A started shard node: the port it bound, and a graceful stop."""

    def __init__(self, lifecycle: ServerLifecycle) -> None:
        self.lifecycle = lifecycle
        self.port = lifecycle.port

    async def stop(self, grace_s: float | None = 5.0) -> None:
        """Health turns NOT_SERVING first (load balancers stop sending), then in-flight RPCs get grace_s,
        then the service's executor is shut down (see ServerLifecycle.stop)."""
        await self.lifecycle.stop(grace_s)

    async def wait_for_termination(self, timeout_s: float | None = None) -> bool:
        return await self.lifecycle.wait_for_termination(timeout_s)


async def serve_node(
    host: ShardHost,
    address: str,
    *,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    layout: LayoutKeeper | None = None,
    tls: TlsConfig | None = None,
    auth: AuthConfig | None = None,
) -> ShardNodeServer:
    """Start serving `host` on `address` ("127.0.0.1:0" picks a free port: see `.port`). The caller owns
    the host: stop the node first, then close the host (which takes final snapshots). `layout`: the
    cluster layout this node follows, if any (enables GetLayout/SetLayout and write fencing). `tls`: the
    listener's TLS (the config's cluster.tls; None: plaintext, loopback only). `auth`: who may call it
    (the config's `auth`, whose callers need the internal role; None: everyone)."""
    executor = cf.ThreadPoolExecutor(8, "shard-service")
    lifecycle = ServerLifecycle(
        address,
        # Requests parsed by the handlers: bytes that are no Shard request are INVALID_ARGUMENT, not UNKNOWN.
        lambda server: add_servicer(server, ShardServicer(host, executor, layout), SHARD_SERVICE),
        (SERVICE_NAME,),
        options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ],
        tls=tls,
        tls_key="cluster.tls",
        interceptors=[AdmissionInterceptor(auth)] if auth is not None else [],
        # Off the loop: a host call still running (an fsync) finishes before the executor goes.
        on_close=[lambda: asyncio.to_thread(executor.shutdown, True)],
    )
    await lifecycle.start()
    log.info("shard node serving shards %s on port %d", host.shard_ids, lifecycle.port)
    return ShardNodeServer(lifecycle)

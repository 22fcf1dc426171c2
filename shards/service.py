"""The Shard gRPC service: a ShardHost behind grpc.aio, plus health checking and graceful shutdown.

Validation lives in the host (so the in-process client behaves the same); this layer only checks what
exists on the wire alone (byte lengths) and maps ShardError kinds to status codes, once, in `_guard`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from server.gen.recd.v1 import shard_pb2 as pb
from server.gen.recd.v1 import shard_pb2_grpc
from shards import convert
from shards.client import DEFAULT_MAX_MESSAGE_BYTES, gather_search
from shards.host import ShardHost
from shards.records import RecordBatch, ShardError

log = logging.getLogger(__name__)

T = TypeVar("T")
SERVICE_NAME = "recd.v1.Shard"


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


class ShardServicer(shard_pb2_grpc.ShardServicer):
    def __init__(self, host: ShardHost, executor: cf.ThreadPoolExecutor | None = None) -> None:
        self._host = host
        # Blocking host calls (fsync, locks) run here, never on the event loop.
        self._executor = executor or cf.ThreadPoolExecutor(8, "shard-service")

    async def _blocking(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def Search(
        self, request: pb.ShardSearchRequest, context: grpc.aio.ServicerContext
    ) -> pb.ShardSearchResponse:
        async def run() -> pb.ShardSearchResponse:
            queries = convert.queries_from_bytes(request.queries, request.n_queries, request.dim)
            exclude = [convert.labels_from(e.labels) for e in request.exclude] or None
            started = self._host.start_search(
                queries, list(request.shard_ids), request.k, request.ef, exclude
            )
            results = await gather_search(started, _inner_timeout(context.time_remaining()))
            return pb.ShardSearchResponse(
                shards=[convert.hits_to_proto(shard_id, result) for shard_id, result in results.items()]
            )

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
            upserted = await self._blocking(functools.partial(self._host.upsert, batches))
            return pb.ShardUpsertResponse(upserted=upserted)

        return await _guard(context, run)

    async def Delete(
        self, request: pb.ShardDeleteRequest, context: grpc.aio.ServicerContext
    ) -> pb.ShardDeleteResponse:
        async def run() -> pb.ShardDeleteResponse:
            labels = convert.labels_from(request.labels)
            deleted = await self._blocking(functools.partial(self._host.delete, request.shard_id, labels))
            return pb.ShardDeleteResponse(deleted=deleted)

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

    async def Stats(
        self, request: pb.ShardStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ShardStatsResponse:
        return await _guard(
            context, lambda: self._blocking(lambda: convert.stats_to_proto(self._host.stats()))
        )


class ShardNodeServer:
    """A started shard node: its gRPC server, the port it bound, and a graceful stop."""

    def __init__(
        self,
        server: grpc.aio.Server,
        health_servicer: health.aio.HealthServicer,
        port: int,
        executor: cf.ThreadPoolExecutor,
    ) -> None:
        self.server = server
        self.port = port
        self._health = health_servicer
        self._executor = executor

    async def stop(self, grace_s: float | None = 5.0) -> None:
        """Health turns NOT_SERVING first (load balancers stop sending), then in-flight RPCs get grace_s."""
        await self._health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        self._executor.shutdown(wait=True)

    async def wait_for_termination(self, timeout_s: float | None = None) -> bool:
        return await self.server.wait_for_termination(timeout_s)


async def serve_node(
    host: ShardHost, address: str, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> ShardNodeServer:
    """Start serving `host` on `address` ("127.0.0.1:0" picks a free port: see `.port`). The caller owns
    the host: stop the node first, then close the host (which takes final snapshots)."""
    options = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]
    server = grpc.aio.server(options=options)
    executor = cf.ThreadPoolExecutor(8, "shard-service")
    shard_pb2_grpc.add_ShardServicer_to_server(ShardServicer(host, executor), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    await server.start()
    for service in ("", SERVICE_NAME):
        await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    log.info("shard node serving shards %s on port %d", host.shard_ids, port)
    return ShardNodeServer(server, health_servicer, port, executor)

"""The narrow interface the frontend uses to reach shards, and its two implementations.

Behaviour shared by both (checked by one contract test suite):
- `search` raises only for bad input (ShardError, kind INVALID_ARGUMENT). Everything else (unknown shard,
  deadline, node down) comes back per shard as a ShardError value, so the caller can fail open and count
  coverage. Results are keyed by shard id, in request order.
- Every other method raises ShardError; `error.transient` says whether retrying (or asking another
  replica) may help. Upserts and deletes are idempotent, so retrying them is safe.
- `timeout_s=None` means no deadline. A call that times out may still complete on the node.
- Writes carry the writer's cluster layout epoch (0: not fenced); a node on another epoch refuses them
  (see shards/service.py). The in-process client has no layout and ignores it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import functools
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import grpc
import numpy as np
from numpy.typing import NDArray

from server import tracing
from server.config import ClientTlsConfig
from server.gen.recd.v1 import shard_pb2 as pb
from server.gen.recd.v1 import shard_pb2_grpc
from server.security.credentials import authorized
from server.security.tls import aio_channel
from shards import convert
from shards.changes import FeedRead
from shards.host import ShardHost, search_outcome
from shards.records import (
    ErrorKind,
    NodeLayout,
    NodeStats,
    QueryFilter,
    RecordBatch,
    ShardError,
    ShardHits,
    as_labels,
)

T = TypeVar("T")

DEFAULT_MAX_MESSAGE_BYTES = 64 << 20


class ShardClient(Protocol):
    async def search(
        self,
        queries: NDArray[np.float32],
        shard_ids: Sequence[int],
        k: int,
        ef: int = 0,
        exclude: Sequence[NDArray[np.uint64]] | None = None,
        timeout_s: float | None = None,
        *,
        filters: Sequence[QueryFilter | None] | None = None,
    ) -> dict[int, ShardHits | ShardError]:
        """queries (Q, dim) float32; ef=0 means the node's default; exclude: one label array per query
        (sorted and unique, as the frontend builds them); filters: one attribute filter (or None) per
        query, applied inside each shard's search."""
        ...

    async def upsert(
        self,
        batches: Mapping[int, RecordBatch],
        timeout_s: float | None = None,
        *,
        layout_epoch: int = 0,
        backfill: bool = False,
    ) -> int:
        """Batches keyed by shard id; returns the number of records, once fsynced on the node.
        `backfill`: a rebalancing copy that yields to live writes (ShardIndex.upsert)."""
        ...

    async def delete(
        self,
        shard_id: int,
        labels: NDArray[np.uint64] | Sequence[int],
        timeout_s: float | None = None,
        *,
        layout_epoch: int = 0,
    ) -> int:
        """Returns how many of the labels were live."""
        ...

    async def fetch(
        self, shard_id: int, labels: NDArray[np.uint64] | Sequence[int], timeout_s: float | None = None
    ) -> RecordBatch:
        """The live items among labels, in request order."""
        ...

    def scan(self, shard_id: int, batch_size: int = 1024) -> AsyncIterator[RecordBatch]:
        """Every live item of one shard, in batches."""
        ...

    def follow(self, shard_id: int, incarnation: int, after: int) -> AsyncIterator[FeedRead]:
        """The shard's change feed from a cursor (ShardHost.follow): endless until a reset or an error."""
        ...

    async def stats(self, timeout_s: float | None = None) -> NodeStats: ...

    async def get_layout(self, timeout_s: float | None = None) -> NodeLayout:
        """The cluster layout the node follows (epoch 0 and no document for a node without one)."""
        ...

    async def set_layout(
        self, layout_json: str, drop_unplaced: bool = False, timeout_s: float | None = None
    ) -> NodeLayout: ...

    async def close(self) -> None: ...


async def gather_search(
    started: Mapping[int, cf.Future[ShardHits] | ShardError], timeout_s: float | None
) -> dict[int, ShardHits | ShardError]:
    """Waits (without blocking the loop) for searches started by ShardHost.start_search, at most
    timeout_s; shards still running then are reported as DEADLINE_EXCEEDED."""
    waiting = [asyncio.wrap_future(f) for f in started.values() if isinstance(f, cf.Future)]
    for future in waiting:
        # A shard that fails after we stopped waiting must not log "exception was never retrieved".
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
    if waiting:
        await asyncio.wait(waiting, timeout=timeout_s)
    return {shard_id: search_outcome(shard_id, f, timeout_s) for shard_id, f in started.items()}


def _all_done(futures: Sequence[cf.Future[Any]]) -> asyncio.Future[None]:
    """An asyncio future that completes, on the running loop, once every one of `futures` is done."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    left = [len(futures)]
    lock = threading.Lock()

    def finish() -> None:
        if not done.done():
            done.set_result(None)

    def one_done(_: cf.Future[Any]) -> None:
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            # RuntimeError: the loop closed meanwhile, so nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(finish)

    for future in futures:
        future.add_done_callback(one_done)
    return done


def _deadline_error(what: str, timeout_s: float | None) -> ShardError:
    return ShardError(f"{what} exceeded its deadline of {timeout_s}s", ErrorKind.DEADLINE_EXCEEDED)


class InProcessShardClient:
    """Calls a ShardHost in this process. Blocking host calls run on a dedicated executor so they can't
    starve (or be starved by) other users of asyncio's default one."""

    def __init__(self, host: ShardHost, *, max_workers: int = 8, owns_host: bool = False) -> None:
        self.host = host
        self._owns_host = owns_host
        self._executor = cf.ThreadPoolExecutor(max_workers, "shard-client")

    async def _call(self, what: str, timeout_s: float | None, fn: Callable[[], T]) -> T:
        future = asyncio.get_running_loop().run_in_executor(self._executor, fn)
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise _deadline_error(what, timeout_s) from None
        except ShardError:
            raise
        except Exception as exc:
            raise ShardError(f"{what}: {type(exc).__name__}: {exc}", ErrorKind.INTERNAL) from exc

    async def search(
        self,
        queries: NDArray[np.float32],
        shard_ids: Sequence[int],
        k: int,
        ef: int = 0,
        exclude: Sequence[NDArray[np.uint64]] | None = None,
        timeout_s: float | None = None,
        *,
        filters: Sequence[QueryFilter | None] | None = None,
    ) -> dict[int, ShardHits | ShardError]:
        # The searches start from here (validation and hand-off take microseconds) and the last shard
        # to finish wakes the event loop, once: no thread sits waiting for the others, and a batch
        # costs one cross-thread wake-up (about as much as a small shard's search) instead of one per
        # shard or a hop through a waiting thread.
        started = self.host.start_search(queries, shard_ids, k, ef, exclude, filters)
        futures = [f for f in started.values() if isinstance(f, cf.Future)]
        if futures:
            try:
                async with asyncio.timeout(timeout_s):
                    await _all_done(futures)
            except TimeoutError:
                pass
        return {shard_id: search_outcome(shard_id, f, timeout_s) for shard_id, f in started.items()}

    async def upsert(
        self,
        batches: Mapping[int, RecordBatch],
        timeout_s: float | None = None,
        *,
        layout_epoch: int = 0,
        backfill: bool = False,
    ) -> int:
        return await self._call(
            "upsert", timeout_s, functools.partial(self.host.upsert, batches, backfill=backfill)
        )

    async def delete(
        self,
        shard_id: int,
        labels: NDArray[np.uint64] | Sequence[int],
        timeout_s: float | None = None,
        *,
        layout_epoch: int = 0,
    ) -> int:
        return await self._call("delete", timeout_s, functools.partial(self.host.delete, shard_id, labels))

    async def fetch(
        self, shard_id: int, labels: NDArray[np.uint64] | Sequence[int], timeout_s: float | None = None
    ) -> RecordBatch:
        return await self._call("fetch", timeout_s, functools.partial(self.host.fetch, shard_id, labels))

    async def scan(self, shard_id: int, batch_size: int = 1024) -> AsyncIterator[RecordBatch]:
        batches: Iterator[RecordBatch] = self.host.scan(shard_id, batch_size)
        while True:
            batch = await self._call("scan", None, functools.partial(next, batches, None))
            if batch is None:
                return
            yield batch

    def follow(self, shard_id: int, incarnation: int, after: int) -> AsyncIterator[FeedRead]:
        return self.host.follow(shard_id, incarnation, after)

    async def stats(self, timeout_s: float | None = None) -> NodeStats:
        return await self._call("stats", timeout_s, self.host.stats)

    async def get_layout(self, timeout_s: float | None = None) -> NodeLayout:
        return NodeLayout(0, "", self.host.shard_ids, "")

    async def set_layout(
        self, layout_json: str, drop_unplaced: bool = False, timeout_s: float | None = None
    ) -> NodeLayout:
        raise ShardError("an in-process shard host has no cluster layout", ErrorKind.INVALID_ARGUMENT)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._owns_host:
            await asyncio.to_thread(self.host.close)


class GrpcShardClient:
    """Talks to one shard node over a grpc.aio channel; `timeout_s` becomes the per-call gRPC deadline."""

    def __init__(
        self,
        address: str,
        *,
        channel: grpc.aio.Channel | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_reconnect_backoff_ms: int | None = None,
        tls: ClientTlsConfig | None = None,
    ) -> None:
        """`tls`: how the node is called (the config's cluster.client_tls; None: plaintext)."""
        self.address = address
        options: list[tuple[str, int]] = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        if max_reconnect_backoff_ms is not None:
            # gRPC's default backoff grows to 2 minutes: a restarted node would sit unused that long.
            options += [
                ("grpc.initial_reconnect_backoff_ms", min(100, max_reconnect_backoff_ms)),
                ("grpc.min_reconnect_backoff_ms", min(100, max_reconnect_backoff_ms)),
                ("grpc.max_reconnect_backoff_ms", max_reconnect_backoff_ms),
            ]
        self._channel = channel or authorized(aio_channel(address, tls, options, where="cluster.client_tls"))
        self._stub = shard_pb2_grpc.ShardStub(self._channel)
        self._dim: int | None = None  # learned lazily: an empty fetch must still have shape (0, dim)

    async def search(
        self,
        queries: NDArray[np.float32],
        shard_ids: Sequence[int],
        k: int,
        ef: int = 0,
        exclude: Sequence[NDArray[np.uint64]] | None = None,
        timeout_s: float | None = None,
        *,
        filters: Sequence[QueryFilter | None] | None = None,
    ) -> dict[int, ShardHits | ShardError]:
        request = convert.search_request(queries, shard_ids, k, ef, exclude, filters)
        try:
            # The node's Search span continues this one: the batch's trace reaches the shards.
            with tracing.outgoing_call("/recd.v1.Shard/Search", self.address) as metadata:
                response = await self._stub.Search(request, timeout=timeout_s, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            error = convert.error_of_status(exc.code(), exc.details())
            if error.kind is ErrorKind.INVALID_ARGUMENT:
                raise error from None
            return {shard_id: error for shard_id in dict.fromkeys(shard_ids)}
        got = {
            hits.shard_id: convert.hits_from_proto(hits, request.n_queries, request.k)
            for hits in response.shards
        }
        missing = ShardError("node returned no result for this shard", ErrorKind.INTERNAL)
        return {shard_id: got.get(shard_id, missing) for shard_id in dict.fromkeys(shard_ids)}

    async def upsert(
        self,
        batches: Mapping[int, RecordBatch],
        timeout_s: float | None = None,
        *,
        layout_epoch: int = 0,
        backfill: bool = False,
    ) -> int:
        request = pb.ShardUpsertRequest(
            batches=[convert.batch_to_proto(shard_id, batch) for shard_id, batch in batches.items()],
            layout_epoch=layout_epoch,
            backfill=backfill,
        )
        response = await self._unary("/recd.v1.Shard/Upsert", self._stub.Upsert, request, timeout_s)
        return int(response.upserted)

    async def delete(
        self,
        shard_id: int,
        labels: NDArray[np.uint64] | Sequence[int],
        timeout_s: float | None = None,
        *,
        layout_epoch: int = 0,
    ) -> int:
        request = pb.ShardDeleteRequest(
            shard_id=shard_id, labels=as_labels(labels).tolist(), layout_epoch=layout_epoch
        )
        response = await self._unary("/recd.v1.Shard/Delete", self._stub.Delete, request, timeout_s)
        return int(response.deleted)

    async def fetch(
        self, shard_id: int, labels: NDArray[np.uint64] | Sequence[int], timeout_s: float | None = None
    ) -> RecordBatch:
        request = pb.ShardFetchRequest(shard_id=shard_id, labels=as_labels(labels).tolist())
        response = await self._unary("/recd.v1.Shard/Fetch", self._stub.Fetch, request, timeout_s)
        if not response.records and self._dim is None:
            await self.stats(timeout_s)
        return convert.batch_from_proto(response.records, self._dim, "records")

    async def scan(self, shard_id: int, batch_size: int = 1024) -> AsyncIterator[RecordBatch]:
        call = self._stub.Scan(pb.ShardScanRequest(shard_id=shard_id, batch_size=batch_size))
        try:
            async for message in call:
                yield convert.batch_from_proto(message.records, self._dim, "records")
        except grpc.aio.AioRpcError as exc:
            raise convert.error_of_status(exc.code(), exc.details()) from None
        finally:
            call.cancel()

    async def follow(self, shard_id: int, incarnation: int, after: int) -> AsyncIterator[FeedRead]:
        call = self._stub.Changes(
            pb.ShardChangesRequest(shard_id=shard_id, incarnation=incarnation, after_lsn=after)
        )
        try:
            async for message in call:
                yield convert.changes_from_proto(message, self._dim)
        except grpc.aio.AioRpcError as exc:
            raise convert.error_of_status(exc.code(), exc.details()) from None
        finally:
            call.cancel()

    async def stats(self, timeout_s: float | None = None) -> NodeStats:
        response = await self._unary(
            "/recd.v1.Shard/Stats", self._stub.Stats, pb.ShardStatsRequest(), timeout_s
        )
        stats = convert.stats_from_proto(response)
        self._dim = stats.dim
        return stats

    async def get_layout(self, timeout_s: float | None = None) -> NodeLayout:
        response = await self._unary(
            "/recd.v1.Shard/GetLayout", self._stub.GetLayout, pb.ShardGetLayoutRequest(), timeout_s
        )
        return convert.layout_from_proto(response)

    async def set_layout(
        self, layout_json: str, drop_unplaced: bool = False, timeout_s: float | None = None
    ) -> NodeLayout:
        request = pb.ShardSetLayoutRequest(layout_json=layout_json, drop_unplaced=drop_unplaced)
        response = await self._unary("/recd.v1.Shard/SetLayout", self._stub.SetLayout, request, timeout_s)
        return convert.layout_from_proto(response)

    async def close(self) -> None:
        await self._channel.close()

    async def _unary(
        self, path: str, method: grpc.aio.UnaryUnaryMultiCallable, request: object, timeout_s: float | None
    ) -> Any:
        """`path`: the method's full name, what its trace span is called."""
        try:
            with tracing.outgoing_call(path, self.address) as metadata:
                return await method(request, timeout=timeout_s, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            raise convert.error_of_status(exc.code(), exc.details()) from None


if TYPE_CHECKING:  # both implementations must keep satisfying the protocol

    def _conforms(
        in_process: InProcessShardClient, remote: GrpcShardClient
    ) -> tuple[ShardClient, ShardClient]:
        return in_process, remote

"""A real recd server to fuzz, on 127.0.0.1, with its event loop in a thread of its own, so the fuzzer
(Hypothesis, synchronous) calls it over real gRPC with a blocking channel."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf.descriptor import Descriptor, ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.api.server import RecdServer
from server.config import Config
from server.gen.recd.v1 import catalog_pb2, catalog_pb2_grpc, recommender_pb2, recommender_pb2_grpc, shard_pb2
from server.wiring import build_recd
from shards.host import ShardHost
from shards.records import IndexParams, RecordBatch
from shards.service import serve_node

T = TypeVar("T")
Stop = Callable[[], Awaitable[object]]


@dataclass(frozen=True, slots=True)
class Method:
    path: str
    request: Descriptor
    streaming: bool

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


def methods_of(services: Sequence[ServiceDescriptor]) -> list[Method]:
    return [
        Method(f"/{service.full_name}/{m.name}", m.input_type, m.server_streaming)
        for service in services
        for m in service.methods
    ]


PUBLIC_SERVICES = [
    recommender_pb2.DESCRIPTOR.services_by_name["Recommender"],
    catalog_pb2.DESCRIPTOR.services_by_name["Catalog"],
]


class FuzzTarget:
    """A server started by `start` (in the target's loop; returns its address and how to stop it)."""

    def __init__(
        self, start: Callable[[], Coroutine[Any, Any, tuple[str, Stop]]], methods: list[Method]
    ) -> None:
        self.methods = methods
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fuzz-target", daemon=True)
        self._thread.start()
        self.address, self._stop = self._run(start())
        self.channel = grpc.insecure_channel(self.address)

    def _run(self, coroutine: Coroutine[Any, Any, T], timeout_s: float = 120.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    def call(self, method: Method, raw: bytes, timeout_s: float) -> grpc.StatusCode:
        """The status `raw` is answered with (a stream: OK once its first message arrives)."""
        try:
            if method.streaming:
                replies = self.channel.unary_stream(method.path)(raw, timeout=timeout_s)
                try:
                    next(replies, None)
                finally:
                    replies.cancel()
            else:
                self.channel.unary_unary(method.path)(raw, timeout=timeout_s)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[attr-defined, no-any-return]
        return grpc.StatusCode.OK

    def healthy(self) -> bool:
        """Health SERVING, and (on a frontend) a normal Recommend answered."""
        try:
            health = health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            if health.status != health_pb2.HealthCheckResponse.SERVING:
                return False
            if any(m.path == "/recd.v1.Recommender/Recommend" for m in self.methods):
                reply = recommender_pb2_grpc.RecommenderStub(self.channel).Recommend(
                    recommender_pb2.RecommendRequest(user_id="fuzz-check", k=5), timeout=10
                )
                return len(reply.items) > 0
            return True
        except grpc.RpcError:
            return False

    def close(self) -> None:
        self.channel.close()
        self._run(self._stop())  # type: ignore[arg-type]
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()


def toy_items(n: int, dim: int, seed: int = 3) -> list[catalog_pb2.Item]:
    """A small clustered catalogue with the attributes filters use (lang, category)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(10, dim)).astype(np.float32)
    cluster = rng.integers(0, 10, size=n)
    vectors = centres[cluster] + 0.25 * rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [
        catalog_pb2.Item(
            item_id=f"i{i:05d}",
            embedding=vectors[i].tolist(),
            attributes={"category": f"c{cluster[i]}", "lang": ("en", "de", "fr")[i % 3]},
            popularity=float(rng.pareto(1.5) * 10),
        )
        for i in range(n)
    ]


def frontend(config: Config, items: Sequence[catalog_pb2.Item]) -> FuzzTarget:
    """A RecdServer built from `config` (on the embedded defaults: data_dir None), `items` loaded."""

    async def start() -> tuple[str, Stop]:
        server = RecdServer(build_recd(config), config)
        await server.start()
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = catalog_pb2_grpc.CatalogStub(channel)
            for at in range(0, len(items), config.server.max_batch):
                batch = items[at : at + config.server.max_batch]
                await stub.UpsertItems(catalog_pb2.UpsertItemsRequest(items=batch), timeout=60)
        return server.address, server.stop

    return FuzzTarget(start, methods_of(PUBLIC_SERVICES))


SHARD_SERVICES = [shard_pb2.DESCRIPTOR.services_by_name["Shard"]]


def shard_node(dim: int, shards: int = 4, items: int = 400) -> FuzzTarget:
    """A shard node (the internal Shard API) over in-memory shards `0..shards-1`, `items` vectors loaded."""
    host = ShardHost(IndexParams(dim=dim), None, range(shards))
    vectors = np.random.default_rng(0).normal(size=(items, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    labels = np.arange(items, dtype=np.uint64)
    host.upsert(
        {
            s: RecordBatch(
                labels[labels % shards == s],
                [f"i{int(label):05d}" for label in labels[labels % shards == s]],
                vectors[labels % shards == s],
                [b""] * int((labels % shards == s).sum()),
            )
            for s in range(shards)
        }
    )

    async def start() -> tuple[str, Stop]:
        node = await serve_node(host, "127.0.0.1:0")

        async def stop() -> None:
            await node.stop(0)
            host.close()

        return f"127.0.0.1:{node.port}", stop

    return FuzzTarget(start, methods_of(SHARD_SERVICES))

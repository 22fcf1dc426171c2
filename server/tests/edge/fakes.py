"""Test doubles for the edge: an origin that counts its calls, a settable clock, a failing cache."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import grpc

from server.config import CacheConfig, EdgeConfig
from server.edge.origin import OriginError
from server.gen.recd.v1 import common_pb2, recommender_pb2

T0 = 1_800_000_000.0


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeOrigin:
    """Answers Recommend with one item naming the user and the call number, so tests can tell answers
    apart; `gate` (when set) holds every answer until it opens."""

    ttl_s: int = 60
    model_version: str = "m1"
    degraded: bool = False
    error: grpc.StatusCode | None = None
    gate: asyncio.Event | None = None
    calls: list[tuple[str, bytes]] = field(default_factory=list)

    @property
    def recommend_calls(self) -> int:
        return sum(1 for method, _ in self.calls if method.endswith("/Recommend"))

    async def start(self) -> None:
        pass

    async def call(self, method: str, request: bytes, timeout_s: float, retryable: bool) -> bytes:
        self.calls.append((method, request))
        n = len(self.calls)
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise OriginError(self.error, "fake origin failure")
        if method.endswith("/Recommend"):
            user = recommender_pb2.RecommendRequest.FromString(request).user_id
            return recommender_pb2.RecommendResponse(
                items=[common_pb2.ScoredItem(item_id=f"{user}#{n}", score=1.0)],
                coverage=common_pb2.Coverage(
                    shards_total=20,
                    shards_ok=19 if self.degraded else 20,
                    partial=self.degraded,
                    degraded_reasons=["shards"] if self.degraded else [],
                ),
                cache_ttl_seconds=self.ttl_s,
                model_version=self.model_version,
            ).SerializeToString()
        if method.endswith("/RecordInteractions"):
            accepted = len(recommender_pb2.RecordInteractionsRequest.FromString(request).interactions)
            return recommender_pb2.RecordInteractionsResponse(accepted=accepted).SerializeToString()
        return b""

    async def close(self) -> None:
        pass


class BrokenCache:
    """A shared level that fails every call, even by raising (which the Cache contract forbids)."""

    def __init__(self) -> None:
        self.calls = 0

    async def get(self, key: str) -> bytes | None:
        self.calls += 1
        raise ConnectionError("redis is down")

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        self.calls += 1
        raise ConnectionError("redis is down")

    async def delete(self, keys: Sequence[str]) -> None:
        raise ConnectionError("redis is down")

    async def close(self) -> None:
        pass


def edge_config(**overrides: object) -> EdgeConfig:
    # No delete margin: one machine, one clock. With one, answers stored in a test's first seconds would
    # be refused as possibly older than the log of the frontend it just started (deletes.py).
    config = EdgeConfig(
        address="127.0.0.1:0", cache=CacheConfig(max_bytes=1 << 20), time_bucket_s=0.0, delete_margin_s=0.0
    )
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


def request(user: str = "u1", k: int = 10, **fields: object) -> bytes:
    return recommender_pb2.RecommendRequest(user_id=user, k=k, **fields).SerializeToString()  # type: ignore[arg-type]


def item_of(answer: bytes) -> str:
    return recommender_pb2.RecommendResponse.FromString(answer).items[0].item_id

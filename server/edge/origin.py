"""Calls from the edge to its origin frontends: client-side balancing, and retries within a budget.

Bytes in, bytes out: the edge forwards requests it received without re-encoding them, and only parses
what it has to (a Recommend answer, to learn its TTL and model version).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

import grpc

from server import metrics
from server.client import MAX_MESSAGE_BYTES

Clock = Callable[[], float]
Balancing = Literal["round_robin", "least_outstanding"]


class OriginError(Exception):
    """An origin's failure, carried to the edge's caller with the same status code and message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class Origin(Protocol):
    async def call(self, method: str, request: bytes, timeout_s: float, retryable: bool) -> bytes:
        """`method` is the full gRPC path ("/recd.v1.Recommender/Recommend"). Raises OriginError."""
        ...

    async def close(self) -> None: ...


class RetryBudget:
    """Retries allowed over a sliding window: at most `ratio` of the requests plus `min_per_s` a second.

    Retrying every UNAVAILABLE multiplies load exactly when origins are failing (a retry storm); a
    budget keeps retries a small share of traffic, while the floor still lets a quiet edge retry.
    """

    def __init__(
        self, ratio: float, min_per_s: float, window_s: float = 10.0, clock: Clock = time.monotonic
    ) -> None:
        self._ratio = ratio
        self._floor = min_per_s * window_s
        self._window_s = window_s
        self._clock = clock
        # One slot per whole second: (second, requests, retries); old slots drop off the left.
        self._slots: deque[list[int]] = deque()
        self._requests = 0
        self._retries = 0

    def _slot(self) -> list[int]:
        now = int(self._clock())
        while self._slots and self._slots[0][0] <= now - self._window_s:
            _, requests, retries = self._slots.popleft()
            self._requests -= requests
            self._retries -= retries
        if not self._slots or self._slots[-1][0] != now:
            self._slots.append([now, 0, 0])
        return self._slots[-1]

    def on_request(self) -> None:
        self._slot()[1] += 1
        self._requests += 1

    def try_retry(self) -> bool:
        slot = self._slot()
        if self._retries + 1 > self._ratio * self._requests + self._floor:
            return False
        slot[2] += 1
        self._retries += 1
        return True


class _Backend:
    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = grpc.aio.insecure_channel(
            address,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self.outstanding = 0
        self._calls: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}

    def method(self, name: str) -> grpc.aio.UnaryUnaryMultiCallable:
        call = self._calls.get(name)
        if call is None:
            # No serializers: the request and the answer stay bytes.
            call = self._calls[name] = self.channel.unary_unary(name, _registered_method=True)
        return call


class OriginPool:
    """Implements Origin over gRPC channels to several frontends."""

    def __init__(
        self,
        addresses: Sequence[str],
        balancing: Balancing,
        budget: RetryBudget,
        max_attempts: int = 3,
    ) -> None:
        if not addresses:
            raise ValueError("the edge needs at least one origin address")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self._backends = [_Backend(a) for a in addresses]
        self._balancing = balancing
        self._budget = budget
        self._max_attempts = max_attempts
        self._next = 0

    @property
    def addresses(self) -> list[str]:
        return [b.address for b in self._backends]

    def outstanding(self) -> dict[str, int]:
        return {b.address: b.outstanding for b in self._backends}

    def pick(self, exclude: frozenset[int] = frozenset()) -> int:
        """Index of the origin for the next attempt; a retry avoids the origins already tried."""
        n = len(self._backends)
        candidates = [i for i in range(n) if i not in exclude] or list(range(n))
        start = self._next
        self._next = (self._next + 1) % n
        # Rotating the starting point breaks ties, so equally loaded origins share the traffic.
        ordered = sorted(candidates, key=lambda i: (i - start) % n)
        if self._balancing == "round_robin":
            return ordered[0]
        return min(ordered, key=lambda i: self._backends[i].outstanding)

    async def call(self, method: str, request: bytes, timeout_s: float, retryable: bool) -> bytes:
        self._budget.on_request()
        deadline = time.monotonic() + timeout_s
        label = method.rsplit("/", 1)[-1]
        tried: set[int] = set()
        attempts = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OriginError(grpc.StatusCode.DEADLINE_EXCEEDED, "no time left to call an origin")
            index = self.pick(frozenset(tried))
            tried.add(index)
            attempts += 1
            backend = self._backends[index]
            backend.outstanding += 1
            started = time.perf_counter()
            code = "OK"
            try:
                return bytes(await backend.method(method)(request, timeout=remaining))
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
                # UNAVAILABLE: the origin did not take the call (down, draining, refused the
                # connection), so another origin may; anything else is the answer.
                if (
                    exc.code() != grpc.StatusCode.UNAVAILABLE
                    or not retryable
                    or attempts >= self._max_attempts
                ):
                    raise OriginError(exc.code(), exc.details() or "") from exc
                if not self._budget.try_retry():
                    metrics.EDGE_ORIGIN_RETRIES.labels("budget_exhausted").inc()
                    raise OriginError(exc.code(), exc.details() or "") from exc
                metrics.EDGE_ORIGIN_RETRIES.labels("retried").inc()
            finally:
                backend.outstanding -= 1
                metrics.EDGE_ORIGIN_LATENCY.labels(label, code).observe(time.perf_counter() - started)

    async def close(self) -> None:
        for backend in self._backends:
            await backend.channel.close()

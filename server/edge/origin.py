"""Calls from the edge to its origin frontends: client-side balancing over every address the origin
targets resolve to (followed as pods come and go: server/edge/resolve.py says why here and not in gRPC),
and retries within a budget.

Bytes in, bytes out: the edge forwards requests it received without re-encoding them, and only parses
what it has to (a Recommend answer, to learn its TTL and model version).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Literal, Protocol

import grpc

from server import metrics, tracing
from server.client import MAX_MESSAGE_BYTES
from server.config import ClientTlsConfig
from server.edge.resolve import Resolver, resolve_target
from server.security.credentials import authorized
from server.security.tls import ClientFilesWatch, aio_channel

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Balancing = Literal["round_robin", "least_outstanding"]


class OriginError(Exception):
    """An origin's failure, carried to the edge's caller with the same status code and message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class Origin(Protocol):
    async def start(self) -> None:
        """Before the first call, on the event loop that will make them."""
        ...

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
    """One origin address, over `connections` HTTP/2 connections used in turn.

    Several because a frontend pod runs a worker group on one port (`recd serve --workers N`, SO_REUSEPORT):
    the kernel spreads connections over the workers, not requests, so one connection would keep every call
    of this edge on one worker of the pod.
    """

    def __init__(self, address: str, connections: int = 1, tls: ClientTlsConfig | None = None) -> None:
        self.address = address
        self.channels = [
            authorized(
                aio_channel(
                    address,
                    tls,
                    where="edge.origin_tls",
                    options=[
                        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                        # Otherwise channels to one address share gRPC's global subchannel: one connection.
                        ("grpc.use_local_subchannel_pool", 1),
                    ],
                )
            )
            for _ in range(max(1, connections))
        ]
        self.outstanding = 0
        self._calls: dict[str, list[grpc.aio.UnaryUnaryMultiCallable]] = {}
        self._turn = 0

    def channel(self) -> grpc.aio.Channel:
        self._turn = (self._turn + 1) % len(self.channels)
        return self.channels[self._turn]

    def method(self, name: str) -> grpc.aio.UnaryUnaryMultiCallable:
        calls = self._calls.get(name)
        if calls is None:
            # No serializers: the request and the answer stay bytes.
            calls = self._calls[name] = [c.unary_unary(name, _registered_method=True) for c in self.channels]
        self._turn = (self._turn + 1) % len(calls)
        return calls[self._turn]

    async def close(self, grace_s: float | None = None) -> None:
        """`grace_s`: how long calls in flight may take to finish (None: cancelled at once)."""
        await asyncio.gather(*(c.close(grace_s) for c in self.channels))


class OriginPool:
    """Implements Origin over gRPC channels to every origin address (`connections_per_origin` each).

    `targets` are host:port; a host that is a name (the frontends' headless Service) stands for every
    address it resolves to. Until start() resolves them the targets are used as written (gRPC then
    resolves a name itself, to one connection). Afterwards they are re-resolved every
    `resolve_interval_s`, and at most every MIN_RESOLVE_GAP_S after an origin answered UNAVAILABLE: a new
    address gets a channel and its share of calls at once; a vanished one leaves the rotation and its
    channel is closed once its calls finish (at most `drain_s` later). A failed or empty resolution keeps
    the addresses it had: DNS trouble must not empty the pool.
    """

    MIN_RESOLVE_GAP_S = 1.0

    def __init__(
        self,
        targets: Sequence[str],
        balancing: Balancing,
        budget: RetryBudget,
        max_attempts: int = 3,
        *,
        resolver: Resolver = resolve_target,
        resolve_interval_s: float = 5.0,
        drain_s: float = 10.0,
        connections_per_origin: int = 1,
        tls: ClientTlsConfig | None = None,
    ) -> None:
        """`tls`: how the origins are called (edge.origin_tls; None: plaintext)."""
        if not targets:
            raise ValueError("the edge needs at least one origin address")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        self._targets = list(dict.fromkeys(targets))
        self._resolver = resolver
        self._resolve_interval_s = resolve_interval_s
        self._drain_s = drain_s
        self._connections = connections_per_origin
        self._tls = tls
        self._client_files = ClientFilesWatch(tls, "edge.origin_tls")
        self._resolved: dict[str, list[str]] = {t: [t] for t in self._targets}
        self._backends = [_Backend(a, connections_per_origin, tls) for a in self._targets]
        self._balancing = balancing
        self._budget = budget
        self._max_attempts = max_attempts
        self._next = 0
        self._follow_task: asyncio.Task[None] | None = None
        self._resolve_now: asyncio.Event | None = None
        # Channels of vanished addresses, closing once their calls are over.
        self._draining: dict[asyncio.Task[None], _Backend] = {}
        metrics.EDGE_ORIGINS.set(len(self._backends))

    @property
    def addresses(self) -> list[str]:
        return [b.address for b in self._backends]

    def outstanding(self) -> dict[str, int]:
        return {b.address: b.outstanding for b in self._backends}

    # --- following the targets ----------------------------------------------------------------------
    async def start(self) -> None:
        if self._follow_task is not None:
            return
        self._resolve_now = asyncio.Event()
        await self.refresh()
        self._follow_task = asyncio.get_running_loop().create_task(self._follow())

    async def refresh(self) -> bool:
        """Resolves every target once and follows the result; True when the addresses changed."""
        for target in self._targets:
            try:
                found = await self._resolver(target)
            except OSError as exc:
                log.warning("cannot resolve origin %s (%s); keeping %s", target, exc, self._resolved[target])
                continue
            if found:
                self._resolved[target] = found
        wanted = list(dict.fromkeys(a for t in self._targets for a in self._resolved[t]))
        current = {b.address: b for b in self._backends}
        if set(current) == set(wanted):
            return False  # DNS may shuffle its records: an order change is no change
        added = [a for a in wanted if a not in current]
        gone = [b for a, b in current.items() if a not in wanted]
        self._backends = [current.get(a) or _Backend(a, self._connections, self._tls) for a in wanted]
        for backend in gone:
            self._retire(backend)
        if added or gone:
            log.info("origins now %s (added %s, removed %s)", wanted, added, [b.address for b in gone])
        metrics.EDGE_ORIGINS.set(len(self._backends))
        return True

    def resolve_soon(self) -> None:
        """An origin refused a call: it may be gone, so look again without waiting for the interval."""
        if self._resolve_now is not None:
            self._resolve_now.set()

    async def _follow(self) -> None:
        assert self._resolve_now is not None
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._resolve_now.wait(), self._resolve_interval_s)
            # A burst of UNAVAILABLE answers makes one lookup per MIN_RESOLVE_GAP_S, not one each.
            await asyncio.sleep(max(0.0, last + self.MIN_RESOLVE_GAP_S - loop.time()))
            self._resolve_now.clear()
            last = loop.time()
            try:
                await self.refresh()
                if self._client_files.changed():
                    self.renew()
            except Exception:
                log.exception(
                    "following the origins failed; trying again in %.0f s", self._resolve_interval_s
                )

    def renew(self) -> None:
        """New channels to every origin (edge.origin_tls's files changed: gRPC reads them only when a
        channel is made); the old ones drain as those of a vanished address do."""
        old, self._backends = (
            self._backends,
            [_Backend(b.address, self._connections, self._tls) for b in self._backends],
        )
        for backend in old:
            self._retire(backend)

    def _retire(self, backend: _Backend) -> None:
        async def drain() -> None:
            # Waits for the calls in flight (up to drain_s, then cancels them); new ones go elsewhere.
            await backend.close(self._drain_s)

        task = asyncio.get_running_loop().create_task(drain())
        self._draining[task] = backend
        task.add_done_callback(lambda t: self._draining.pop(t, None))

    # --- calls --------------------------------------------------------------------------------------
    def pick(self, exclude: frozenset[str] = frozenset()) -> _Backend:
        """The origin for the next attempt; a retry avoids the addresses already tried."""
        backends = self._backends
        n = len(backends)
        candidates = [i for i in range(n) if backends[i].address not in exclude] or list(range(n))
        start = self._next % n
        self._next = (start + 1) % n
        # Rotating the starting point breaks ties, so equally loaded origins share the traffic.
        ordered = sorted(candidates, key=lambda i: (i - start) % n)
        if self._balancing == "round_robin":
            return backends[ordered[0]]
        return backends[min(ordered, key=lambda i: backends[i].outstanding)]

    async def call(self, method: str, request: bytes, timeout_s: float, retryable: bool) -> bytes:
        self._budget.on_request()
        deadline = time.monotonic() + timeout_s
        label = method.rsplit("/", 1)[-1]
        tried: set[str] = set()
        attempts = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OriginError(grpc.StatusCode.DEADLINE_EXCEEDED, "no time left to call an origin")
            backend = self.pick(frozenset(tried))
            tried.add(backend.address)
            attempts += 1
            backend.outstanding += 1
            started = time.perf_counter()
            code = "OK"
            try:
                # One span per attempt, each continued by the origin's own RPC span.
                with tracing.outgoing_call(method, backend.address) as trace_metadata:
                    call = backend.method(method)
                    return bytes(await call(request, timeout=remaining, metadata=trace_metadata))
            except grpc.aio.AioRpcError as exc:
                code = exc.code().name
                # UNAVAILABLE: the origin did not take the call (down, draining, refused the
                # connection), so another origin may; anything else is the answer.
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    self.resolve_soon()
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

    def stream(
        self, method: str, request: bytes, exclude: frozenset[str] = frozenset()
    ) -> tuple[str, grpc.aio.UnaryStreamCall]:
        """A server-streaming call on one origin (not `exclude`, when another exists): its address and
        the call, whose messages are bytes. No deadline, no retry: the caller resumes it as it sees fit."""
        backend = self.pick(exclude)
        call = backend.channel().unary_stream(method, _registered_method=True)(request)
        return backend.address, call

    async def close(self) -> None:
        if self._follow_task is not None:
            self._follow_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow_task
            self._follow_task = None
        draining = dict(self._draining)
        for task in draining:
            task.cancel()
        await asyncio.gather(*draining, return_exceptions=True)
        for backend in [*draining.values(), *self._backends]:
            await backend.close()

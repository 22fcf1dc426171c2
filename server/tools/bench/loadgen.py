"""A closed-loop gRPC load generator: N workers, each sending its next request when the last returns."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import numpy as np

from server.config import ClientTlsConfig
from server.security.tls import aio_channel


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_s: np.ndarray
    window_start: float = 0.0  # epoch seconds the measured window began, where the generator knows it
    client_cpu_s: float = 0.0  # the generator processes' own CPU over the window, where they measure it

    @property
    def qps(self) -> float:
        return self.requests / self.seconds

    def percentile_ms(self, p: float) -> float:
        return float(np.percentile(self.latencies_s, p) * 1e3) if len(self.latencies_s) else float("nan")

    @classmethod
    def merged(cls, parts: list[LoadResult]) -> LoadResult:
        """Phases of one measurement as one: requests, errors and seconds add up, latencies pool."""
        return cls(
            sum(p.requests for p in parts),
            sum(p.errors for p in parts),
            sum(p.seconds for p in parts),
            np.concatenate([p.latencies_s for p in parts]) if parts else np.zeros(0),
        )


async def closed_loop(
    make_call: Callable[[grpc.aio.Channel, int], Awaitable[object]],
    address: str,
    concurrency: int,
    duration_s: float,
    warmup_s: float = 1.0,
    tls: ClientTlsConfig | None = None,
) -> LoadResult:
    """`tls`: how the server is reached (None: plaintext), here and in every generator below."""
    async with aio_channel(address, tls) as channel:
        latencies: list[float] = []
        errors = 0
        counter = 0
        stop_at = time.monotonic() + warmup_s + duration_s
        measure_from = time.monotonic() + warmup_s

        async def worker(seed: int) -> None:
            nonlocal errors, counter
            i = seed
            while True:
                started = time.monotonic()
                if started >= stop_at:
                    return
                try:
                    await make_call(channel, i)
                    ok = True
                except grpc.aio.AioRpcError:
                    ok = False
                ended = time.monotonic()
                if started >= measure_from:
                    if ok:
                        latencies.append(ended - started)
                    else:
                        errors += 1
                i += concurrency

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        return LoadResult(len(latencies), errors, duration_s, np.asarray(latencies))


async def open_loop(
    make_call: Callable[[grpc.aio.Channel, int], Awaitable[object]],
    address: str,
    rate_per_s: float,
    duration_s: float,
    warmup_s: float = 1.0,
    seed: int = 3,
    tls: ClientTlsConfig | None = None,
) -> LoadResult:
    """Requests sent at `rate_per_s` on a Poisson schedule whatever the answers' latency (so a slow
    answer cannot hold the next request back, as it does in a closed loop); latencies of the requests
    sent after the warm-up."""
    rng = np.random.default_rng(seed)
    async with aio_channel(address, tls) as channel:
        latencies: list[float] = []
        errors = 0
        start = time.monotonic()
        measure_from = start + warmup_s
        stop_at = measure_from + duration_s
        tasks: set[asyncio.Task[None]] = set()

        async def one(i: int, measured: bool) -> None:
            nonlocal errors
            started = time.monotonic()
            try:
                await make_call(channel, i)
            except grpc.aio.AioRpcError:
                if measured:
                    errors += 1
                return
            if measured:
                latencies.append(time.monotonic() - started)

        due = start
        i = 0
        while due < stop_at:
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(one(i, due >= measure_from))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
            due += rng.exponential(1.0 / rate_per_s)
        await asyncio.gather(*tasks)
        return LoadResult(len(latencies), errors, duration_s, np.asarray(latencies))


# --- several generator processes ----------------------------------------------------------------------
# One Python process cannot load a worker group of many cores: its own event loop saturates first. These
# generators are separate processes (spawned, not forked: gRPC does not survive a fork), each with its
# own connections (a local subchannel pool per channel, so that the kernel spreads them over the group's
# SO_REUSEPORT listeners), sending pre-encoded requests as raw bytes so that encoding costs the client
# nothing. They start together at a wall-clock instant and measure the same window.


@dataclass(frozen=True)
class RawCalls:
    """What each generator sends: one unary method, requests cycled in order (pre-encoded protobuf)."""

    method: str
    requests: list[bytes]
    timeout_s: float = 2.0


def _generator(
    calls: RawCalls,
    address: str,
    concurrency: int,
    channels: int,
    start_at: float,
    warmup_s: float,
    duration_s: float,
    offset: int,
    tls: ClientTlsConfig | None = None,
) -> tuple[list[float], int, float]:
    async def run() -> tuple[list[float], int, float]:
        options = [("grpc.use_local_subchannel_pool", 1)]
        chans = [aio_channel(address, tls, options) for _ in range(channels)]
        methods = [c.unary_unary(calls.method) for c in chans]
        latencies: list[float] = []
        errors = 0
        await asyncio.sleep(max(0.0, start_at - time.time()))
        measure_from = time.monotonic() + warmup_s
        stop_at = measure_from + duration_s
        cpu_at: list[float] = []

        async def clock_cpu() -> None:
            # This process's CPU over the window: it exits right after, when /proc no longer shows it.
            for at in (measure_from, stop_at):
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                cpu_at.append(time.process_time())

        async def worker(w: int) -> None:
            nonlocal errors
            call = methods[w % len(methods)]
            i = offset + w
            while True:
                started = time.monotonic()
                if started >= stop_at:
                    return
                try:
                    await call(calls.requests[i % len(calls.requests)], timeout=calls.timeout_s)
                    ok = True
                except grpc.aio.AioRpcError:
                    ok = False
                if started >= measure_from:
                    if ok:
                        latencies.append(time.monotonic() - started)
                    else:
                        errors += 1
                i += concurrency

        await asyncio.gather(clock_cpu(), *(worker(w) for w in range(concurrency)))
        for c in chans:
            await c.close()
        return latencies, errors, cpu_at[1] - cpu_at[0]

    return asyncio.run(run())


def multiprocess_closed_loop(
    calls: RawCalls,
    address: str,
    processes: int,
    concurrency: int,
    duration_s: float,
    warmup_s: float = 2.0,
    channels: int = 4,
    tls: ClientTlsConfig | None = None,
) -> LoadResult:
    """A closed loop of `concurrency` requests in flight per generator process, over `processes`."""
    import concurrent.futures as cf
    import multiprocessing

    start_at = time.time() + 2.0 + 0.2 * processes  # every generator up and connected before it
    with cf.ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [
            pool.submit(
                _generator,
                calls,
                address,
                concurrency,
                channels,
                start_at,
                warmup_s,
                duration_s,
                p * 7919,
                tls,
            )
            for p in range(processes)
        ]
        parts = [f.result() for f in futures]
    latencies = np.concatenate([np.asarray(p[0]) for p in parts]) if parts else np.zeros(0)
    errors = sum(p[1] for p in parts)
    return LoadResult(
        len(latencies), errors, duration_s, latencies, start_at + warmup_s, sum(p[2] for p in parts)
    )

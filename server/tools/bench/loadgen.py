"""A closed-loop gRPC load generator: N workers, each sending its next request when the last returns."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import numpy as np


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_s: np.ndarray

    @property
    def qps(self) -> float:
        return self.requests / self.seconds

    def percentile_ms(self, p: float) -> float:
        return float(np.percentile(self.latencies_s, p) * 1e3) if len(self.latencies_s) else float("nan")


async def closed_loop(
    make_call: Callable[[grpc.aio.Channel, int], Awaitable[object]],
    address: str,
    concurrency: int,
    duration_s: float,
    warmup_s: float = 1.0,
) -> LoadResult:
    async with grpc.aio.insecure_channel(address) as channel:
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
) -> LoadResult:
    """Requests sent at `rate_per_s` on a Poisson schedule whatever the answers' latency (so a slow
    answer cannot hold the next request back, as it does in a closed loop); latencies of the requests
    sent after the warm-up."""
    rng = np.random.default_rng(seed)
    async with grpc.aio.insecure_channel(address) as channel:
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

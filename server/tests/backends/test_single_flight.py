"""SingleFlight: one computation per key in flight, shared by everyone who asks meanwhile."""

from __future__ import annotations

import asyncio

from server.backends.single_flight import SingleFlight


async def test_single_flight_shares_one_computation() -> None:
    flights: SingleFlight[int] = SingleFlight()
    calls = 0

    async def compute() -> int:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)
        return 42

    results = await asyncio.gather(*(flights.run("k", compute) for _ in range(100)))
    assert results == [42] * 100 and calls == 1
    assert not flights.in_flight("k")
    assert await flights.run("k", compute) == 42 and calls == 2  # finished flights are not cached


async def test_single_flight_survives_a_cancelled_leader_and_shares_failures() -> None:
    flights: SingleFlight[int] = SingleFlight()
    release = asyncio.Event()

    async def slow() -> int:
        await release.wait()
        return 7

    leader = asyncio.ensure_future(flights.run("k", slow))
    await asyncio.sleep(0)
    follower = asyncio.ensure_future(flights.run("k", slow))
    await asyncio.sleep(0)
    leader.cancel()
    release.set()
    assert await follower == 7

    async def broken() -> int:
        await asyncio.sleep(0.01)
        raise RuntimeError("store down")

    outcomes = await asyncio.gather(*(flights.run("b", broken) for _ in range(5)), return_exceptions=True)
    assert all(isinstance(o, RuntimeError) for o in outcomes)

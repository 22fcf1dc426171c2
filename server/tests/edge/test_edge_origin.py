"""Origin calls: the retry budget, balancing, and retries of UNAVAILABLE on another origin."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from server.edge.origin import OriginError, OriginPool, RetryBudget
from server.tests.edge.fakes import FakeClock
from server.tools.bench.serverproc import free_port

ECHO = "/test.Echo/Echo"


def test_retry_budget_allows_a_share_of_requests_plus_a_floor() -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(ratio=0.1, min_per_s=0.2, window_s=10.0, clock=clock)  # floor: 2 per window
    for _ in range(100):
        budget.on_request()
    allowed = sum(budget.try_retry() for _ in range(50))
    assert allowed == 12  # 10% of 100, plus 2


def test_retry_budget_forgets_old_traffic() -> None:
    clock = FakeClock(0.0)
    budget = RetryBudget(ratio=0.1, min_per_s=0.0, window_s=10.0, clock=clock)
    for _ in range(100):
        budget.on_request()
    assert sum(budget.try_retry() for _ in range(20)) == 10
    clock.advance(11)
    assert not budget.try_retry()  # the requests that earned retries have left the window
    for _ in range(10):
        budget.on_request()
    assert budget.try_retry() and not budget.try_retry()


def pool(n: int, balancing: str) -> OriginPool:
    return OriginPool([f"127.0.0.1:{1 + i}" for i in range(n)], balancing, RetryBudget(0.1, 1.0))  # type: ignore[arg-type]


async def test_round_robin_rotates() -> None:
    p = pool(3, "round_robin")
    a = p.addresses
    assert [p.pick().address for _ in range(6)] == [a[0], a[1], a[2], a[0], a[1], a[2]]
    await p.close()


async def test_least_outstanding_avoids_a_busy_origin_and_rotates_ties() -> None:
    p = pool(3, "least_outstanding")
    p._backends[0].outstanding = 5
    picks = {p.pick().address for _ in range(6)}
    assert picks == set(p.addresses[1:])
    await p.close()


async def test_a_retry_avoids_the_origin_that_failed() -> None:
    p = pool(2, "round_robin")
    first = p.pick().address
    assert p.pick(frozenset({first})).address != first
    await p.close()


class Echo:
    def __init__(self) -> None:
        self.calls = 0

    async def echo(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.calls += 1
        return b"echo:" + request


@pytest.fixture
async def echo_server() -> AsyncIterator[tuple[str, Echo]]:
    echo = Echo()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo.echo)}
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", echo
    finally:
        await server.stop(None)


async def test_unavailable_is_retried_on_another_origin(echo_server: tuple[str, Echo]) -> None:
    address, echo = echo_server
    dead = f"127.0.0.1:{free_port()}"
    p = OriginPool([dead, address], "round_robin", RetryBudget(0.1, 10.0))
    try:
        for _ in range(4):
            assert await p.call(ECHO, b"x", 5.0, retryable=True) == b"echo:x"
        assert echo.calls == 4
    finally:
        await p.close()


async def test_not_retryable_calls_fail_at_once(echo_server: tuple[str, Echo]) -> None:
    address, _ = echo_server
    dead = f"127.0.0.1:{free_port()}"
    p = OriginPool([dead, address], "round_robin", RetryBudget(0.1, 10.0))
    try:
        with pytest.raises(OriginError) as failed:
            await p.call(ECHO, b"x", 5.0, retryable=False)  # round robin starts at the dead one
        assert failed.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        await p.close()


async def test_an_empty_budget_stops_retries() -> None:
    dead = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    p = OriginPool(dead, "round_robin", RetryBudget(0.0, 0.0), max_attempts=3)
    try:
        with pytest.raises(OriginError) as failed:
            await p.call(ECHO, b"x", 5.0, retryable=True)
        assert failed.value.code == grpc.StatusCode.UNAVAILABLE
    finally:
        await p.close()


async def test_other_errors_are_the_answer(echo_server: tuple[str, Echo]) -> None:
    address, _ = echo_server
    p = OriginPool([address], "round_robin", RetryBudget(0.1, 10.0))
    try:
        with pytest.raises(OriginError) as failed:
            await p.call("/test.Echo/Missing", b"x", 5.0, retryable=True)
        assert failed.value.code == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await p.close()

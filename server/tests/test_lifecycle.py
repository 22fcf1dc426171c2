"""ServerLifecycle: start -> SERVING -> stop: NOT_SERVING while an in-flight call drains (or is cancelled
past the grace period) -> close hooks, after the drain -> NOT_SERVING, no new calls."""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from server.lifecycle import ServerLifecycle, run_until_signalled, wait_for_stop_signal

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class Slow:
    """test.Slow/Wait: answers once released; says when a call has arrived and when one has ended."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.ended: list[str] = []

    async def wait(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.entered.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.ended.append("cancelled")
            raise
        self.ended.append("answered")
        return b"done"

    def register(self, server: grpc.aio.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(self.wait)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Slow", {"Wait": handler}),)
        )


@dataclass(frozen=True)
class Case:
    name: str
    service_names: tuple[str, ...]
    reflection: bool
    grace_s: float | None
    released: bool  # whether the in-flight call is let finish within the grace period (else it is cancelled)
    call_outcome: grpc.StatusCode


CASES = [
    Case("drains-within-grace", ("test.Slow",), True, 10.0, True, grpc.StatusCode.OK),
    Case("cancels-past-grace", ("test.Slow", "test.Other"), False, 0.2, False, grpc.StatusCode.UNAVAILABLE),
    Case("no-grace-cancels-at-once", ("test.Slow",), False, None, False, grpc.StatusCode.UNAVAILABLE),
]


async def health_of(lifecycle: ServerLifecycle, name: str) -> int:
    # Straight from the servicer: once stop() begins, the server takes no new calls to ask it over.
    reply = await lifecycle.health.Check(health_pb2.HealthCheckRequest(service=name), None)
    return int(reply.status)


async def outcome_of(call: asyncio.Future[bytes]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_stop_marks_not_serving_drains_then_closes(case: Case) -> None:
    slow = Slow()
    closed: list[list[str]] = []

    async def close() -> None:
        closed.append(list(slow.ended))  # what had ended when the hook ran

    lifecycle = ServerLifecycle(
        "127.0.0.1:0", slow.register, case.service_names, reflection_enabled=case.reflection, on_close=[close]
    )
    assert lifecycle.port > 0 and lifecycle.address == f"127.0.0.1:{lifecycle.port}"
    await lifecycle.start()
    async with grpc.aio.insecure_channel(lifecycle.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", *case.service_names):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == SERVING, name
        listing = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        if case.reflection:
            listed = {s.name async for r in listing for s in r.list_services_response.service}
            assert set(case.service_names) <= listed
        else:
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                async for _ in listing:
                    pass
            assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED

        call = asyncio.ensure_future(channel.unary_unary("/test.Slow/Wait")(b"", timeout=20))
        await asyncio.wait_for(slow.entered.wait(), 5)
        stopping = asyncio.ensure_future(lifecycle.stop(case.grace_s))
        if case.grace_s is not None:
            # NOT_SERVING while the call is still in flight, and no close hook has run yet.
            async with asyncio.timeout(5):
                while await health_of(lifecycle, "") != NOT_SERVING:
                    await asyncio.sleep(0.005)
            assert not call.done() and closed == []
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await channel.unary_unary("/test.Slow/Wait")(b"", timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        if case.released:
            slow.release.set()
        await asyncio.wait_for(stopping, 10)
        assert await outcome_of(call) == case.call_outcome

    assert slow.ended == ["answered" if case.released else "cancelled"]
    assert len(closed) == 1  # the hook ran once
    if case.released:
        # A drained call has ended when the hooks run. (gRPC returns from stop() once it has cancelled
        # what outlived the grace period, not once those handlers have unwound.)
        assert closed[0] == ["answered"]
    for name in ("", *case.service_names):
        assert await health_of(lifecycle, name) == NOT_SERVING, name
    assert not await lifecycle.wait_for_termination(1.0)  # True would mean it timed out


async def test_a_taken_address_is_refused() -> None:
    first = ServerLifecycle("127.0.0.1:0", lambda _: None, (), options=[("grpc.so_reuseport", 0)])
    try:
        with pytest.raises(RuntimeError):
            ServerLifecycle(first.address, lambda _: None, (), options=[("grpc.so_reuseport", 0)])
    finally:
        await first.stop(None)


async def test_reuse_port_lets_several_servers_share_one_port_and_off_refuses_a_second() -> None:
    first = ServerLifecycle("127.0.0.1:0", lambda _: None, (), reuse_port=True)
    second = ServerLifecycle(first.address, lambda _: None, (), reuse_port=True)
    try:
        assert second.port == first.port
        with pytest.raises(RuntimeError):
            ServerLifecycle(first.address, lambda _: None, (), reuse_port=False)
    finally:
        await second.stop(None)
        await first.stop(None)


async def test_start_not_serving_answers_calls_but_health_waits_for_set_serving() -> None:
    slow = Slow()
    slow.release.set()
    lifecycle = ServerLifecycle("127.0.0.1:0", slow.register, ("test.Slow",), extra_addresses=["127.0.0.1:0"])
    (private_port,) = lifecycle.extra_ports
    await lifecycle.start(serving=False)
    try:
        for address in (lifecycle.address, f"127.0.0.1:{private_port}"):
            async with grpc.aio.insecure_channel(address) as channel:
                assert await channel.unary_unary("/test.Slow/Wait")(b"", timeout=5) == b"done"
        assert await health_of(lifecycle, "") == NOT_SERVING
        assert await health_of(lifecycle, "test.Slow") == NOT_SERVING
        await lifecycle.set_serving()
        assert await health_of(lifecycle, "") == SERVING
        assert await health_of(lifecycle, "test.Slow") == SERVING
    finally:
        await lifecycle.stop(None)
    await lifecycle.set_serving()  # too late: a stopped server stays NOT_SERVING
    assert await health_of(lifecycle, "") == NOT_SERVING


class Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []

    async def start(self) -> None:
        self.events.append("start")

    async def stop(self) -> None:
        self.events.append("stop")


async def test_run_until_signalled_starts_then_stops_at_sigterm() -> None:
    server = Recorder()

    def ready() -> None:
        server.events.append("ready")
        # Handled by the loop (the handler is installed before start), not by the default action.
        asyncio.get_running_loop().call_soon(os.kill, os.getpid(), signal.SIGTERM)

    await asyncio.wait_for(run_until_signalled(server, ready), 5)
    assert server.events == ["start", "ready", "stop"]


async def test_wait_for_stop_signal_ends_at_its_timeout() -> None:
    await asyncio.wait_for(wait_for_stop_signal(0.01), 5)

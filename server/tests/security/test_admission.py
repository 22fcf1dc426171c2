"""The admission interceptor over real gRPC, in front of stand-in handlers whose behaviour the request
bytes choose: quotas with an injected clock, the concurrency cap, and the rejection metrics by reason."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from server.api.server import MetricsInterceptor
from server.config import AuthConfig, QuotaConfig
from server.security.admission import AdmissionInterceptor
from server.tests.security.callers import bearer, issue, unary_code

RECOMMEND = "/recd.v1.Recommender/Recommend"
STATS = "/recd.v1.Catalog/Stats"


def rejections(reason: str, caller: str, method: str) -> float:
    value = REGISTRY.get_sample_value(
        "recd_rpc_rejections_total", {"reason": reason, "caller": caller, "method": method}
    )
    return value or 0.0


def latency_count(method: str, code: str) -> float:
    return (
        REGISTRY.get_sample_value("recd_rpc_latency_seconds_count", {"method": method, "code": code}) or 0.0
    )


@dataclass
class StandIn:
    address: str
    interceptor: AdmissionInterceptor
    tokens: dict[str, str]
    now: list[float]
    release: asyncio.Event
    entered: asyncio.Event
    server: grpc.aio.Server = field(repr=False)


async def _behave(raw: bytes, context: grpc.aio.ServicerContext, stand_in: StandIn) -> bytes:
    if raw == b"block":
        stand_in.entered.set()
        await stand_in.release.wait()
    elif raw == b"invalid":
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "k must be in 1..1000")
    elif raw == b"late":
        await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed")
    return b""


@pytest.fixture
async def stand_in() -> AsyncIterator[StandIn]:
    tokens: dict[str, str] = {}
    callers = []
    for name, roles, quotas in (
        ("web", ["recommend"], {}),
        ("batch", ["recommend"], {"recommend": QuotaConfig(rate_per_s=1.0, burst=2.0)}),
        ("ops", ["admin"], {}),
    ):
        tokens[name], caller = issue(name, roles, quotas)
        callers.append(caller)
    now = [0.0]
    auth = AuthConfig(enabled=True, callers=callers, quotas={"admin": QuotaConfig(rate_per_s=100.0)})
    interceptor = AdmissionInterceptor(auth, max_concurrent_rpcs=1, clock=lambda: now[0])
    server = grpc.aio.server(interceptors=[interceptor, MetricsInterceptor()])
    port = server.add_insecure_port("127.0.0.1:0")
    state = StandIn(f"127.0.0.1:{port}", interceptor, tokens, now, asyncio.Event(), asyncio.Event(), server)

    async def behave(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return await _behave(raw, context, state)

    for service, method in (("recd.v1.Recommender", "Recommend"), ("recd.v1.Catalog", "Stats")):
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    service, {method: grpc.unary_unary_rpc_method_handler(behave)}
                ),
            )
        )
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    await server.start()
    try:
        yield state
    finally:
        state.release.set()
        await server.stop(None)


async def test_quota_exhaustion_answers_with_a_retry_hint_and_refills(stand_in: StandIn) -> None:
    before = rejections("quota", "batch", "Recommend")
    async with grpc.aio.insecure_channel(stand_in.address) as channel:
        call = channel.unary_unary(RECOMMEND)
        metadata = bearer(stand_in.tokens["batch"])
        await call(b"", metadata=metadata)
        await call(b"", metadata=metadata)  # the burst of 2
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(b"", metadata=metadata)
        error = info.value
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "quota exhausted" in (error.details() or "") and "'batch'" in (error.details() or "")
        trailing = dict(error.trailing_metadata() or ())
        assert trailing["retry-after-ms"] == "1000"
        assert rejections("quota", "batch", "Recommend") == before + 1

        # Another caller has its own bucket (and no quota for recommend at all).
        for _ in range(5):
            await call(b"", metadata=bearer(stand_in.tokens["web"]))

        stand_in.now[0] += 0.6  # 0.6 of a token: still refused, with the rest as the hint
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(b"", metadata=metadata)
        assert dict(info.value.trailing_metadata() or ())["retry-after-ms"] == "400"
        stand_in.now[0] += 0.4
        await call(b"", metadata=metadata)


async def test_the_concurrency_cap_refuses_at_once_and_is_counted(stand_in: StandIn) -> None:
    refused_before = rejections("concurrency", "web", "Recommend")
    latency_before = latency_count("Recommend", "RESOURCE_EXHAUSTED")
    async with grpc.aio.insecure_channel(stand_in.address) as channel:
        call = channel.unary_unary(RECOMMEND)
        metadata = bearer(stand_in.tokens["web"])
        blocked = asyncio.ensure_future(call(b"block", metadata=metadata))
        await asyncio.wait_for(stand_in.entered.wait(), 10)
        assert stand_in.interceptor.in_flight == 1
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call(b"", metadata=metadata, timeout=5)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "limit of 1 concurrent calls" in (info.value.details() or "")
        # Health checks are never capped: a full server must not fail its probes.
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stand_in.release.set()
        await blocked
        await call(b"", metadata=metadata, timeout=5)
    assert stand_in.interceptor.in_flight == 0
    assert rejections("concurrency", "web", "Recommend") == refused_before + 1
    # The server's overload is part of the RPC latency metric, whose error ratio pages.
    assert latency_count("Recommend", "RESOURCE_EXHAUSTED") == latency_before + 1


async def test_bad_input_and_deadlines_are_counted_as_rejections_of_their_caller(stand_in: StandIn) -> None:
    invalid_before = rejections("invalid_argument", "web", "Recommend")
    deadline_before = rejections("deadline", "ops", "Stats")
    async with grpc.aio.insecure_channel(stand_in.address) as channel:
        web, ops = bearer(stand_in.tokens["web"]), bearer(stand_in.tokens["ops"])
        assert await unary_code(channel, RECOMMEND, web, b"invalid") == grpc.StatusCode.INVALID_ARGUMENT
        assert await unary_code(channel, STATS, ops, b"late") == grpc.StatusCode.DEADLINE_EXCEEDED
        assert await unary_code(channel, STATS, ops) == grpc.StatusCode.OK
    assert rejections("invalid_argument", "web", "Recommend") == invalid_before + 1
    assert rejections("deadline", "ops", "Stats") == deadline_before + 1
    assert stand_in.interceptor.in_flight == 0


async def test_auth_refusals_are_counted_by_reason_and_caller_but_not_as_rpc_latency(
    stand_in: StandIn,
) -> None:
    unauthenticated = rejections("unauthenticated", "unknown", "Recommend")
    denied = rejections("permission_denied", "web", "Stats")
    counted = sum(
        latency_count(m, c) for m in ("Recommend", "Stats") for c in ("UNAUTHENTICATED", "PERMISSION_DENIED")
    )
    async with grpc.aio.insecure_channel(stand_in.address) as channel:
        assert await unary_code(channel, RECOMMEND) == grpc.StatusCode.UNAUTHENTICATED
        assert await unary_code(channel, RECOMMEND, bearer("nonsense")) == grpc.StatusCode.UNAUTHENTICATED
        assert (
            await unary_code(channel, STATS, bearer(stand_in.tokens["web"]))
            == grpc.StatusCode.PERMISSION_DENIED
        )
    assert rejections("unauthenticated", "unknown", "Recommend") == unauthenticated + 2
    assert rejections("permission_denied", "web", "Stats") == denied + 1
    # The caller's doing: left out of the latency metric, whose error ratio would otherwise page on it.
    assert (
        sum(
            latency_count(m, c)
            for m in ("Recommend", "Stats")
            for c in ("UNAUTHENTICATED", "PERMISSION_DENIED")
        )
        == counted
    )


async def test_no_token_appears_in_the_logs(stand_in: StandIn, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    web = stand_in.tokens["web"]
    wrong = web.split(".")[0] + ".not-the-secret-" + "x" * 30
    async with grpc.aio.insecure_channel(stand_in.address) as channel:
        assert await unary_code(channel, RECOMMEND, bearer(web)) == grpc.StatusCode.OK
        assert await unary_code(channel, RECOMMEND, bearer(wrong)) == grpc.StatusCode.UNAUTHENTICATED
        assert await unary_code(channel, STATS, bearer(web)) == grpc.StatusCode.PERMISSION_DENIED
    secret = web.split(".", 1)[1]
    assert secret not in caplog.text and "not-the-secret" not in caplog.text


async def test_a_call_refused_by_the_cap_spends_no_quota(stand_in: StandIn) -> None:
    async with grpc.aio.insecure_channel(stand_in.address) as channel:
        call = channel.unary_unary(RECOMMEND)
        batch = bearer(stand_in.tokens["batch"])  # a burst of 2
        blocked = asyncio.ensure_future(call(b"block", metadata=bearer(stand_in.tokens["web"])))
        await asyncio.wait_for(stand_in.entered.wait(), 10)
        for _ in range(3):
            assert await unary_code(channel, RECOMMEND, batch) == grpc.StatusCode.RESOURCE_EXHAUSTED
        stand_in.release.set()
        await blocked
        assert [await unary_code(channel, RECOMMEND, batch) for _ in range(3)] == [
            grpc.StatusCode.OK,
            grpc.StatusCode.OK,
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        ]

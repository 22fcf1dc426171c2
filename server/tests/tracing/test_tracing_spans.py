"""Tracing off costs nothing; on, a batch's spans hang under one member's trace and are linked both ways
with the others'; sampling is decided once per trace; a step that fails open says so in its span; the
config refuses what cannot work."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Status as ProtoStatus

from server import tracing
from server.config import ConfigError, StepConfig, load_config
from server.domain import RecommendQuery
from server.pipeline.runner import run_with_policy
from server.tests.conftest import make_config
from server.tools.otlp_receiver import OtlpReceiver, ReceivedSpan
from server.tracing.interceptor import extract, server_interceptors
from server.wiring import build_recd


def query(user: str) -> RecommendQuery:
    return RecommendQuery(user, 5, {}, frozenset(), {}, 0.0, False)


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


def turn_on(receiver: OtlpReceiver, ratio: float = 1.0) -> None:
    config = make_config()
    config.tracing.enabled = True
    config.tracing.endpoint = receiver.endpoint
    config.tracing.sampling_ratio = ratio
    config.tracing.export_interval_ms = 50.0
    assert tracing.setup_tracing(config.tracing, "test")


def exported(receiver: OtlpReceiver) -> list[ReceivedSpan]:
    assert tracing.flush_tracing(10.0)
    return receiver.spans()


async def test_off_the_helpers_hand_back_one_shared_no_op_and_servers_get_no_interceptor() -> None:
    tracing.shutdown_tracing()
    assert not tracing.enabled()
    assert tracing.span("a") is tracing.span("b") is tracing.client_span("redis", "GET")
    assert tracing.batch_span("x", []) is tracing.span("a")
    with tracing.outgoing_call("/recd.v1.Shard/Search", "127.0.0.1:1") as metadata:
        assert metadata is None  # nothing sent on the wire
    with tracing.span("a") as span:
        assert not span.is_recording() and not span.get_span_context().is_valid
    assert server_interceptors() == []
    assert tracing.log_ids() is None


async def test_disabled_config_leaves_tracing_off() -> None:
    assert not tracing.setup_tracing(make_config().tracing, "test")
    assert not tracing.enabled()


async def test_a_batch_hangs_under_its_first_member_and_links_both_ways_with_the_others(
    receiver: OtlpReceiver,
) -> None:
    turn_on(receiver)
    recd = build_recd(make_config())
    try:

        async def caller(name: str) -> str:
            with tracing.span(name) as span:
                await recd.recommender.recommend(query(name))
                return format(span.get_span_context().span_id, "016x")

        # Submitted in one loop turn: one batch carries both.
        first, second = await asyncio.gather(caller("caller-a"), caller("caller-b"))
    finally:
        await recd.close()
    spans = exported(receiver)
    tracing.shutdown_tracing()
    batches = [s for s in spans if s.name == "recommend batch"]
    assert len(batches) == 1
    batch = batches[0]
    assert batch.attributes["recd.batch.size"] == 2
    assert batch.attributes["recd.batch.sampled_members"] == 2
    callers = {s.span_id: s for s in spans if s.name.startswith("caller-")}
    assert set(callers) == {first, second}
    lead, other = (callers[first], callers[second])
    if batch.parent_span_id != lead.span_id:
        lead, other = other, lead
    assert batch.parent_span_id == lead.span_id and batch.trace_id == lead.trace_id
    assert batch.links == ((other.trace_id, other.span_id),)
    assert other.links == ((batch.trace_id, batch.span_id),)
    # The steps are recorded once, under the batch, in the lead's trace only.
    steps = [s for s in spans if s.name.startswith("recommend/")]
    assert {s.name for s in steps} >= {"recommend/hydrate_user", "recommend/candidates", "recommend/select"}
    assert all(s.trace_id == lead.trace_id for s in steps)
    assert len([s for s in steps if s.name == "recommend/select"]) == 1


async def test_nothing_of_an_unsampled_trace_is_recorded(receiver: OtlpReceiver) -> None:
    turn_on(receiver, ratio=0.0)
    recd = build_recd(make_config())
    try:
        with tracing.span("caller") as span:
            assert not span.is_recording()
            assert span.get_span_context().is_valid  # an id for the logs all the same
            await recd.recommender.recommend(query("u1"))
    finally:
        await recd.close()
    assert exported(receiver) == []
    tracing.shutdown_tracing()


async def test_the_callee_follows_the_callers_sampling_decision(receiver: OtlpReceiver) -> None:
    turn_on(receiver, ratio=0.0)
    try:
        trace_id = "0af7651916cd43dd8448eb211c80319c"
        sampled = extract((("traceparent", f"00-{trace_id}-b7ad6b7169203331-01"),))
        dropped = extract((("traceparent", f"00-{trace_id}-b7ad6b7169203331-00"),))
        tracer = tracing.spans.tracer()
        assert tracer is not None
        with tracer.start_as_current_span("kept", context=sampled) as kept:
            assert kept.is_recording()  # a 0% ratio applies to new traces only
        with tracer.start_as_current_span("dropped", context=dropped) as gone:
            assert not gone.is_recording()
        spans = exported(receiver)
    finally:
        tracing.shutdown_tracing()
    assert [(s.name, s.trace_id, s.parent_span_id) for s in spans] == [("kept", trace_id, "b7ad6b7169203331")]


async def test_a_step_that_fails_open_is_an_error_span_that_says_why(receiver: OtlpReceiver) -> None:
    turn_on(receiver)

    async def broken() -> int:
        raise ConnectionError("backend gone")

    async def slow() -> int:
        await asyncio.sleep(10)
        return 1

    try:
        deadline = time.monotonic() + 5
        result, failure = await run_with_policy("p", "broken", StepConfig(100.0), deadline, broken, True)
        assert result is None and isinstance(failure, ConnectionError)
        result, failure = await run_with_policy("p", "slow", StepConfig(20.0), deadline, slow, True)
        assert result is None and isinstance(failure, TimeoutError)
        spans = {s.name: s for s in exported(receiver)}
    finally:
        tracing.shutdown_tracing()
    assert spans["p/broken"].status_code == ProtoStatus.StatusCode.STATUS_CODE_ERROR
    assert spans["p/broken"].attributes["recd.outcome"] == "failed"
    assert spans["p/slow"].attributes["recd.outcome"] == "timeout"
    assert spans["p/slow"].attributes["recd.budget_ms"] == 20.0


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"RECD_TRACING__SAMPLING_RATIO": "1.5"}, "tracing.sampling_ratio must be in [0, 1]"),
        ({"RECD_TRACING__SAMPLING_RATIO": "-0.1"}, "tracing.sampling_ratio must be in [0, 1]"),
        (
            {"RECD_TRACING__ENABLED": "true", "RECD_TRACING__ENDPOINT": '""'},
            "tracing.enabled needs tracing.endpoint",
        ),
        ({"RECD_TRACING__MAX_QUEUE_SIZE": "0"}, "tracing needs max_queue_size >= 1"),
    ],
)
def test_config_refuses_what_cannot_work(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(environ=environ)


def test_tracing_is_off_by_default() -> None:
    config = load_config(environ={})
    assert config.tracing.enabled is False
    assert 0.0 < config.tracing.sampling_ratio <= 1.0

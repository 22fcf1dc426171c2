"""The runner applies budgets and fail-open/closed policies from config, not from the steps."""

from __future__ import annotations

import asyncio
import time

import pytest

from server.config import StepConfig
from server.errors import ErrorKind, RecdError, invalid
from server.pipeline.context import RequestContext
from server.pipeline.runner import Pipeline


class FakeStep:
    def __init__(self, name: str, behaviour: str, awaits_io: bool = True) -> None:
        self.name = name
        self.degraded_reason = f"{name}-reason"
        self.behaviour = behaviour
        self.awaits_io = awaits_io
        self.ran = False
        self.recovered = False

    async def run(self, ctx: RequestContext) -> None:
        self.ran = True
        if self.behaviour == "slow":
            await asyncio.sleep(1.0)
        elif self.behaviour == "raise":
            raise RuntimeError("backend down")
        elif self.behaviour == "invalid":
            raise invalid("k must be between 1 and 1000")

    def on_failure(self, ctx: RequestContext) -> None:
        self.recovered = True


def ctx(deadline_s: float = 5.0) -> RequestContext:
    return RequestContext(pipeline="t", k=10, deadline=time.monotonic() + deadline_s)


@pytest.mark.parametrize(
    ("behaviour", "fail_open", "outcome"),
    [
        ("ok", True, "ok"),
        ("slow", True, "degraded"),
        ("raise", True, "degraded"),
        ("slow", False, ErrorKind.DEADLINE_EXCEEDED),
        ("raise", False, ErrorKind.UNAVAILABLE),
        ("invalid", True, ErrorKind.INVALID_ARGUMENT),  # bad input is never swallowed by fail-open
    ],
)
async def test_policy_table(behaviour: str, fail_open: bool, outcome: object) -> None:
    step = FakeStep("s", behaviour)
    after = FakeStep("after", "ok")
    pipeline = Pipeline("t", [step, after], {"s": StepConfig(50.0, fail_open), "after": StepConfig(50.0)})
    c = ctx()
    started = time.monotonic()
    if isinstance(outcome, ErrorKind):
        with pytest.raises(RecdError) as err:
            await pipeline.run(c)
        assert err.value.kind == outcome
        assert not after.ran
    else:
        await pipeline.run(c)
        assert after.ran
        assert (c.coverage.degraded == ["s-reason"]) == (outcome == "degraded")
        assert step.recovered == (outcome == "degraded")
    assert time.monotonic() - started < 0.9  # the slow step was cut at its 50 ms budget


async def test_the_request_deadline_caps_every_step() -> None:
    step = FakeStep("s", "slow")
    pipeline = Pipeline("t", [step], {"s": StepConfig(10_000.0, True)})
    c = ctx(deadline_s=0.05)
    started = time.monotonic()
    await pipeline.run(c)
    assert time.monotonic() - started < 0.5
    assert c.coverage.degraded == ["s-reason"]


async def test_an_io_step_with_no_time_left_does_not_run() -> None:
    step = FakeStep("s", "ok")
    pipeline = Pipeline("t", [step], {"s": StepConfig(10.0, True)})
    c = ctx(deadline_s=-1.0)
    await pipeline.run(c)
    assert not step.ran and c.coverage.degraded == ["s-reason"]


def test_every_step_needs_a_policy() -> None:
    with pytest.raises(ValueError, match="no policy configured for steps"):
        Pipeline("t", [FakeStep("unconfigured", "ok")], {})


async def test_a_compute_step_over_budget_still_runs_and_is_counted() -> None:
    from server import metrics

    step = FakeStep("late", "ok", awaits_io=False)
    pipeline = Pipeline("t", [step], {"late": StepConfig(10.0, fail_open=False)})
    overruns = metrics.STEP_OVERRUNS.labels("t", "late")
    before = overruns._value.get()
    c = ctx(deadline_s=-1.0)
    await pipeline.run(c)
    assert step.ran and c.coverage.degraded == []
    assert overruns._value.get() == before + 1

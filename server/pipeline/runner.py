"""Runs a pipeline's steps in order, each within its budget, under the fail-open policy of the config.

Budgets and policies live in the pipeline config, not in the steps: a step only does its one job, and
the runner decides what a failure or an overrun means (a degraded answer, or a failed request).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from server import metrics
from server.config import StepConfig
from server.errors import ErrorKind, RecdError
from server.pipeline.context import RequestContext

log = logging.getLogger(__name__)


class Step(Protocol):
    name: str
    degraded_reason: str
    # Steps that wait on I/O are cancelled at their budget; pure compute steps run to the end and an
    # overrun is only counted (cancelling them would not free the CPU anyway).
    awaits_io: bool

    async def run(self, ctx: RequestContext) -> None: ...

    def on_failure(self, ctx: RequestContext) -> None:
        """Leaves ctx usable by the following steps after this step failed open."""
        ...


async def run_with_policy(
    pipeline: str,
    name: str,
    policy: StepConfig,
    deadline: float,
    call: Callable[[], Awaitable[None]],
    awaits_io: bool,
) -> BaseException | None:
    """Runs one unit of work under its budget; returns the failure if it failed open, raises if closed."""
    started = time.monotonic()
    budget = min(policy.budget_ms / 1000.0, deadline - started)
    failure: BaseException | None = None
    try:
        if budget <= 0 and awaits_io:
            # Waiting on a backend with no time left is pointless; a compute step still runs (it takes
            # microseconds), so a request over its budget is answered, late and counted, not failed.
            raise TimeoutError(f"no time left for {name}")
        if awaits_io:
            # asyncio.timeout cancels the step in place, without the extra task wait_for creates.
            async with asyncio.timeout(budget):
                await call()
        else:
            await call()
            if time.monotonic() - started > budget:
                metrics.STEP_OVERRUNS.labels(pipeline, name).inc()
    except RecdError:
        raise
    except TimeoutError as exc:
        metrics.STEP_OVERRUNS.labels(pipeline, name).inc()
        failure = exc
    except Exception as exc:
        metrics.STEP_FAILURES.labels(pipeline, name).inc()
        log.warning("step %s of %s failed: %r", name, pipeline, exc)
        failure = exc
    finally:
        metrics.STEP_LATENCY.labels(pipeline, name).observe(time.monotonic() - started)
    if failure is not None and not policy.fail_open:
        kind = ErrorKind.DEADLINE_EXCEEDED if isinstance(failure, TimeoutError) else ErrorKind.UNAVAILABLE
        raise RecdError(kind, f"{name} failed: {failure!r}") from failure
    return failure


class Pipeline:
    def __init__(self, name: str, steps: Sequence[Step], policies: Mapping[str, StepConfig]) -> None:
        missing = [s.name for s in steps if s.name not in policies]
        if missing:
            raise ValueError(f"pipeline {name}: no policy configured for steps {missing}")
        self.name = name
        self.steps = list(steps)
        self._policies = policies

    async def run(self, ctx: RequestContext) -> RequestContext:
        for step in self.steps:
            failure = await run_with_policy(
                self.name,
                step.name,
                self._policies[step.name],
                ctx.deadline,
                functools.partial(step.run, ctx),
                step.awaits_io,
            )
            if failure is not None:
                ctx.coverage.degrade(step.degraded_reason)
                step.on_failure(ctx)
        for reason in ctx.coverage.degraded:
            metrics.DEGRADED.labels(reason).inc()
        return ctx

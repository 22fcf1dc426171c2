"""Runs a pipeline's steps over a batch, each within its budget, under the fail-open policy of the config.

Budgets and policies live in the pipeline config, not in the steps: a step only turns its input stage
into its output stage, and the runner decides what a failure or an overrun means (the step's fallback
output and a degraded answer, or failed requests). The runner is also the one place that writes each
request's coverage and degraded reasons (`Pipeline.answers`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from server import metrics, tracing
from server.config import StepConfig
from server.domain import Coverage, Retrieval, ScoredItem
from server.errors import ErrorKind, RecdError, unavailable
from server.pipeline.stages import Batch, Selected
from server.tracing.spans import mark_failed

log = logging.getLogger(__name__)

In = TypeVar("In", contravariant=True)
Out = TypeVar("Out", covariant=True)
T = TypeVar("T")


class Step(Protocol[In, Out]):
    name: str  # also the name of its policy in pipeline.steps
    degraded_reason: str  # what coverage.degraded_reasons says when it fails open

    @property
    def reads(self) -> type:
        """The stage type `run` takes."""
        ...

    @property
    def produces(self) -> type:
        """The stage type `run` returns."""
        ...

    # Steps that wait on I/O are cancelled at their budget; pure compute steps run to the end and an
    # overrun is only counted (cancelling them would not free the CPU anyway).
    awaits_io: bool

    async def run(self, stage: In, deadline: float) -> Out: ...

    def fallback(self, stage: In) -> Out:
        """The output the following steps get when this step failed open."""
        ...


async def run_with_policy(
    pipeline: str,
    name: str,
    policy: StepConfig,
    deadline: float,
    call: Callable[[], Awaitable[T]],
    awaits_io: bool,
) -> tuple[T | None, BaseException | None]:
    """Runs one unit of work under its budget: (result, None), or (None, failure) if it failed open;
    raises RecdError if it failed closed. Traced as a span "<pipeline>/<name>" under the batch's span
    (server.tracing.spans says how a batch's spans relate to its requests' traces)."""
    if not tracing.enabled():
        return await _run_with_policy(pipeline, name, policy, deadline, call, awaits_io)
    with tracing.span(f"{pipeline}/{name}", {"recd.step": name, "recd.budget_ms": policy.budget_ms}) as span:
        result, failure = await _run_with_policy(pipeline, name, policy, deadline, call, awaits_io)
        if failure is not None:
            # Failed open: the step's span says so, though nothing was raised through it.
            mark_failed(span, failure, "timeout" if isinstance(failure, TimeoutError) else "failed")
        return result, failure


async def _run_with_policy(
    pipeline: str,
    name: str,
    policy: StepConfig,
    deadline: float,
    call: Callable[[], Awaitable[T]],
    awaits_io: bool,
) -> tuple[T | None, BaseException | None]:
    started = time.monotonic()
    budget = min(policy.budget_ms / 1000.0, deadline - started)
    failure: BaseException | None = None
    result: T | None = None
    try:
        if budget <= 0 and awaits_io:
            # Waiting on a backend with no time left is pointless; a compute step still runs (it takes
            # microseconds), so a request over its budget is answered, late and counted, not failed.
            raise TimeoutError(f"no time left for {name}")
        if awaits_io:
            # asyncio.timeout cancels the step in place, without the extra task wait_for creates.
            async with asyncio.timeout(budget):
                result = await call()
        else:
            result = await call()
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
    return result, failure


@dataclass(frozen=True, slots=True)
class Answer:
    """One request's answer, as the API returns it."""

    items: tuple[ScoredItem, ...]
    coverage: Coverage
    retrieval: Retrieval = Retrieval.UNSPECIFIED
    model_version: str = ""  # the version that ranked the batch ("": no rank step)


class Pipeline:
    """An ordered list of steps whose stage types chain from Batch to Selected, checked at start."""

    def __init__(
        self,
        name: str,
        steps: Sequence[Step[Any, Any]],
        policies: Mapping[str, StepConfig],
        shard_count: int,
        compute_reserve_s: float = 0.0,
    ) -> None:
        missing = [s.name for s in steps if s.name not in policies]
        if missing:
            raise ValueError(f"pipeline {name}: no policy configured for steps {missing}")
        stage: type = Batch
        for step in steps:
            if step.reads is not stage:
                raise ValueError(
                    f"pipeline {name}: step {step.name} reads {step.reads.__name__} but the step before"
                    f" it produces {stage.__name__}"
                )
            stage = step.produces
        if stage is not Selected:
            raise ValueError(f"pipeline {name}: the last step must produce Selected, not {stage.__name__}")
        self.name = name
        self.steps = list(steps)
        self._policies = policies
        self._shard_count = shard_count
        self._reserve_s = compute_reserve_s

    async def run(
        self, batch: Batch, on_stage: Callable[[Any], None] | None = None
    ) -> list[Answer | RecdError]:
        """One answer (or error) per request of the batch, in order."""
        _, answers = await self.trace(batch, on_stage)
        return answers

    async def trace(
        self, batch: Batch, on_stage: Callable[[Any], None] | None = None
    ) -> tuple[Selected, list[Answer | RecdError]]:
        """The answers and the last stage, which keeps every earlier one (for tools that measure what a
        step found, e.g. the ANN hits' recall). `on_stage` sees each stage as soon as it is produced."""
        # The batch runs until its last request's deadline; requests with earlier ones are answered
        # from what is ready when theirs passes (server.recommender), so none holds the others back.
        # Steps that wait on I/O stop a little before it, leaving the compute steps after them the time
        # to turn what was found into an answer.
        deadline = max(r.deadline for r in batch.requests) - self._reserve_s
        stage: Any = batch
        failed: list[str] = []
        for step in self.steps:
            out, failure = await run_with_policy(
                self.name,
                step.name,
                self._policies[step.name],
                deadline,
                _bind(step, stage, deadline),
                step.awaits_io,
            )
            if failure is not None:
                failed.append(step.name)
                out = step.fallback(stage)
            stage = out
            if on_stage is not None:
                on_stage(stage)
        return stage, self.answers(stage, failed)

    def answers(self, selected: Selected, failed_steps: Sequence[str]) -> list[Answer | RecdError]:
        """Coverage and degraded reasons of every request, written here and nowhere else."""
        ranked = selected.ranked
        candidates = ranked.filtered.candidates
        hydrated = candidates.hydrated
        shards = candidates.coverage()
        reasons_of_steps = [s.degraded_reason for s in self.steps if s.name in failed_steps]
        out: list[Answer | RecdError] = []
        for i in range(len(hydrated.batch)):
            rejected = hydrated.rejected.get(i)
            if rejected is not None:
                out.append(rejected)
                continue
            coverage = Coverage(int(shards.total[i]), int(shards.ok[i]))
            for reason in reasons_of_steps:
                coverage.degrade(reason)
            applied_any = False
            answered_any = False
            failed_here = []
            for source, applied in candidates.applied.items():
                if not applied[i]:
                    continue
                applied_any = True
                if candidates.failed_for(source, i):
                    coverage.degrade(source)
                    failed_here.append(source)
                else:
                    answered_any = True
            if applied_any and not answered_any:
                out.append(unavailable(f"every candidate source failed: {', '.join(failed_here)}"))
                continue
            # When ANN was to answer this request and did not, no shard contributed.
            if coverage.shards_total == 0 and "ann" in failed_here:
                coverage.shards_total = self._shard_count
            if coverage.partial:
                coverage.degrade("shards")
            for reason in coverage.degraded:
                metrics.DEGRADED.labels(reason).inc()
            model = ranked.model_for(i)
            version = model.version if model is not None else ""
            out.append(Answer(selected.items[i], coverage, Retrieval(int(shards.retrieval[i])), version))
        return out


def _bind(step: Step[Any, Any], stage: Any, deadline: float) -> Callable[[], Awaitable[Any]]:
    async def call() -> Any:
        return await step.run(stage, deadline)

    return call

"""Step 4: every applicable candidate source at once, each with its own budget, all fail-open."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from server.candidates.base import CandidateSource
from server.config import StepConfig
from server.errors import unavailable
from server.pipeline.context import RequestContext, SourceHits
from server.pipeline.runner import run_with_policy


class GatherCandidates:
    name = "candidates"
    # What coverage.degraded_reasons says when this step fails open.
    degraded_reason = "candidates"
    # Every source runs under its own budget and keeps what it found; a timeout around the whole step
    # would throw away the sources that did answer, so the runner does not cut this step off.
    awaits_io = False

    def __init__(self, sources: Sequence[CandidateSource], policies: Mapping[str, StepConfig], pipeline: str):
        self._sources = list(sources)
        self._policies = policies
        self._pipeline = pipeline

    async def run(self, ctx: RequestContext) -> None:
        active = [s for s in self._sources if s.applies(ctx)]
        results: list[SourceHits | None] = [None] * len(active)

        async def fetch_one(i: int, source: CandidateSource) -> None:
            policy = self._policies[source.name]
            timeout_s = policy.budget_ms / 1000.0

            async def call() -> None:
                results[i] = await source.fetch(ctx, timeout_s)

            failure = await run_with_policy(
                self._pipeline, source.name, policy, ctx.deadline, call, source.awaits_io
            )
            if failure is not None:
                ctx.sources_failed.append(source.name)
                ctx.coverage.degrade(source.name)

        await asyncio.gather(*(fetch_one(i, s) for i, s in enumerate(active)))
        ctx.sources_total = len(active)
        ctx.hits = [r for r in results if r is not None]
        if active and not ctx.hits:
            raise unavailable(f"every candidate source failed: {', '.join(ctx.sources_failed)}")

    def on_failure(self, ctx: RequestContext) -> None:
        ctx.hits = []

"""Every applicable candidate source at once, each over the whole batch with its own budget, fail-open."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

from server.candidates.base import CandidateSource
from server.config import StepConfig
from server.pipeline.runner import run_with_policy
from server.pipeline.stages import Candidates, Hydrated, SourceHits


class GatherCandidates:
    name = "candidates"
    degraded_reason = "candidates"
    reads = Hydrated
    produces = Candidates
    # Every source runs under its own budget and keeps what it found; a timeout around the whole step
    # would throw away the sources that did answer, so the runner does not cut this step off.
    awaits_io = False

    def __init__(self, sources: Sequence[CandidateSource], policies: Mapping[str, StepConfig], pipeline: str):
        missing = [s.name for s in sources if s.name not in policies]
        if missing:
            raise ValueError(f"pipeline {pipeline}: no policy configured for sources {missing}")
        self._sources = list(sources)
        self._policies = policies
        self._pipeline = pipeline

    async def run(self, hydrated: Hydrated, deadline: float) -> Candidates:
        applied = {s.name: s.applies(hydrated) for s in self._sources}
        active = [s for s in self._sources if applied[s.name].any()]

        async def fetch_one(source: CandidateSource) -> SourceHits | None:
            policy = self._policies[source.name]
            timeout_s = min(policy.budget_ms / 1000.0, max(0.0, deadline - time.monotonic()))

            async def call() -> SourceHits:
                return await source.fetch(hydrated, applied[source.name], timeout_s)

            hits, _ = await run_with_policy(
                self._pipeline, source.name, policy, deadline, call, source.awaits_io
            )
            return hits

        found = await asyncio.gather(*(fetch_one(s) for s in active))
        failed = tuple(s.name for s, h in zip(active, found, strict=True) if h is None)
        hits = tuple(h for h in found if h is not None)
        return Candidates(hydrated, hits, failed, applied)

    def fallback(self, hydrated: Hydrated) -> Candidates:
        return Candidates(hydrated, (), tuple(s.name for s in self._sources), {})

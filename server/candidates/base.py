"""The candidate source interface: given the request so far, propose item rows with a source score."""

from __future__ import annotations

from typing import Protocol

from server.pipeline.context import RequestContext, SourceHits


class CandidateSource(Protocol):
    # Also the name of its policy in pipeline.steps and of its degraded reason.
    name: str
    # False for sources that only compute in memory: they run even when the budget is spent, so a request
    # always has the popular fallback to answer with.
    awaits_io: bool

    def applies(self, ctx: RequestContext) -> bool:
        """Whether this source has anything to go on for this request (e.g. ANN needs a vector)."""
        ...

    async def fetch(self, ctx: RequestContext, timeout_s: float) -> SourceHits: ...

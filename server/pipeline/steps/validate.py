"""Step 1: reject bad input with INVALID_ARGUMENT and a message that says what to fix."""

from __future__ import annotations

from server import validation
from server.pipeline.context import RequestContext
from server.validation import Limits


class ValidateRequest:
    name = "validate"
    # What coverage.degraded_reasons says when this step fails open.
    degraded_reason = "validate"
    awaits_io = False

    def __init__(self, limits: Limits) -> None:
        self._limits = limits

    async def run(self, ctx: RequestContext) -> None:
        if ctx.seed_item_id is not None:
            validation.check_id(ctx.seed_item_id, "item_id", self._limits)
        else:
            validation.check_id(ctx.user_id or "", "user_id", self._limits)
        ctx.k = validation.resolve_k(ctx.k)
        validation.check_diversity(ctx.diversity)
        validation.check_filter(ctx.filter)
        validation.check_exclusions(sorted(ctx.exclude_item_ids), self._limits)
        validation.check_context(ctx.context)

    def on_failure(self, ctx: RequestContext) -> None:
        return None

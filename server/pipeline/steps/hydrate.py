"""Step 3: what the request is about: the user's vector and history, or the seed item's vector."""

from __future__ import annotations

import time

import numpy as np

from server.catalog.item_store import ItemStore
from server.errors import not_found
from server.pipeline.context import RequestContext
from server.users import UserStates


class HydrateUser:
    name = "hydrate_user"
    # What coverage.degraded_reasons says when this step fails open.
    degraded_reason = "profile"
    awaits_io = True

    def __init__(self, users: UserStates) -> None:
        self._users = users

    async def run(self, ctx: RequestContext) -> None:
        assert ctx.user_id is not None
        timeout_s = max(0.0, ctx.deadline - time.monotonic())
        state = await self._users.get(ctx.user_id, timeout_s)
        ctx.query_vector = state.vector
        ctx.graph_seed_ids = state.recent_item_ids
        ctx.seen_labels = state.seen_labels

    def on_failure(self, ctx: RequestContext) -> None:
        # No profile: the request continues as a cold start (popular + context), reason "hydrate_user".
        ctx.query_vector = None
        ctx.graph_seed_ids = ()
        ctx.seen_labels = np.empty(0, np.uint64)


class HydrateSeedItem:
    name = "hydrate_user"
    # What coverage.degraded_reasons says when this step fails open.
    degraded_reason = "item"
    awaits_io = False

    def __init__(self, items: ItemStore) -> None:
        self._items = items

    async def run(self, ctx: RequestContext) -> None:
        assert ctx.seed_item_id is not None
        row = self._items.row_of(ctx.seed_item_id)
        if row is None:
            raise not_found(f"item {ctx.seed_item_id!r} is not in the catalogue")
        ctx.query_vector = self._items.vectors(np.asarray([row], dtype=np.int64))[0]
        # The seed itself is excluded as the request's seed item (pipeline.exclusions).
        ctx.graph_seed_ids = (ctx.seed_item_id,)

    def on_failure(self, ctx: RequestContext) -> None:
        return None

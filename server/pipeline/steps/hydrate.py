"""What the requests are about: each user's vector, history and seen set, or each seed item's vector."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from server.catalog.item_store import ItemStore
from server.errors import RecdError, not_found
from server.experiments.fatigue import Fatigue
from server.pipeline.exclusions import NO_LABELS, excluded_batch
from server.pipeline.stages import Batch, Hydrated
from server.users import UserStates


def cold(batch: Batch, dim: int) -> Hydrated:
    """Every request as a cold start: no vector, no graph seeds, only the request's own exclusions."""
    n = len(batch)
    return Hydrated(
        batch,
        np.zeros((n, dim), np.float32),
        np.zeros(n, np.bool_),
        ((),) * n,
        excluded_batch(batch.requests, [NO_LABELS] * n),
    )


class HydrateUsers:
    name = "hydrate_user"
    degraded_reason = "profile"
    reads = Batch
    produces = Hydrated
    awaits_io = True

    def __init__(self, users: UserStates, dim: int, fatigue: Fatigue | None = None) -> None:
        """`fatigue`: items shown too often without an interaction join each user's seen set."""
        self._users = users
        self._dim = dim
        self._fatigue = fatigue

    async def run(self, batch: Batch, deadline: float) -> Hydrated:
        ids = [r.user_id or "" for r in batch.requests]
        timeout_s = max(0.0, deadline - time.monotonic())
        if self._fatigue is None:
            states = await self._users.get_many(ids, timeout_s)
            seen = [s.seen_labels for s in states]
        else:
            states, fatigued = await asyncio.gather(
                self._users.get_many(ids, timeout_s), self._fatigue.labels(ids, timeout_s)
            )
            seen = [
                np.union1d(s.seen_labels, f) if len(f) else s.seen_labels
                for s, f in zip(states, fatigued, strict=True)
            ]
        n = len(batch)
        vectors = np.zeros((n, self._dim), np.float32)
        has_vector = np.zeros(n, np.bool_)
        for i, state in enumerate(states):
            if state.vector is not None:
                vectors[i] = state.vector
                has_vector[i] = True
        return Hydrated(
            batch,
            vectors,
            has_vector,
            tuple(s.recent_item_ids for s in states),
            excluded_batch(batch.requests, seen),
        )

    def fallback(self, batch: Batch) -> Hydrated:
        # No profile: the requests continue as cold starts (popular + context).
        return cold(batch, self._dim)


class HydrateSeedItems:
    name = "hydrate_item"
    degraded_reason = "item"
    reads = Batch
    produces = Hydrated
    awaits_io = False

    def __init__(self, items: ItemStore) -> None:
        self._items = items

    async def run(self, batch: Batch, deadline: float) -> Hydrated:
        n = len(batch)
        rows = np.full(n, -1, np.int64)
        rejected: dict[int, RecdError] = {}
        for i, r in enumerate(batch.requests):
            row = self._items.row_of(r.seed_item_id or "")
            if row is None:
                rejected[i] = not_found(f"item {r.seed_item_id!r} is not in the catalogue")
            else:
                rows[i] = row
        found = rows >= 0
        vectors = np.zeros((n, self._items.dim), np.float32)
        if found.any():
            vectors[found] = self._items.vectors(rows[found])
        return Hydrated(
            batch,
            vectors,
            found,
            # The seed itself is excluded as the request's seed item (pipeline.exclusions).
            tuple(
                (r.seed_item_id or "",) if ok else ()
                for r, ok in zip(batch.requests, found.tolist(), strict=True)
            ),
            excluded_batch(batch.requests, [NO_LABELS] * n),
            rejected,
        )

    def fallback(self, batch: Batch) -> Hydrated:
        return cold(batch, self._items.dim)

"""The narrow interfaces each backend role implements (embedded default and real system alike).

Every method that reads on the request path takes the time it may spend (`timeout_s`), because the
pipeline's budget, not the backend, decides how long a read may take. Failures raise BackendError.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from server.domain import Edge, Exposure, Interaction, Outcome, UserProfile

# Stable 64-bit item hashes (`_core.stable_hash64(item_id)`, the same value as the item's shard label).
ItemHashes = npt.NDArray[np.uint64]


@dataclass(frozen=True, slots=True)
class UserRecord:
    """What the profile store holds about one user that the request path reads."""

    profile: UserProfile | None
    history: list[Interaction]  # the newest interactions, newest first
    seen: ItemHashes  # sorted, unique


@dataclass(frozen=True, slots=True)
class UserExport:
    """Everything the profile store holds about one user: the answer to an access request."""

    profile: UserProfile | None
    interactions: list[Interaction]  # the newest first, at most the limit asked for
    interactions_truncated: bool  # more interactions are held than `interactions` lists
    seen: ItemHashes  # sorted, unique
    seen_last_ms: npt.NDArray[np.int64]  # when each of `seen` was last seen, aligned with it
    exposures_held: int = 0  # answers served to them that the exposure log holds
    outcomes_held: int = 0  # their interactions attributed to those answers

    @property
    def found(self) -> bool:
        return (
            self.profile is not None
            or bool(self.interactions)
            or len(self.seen) > 0
            or self.exposures_held > 0
            or self.outcomes_held > 0
        )


class ProfileStore(Protocol):
    """User profiles and the interaction history (ScyllaDB in production)."""

    async def read_users(
        self, user_ids: Sequence[str], history_limit: int, timeout_s: float
    ) -> list[UserRecord]:
        """Profile, recent history and seen set of each user, aligned with `user_ids` (unique): one read
        for a batch of requests."""
        ...

    async def get_profile(self, user_id: str, timeout_s: float) -> UserProfile | None: ...

    async def upsert_profiles(self, profiles: Sequence[UserProfile]) -> None: ...

    async def append_interactions(self, interactions: Sequence[Interaction]) -> None: ...

    async def recent_interactions(self, user_id: str, limit: int, timeout_s: float) -> list[Interaction]:
        """The user's newest `limit` interactions, newest first."""
        ...

    async def seen_items(self, user_id: str, timeout_s: float) -> ItemHashes:
        """Every item the user has interacted with, as stable 64-bit item hashes, sorted ascending and
        unique: the `profiles.seen_limit` most recently seen are kept, far more than the history window
        that builds the user vector. `append_interactions` updates it before it returns."""
        ...

    async def item_popularity(self, timeout_s: float) -> Mapping[str, Mapping[str, float]]:
        """Time-decayed interaction counts: list name (`popularity.lists`) -> item id -> count, decayed
        to the newest interaction the store holds. Items without interactions are absent.
        `append_interactions` updates the counts before it returns; every frontend reads the same."""
        ...

    async def count_users(self) -> int: ...

    # --- the exposure log (server/experiments): answers served, and interactions attributed to them ---
    async def record_exposures(self, exposures: Sequence[Exposure], keep_per_user: int, ttl_s: float) -> None:
        """Appends answers served. Each user keeps at most their `keep_per_user` newest exposures (where
        the store can bound it: ScyllaDB bounds them by the TTL, and reads by their limit), and an
        exposure is forgotten `ttl_s` after it was recorded (as CQL's USING TTL counts: the writer's
        flush delay after it was served). Every frontend reads what any of them recorded."""
        ...

    async def read_exposures(
        self, user_ids: Sequence[str], since_ms: int, limit: int, timeout_s: float
    ) -> list[list[Exposure]]:
        """Each user's exposures served at or after `since_ms`, newest first, at most `limit` each,
        aligned with `user_ids` (unique): one read for a batch."""
        ...

    async def record_outcomes(self, outcomes: Sequence[Outcome], ttl_s: float) -> None:
        """Appends attributed interactions, forgotten `ttl_s` after they were recorded."""
        ...

    async def scan_exposures(self, since_ms: int) -> list[Exposure]:
        """Every user's exposures served at or after `since_ms` (the experiment report; not the
        request path)."""
        ...

    async def scan_outcomes(self, since_ms: int) -> list[Outcome]:
        """Every attributed interaction that happened at or after `since_ms` (the experiment report)."""
        ...

    async def delete_users(self, user_ids: Sequence[str]) -> None:
        """Erases each user's profile, interaction history, seen set, exposures and outcomes; returns
        once the erasure is as durable as a write (a crash after the return loses none of it). Unknown
        users are no error. The items' popularity counts keep what these users' interactions added
        (anonymous aggregates)."""
        ...

    async def export_user(self, user_id: str, interaction_limit: int, timeout_s: float) -> UserExport:
        """Everything held about the user, with their newest `interaction_limit` interactions."""
        ...

    async def close(self) -> None: ...


class ItemGraph(Protocol):
    """SIMILAR_TO edges between items (Neo4j in production)."""

    async def upsert_edges(self, edges: Sequence[Edge]) -> None: ...

    async def neighbours(
        self,
        item_ids: Sequence[str],
        hops: int,
        limit_per_hop: int,
        min_score: float,
        timeout_s: float,
    ) -> dict[str, float]:
        """Items reachable from `item_ids` in 1..hops SIMILAR_TO steps, each with its best path score.

        A path's score is the product of its edge scores; the seeds themselves are not returned.
        Each hop keeps at most `limit_per_hop` edges per source item (highest scores first) and drops
        edges below `min_score`, so the answer is bounded whatever the graph's degree.
        """
        ...

    async def neighbours_many(
        self,
        seed_lists: Sequence[Sequence[str]],
        hops: int,
        limit_per_hop: int,
        min_score: float,
        timeout_s: float,
    ) -> list[dict[str, float]]:
        """`neighbours` of each seed list, aligned: one call for a batch of requests."""
        ...

    async def count_edges(self) -> int: ...

    async def close(self) -> None: ...


async def neighbours_each(
    graph: ItemGraph,
    seed_lists: Sequence[Sequence[str]],
    hops: int,
    limit_per_hop: int,
    min_score: float,
    timeout_s: float,
) -> list[dict[str, float]]:
    """`neighbours_many` for a backend that answers each list with a round trip of its own: all of them
    in flight at once (the Neo4j backend merges concurrent ones into one query)."""
    return list(
        await asyncio.gather(
            *(graph.neighbours(s, hops, limit_per_hop, min_score, timeout_s) for s in seed_lists)
        )
    )


class Cache(Protocol):
    """A best-effort byte cache (Redis in production). It never raises: a failure is a miss."""

    async def get(self, key: str) -> bytes | None: ...

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """Values of `keys` in order (None: miss), in one round trip where the cache is remote."""
        ...

    async def set(self, key: str, value: bytes, ttl_s: float) -> None: ...

    async def delete(self, keys: Sequence[str]) -> None: ...

    async def close(self) -> None: ...


async def read_users_by_partition(
    store: ProfileStore, user_ids: Sequence[str], history_limit: int, timeout_s: float
) -> list[UserRecord]:
    """`read_users` for a store whose rows live in one partition per user (ScyllaDB): every user's three
    single-partition reads in flight at once, which a token-aware driver sends straight to the owning
    replicas; a multi-partition IN query would make one coordinator wait for all of them."""

    async def one(user_id: str) -> UserRecord:
        profile, history, seen = await asyncio.gather(
            store.get_profile(user_id, timeout_s),
            store.recent_interactions(user_id, history_limit, timeout_s),
            store.seen_items(user_id, timeout_s),
        )
        return UserRecord(profile, history, seen)

    return list(await asyncio.gather(*(one(u) for u in user_ids)))

"""The Catalog side of recd (mirrors the Catalog gRPC service): item, user and edge writes, item reads,
and statistics. Speaks domain types only (the replica is kept in step by catalog/feed.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from server import validation
from server.backends.base import ItemGraph, ProfileStore, UserExport
from server.catalog.item_store import ItemStore
from server.catalog.writes import ItemWriter
from server.config import Config
from server.domain import Edge, ItemRecord, UserProfile
from server.errors import invalid, unavailable
from server.experiments.outcomes import ExperimentOutcomes
from server.ranking.registry import ModelReloader, ReloadReport, UnknownModelVersion
from server.routing.router import ShardRouter
from server.users import UserStates
from server.validation import Limits

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Stats:
    items: int
    items_per_shard: dict[int, tuple[int, int]]  # shard -> (live, deleted)
    users: int
    edges: int
    dimension: int
    index: dict[str, int | str]
    model_version: str


MAX_VERSION_CHARS = 128

# GetUser: the newest interactions returned when the caller does not say, and the most it may ask for.
DEFAULT_EXPORT_INTERACTIONS = 1000
MAX_EXPORT_INTERACTIONS = 10_000


@dataclass(frozen=True, slots=True)
class SeenEntry:
    item_id: str  # "" when this frontend's catalogue does not know the hash's item
    item_hash: int
    last_seen_ms: int


@dataclass(frozen=True, slots=True)
class UserData:
    """What GetUser answers: everything held about one user."""

    user_id: str
    held: UserExport
    seen: list[SeenEntry]  # most recently seen first


class Catalog:
    def __init__(
        self,
        config: Config,
        router: ShardRouter,
        profiles: ProfileStore,
        graph: ItemGraph,
        items: ItemStore,
        users: UserStates,
        model_version: Callable[[], str],
        on_item_write: Callable[[], None],
        *,
        models: ModelReloader | None = None,
        experiment_outcomes: Callable[[str, int], Awaitable[ExperimentOutcomes]] | None = None,
        before_erasure: Callable[[Sequence[str]], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        self._models = models
        self._experiment_outcomes = experiment_outcomes
        # Drops what this frontend still holds to write about the users (queued answers served and
        # attributions), so that nothing of theirs reaches the store after their erasure.
        self._before_erasure = before_erasure
        self._router = router
        self._profiles = profiles
        self._graph = graph
        self._items = items
        self._users = users
        self._model_version = model_version
        # Called after every item write (the warmer re-warms the search path once a burst is over).
        self._on_item_write = on_item_write
        self.limits = Limits.of(config)
        self.item_writer = ItemWriter(router, items, self.limits)
        # Told of every erasure once it is durable (the deletion log streaming it to the edges); one that
        # returns False could not take it, and the erasure is not acknowledged.
        self._erasure_listeners: list[Callable[[Sequence[str]], bool]] = []

    def add_erasure_listener(self, listener: Callable[[Sequence[str]], bool]) -> None:
        self._erasure_listeners.append(listener)

    async def upsert_items(self, records: Sequence[ItemRecord]) -> int:
        written = await self.item_writer.upsert(records)
        self._on_item_write()
        return written

    async def delete_items(self, item_ids: Sequence[str]) -> int:
        deleted = await self.item_writer.delete(item_ids)
        self._on_item_write()
        return deleted

    async def get_items(self, item_ids: Sequence[str]) -> tuple[list[ItemRecord], list[str]]:
        return await self.item_writer.get(item_ids)

    async def experiment_outcomes(self, experiment: str, since_ms: int) -> ExperimentOutcomes:
        """AdminExperimentOutcomes: the experiment's per-variant sums from the shared exposure log."""
        if self._experiment_outcomes is None:
            raise unavailable("this frontend serves no experiments")
        return await self._experiment_outcomes(experiment, since_ms)

    async def reload_models(self, default_version: str) -> ReloadReport:
        """AdminReloadModel: the model files re-read now, then `default_version` (if any) made the
        default. Only this process: a worker group's other workers follow the files (registry.py)."""
        if self._models is None:
            raise unavailable("this frontend has no model reloader")
        if len(default_version) > MAX_VERSION_CHARS:
            raise invalid(f"default_version is longer than {MAX_VERSION_CHARS} characters")
        try:
            return await asyncio.to_thread(self._models.reload_now, default_version)
        except UnknownModelVersion as exc:
            raise invalid(
                f"default_version: {exc}; list its file in ranking.extra_model_files to load it"
            ) from exc

    async def upsert_users(self, users: Sequence[UserProfile]) -> int:
        validation.check_batch(len(users), "users", self.limits)
        seen: set[str] = set()
        for i, u in enumerate(users):
            validation.check_id(u.user_id, f"users[{i}].user_id", self.limits)
            if u.user_id in seen:
                raise invalid(f"users[{i}].user_id {u.user_id!r} appears twice in the batch; send it once")
            seen.add(u.user_id)
            validation.check_attributes(
                u.attributes, f"users[{i}].attributes", "max_attributes_per_user", self.limits
            )
            if u.embedding is not None:
                validation.check_embedding(u.embedding, f"users[{i}].embedding", self.limits)
        await self._profiles.upsert_profiles(users)
        await self._users.invalidate(u.user_id for u in users)
        return len(users)

    async def delete_user(self, user_id: str) -> None:
        validation.check_id(user_id, "user_id", self.limits)
        await self.delete_users([user_id])

    async def delete_users(self, user_ids: Sequence[str]) -> int:
        """Erases the users from the profile store (durable when it returns), then invalidates their
        cached state, as a write does, so that no frontend serves it again: a Recommend that read the
        store before the erasure cannot cache what it read (server/users.py). Returns the distinct ids."""
        validation.check_batch(len(user_ids), "user_ids", self.limits)
        validation.check_ids(user_ids, "user_ids", self.limits)
        unique = list(dict.fromkeys(user_ids))
        if self._before_erasure is not None:
            await self._before_erasure(unique)
        await self._profiles.delete_users(unique)
        await self._users.invalidate(unique)
        for listener in self._erasure_listeners:
            if not listener(unique):
                # The erasure is durable, but the edges may never hear of it from this process: the
                # caller retries (erasure is idempotent), through a frontend that is not stopping.
                raise unavailable(
                    "this frontend is stopping; the users are erased but the edge caches may not have "
                    "been told: send the erasure again"
                )
        # The count only: a log of erased ids would itself keep what was erased.
        log.info("erased %d users", len(unique))
        return len(unique)

    async def get_user(self, user_id: str, max_interactions: int, timeout_s: float) -> UserData:
        validation.check_id(user_id, "user_id", self.limits)
        if not 0 <= max_interactions <= MAX_EXPORT_INTERACTIONS:
            raise invalid(
                f"max_interactions must be within 1..{MAX_EXPORT_INTERACTIONS} "
                f"(0 = {DEFAULT_EXPORT_INTERACTIONS}), got {max_interactions}"
            )
        limit = max_interactions or DEFAULT_EXPORT_INTERACTIONS
        held = await self._profiles.export_user(user_id, limit, timeout_s)
        # The store keeps item hashes (shard labels); the catalogue names the items it knows.
        order = sorted(range(len(held.seen)), key=lambda i: -int(held.seen_last_ms[i]))
        seen = [
            SeenEntry(
                self._items.label_owner(int(held.seen[i])) or "",
                int(held.seen[i]),
                int(held.seen_last_ms[i]),
            )
            for i in order
        ]
        return UserData(user_id, held, seen)

    async def upsert_edges(self, edges: Sequence[Edge]) -> int:
        validation.check_batch(len(edges), "edges", self.limits)
        for i, e in enumerate(edges):
            validation.check_id(e.src_item_id, f"edges[{i}].src_item_id", self.limits)
            validation.check_id(e.dst_item_id, f"edges[{i}].dst_item_id", self.limits)
            if e.src_item_id == e.dst_item_id:
                raise invalid(f"edges[{i}] links {e.src_item_id!r} to itself; self-loops are not allowed")
            validation.check_edge_score(e.score, f"edges[{i}].score")
        await self._graph.upsert_edges(edges)
        return len(edges)

    async def stats(self) -> Stats:
        shard_stats = await self._router.stats(5.0)
        per_shard = {s.shard_id: (s.items, s.deleted) for s in shard_stats.shards}
        idx = self.config.shards.index
        return Stats(
            items=len(self._items),
            items_per_shard=per_shard,
            users=await self._profiles.count_users(),
            edges=await self._graph.count_edges(),
            dimension=self.config.dim,
            index={
                "space": "ip",
                "m": idx.m,
                "ef_construction": idx.ef_construction,
                "ef_search": idx.ef_search,
            },
            model_version=self._model_version(),
        )

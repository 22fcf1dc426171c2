"""The Catalog side of recd (mirrors the Catalog gRPC service): item, user and edge writes, item reads,
and statistics. Speaks domain types only (the replica is kept in step by catalog/feed.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from server import validation
from server.backends.base import ItemGraph, ProfileStore
from server.catalog.item_store import ItemStore
from server.catalog.writes import ItemWriter
from server.config import Config
from server.domain import Edge, ItemRecord, UserProfile
from server.errors import invalid
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
    ) -> None:
        self.config = config
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

    async def upsert_users(self, users: Sequence[UserProfile]) -> int:
        validation.check_batch(len(users), "users", self.limits)
        for i, u in enumerate(users):
            validation.check_id(u.user_id, f"users[{i}].user_id", self.limits)
            if u.embedding is not None:
                validation.check_embedding(u.embedding, f"users[{i}].embedding", self.limits)
        await self._profiles.upsert_profiles(users)
        await self._users.invalidate(u.user_id for u in users)
        return len(users)

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

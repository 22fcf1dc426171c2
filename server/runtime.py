"""Wires one recd frontend from its config: backends, shards, ranking and the two pipelines.

`Recd` is what the gRPC services call; it speaks domain types only (protobuf stops at the API edge).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from server import metrics, validation
from server.backends.base import Cache, ItemGraph, ProfileStore
from server.candidates.ann import AnnSearcher, AnnSource
from server.candidates.exact import ExactFilteredSearch
from server.candidates.graph import GraphSource
from server.candidates.popular import PopularSource
from server.catalog.item_store import ItemStore
from server.catalog.popularity_sync import PopularitySync
from server.catalog.writes import ItemWriter
from server.config import Config
from server.domain import (
    Edge,
    Interaction,
    ItemRecord,
    Recommendation,
    RecommendQuery,
    Retrieval,
    ScoredItem,
    SimilarQuery,
    UserProfile,
)
from server.errors import invalid
from server.pipeline.context import RequestContext
from server.pipeline.runner import Pipeline, Step
from server.pipeline.steps.candidates import GatherCandidates
from server.pipeline.steps.filter import FilterCandidates
from server.pipeline.steps.hydrate import HydrateSeedItem, HydrateUser
from server.pipeline.steps.rank import RankCandidates
from server.pipeline.steps.select import SelectItems
from server.pipeline.steps.validate import ValidateRequest
from server.ranking.model import RankingModel
from server.ranking.service import RankService
from server.shard_router import ShardRouter
from server.users import UserStates
from server.validation import Limits
from server.warmup import Warmer

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


@dataclass(frozen=True, slots=True)
class Similar:
    items: list[ScoredItem]
    coverage_total: int
    coverage_ok: int
    degraded: list[str]
    retrieval: Retrieval = Retrieval.UNSPECIFIED


class Recd:
    def __init__(
        self,
        config: Config,
        router: ShardRouter,
        profiles: ProfileStore,
        graph: ItemGraph,
        cache: Cache,
        items: ItemStore,
        rank_service: RankService,
        model: RankingModel,
    ) -> None:
        self.config = config
        self.router = router
        self.profiles = profiles
        self.graph = graph
        self.cache = cache
        self.items = items
        self.rank_service = rank_service
        self.model = model
        self.limits = Limits(config.dim, config.server.max_batch, config.server.max_id_bytes)
        self.item_writer = ItemWriter(router, items, self.limits)
        self.warmer = Warmer(self._warm_search_path)
        # Started after hydrate_catalogue (cli), or by the first write through this frontend.
        self.popularity_sync = PopularitySync(profiles, items, config.popularity.refresh_s)
        pc = config.pipeline
        c = pc.candidates
        self.users = UserStates(
            profiles, cache, items, c.history_limit, c.history_half_life_s, config.cache.user_vector_ttl_s
        )
        batch = config.shards.search_batch
        self.ann = AnnSearcher(router, c.shard_k_factor, batch.max_batch, batch.max_wait_ms / 1000.0)
        # Selective filters are scored exactly, on the GPU ranker's table where it runs (zero side
        # features: a positive similarity weight keeps the similarity order).
        primary = rank_service.primary
        on_gpu = primary.name == "gpu" and model.similarity_weight > 0
        self.exact = ExactFilteredSearch(items, c.exact_filter_max_items, primary if on_gpu else None)
        ann = AnnSource(self.ann, items, c.ann_k, config.shards.index.ef_search, self.exact)
        graph_source = GraphSource(
            graph, items, c.graph_seeds, c.graph_hops, c.graph_limit_per_hop, c.graph_min_score
        )
        popular = PopularSource(
            items,
            k_cold=c.popular_k,
            k_warm=max(10, c.popular_k // 4),
            list_name=config.popularity.popular_list,
        )
        shared_tail: list[Step] = [
            FilterCandidates(items, popular_as_fallback=c.popular_for_warm_users == "fallback"),
            RankCandidates(rank_service, items, model, pc.mmr_pool),
            SelectItems(items, model),
        ]
        self.recommend_pipeline = Pipeline(
            "recommend",
            [
                ValidateRequest(self.limits),
                HydrateUser(self.users),
                GatherCandidates([ann, graph_source, popular], pc.steps, "recommend"),
                *shared_tail,
            ],
            pc.steps,
        )
        self.similar_pipeline = Pipeline(
            "similar",
            [
                ValidateRequest(self.limits),
                HydrateSeedItem(items),
                GatherCandidates([ann, graph_source], pc.steps, "similar"),
                *shared_tail,
            ],
            pc.steps,
        )

    # --- reads ----------------------------------------------------------------------------------------
    def _deadline(self, caller_deadline: float | None) -> float:
        budget = time.monotonic() + self.config.pipeline.budget_ms / 1000.0
        return budget if caller_deadline is None else min(budget, caller_deadline)

    async def recommend(self, query: RecommendQuery, caller_deadline: float | None = None) -> Recommendation:
        ctx = RequestContext(
            pipeline="recommend",
            k=query.k,
            deadline=self._deadline(caller_deadline),
            filter=dict(query.filter),
            exclude_item_ids=query.exclude_item_ids,
            diversity=query.diversity,
            include_seen=query.include_seen,
            user_id=query.user_id,
            context=dict(query.context),
        )
        await self.recommend_pipeline.run(ctx)
        self._fill_coverage(ctx)
        return Recommendation(
            items=ctx.items,
            coverage=ctx.coverage,
            cache_key=self.cache_key(query),
            cache_ttl_seconds=self.config.response.cache_ttl_seconds,
            model_version=self.model.version,
            retrieval=ctx.retrieval,
        )

    async def similar_items(self, query: SimilarQuery, caller_deadline: float | None = None) -> Similar:
        ctx = RequestContext(
            pipeline="similar",
            k=query.k,
            deadline=self._deadline(caller_deadline),
            filter=dict(query.filter),
            seed_item_id=query.item_id,
            include_seen=False,
        )
        await self.similar_pipeline.run(ctx)
        self._fill_coverage(ctx)
        cov = ctx.coverage
        return Similar(ctx.items, cov.shards_total, cov.shards_ok, list(cov.degraded), ctx.retrieval)

    def _fill_coverage(self, ctx: RequestContext) -> None:
        # When ANN did not answer (failed, or had no vector to search), no shard contributed.
        if ctx.coverage.shards_total == 0 and "ann" in ctx.sources_failed:
            ctx.coverage.shards_total = self.router.shard_count
        if ctx.coverage.partial:
            ctx.coverage.degrade("shards")

    def cache_key(self, query: RecommendQuery) -> str:
        normal = {
            "k": query.k or validation.DEFAULT_K,
            "f": {k: sorted(v) for k, v in sorted(query.filter.items())},
            "c": dict(sorted(query.context.items())),
            "x": sorted(query.exclude_item_ids),
            "d": round(query.diversity, 4),
            "s": query.include_seen,
        }
        digest = hashlib.blake2b(json.dumps(normal, sort_keys=True).encode(), digest_size=12).hexdigest()
        return f"rec:v1:{self.model.version}:{query.user_id}:{digest}"

    # --- writes ---------------------------------------------------------------------------------------
    async def upsert_items(self, records: Sequence[ItemRecord]) -> int:
        written = await self.item_writer.upsert(records)
        self.warmer.poke()
        return written

    async def delete_items(self, item_ids: Sequence[str]) -> int:
        deleted = await self.item_writer.delete(item_ids)
        self.warmer.poke()
        return deleted

    async def get_items(self, item_ids: Sequence[str]) -> tuple[list[ItemRecord], list[str]]:
        return await self.item_writer.get(item_ids)

    async def upsert_users(self, users: Sequence[UserProfile]) -> int:
        validation.check_batch(len(users), "users", self.limits)
        for i, u in enumerate(users):
            validation.check_id(u.user_id, f"users[{i}].user_id", self.limits)
            if u.embedding is not None:
                validation.check_embedding(u.embedding, f"users[{i}].embedding", self.limits)
        await self.profiles.upsert_profiles(users)
        await self.users.invalidate(u.user_id for u in users)
        return len(users)

    async def record_interactions(self, interactions: Sequence[Interaction]) -> int:
        validation.check_batch(len(interactions), "interactions", self.limits)
        now_ms = int(time.time() * 1000)
        normalised = []
        for i, x in enumerate(interactions):
            validation.check_id(x.user_id, f"interactions[{i}].user_id", self.limits)
            validation.check_id(x.item_id, f"interactions[{i}].item_id", self.limits)
            validation.check_weight(x.weight, f"interactions[{i}].weight")
            if x.timestamp_ms < 0:
                raise invalid(f"interactions[{i}].timestamp_ms must be >= 0 (0 = now), got {x.timestamp_ms}")
            if x.timestamp_ms > now_ms + validation.MAX_CLOCK_SKEW_MS:
                # The newest interaction is the reference time of the popularity counts: one event dated
                # in the future would decay every other count to nothing.
                raise invalid(
                    f"interactions[{i}].timestamp_ms {x.timestamp_ms} is more than a day in the future "
                    f"(now is {now_ms}); send the time the interaction happened, in ms since the epoch"
                )
            if len(x.action) > 64:
                raise invalid(f"interactions[{i}].action is longer than 64 characters")
            normalised.append(
                Interaction(
                    x.user_id, x.item_id, x.action or "view", x.weight or 1.0, x.timestamp_ms or now_ms
                )
            )
        await self.profiles.append_interactions(normalised)
        self.popularity_sync.poke()  # this frontend's counts reflect the write promptly
        await self.users.invalidate(x.user_id for x in normalised)
        return len(normalised)

    async def upsert_edges(self, edges: Sequence[Edge]) -> int:
        validation.check_batch(len(edges), "edges", self.limits)
        for i, e in enumerate(edges):
            validation.check_id(e.src_item_id, f"edges[{i}].src_item_id", self.limits)
            validation.check_id(e.dst_item_id, f"edges[{i}].dst_item_id", self.limits)
            if e.src_item_id == e.dst_item_id:
                raise invalid(f"edges[{i}] links {e.src_item_id!r} to itself; self-loops are not allowed")
            validation.check_edge_score(e.score, f"edges[{i}].score")
        await self.graph.upsert_edges(edges)
        return len(edges)

    async def stats(self) -> Stats:
        per_shard: dict[int, tuple[int, int]] = {}
        for node in self.router.nodes:
            node_stats = await node.client.stats(5.0)
            for s in node_stats.shards:
                per_shard[s.shard_id] = (s.items, s.deleted)
        idx = self.config.shards.index
        return Stats(
            items=len(self.items),
            items_per_shard=per_shard,
            users=await self.profiles.count_users(),
            edges=await self.graph.count_edges(),
            dimension=self.config.dim,
            index={
                "space": "ip",
                "m": idx.m,
                "ef_construction": idx.ef_construction,
                "ef_search": idx.ef_search,
            },
            model_version=self.model.version,
        )

    # --- life cycle -----------------------------------------------------------------------------------
    async def hydrate_catalogue(self) -> int:
        """Fills the in-memory catalogue from what the shards hold (after a restart)."""
        started = time.monotonic()
        for node in self.router.nodes:
            for shard in node.shard_ids:
                async for batch in node.client.scan(shard, 4096):
                    self.item_writer.hydrate(batch)
        log.info("catalogue hydrated: %d items in %.1fs", len(self.items), time.monotonic() - started)
        metrics.ITEMS.set(len(self.items))
        return len(self.items)

    async def warm_up(self) -> None:
        """Runs the request path once before serving, so the first caller does not pay for lazy set-up
        (thread pools, kernel compilation, first index touches) and see a degraded answer. Runs again
        by itself once a burst of item writes has gone quiet (server.warmup)."""
        await asyncio.to_thread(self.rank_service.primary.warm_up)
        if len(self.items) and self.rank_service.fallback is not None:
            await asyncio.to_thread(self.rank_service.fallback.warm_up)
        await self._warm_search_path()

    async def _warm_search_path(self) -> None:
        # Real item vectors, the Recommend's shard k and ef, and no step budget: a warm-up that a busy
        # machine slows down must still touch everything rather than be cut off like a request.
        c = self.config.pipeline.candidates
        rows = self.items.rows_of(self.items.sample_ids(8))
        if len(rows):
            probe = self.items.vectors(rows)
        else:
            probe = np.zeros((1, self.config.dim), dtype=np.float32)
            probe[0, 0] = 1.0
        per_shard_k = self.router.per_shard_k(c.ann_k, c.shard_k_factor)
        for _ in range(3):
            await self.router.search(
                probe, c.ann_k, per_shard_k, self.config.shards.index.ef_search, None, 10.0
            )
        # Sorting the popularity orders is O(catalogue): off the event loop, which may be serving.
        await asyncio.to_thread(self.items.rebuild_popularity)

    async def close(self) -> None:
        await self.warmer.close()
        await self.popularity_sync.close()
        self.rank_service.close()
        for node in self.router.nodes:
            await node.client.close()
        await self.profiles.close()
        await self.graph.close()
        await self.cache.close()

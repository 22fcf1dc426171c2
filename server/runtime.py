"""One recd frontend: its Recommender side and its Catalog side over shared parts, and their life cycle.

`Recd` mirrors the two gRPC services (`recommender`, `catalog`) and owns what both sides share (the
router, the stores, the catalogue replica, the ranker) and their start-up and shutdown.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np

from server.backends.base import Cache, ItemGraph, ProfileStore
from server.catalog.catalog import Catalog
from server.catalog.feed import CatalogueFeed
from server.catalog.item_store import ItemStore
from server.catalog.popularity_sync import PopularitySync
from server.config import Config
from server.ranking.model import RankingModel
from server.ranking.registry import ModelReloader
from server.ranking.service import RankService
from server.recommender import Recommender
from server.routing.router import ShardRouter
from server.users import UserStates
from server.warmup import Warmer

log = logging.getLogger(__name__)


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
        if rank_service.models.default != model:  # a rank service built before the model was chosen
            rank_service.models.replace(None, model, make_default=True)
        r = config.ranking
        # Reads the model files once now; watches them for changes once serving (warm_up).
        self.model_reloader = ModelReloader(
            rank_service.models, r.model_file, r.extra_model_files, r.reload_interval_s
        )
        self.warmer = Warmer(self._warm_search_path)
        self.feed = CatalogueFeed(router, items, config.shards.feed.retry_ms / 1000.0)
        # Started after sync_catalogue (cli), or by the first write through this frontend.
        self.popularity_sync = PopularitySync(profiles, items, config.popularity.refresh_s)
        c = config.pipeline.candidates
        self.users = UserStates(
            profiles, cache, items, c.history_limit, c.history_half_life_s, config.cache.user_vector_ttl_s
        )
        self.recommender = Recommender(
            config, router, profiles, graph, items, self.users, rank_service, self.popularity_sync
        )
        self.catalog = Catalog(
            config,
            router,
            profiles,
            graph,
            items,
            self.users,
            lambda: self.model.version,
            self.warmer.poke,
            models=self.model_reloader,
            experiment_outcomes=self.recommender.experiment_outcomes,
            before_erasure=self.recommender.forget,
        )

    @property
    def model(self) -> RankingModel:
        """The default model version (hot-reloaded: see server.ranking.registry)."""
        return self.rank_service.models.default

    # --- life cycle -----------------------------------------------------------------------------------
    async def sync_catalogue(self) -> int:
        """Fills the catalogue replica from the shards and keeps following their change feeds, so that
        writes through other frontends show here too. Returns the items held once synced."""
        await self.router.ensure_started()
        return await self.feed.start(self.config.shards.feed.start_timeout_s)

    async def warm_up(self) -> None:
        """Runs the request path once before serving, so the first caller does not pay for lazy set-up
        (thread pools, kernel compilation, first index touches) and see a degraded answer. Runs again
        by itself once a burst of item writes has gone quiet (server.warmup). Starts watching the model
        files: every path that serves warms up first."""
        self.model_reloader.start()
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
        per_shard_k = self.router.per_shard_k(c.ann_k, c.shard_k_factor, c.shard_k)
        for _ in range(3):
            await self.router.search(
                probe, c.ann_k, per_shard_k, self.config.shards.index.ef_search, None, 10.0
            )
        # Sorting the popularity orders is O(catalogue): off the event loop, which may be serving.
        await asyncio.to_thread(self.items.rebuild_popularity)

    async def close(self) -> None:
        await self.recommender.close()  # before the profile store: it writes the exposures still queued
        await self.model_reloader.close()
        await self.feed.close()
        await self.warmer.close()
        await self.popularity_sync.close()
        self.rank_service.close()
        await self.router.close()
        await self.profiles.close()
        await self.graph.close()
        await self.cache.close()

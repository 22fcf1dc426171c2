"""Builds a Recd from config: picks each role's implementation (embedded default or real system)."""

from __future__ import annotations

import logging
from pathlib import Path

from server.backends.base import Cache, ItemGraph, ProfileStore
from server.backends.cached_graph import CachedNeighbours
from server.catalog.item_store import ItemStore
from server.config import Config
from server.ranking.base import Ranker
from server.ranking.cpu import CpuRanker
from server.ranking.model import RankingModel, load_model
from server.ranking.service import RankService
from server.runtime import Recd
from server.shard_router import ShardNode, ShardRouter
from shards.client import InProcessShardClient
from shards.host import ShardHost
from shards.records import IndexParams

log = logging.getLogger(__name__)


def _data_dir(config: Config, name: str) -> Path | None:
    if config.data_dir is None:
        return None
    path = Path(config.data_dir) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def index_params(config: Config) -> IndexParams:
    idx = config.shards.index
    return IndexParams(
        dim=config.dim,
        space="ip",
        m=idx.m,
        ef_construction=idx.ef_construction,
        ef_search=idx.ef_search,
        initial_capacity=idx.initial_capacity,
    )


def build_shard_host(config: Config, shard_ids: list[int] | None = None) -> ShardHost:
    ids = list(range(config.shards.count)) if shard_ids is None else shard_ids
    return ShardHost(
        index_params(config),
        _data_dir(config, "shards"),
        ids,
        snapshot_every_records=config.shards.snapshot_every_records,
        group_commit_window_s=config.shards.group_commit_window_ms / 1000.0,
    )


def build_profiles(config: Config) -> ProfileStore:
    if config.profiles.backend == "embedded":
        from server.backends.memory_profiles import InMemoryProfileStore

        return InMemoryProfileStore(
            _data_dir(config, "profiles"),
            history_limit=config.profiles.history_limit,
            seen_limit=config.profiles.seen_limit,
            popularity_half_lives=config.popularity.lists,
        )
    if config.profiles.backend == "scylla":
        from server.backends.scylla import ScyllaProfileStore

        return ScyllaProfileStore(config.profiles, popularity_half_lives=config.popularity.lists)
    raise NotImplementedError(f"profiles.backend {config.profiles.backend!r} is not available in this build")


def build_graph(config: Config) -> ItemGraph:
    if config.graph.backend == "embedded":
        from server.backends.memory_graph import InMemoryItemGraph

        return InMemoryItemGraph(_data_dir(config, "graph"))
    if config.graph.backend == "neo4j":
        from server.backends.neo4j_graph import Neo4jItemGraph

        return Neo4jItemGraph(config.graph)
    raise NotImplementedError(f"graph.backend {config.graph.backend!r} is not available in this build")


def build_cache(config: Config) -> Cache:
    if config.cache.backend == "embedded":
        from server.backends.memory_cache import InMemoryCache

        return InMemoryCache(config.cache.max_bytes)
    if config.cache.backend == "redis":
        from server.backends.redis_cache import RedisCache

        return RedisCache(config.cache)
    raise NotImplementedError(f"cache.backend {config.cache.backend!r} is not available in this build")


def build_rankers(config: Config, items: ItemStore, model: RankingModel) -> tuple[Ranker, Ranker | None]:
    """(primary, fallback): the GPU ranker with the CPU one behind it, or the CPU ranker alone."""
    cpu = CpuRanker(items.table, model)
    choice = config.ranking.ranker
    if choice == "cpu":
        return cpu, None
    try:
        from server.ranking import gpu
    except ImportError as exc:
        if choice == "gpu":
            raise RuntimeError(f"ranking.ranker is 'gpu' but the GPU ranker cannot load: {exc}") from exc
        return cpu, None
    if not gpu.available():
        if choice == "gpu":
            raise RuntimeError("ranking.ranker is 'gpu' but CuPy sees no CUDA device")
        return cpu, None
    ranker = gpu.GpuRanker(items, model)
    items.add_listener(ranker.on_catalogue_change)
    return ranker, cpu


def build_router(config: Config, host: ShardHost | None = None) -> ShardRouter:
    """Remote mode when cluster.nodes lists shard nodes (server/cluster), else every shard in-process."""
    if config.cluster.nodes and host is None:
        from server.cluster.manager import ClusterManager

        return ClusterManager(config).router
    host = host or build_shard_host(config)
    client = InProcessShardClient(host, owns_host=True)
    return ShardRouter(
        config.dim,
        config.shards.count,
        config.shards.vnodes,
        [ShardNode("local", client, tuple(range(config.shards.count)))],
    )


def build_recd(config: Config, host: ShardHost | None = None) -> Recd:
    """An embedded-mode frontend: every shard in this process, unless the config names shard nodes."""
    router = build_router(config, host)
    pop = config.popularity
    items = ItemStore(
        config.dim,
        capacity=config.shards.index.initial_capacity,
        prior_weight=pop.prior_weight,
        popular_list=pop.popular_list,
        feature_list=pop.feature_list,
    )
    model = load_model(config.ranking.model_file)
    primary, fallback = build_rankers(config, items, model)
    rank_service = RankService(primary, fallback)
    cache = build_cache(config)
    graph = build_graph(config)
    if config.graph.backend != "embedded" and config.graph.neighbour_cache_ttl_s > 0:
        # A remote graph costs a round trip per query: per-item neighbour lists go through the cache.
        c = config.pipeline.candidates
        graph = CachedNeighbours(
            graph,
            cache,
            config.graph.neighbour_cache_ttl_s,
            c.graph_hops,
            c.graph_limit_per_hop,
            c.graph_min_score,
        )
    return Recd(config, router, build_profiles(config), graph, cache, items, rank_service, model)

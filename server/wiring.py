"""Builds a Recd from config: picks each role's implementation (embedded default or real system)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from server.backends.base import Cache, ItemGraph, ProfileStore
from server.backends.cached_graph import CachedNeighbours
from server.catalog.item_store import ItemStore
from server.config import Config
from server.ranking.base import Ranker
from server.ranking.cpu import CpuRanker
from server.ranking.model import RankingModel, load_model
from server.ranking.service import RankService
from server.routing.router import ShardRouter
from server.routing.topology import ShardNode
from server.runtime import Recd
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


def build_shard_host(
    config: Config, shard_ids: Sequence[int] | None = None, directory: Path | None = None
) -> ShardHost:
    """The shards one process hosts (every shard by default), under `directory` (by default
    `data_dir/shards`, or in memory without a data_dir)."""
    ids = list(range(config.shards.count)) if shard_ids is None else list(shard_ids)
    return ShardHost(
        index_params(config),
        directory if directory is not None else _data_dir(config, "shards"),
        ids,
        snapshot_every_records=config.shards.snapshot_every_records,
        group_commit_window_s=config.shards.group_commit_window_ms / 1000.0,
        feed_retain_bytes=config.shards.feed.retain_bytes,
    )


def build_profiles(config: Config) -> ProfileStore:
    w = config.workers
    if config.profiles.backend == "embedded" and w.state_socket:
        # A worker of a group: the one embedded store, on the group's state node (server/workers).
        from server.workers.state_proxies import StateProfileStore
        from server.workers.state_wire import socket_for

        return StateProfileStore(
            socket_for(w.state_socket, "profiles"), w.state_write_timeout_s, config.server.max_message_bytes
        )
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
    w = config.workers
    if config.graph.backend == "embedded" and w.state_socket:
        from server.workers.state_proxies import StateItemGraph
        from server.workers.state_wire import socket_for

        return StateItemGraph(
            socket_for(w.state_socket, "graph"), w.state_write_timeout_s, config.server.max_message_bytes
        )
    if config.graph.backend == "embedded":
        from server.backends.memory_graph import InMemoryItemGraph

        return InMemoryItemGraph(_data_dir(config, "graph"))
    if config.graph.backend == "neo4j":
        from server.backends.neo4j_graph import Neo4jItemGraph

        return Neo4jItemGraph(config.graph)
    raise NotImplementedError(f"graph.backend {config.graph.backend!r} is not available in this build")


def build_cache(config: Config) -> Cache:
    w = config.workers
    if config.cache.backend == "embedded" and w.state_socket:
        from server.workers.state_proxies import StateCache
        from server.workers.state_wire import socket_for

        timeout_s = w.state_cache_timeout_ms / 1000.0
        return StateCache(socket_for(w.state_socket, "cache"), timeout_s, config.server.max_message_bytes)
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
        from server.cluster.membership.manager import ClusterManager

        return ClusterManager(config).router
    host = host or build_shard_host(config)
    client = InProcessShardClient(host, owns_host=True)
    return ShardRouter(
        config.dim,
        config.shards.count,
        config.shards.vnodes,
        [ShardNode("local", client, tuple(range(config.shards.count)))],
    )


@dataclass(frozen=True)
class Stores:
    """The shared state roles, when a caller builds several frontends over one set of them."""

    profiles: ProfileStore
    graph: ItemGraph
    cache: Cache


def build_recd(config: Config, host: ShardHost | None = None, stores: Stores | None = None) -> Recd:
    """An embedded-mode frontend: every shard in this process, unless the config names shard nodes.
    `stores` replaces the profile store, graph and cache the config names (tests run several frontends
    in one process over one set)."""
    router = build_router(config, host)
    if stores is not None:
        return Recd(config, router, stores.profiles, stores.graph, stores.cache, *_frontend_parts(config))
    profiles, graph, cache = build_profiles(config), build_graph(config), build_cache(config)
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
    return Recd(config, router, profiles, graph, cache, *_frontend_parts(config))


def _frontend_parts(config: Config) -> tuple[ItemStore, RankService, RankingModel]:
    """What each frontend holds for itself: its catalogue replica and its rankers."""
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
    return items, RankService(primary, fallback), model

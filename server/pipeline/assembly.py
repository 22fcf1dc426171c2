"""Building the Recommend and SimilarItems pipelines from a config: the declared steps and sources.

One frontend may hold several sets: the default one, and one per distinct set of parameters an
experiment variant overrides (server/experiments), each built from the config with the variant's
overrides applied. What does not depend on those parameters (stores, router, ranker, the exact search's
cache) is built once and shared by every set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from server.backends.base import ItemGraph
from server.candidates.ann import AnnSource
from server.candidates.base import CandidateSource
from server.candidates.exact import ExactFilteredSearch
from server.candidates.graph import GraphSource
from server.candidates.popular import PopularSource
from server.catalog.item_store import ItemStore
from server.config import Config
from server.pipeline.runner import Pipeline, Step
from server.pipeline.stages import AnnParams
from server.pipeline.steps.candidates import GatherCandidates
from server.pipeline.steps.filter import FilterCandidates
from server.pipeline.steps.hydrate import HydrateSeedItems, HydrateUsers
from server.pipeline.steps.rank import RankCandidates
from server.pipeline.steps.select import SelectItems
from server.ranking.service import RankService
from server.routing.router import ShardRouter
from server.users import UserStates


@dataclass(frozen=True, slots=True)
class SharedParts:
    """What every pipeline set uses and none owns."""

    router: ShardRouter
    graph: ItemGraph
    items: ItemStore
    users: UserStates
    rank_service: RankService
    exact: ExactFilteredSearch
    hydrate_users: HydrateUsers  # user state is one thing per user, whatever the variant


@dataclass(frozen=True, slots=True)
class Pipelines:
    recommend: Pipeline
    similar: Pipeline
    ann: AnnSource


def shared_parts(
    config: Config,
    router: ShardRouter,
    graph: ItemGraph,
    items: ItemStore,
    users: UserStates,
    rank_service: RankService,
    hydrate_users: HydrateUsers,
) -> SharedParts:
    # Selective filters are scored exactly, on the GPU ranker's table where it runs (zero side
    # features: a positive similarity weight keeps the similarity order).
    primary = rank_service.primary
    on_gpu = primary.name == "gpu" and rank_service.models.default.similarity_weight > 0
    exact = ExactFilteredSearch(items, primary if on_gpu else None)
    return SharedParts(router, graph, items, users, rank_service, exact, hydrate_users)


def ann_params(config: Config, router: ShardRouter) -> AnnParams:
    """The ANN source's search parameters under `config`: the pipeline's own, and an experiment arm's
    (a copy of the config with its retrieval overrides), which ride on its requests."""
    c = config.pipeline.candidates
    per_shard_k = router.per_shard_k(c.ann_k, c.shard_k_factor, c.shard_k)
    return AnnParams(c.ann_k, per_shard_k, config.shards.index.ef_search, c.exact_filter_max_items)


def assemble(config: Config, parts: SharedParts) -> Pipelines:
    """The pipelines `config` declares."""
    pc = config.pipeline
    c = pc.candidates
    router, items = parts.router, parts.items
    p = ann_params(config, router)
    ann = AnnSource(router, items, p.k, p.ef, p.per_shard_k, parts.exact, p.exact_max_items)
    sources: dict[str, CandidateSource] = {
        "ann": ann,
        "graph": GraphSource(
            parts.graph, items, c.graph_seeds, c.graph_hops, c.graph_limit_per_hop, c.graph_min_score
        ),
        "popular": PopularSource(
            items,
            k_cold=c.popular_k,
            k_warm=max(10, c.popular_k // 4),
            list_name=config.popularity.popular_list,
        ),
    }
    model = parts.rank_service.models.default  # the select step's fallback weights

    def build(name: str, step_names: Sequence[str], source_names: Sequence[str]) -> Pipeline:
        unknown = [s for s in source_names if s not in sources]
        if unknown:
            raise ValueError(f"pipeline.{name}_sources: unknown sources {unknown}; known: {list(sources)}")
        steps: dict[str, Step] = {  # type: ignore[type-arg]
            "hydrate_user": parts.hydrate_users,
            "hydrate_item": HydrateSeedItems(items),
            "candidates": GatherCandidates([sources[s] for s in source_names], pc.steps, name),
            "filter": FilterCandidates(items, popular_as_fallback=c.popular_for_warm_users == "fallback"),
            "rank": RankCandidates(parts.rank_service, items, pc.mmr_pool),
            "select": SelectItems(items, model.similarity_weight, model.side_weights),
        }
        unknown = [s for s in step_names if s not in steps]
        if unknown:
            raise ValueError(f"pipeline.{name}_steps: unknown steps {unknown}; known: {list(steps)}")
        return Pipeline(
            name,
            [steps[s] for s in step_names],
            pc.steps,
            router.shard_count,
            pc.compute_reserve_ms / 1000.0,
        )

    return Pipelines(
        build("recommend", pc.recommend_steps, pc.recommend_sources),
        build("similar", pc.similar_steps, pc.similar_sources),
        ann,
    )

"""The Recommender side of recd (mirrors the Recommender gRPC service): Recommend and SimilarItems through
the batched pipelines, and RecordInteractions. Speaks domain types only; protobuf stops at server/api.

The request path, in order: `server.requests` validates and normalises one request; a `MicroBatcher`
gathers concurrent ones (no wait when idle, bounded size and added latency); the pipeline
(`server.pipeline.runner.Pipeline`) runs its steps once per batch: hydrate -> candidates (ANN, graph,
popular) -> filter -> rank -> select; the runner writes each answer's coverage. A request whose deadline
passes while its batch is still running is answered at once from the popular list (degraded
"deadline"), so one slow batch never holds a request past its deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from server import metrics, requests, tracing, validation
from server.backends.base import ItemGraph, ProfileStore
from server.batching import MicroBatcher
from server.candidates.ann import AnnSource
from server.candidates.base import CandidateSource
from server.candidates.exact import ExactFilteredSearch
from server.candidates.graph import GraphSource
from server.candidates.popular import PopularSource
from server.catalog.item_store import ItemStore
from server.catalog.popularity_sync import PopularitySync
from server.config import Config
from server.domain import (
    Coverage,
    Interaction,
    Recommendation,
    RecommendQuery,
    Retrieval,
    ScoreComponents,
    ScoredItem,
    SimilarQuery,
    Source,
)
from server.errors import RecdError, invalid
from server.pipeline.runner import Answer, Pipeline, Step
from server.pipeline.stages import Batch, Hydrated, Request
from server.pipeline.steps.candidates import GatherCandidates
from server.pipeline.steps.filter import FilterCandidates
from server.pipeline.steps.hydrate import HydrateSeedItems, HydrateUsers
from server.pipeline.steps.rank import RankCandidates
from server.pipeline.steps.select import SelectItems
from server.ranking.model import RankingModel
from server.ranking.service import RankService
from server.routing.router import ShardRouter
from server.users import UserStates
from server.validation import Limits

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Similar:
    items: list[ScoredItem]
    coverage: Coverage
    retrieval: Retrieval = Retrieval.UNSPECIFIED
    model_version: str = ""


class Recommender:
    def __init__(
        self,
        config: Config,
        router: ShardRouter,
        profiles: ProfileStore,
        graph: ItemGraph,
        items: ItemStore,
        users: UserStates,
        rank_service: RankService,
        popularity_sync: PopularitySync,
    ) -> None:
        self.config = config
        # Every loaded model version; the default one ranks unless a request is given another.
        self.models = rank_service.models
        model = self.models.default  # for what is set once here (the select step's fallback weights)
        self._profiles = profiles
        self._items = items
        self._users = users
        self._popularity_sync = popularity_sync
        self.limits = Limits.of(config)
        pc = config.pipeline
        c = pc.candidates
        # Selective filters are scored exactly, on the GPU ranker's table where it runs (zero side
        # features: a positive similarity weight keeps the similarity order).
        primary = rank_service.primary
        on_gpu = primary.name == "gpu" and model.similarity_weight > 0
        self.exact = exact = ExactFilteredSearch(items, c.exact_filter_max_items, primary if on_gpu else None)
        sources: dict[str, CandidateSource] = {
            "ann": AnnSource(
                router,
                items,
                c.ann_k,
                config.shards.index.ef_search,
                router.per_shard_k(c.ann_k, c.shard_k_factor, c.shard_k),
                exact,
            ),
            "graph": GraphSource(
                graph, items, c.graph_seeds, c.graph_hops, c.graph_limit_per_hop, c.graph_min_score
            ),
            "popular": PopularSource(
                items,
                k_cold=c.popular_k,
                k_warm=max(10, c.popular_k // 4),
                list_name=config.popularity.popular_list,
            ),
        }

        def build(name: str, step_names: Sequence[str], source_names: Sequence[str]) -> Pipeline:
            unknown = [s for s in source_names if s not in sources]
            if unknown:
                raise ValueError(
                    f"pipeline.{name}_sources: unknown sources {unknown}; known: {list(sources)}"
                )
            steps: dict[str, Step] = {  # type: ignore[type-arg]
                "hydrate_user": HydrateUsers(users, config.dim),
                "hydrate_item": HydrateSeedItems(items),
                "candidates": GatherCandidates([sources[s] for s in source_names], pc.steps, name),
                "filter": FilterCandidates(items, popular_as_fallback=c.popular_for_warm_users == "fallback"),
                "rank": RankCandidates(rank_service, items, pc.mmr_pool),
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

        self.recommend_pipeline = build("recommend", pc.recommend_steps, pc.recommend_sources)
        self.similar_pipeline = build("similar", pc.similar_steps, pc.similar_sources)
        b = pc.batch
        # Requests whose batch is running -> (what it has found so far, the request's index in it).
        self._running: dict[int, tuple[_Progress, int]] = {}
        # While tracing is on, requests waiting for their batch -> their RPC's span: the batch runs in
        # a task of its own, so the spans of its members must be handed over (server.tracing.spans).
        self._request_spans: dict[int, tracing.Span] = {}
        self._batchers = {
            pipeline.name: MicroBatcher(
                self._runner(pipeline), max_batch=b.max_batch, max_wait_s=b.max_wait_ms / 1000.0,
                max_in_flight=b.in_flight,
            )
            for pipeline in (self.recommend_pipeline, self.similar_pipeline)
        }  # fmt: skip

    def _runner(self, pipeline: Pipeline) -> Callable[[list[Request]], Awaitable[list[Answer | RecdError]]]:
        async def run(members: list[Request]) -> list[Answer | RecdError]:
            metrics.REQUEST_BATCH.labels(pipeline.name).observe(len(members))
            progress = _Progress()
            for i, r in enumerate(members):
                self._running[id(r)] = (progress, i)
            try:
                if not tracing.enabled():
                    return await pipeline.run(Batch(tuple(members)), progress.see)
                spans = [self._request_spans.get(id(r)) for r in members]
                with tracing.batch_span(f"{pipeline.name} batch", spans, {"recd.pipeline": pipeline.name}):
                    return await pipeline.run(Batch(tuple(members)), progress.see)
            finally:
                for r in members:
                    self._running.pop(id(r), None)

        return run

    # --- reads ----------------------------------------------------------------------------------------
    def _deadline(self, caller_deadline: float | None) -> float:
        budget = time.monotonic() + self.config.pipeline.budget_ms / 1000.0
        return budget if caller_deadline is None else min(budget, caller_deadline)

    async def _answer(self, pipeline: str, request: Request) -> Answer:
        traced = tracing.enabled()
        if traced:
            self._request_spans[id(request)] = tracing.current_span()
        try:
            async with asyncio.timeout_at(_loop_time(request.deadline)):
                result = await self._batchers[pipeline].submit(request, request.deadline)
        except TimeoutError:
            metrics.DEADLINE_ANSWERS.labels(pipeline).inc()
            return self._popular_answer(request)
        finally:
            if traced:
                del self._request_spans[id(request)]
        if isinstance(result, RecdError):
            raise result
        return result

    def _popular_answer(self, request: Request) -> Answer:
        """What is always ready: the popular list minus everything the request must not get. Its seen
        set is known once its batch is hydrated; before that nothing can be served safely, so the
        answer is empty (and says why)."""
        coverage = Coverage()
        coverage.degrade("deadline")
        metrics.DEGRADED.labels("deadline").inc()
        progress, index = self._running.get(id(request), (_Progress(), 0))
        hydrated = progress.hydrated
        if request.seed_item_id is not None or hydrated is None:
            return Answer((), coverage)
        rejected = hydrated.rejected.get(index)
        if rejected is not None:
            raise rejected
        rows = self._items.popular(request.k, request.filter or None, None, hydrated.excluded.row(index))
        popularity = self._items.popularity_feature(rows)
        w = self.model.side_weights[1]
        items = tuple(
            ScoredItem(
                self._items.item_id(int(row)),
                float(p) * w,
                (Source.POPULAR,),
                ScoreComponents(popularity=float(p) * w),
            )
            for row, p in zip(rows.tolist(), popularity.tolist(), strict=True)
        )
        return Answer(items, coverage)

    async def recommend(self, query: RecommendQuery, caller_deadline: float | None = None) -> Recommendation:
        request = requests.recommend_request(query, self.limits, self._deadline(caller_deadline))
        answer = await self._answer("recommend", request)
        # The version that ranked this answer: during a hot reload, two answers may differ.
        version = answer.model_version or self.model.version
        return Recommendation(
            items=list(answer.items),
            coverage=answer.coverage,
            cache_key=self.cache_key(query, version),
            cache_ttl_seconds=self.config.response.cache_ttl_seconds,
            model_version=version,
            retrieval=answer.retrieval,
        )

    async def similar_items(self, query: SimilarQuery, caller_deadline: float | None = None) -> Similar:
        request = requests.similar_request(query, self.limits, self._deadline(caller_deadline))
        answer = await self._answer("similar", request)
        version = answer.model_version or self.model.version
        return Similar(list(answer.items), answer.coverage, answer.retrieval, version)

    @property
    def model(self) -> RankingModel:
        """The default model version, serving every request that names none."""
        return self.models.default

    def cache_key(self, query: RecommendQuery, model_version: str | None = None) -> str:
        version = model_version or self.model.version
        return f"rec:v2:{version}:{query.user_id}:{requests.digest(requests.canonical(query))}"

    # --- writes ---------------------------------------------------------------------------------------
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
        await self._profiles.append_interactions(normalised)
        self._popularity_sync.poke()  # this frontend's counts reflect the write promptly
        await self._users.invalidate(x.user_id for x in normalised)
        return len(normalised)


class _Progress:
    """What a running batch has found so far, for requests answered before it finishes."""

    def __init__(self) -> None:
        self.hydrated: Hydrated | None = None

    def see(self, stage: object) -> None:
        if isinstance(stage, Hydrated):
            self.hydrated = stage


def _loop_time(monotonic_instant: float) -> float:
    """A time.monotonic() instant on the running loop's clock (the same clock, unless a loop has its own)."""
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic_instant - time.monotonic())

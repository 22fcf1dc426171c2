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
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from server import metrics, requests, tracing, validation
from server.backends.base import ItemGraph, ProfileStore
from server.batching import MicroBatcher
from server.candidates.ann import AnnSource
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
from server.errors import RecdError, invalid, not_found
from server.experiments.assignment import OUTSIDE, Arm, Assigner
from server.experiments.attribution import Attributor
from server.experiments.definitions import config_for
from server.experiments.exposures import ExposureLog
from server.experiments.fatigue import Fatigue
from server.experiments.outcomes import ExperimentOutcomes, summarise
from server.experiments.registry import ExperimentRegistry
from server.pipeline.assembly import Pipelines, ann_params, assemble, shared_parts
from server.pipeline.runner import Answer, Pipeline
from server.pipeline.stages import AnnParams, Batch, Hydrated, Request
from server.pipeline.steps.hydrate import HydrateUsers
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
        # Every loaded model version; the default one ranks unless a variant names another.
        self.models = rank_service.models
        self._profiles = profiles
        self._items = items
        self._users = users
        self._popularity_sync = popularity_sync
        self.limits = Limits.of(config)
        # Experiments (server/experiments): who is served by which variant, and the exposure log that
        # attributes what users do next to the variant that served them.
        self.experiments = ExperimentRegistry(config, self.models.versions)
        self.exposures = ExposureLog(profiles, items, config.exposures)
        self.attribution = Attributor(
            profiles,
            self.exposures,
            config.experiments,
            config.exposures,
            config.profiles.write_timeout_ms / 1000.0,
        )
        fatigue = (
            Fatigue(self.exposures, profiles, config.exposures) if config.exposures.fatigue_after else None
        )
        self._parts = shared_parts(
            config, router, graph, items, users, rank_service, HydrateUsers(users, config.dim, fatigue)
        )
        # Pipelines by the parameters they run with: the default set, and one per distinct set of
        # overrides of the experiment variants serving now (built on first use).
        self._sets: dict[str, _PipelineSet] = {}
        self._sets_for: Assigner | None = None
        self._ann_of_arm: dict[str, AnnParams] = {}
        self._default = self._set(OUTSIDE)
        # Requests whose batch is running -> (what it has found so far, the request's index in it).
        self._running: dict[int, tuple[_Progress, int]] = {}
        # While tracing is on, requests waiting for their batch -> their RPC's span: the batch runs in
        # a task of its own, so the spans of its members must be handed over (server.tracing.spans).
        self._request_spans: dict[int, tracing.Span] = {}

    @property
    def recommend_pipeline(self) -> Pipeline:
        return self._default.pipelines.recommend

    @property
    def similar_pipeline(self) -> Pipeline:
        return self._default.pipelines.similar

    @property
    def ann(self) -> AnnSource:
        """The default pipelines' ANN source (its exact-filter threshold is what `recd bench filters`
        moves)."""
        return self._default.pipelines.ann

    def _set(self, arm: Arm) -> _PipelineSet:
        key = arm.pipeline_key
        found = self._sets.get(key)
        if found is None:
            config = config_for(self.config, arm.pipeline_overrides, f"experiment arm {arm.tag or 'default'}")
            pipelines = assemble(config, self._parts)
            b = self.config.pipeline.batch
            batchers = {
                p.name: MicroBatcher(
                    self._runner(p), max_batch=b.max_batch, max_wait_s=b.max_wait_ms / 1000.0,
                    max_in_flight=b.in_flight,
                )
                for p in (pipelines.recommend, pipelines.similar)
            }  # fmt: skip
            found = self._sets[key] = _PipelineSet(pipelines, batchers)
        return found

    def _set_serving(self, arm: Arm, assigner: Assigner) -> _PipelineSet:
        if assigner is not self._sets_for:
            # The experiments changed: the sets of variants no longer served go (a batch running in
            # one keeps its own references to the end).
            self._sets_for = assigner
            default_key = OUTSIDE.pipeline_key
            self._sets = {default_key: self._sets[default_key]}
            self._ann_of_arm = {}
        return self._set(arm)

    def _ann_params(self, arm: Arm) -> AnnParams:
        """The ANN source's parameters with the arm's retrieval overrides, made once per arm."""
        found = self._ann_of_arm.get(arm.tag)
        if found is None:
            config = config_for(self.config, arm.ann_overrides, f"experiment arm {arm.tag}")
            found = ann_params(config, self._parts.router)
            self._ann_of_arm[arm.tag] = found
        return found

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

    async def _answer(self, pipelines: _PipelineSet, pipeline: str, request: Request) -> Answer:
        traced = tracing.enabled()
        if traced:
            self._request_spans[id(request)] = tracing.current_span()
        try:
            async with asyncio.timeout_at(_loop_time(request.deadline)):
                result = await pipelines.batchers[pipeline].submit(request, request.deadline)
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
        started = time.perf_counter()
        request = requests.recommend_request(query, self.limits, self._deadline(caller_deadline))
        assigner = self.experiments.current()
        arm = assigner.assign(query.user_id) if assigner.experiments else OUTSIDE
        pipelines = self._set_serving(arm, assigner)
        if arm.overrides:
            request = arm.applied_to(request)
            if arm.ann_overrides:
                request = dataclasses.replace(request, ann=self._ann_params(arm))
        answer = await self._answer(pipelines, "recommend", request)
        # The version that ranked this answer: during a hot reload, two answers may differ.
        version = answer.model_version or self.model.version
        if arm.pairs or self.exposures.write_back:
            ids = [item.item_id for item in answer.items]
            self.exposures.log(query.user_id, ids, arm, time.perf_counter() - started)
        if arm.pairs and tracing.enabled():
            tracing.current_span().set_attribute("recd.experiments", arm.tag)
        return Recommendation(
            items=list(answer.items),
            coverage=answer.coverage,
            cache_key=self.cache_key(query, version, arm.tag),
            cache_ttl_seconds=self.config.response.cache_ttl_seconds,
            model_version=version,
            retrieval=answer.retrieval,
            experiments=arm.pairs,
        )

    async def similar_items(self, query: SimilarQuery, caller_deadline: float | None = None) -> Similar:
        request = requests.similar_request(query, self.limits, self._deadline(caller_deadline))
        answer = await self._answer(self._default, "similar", request)
        version = answer.model_version or self.model.version
        return Similar(list(answer.items), answer.coverage, answer.retrieval, version)

    @property
    def model(self) -> RankingModel:
        """The default model version, serving every request that names none."""
        return self.models.default

    def cache_key(self, query: RecommendQuery, model_version: str | None = None, arm: str = "") -> str:
        """Where the answer may be cached: the variants that served it are part of it, so two variants
        never share an answer."""
        version = model_version or self.model.version
        return f"rec:v3:{version}:{query.user_id}:{requests.digest([requests.canonical(query), arm])}"

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
        if self.experiments.enabled:
            self.attribution.add(normalised)  # off the write path: it is recorded already
        return len(normalised)

    async def experiment_outcomes(self, name: str, since_ms: int) -> ExperimentOutcomes:
        """The per-variant outcomes of experiment `name` since `since_ms` (NOT_FOUND if no experiment of
        that name is defined now), from the exposure log every frontend writes to."""
        experiment = self.experiments.current().experiment(name)
        if experiment is None:
            known = [e.name for e in self.experiments.current().experiments]
            raise not_found(f"no experiment {name!r} is defined; defined: {known}")
        # This frontend's answers and attributions still queued, first (others' within their interval).
        await self.exposures.flush()
        await self.attribution.flush()
        exposures = await self._profiles.scan_exposures(since_ms)
        outcomes = await self._profiles.scan_outcomes(since_ms)
        actions = self.config.experiments.outcome_actions
        return summarise(experiment, exposures, outcomes, actions, since_ms, len(self._items))

    async def forget(self, user_ids: Sequence[str]) -> None:
        """Before an erasure: nothing of these users still queued here reaches the store after it."""
        await self.attribution.forget(user_ids)
        await self.exposures.forget(user_ids)

    async def close(self) -> None:
        """Attributes and writes what is still queued (attribution first: it reads the exposures)."""
        await self.attribution.close()
        await self.exposures.close()


@dataclass(frozen=True, slots=True)
class _PipelineSet:
    pipelines: Pipelines
    batchers: dict[str, MicroBatcher[Request, Answer | RecdError]]


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

"""The runner: budgets and fail-open/closed policies from config, not from the steps; the step chain's
stage types checked at construction; and `Pipeline.answers`, the one place each request's coverage and
degraded reasons are written."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pytest

from server import metrics
from server.backends.memory_cache import InMemoryCache
from server.backends.memory_profiles import InMemoryProfileStore
from server.config import PipelineConfig, StepConfig
from server.domain import Retrieval, ScoreComponents, ScoredItem, Source
from server.errors import ErrorKind, RecdError, invalid, not_found
from server.pipeline.runner import Answer, Pipeline, Step
from server.pipeline.stages import (
    Batch,
    Candidates,
    Filtered,
    Hydrated,
    Ragged,
    Ranked,
    Request,
    Selected,
    ShardCoverage,
)
from server.pipeline.steps.candidates import GatherCandidates
from server.pipeline.steps.filter import FilterCandidates
from server.pipeline.steps.hydrate import HydrateSeedItems, HydrateUsers
from server.pipeline.steps.rank import RankCandidates
from server.pipeline.steps.select import SelectItems
from server.ranking.cpu import CpuRanker
from server.ranking.model import RankingModel
from server.ranking.service import RankService
from server.tests.pipeline import stagekit
from server.tests.pipeline.stagekit import hits, request
from server.users import UserStates

DIM = 2
SHARDS = 8


# --- fake steps over the real stage types ------------------------------------------------------------
def to_hydrated(batch: Batch) -> Hydrated:
    return stagekit.hydrated(batch.requests, DIM)


def no_candidates(hydrated: Hydrated) -> Candidates:
    return Candidates(hydrated, (), (), {})


def to_filtered(c: Candidates) -> Filtered:
    n = len(c.batch)
    return Filtered(c, Ragged.empty(n, np.int64), np.empty(0, np.uint8), np.empty(0, np.float32))


def to_ranked(f: Filtered) -> Ranked:
    n = len(f.hydrated.batch)
    empty = np.empty(0, np.float32)
    return Ranked(
        f,
        Ragged.empty(n, np.int64),
        np.empty(0, np.uint8),
        empty,
        empty,
        np.empty((0, 3), np.float32),
        "fake",
    )


def to_selected(r: Ranked) -> Selected:
    n = len(r.filtered.hydrated.batch)
    return Selected(r, tuple((ScoredItem(f"item-{i}", 1.0, (), ScoreComponents()),) for i in range(n)))


class FakeStep:
    """A step with the Step protocol's attributes; `behaviour` says what its run does."""

    def __init__(
        self,
        name: str,
        reads: type,
        produces: type,
        make: Callable[[Any], Any],
        behaviour: str = "ok",
        awaits_io: bool = True,
        delay_s: float = 1.0,
    ) -> None:
        self.name = name
        self.degraded_reason = f"{name}-reason"
        self.reads = reads
        self.produces = produces
        self.awaits_io = awaits_io
        self.behaviour = behaviour
        self.delay_s = delay_s
        self._make = make
        self.ran = False
        self.finished = False
        self.fell_back = False
        self.deadline: float | None = None

    async def run(self, stage: Any, deadline: float) -> Any:
        assert isinstance(stage, self.reads)
        self.ran = True
        self.deadline = deadline
        if self.behaviour == "slow":
            await asyncio.sleep(self.delay_s)
        elif self.behaviour == "raise":
            raise RuntimeError("backend down")
        elif self.behaviour == "invalid":
            raise invalid("k must be between 1 and 1000")
        self.finished = True
        return self._make(stage)

    def fallback(self, stage: Any) -> Any:
        assert isinstance(stage, self.reads)
        self.fell_back = True
        return self._make(stage)


def chain(
    make_candidates: Callable[[Hydrated], Candidates] = no_candidates,
    make_hydrated: Callable[[Batch], Hydrated] = to_hydrated,
    **behaviours: str,
) -> dict[str, FakeStep]:
    """hydrate (I/O) -> candidates (compute) -> filter (compute) -> rank (I/O) -> select (compute)."""
    return {
        "hydrate": FakeStep("hydrate", Batch, Hydrated, make_hydrated, behaviours.get("hydrate", "ok"), True),
        "candidates": FakeStep(
            "candidates", Hydrated, Candidates, make_candidates, behaviours.get("candidates", "ok"), False
        ),
        "filter": FakeStep(
            "filter", Candidates, Filtered, to_filtered, behaviours.get("filter", "ok"), False
        ),
        "rank": FakeStep("rank", Filtered, Ranked, to_ranked, behaviours.get("rank", "ok"), True),
        "select": FakeStep("select", Ranked, Selected, to_selected, behaviours.get("select", "ok"), False),
    }


def policies(steps: Mapping[str, FakeStep], **overrides: StepConfig) -> dict[str, StepConfig]:
    out = {name: StepConfig(budget_ms=5000.0, fail_open=True) for name in steps}
    out.update(overrides)
    return out


def pipeline(steps: Mapping[str, FakeStep], reserve_s: float = 0.0, **overrides: StepConfig) -> Pipeline:
    return Pipeline("t", list(steps.values()), policies(steps, **overrides), SHARDS, reserve_s)


def batch(*requests: Request) -> Batch:
    return Batch(tuple(requests) or (request(),))


def answered(out: Sequence[Answer | RecdError]) -> list[Answer]:
    assert all(isinstance(a, Answer) for a in out), out
    return [a for a in out if isinstance(a, Answer)]


# --- policies ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("behaviour", "fail_open", "outcome"),
    [
        ("ok", True, "ok"),
        ("ok", False, "ok"),
        ("slow", True, "degraded"),
        ("raise", True, "degraded"),
        ("slow", False, ErrorKind.DEADLINE_EXCEEDED),
        ("raise", False, ErrorKind.UNAVAILABLE),
        # Bad input is never swallowed by fail-open.
        ("invalid", True, ErrorKind.INVALID_ARGUMENT),
        ("invalid", False, ErrorKind.INVALID_ARGUMENT),
    ],
)
async def test_policy_table(behaviour: str, fail_open: bool, outcome: object) -> None:
    steps = chain(hydrate=behaviour)
    p = pipeline(steps, hydrate=StepConfig(50.0, fail_open))
    started = time.monotonic()
    if isinstance(outcome, ErrorKind):
        with pytest.raises(RecdError) as err:
            await p.run(batch(request(), request()))
        assert err.value.kind == outcome
        assert not steps["candidates"].ran and not steps["select"].ran
    else:
        out = answered(await p.run(batch(request(), request())))
        assert steps["select"].finished
        assert steps["hydrate"].fell_back == (outcome == "degraded")
        for a in out:
            assert a.coverage.degraded == (["hydrate-reason"] if outcome == "degraded" else [])
    assert time.monotonic() - started < 0.9  # the slow step was cut at its 50 ms budget


@pytest.mark.parametrize("failing", ["hydrate", "candidates", "filter", "rank", "select"])
async def test_any_step_that_fails_open_hands_its_fallback_on(failing: str) -> None:
    steps = chain()
    steps[failing].behaviour = "raise"
    out = answered(await pipeline(steps).run(batch(request())))
    assert [s.name for s in steps.values() if s.fell_back] == [failing]
    assert all(s.ran for s in steps.values())
    assert out[0].coverage.degraded == [f"{failing}-reason"]


async def test_every_failed_step_adds_its_reason_once_in_step_order() -> None:
    steps = chain(hydrate="raise", rank="raise", select="raise")
    out = answered(await pipeline(steps).run(batch(request(), request())))
    for a in out:
        assert a.coverage.degraded == ["hydrate-reason", "rank-reason", "select-reason"]


# --- budgets -------------------------------------------------------------------------------------------
async def test_a_slow_io_step_is_cut_at_its_budget() -> None:
    steps = chain(rank="slow")
    started = time.monotonic()
    out = answered(await pipeline(steps, rank=StepConfig(30.0, True)).run(batch(request())))
    assert time.monotonic() - started < 0.5
    assert steps["rank"].ran and not steps["rank"].finished and steps["rank"].fell_back
    assert out[0].coverage.degraded == ["rank-reason"]


async def test_the_request_deadline_caps_every_step() -> None:
    steps = chain(hydrate="slow")
    started = time.monotonic()
    out = answered(
        await pipeline(steps, hydrate=StepConfig(10_000.0, True)).run(batch(request(deadline_s=0.05)))
    )
    assert time.monotonic() - started < 0.5
    # The deadline has passed by then: the later I/O step (rank) gets no time either.
    assert out[0].coverage.degraded == ["hydrate-reason", "rank-reason"]


@pytest.mark.parametrize(("fail_open", "outcome"), [(True, "degraded"), (False, ErrorKind.DEADLINE_EXCEEDED)])
async def test_an_io_step_with_no_time_left_does_not_run(fail_open: bool, outcome: object) -> None:
    steps = chain()
    p = pipeline(steps, hydrate=StepConfig(10.0, fail_open))
    if isinstance(outcome, ErrorKind):
        with pytest.raises(RecdError) as err:
            await p.run(batch(request(deadline_s=-1.0)))
        assert err.value.kind == outcome
    else:
        out = answered(await p.run(batch(request(deadline_s=-1.0))))
        assert out[0].coverage.degraded == ["hydrate-reason", "rank-reason"]  # both I/O steps
    assert not steps["hydrate"].ran


@pytest.mark.parametrize("deadline_s", [5.0, -1.0])
async def test_a_compute_step_over_budget_runs_to_the_end_and_is_counted(deadline_s: float) -> None:
    steps = chain(filter="slow")
    steps["filter"].delay_s = 0.08
    overruns = metrics.STEP_OVERRUNS.labels("t", "filter")
    before = overruns._value.get()
    # Fail closed: an overrun of a compute step is not a failure at all.
    p = pipeline(steps, filter=StepConfig(10.0, fail_open=False), hydrate=StepConfig(10.0, True))
    started = time.monotonic()
    out = answered(await p.run(batch(request(deadline_s=deadline_s))))
    assert time.monotonic() - started >= 0.08
    assert steps["filter"].finished and not steps["filter"].fell_back
    assert "filter-reason" not in out[0].coverage.degraded
    assert overruns._value.get() == before + 1


async def test_a_compute_step_that_raises_still_fails_open() -> None:
    steps = chain(filter="raise")
    out = answered(await pipeline(steps, filter=StepConfig(10.0, True)).run(batch(request())))
    assert steps["filter"].fell_back and out[0].coverage.degraded == ["filter-reason"]


# --- the compute reserve -------------------------------------------------------------------------------
async def test_io_steps_stop_the_compute_reserve_before_the_deadline() -> None:
    steps = chain(hydrate="slow")
    r = request(deadline_s=0.35)
    started = time.monotonic()
    out = answered(await pipeline(steps, reserve_s=0.25, hydrate=StepConfig(10_000.0, True)).run(batch(r)))
    elapsed = time.monotonic() - started
    assert elapsed < 0.3, elapsed  # cut at ~0.1 s, not at the request's 0.35 s
    assert steps["hydrate"].deadline == r.deadline - 0.25
    # The compute steps after it ran; rank (I/O) found no time left before the reserve either.
    assert steps["select"].finished and not steps["rank"].ran
    assert out[0].coverage.degraded == ["hydrate-reason", "rank-reason"]


async def test_compute_steps_still_run_inside_the_reserve() -> None:
    steps = chain()
    out = answered(await pipeline(steps, reserve_s=1.0).run(batch(request(deadline_s=0.5))))
    assert not steps["hydrate"].ran and not steps["rank"].ran  # I/O: no time left before the reserve
    assert steps["candidates"].finished and steps["filter"].finished and steps["select"].finished
    assert out[0].coverage.degraded == ["hydrate-reason", "rank-reason"]
    assert out[0].items == (ScoredItem("item-0", 1.0, (), ScoreComponents()),)


async def test_the_batch_runs_until_its_last_requests_deadline_minus_the_reserve() -> None:
    steps = chain()
    early, late = request(deadline_s=0.5), request(deadline_s=5.0)
    await pipeline(steps, reserve_s=0.1).run(batch(early, late, early))
    assert all(s.deadline == late.deadline - 0.1 for s in steps.values())


# --- the chain of stage types --------------------------------------------------------------------------
def test_a_valid_chain_is_accepted() -> None:
    steps = chain()
    p = pipeline(steps)
    assert [s.name for s in p.steps] == ["hydrate", "candidates", "filter", "rank", "select"]


@pytest.mark.parametrize(
    ("order", "message"),
    [
        (
            ["hydrate", "filter", "candidates", "rank", "select"],
            "step filter reads Candidates but the step before it produces Hydrated",
        ),
        (
            ["candidates", "hydrate", "filter", "rank", "select"],
            "step candidates reads Hydrated but the step before it produces Batch",
        ),
        (
            ["hydrate", "candidates", "filter", "select", "rank"],
            "step select reads Ranked but the step before it produces Filtered",
        ),
        (["hydrate", "candidates", "filter", "rank"], "the last step must produce Selected, not Ranked"),
        (
            ["hydrate", "candidates", "filter", "rank", "select", "rank"],
            "step rank reads Filtered but the step before it produces Selected",
        ),
        ([], "the last step must produce Selected, not Batch"),
    ],
)
def test_a_broken_chain_is_refused_at_construction(order: list[str], message: str) -> None:
    steps = chain()
    with pytest.raises(ValueError, match=message):
        Pipeline("t", [steps[n] for n in order], policies(steps), SHARDS)


def test_every_step_needs_a_policy() -> None:
    steps = chain()
    with pytest.raises(ValueError, match=r"no policy configured for steps \['rank'\]"):
        Pipeline("t", list(steps.values()), {n: StepConfig() for n in steps if n != "rank"}, SHARDS)


def real_steps() -> dict[str, Step[Any, Any]]:
    items = stagekit.make_items(np.eye(DIM, dtype=np.float32))
    users = UserStates(InMemoryProfileStore(None), InMemoryCache(1 << 20), items, 50, 86400.0, 60.0)
    model = RankingModel("t", 1.0, (0.0, 0.0, 0.0), 86400.0)
    return {
        "hydrate_user": HydrateUsers(users, DIM),
        "hydrate_item": HydrateSeedItems(items),
        "candidates": GatherCandidates([], PipelineConfig().steps, "t"),
        "filter": FilterCandidates(items),
        "rank": RankCandidates(RankService(CpuRanker(items.table, model), None), items, 10),
        "select": SelectItems(items, 1.0, (0.0, 0.0, 0.0)),
    }


@pytest.mark.parametrize("which", ["recommend", "similar"])
def test_the_configured_step_lists_chain(which: str) -> None:
    config = PipelineConfig()
    names = config.recommend_steps if which == "recommend" else config.similar_steps
    steps = real_steps()
    p = Pipeline(which, [steps[n] for n in names], config.steps, SHARDS)
    assert [s.name for s in p.steps] == names


def test_real_steps_in_the_wrong_order_are_refused() -> None:
    config = PipelineConfig()
    steps = real_steps()
    names = ["hydrate_user", "filter", "candidates", "rank", "select"]
    with pytest.raises(ValueError, match="step filter reads Candidates"):
        Pipeline("recommend", [steps[n] for n in names], config.steps, SHARDS)


# --- coverage and degraded reasons (Pipeline.answers) ------------------------------------------------
def ann_hits(n: int, total: Sequence[int], ok: Sequence[int], retrieval: Sequence[Retrieval]) -> Any:
    return dataclasses.replace(
        hits(Source.ANN, [[]] * n),
        coverage=ShardCoverage(
            np.asarray(total, np.int32), np.asarray(ok, np.int32), np.asarray(retrieval, np.uint8)
        ),
    )


H, HF, U = Retrieval.HNSW, Retrieval.HNSW_FILTERED, Retrieval.UNSPECIFIED
# Per request: (shards_total, shards_ok, degraded reasons, retrieval), or the error kind it fails with.
Expected = tuple[int, int, list[str], Retrieval] | ErrorKind


@pytest.mark.parametrize(
    ("n", "ann", "failed", "applied", "rejected", "failing_steps", "expected"),
    [
        pytest.param(
            2,
            ([8, 8], [8, 8], [H, HF]),
            [],
            {"ann": [True, True], "popular": [True, True]},
            {},
            {},
            [(8, 8, [], H), (8, 8, [], HF)],
            id="complete",
        ),
        pytest.param(
            2,
            ([8, 8], [8, 8], [H, H]),
            ["graph"],
            {"ann": [True, True], "graph": [True, False], "popular": [True, True]},
            {},
            {},
            [(8, 8, ["graph"], H), (8, 8, [], H)],
            id="a-source-failure-only-where-it-applied",
        ),
        pytest.param(
            2,
            ([8, 0], [6, 0], [H, U]),
            [],
            {"ann": [True, False], "popular": [True, True]},
            {},
            {},
            [(8, 6, ["shards"], H), (0, 0, [], U)],
            id="partial-shards",
        ),
        pytest.param(
            2,
            None,
            ["ann"],
            {"ann": [True, True], "popular": [True, True]},
            {},
            {},
            [(SHARDS, 0, ["ann", "shards"], U)] * 2,
            id="ann-failed-no-shard-contributed",
        ),
        pytest.param(
            2,
            None,
            ["ann", "graph"],
            {"ann": [True, True], "graph": [True, False], "popular": [False, True]},
            {},
            {},
            [ErrorKind.UNAVAILABLE, (SHARDS, 0, ["ann", "shards"], U)],
            id="every-applicable-source-failed-for-one-request",
        ),
        pytest.param(
            1,
            None,
            [],
            {"ann": [False], "graph": [False]},
            {},
            {},
            [(0, 0, [], U)],
            id="no-source-applied",
        ),
        pytest.param(
            3,
            ([8, 0, 8], [8, 0, 8], [H, U, H]),
            [],
            {"ann": [True, False, True]},
            {1: not_found("item 'x' is not in the catalogue")},
            {},
            [(8, 8, [], H), ErrorKind.NOT_FOUND, (8, 8, [], H)],
            id="rejected-request",
        ),
        pytest.param(
            2,
            None,
            ["ann", "graph"],
            {"ann": [True, False], "graph": [True, False]},
            {1: not_found("item 'x' is not in the catalogue")},
            {},
            [ErrorKind.UNAVAILABLE, ErrorKind.NOT_FOUND],
            id="rejected-keeps-its-own-error",
        ),
        pytest.param(
            2,
            ([8, 8], [7, 7], [H, H]),
            ["graph"],
            {"ann": [True, True], "graph": [False, True], "popular": [True, True]},
            {},
            {"rank": "raise"},
            [(8, 7, ["rank-reason", "shards"], H), (8, 7, ["rank-reason", "graph", "shards"], H)],
            id="step-reasons-then-sources-then-shards",
        ),
    ],
)
async def test_answers_write_coverage_and_reasons(
    n: int,
    ann: tuple[list[int], list[int], list[Retrieval]] | None,
    failed: list[str],
    applied: dict[str, list[bool]],
    rejected: dict[int, RecdError],
    failing_steps: dict[str, str],
    expected: list[Expected],
) -> None:
    def hydrate(b: Batch) -> Hydrated:
        return stagekit.hydrated(b.requests, DIM, rejected=rejected)

    def gather(h: Hydrated) -> Candidates:
        found = [ann_hits(n, *ann)] if ann is not None else []
        return stagekit.candidates(h, found, failed, applied)

    steps = chain(gather, hydrate, **failing_steps)
    out = await pipeline(steps).run(batch(*[request() for _ in range(n)]))
    assert len(out) == n
    for i, (got, want) in enumerate(zip(out, expected, strict=True)):
        if isinstance(want, ErrorKind):
            assert isinstance(got, RecdError) and got.kind == want, (i, got)
            if i in rejected:
                assert got is rejected[i]
        else:
            assert isinstance(got, Answer), (i, got)
            total, ok, reasons, retrieval = want
            assert (got.coverage.shards_total, got.coverage.shards_ok) == (total, ok), i
            assert got.coverage.degraded == reasons, i
            assert got.retrieval == retrieval, i
            assert got.items == (ScoredItem(f"item-{i}", 1.0, (), ScoreComponents()),)


async def test_degraded_answers_are_counted_per_reason() -> None:
    counter = metrics.DEGRADED.labels("graph")
    before = counter._value.get()

    def gather(h: Hydrated) -> Candidates:
        return stagekit.candidates(h, [], ["graph"], {"graph": [True, False, True], "popular": [True] * 3})

    await pipeline(chain(gather)).run(batch(request(), request(), request()))
    assert counter._value.get() == before + 2


async def test_a_failed_ann_source_does_not_degrade_requests_it_never_applied_to() -> None:
    """BUG (server/pipeline/runner.py, Pipeline.answers): `candidates.failed` is batch-wide, so when ANN
    fails for the warm requests of a batch, a cold-start request in the same batch (ANN never applied to
    it) is also given shards_total = shard_count, shards_ok = 0 and the "shards" reason. The previous
    per-request design only did this when ANN had applied to (and failed for) that request.
    Suggested fix: only fill in shards_total when ANN applied to request i, e.g.
    `ann = candidates.applied.get("ann"); if coverage.shards_total == 0 and "ann" in candidates.failed
    and (ann is None or ann[i]): ...`."""

    def gather(h: Hydrated) -> Candidates:
        return stagekit.candidates(h, [], ["ann"], {"ann": [True, False], "popular": [True, True]})

    warm, cold = answered(await pipeline(chain(gather)).run(batch(request(), request())))
    assert (warm.coverage.shards_total, warm.coverage.shards_ok, warm.coverage.degraded) == (
        SHARDS,
        0,
        ["ann", "shards"],
    )
    assert (cold.coverage.shards_total, cold.coverage.shards_ok, cold.coverage.degraded) == (0, 0, [])

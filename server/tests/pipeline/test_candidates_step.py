"""The candidates step: every applicable source at once over the whole batch, each under its own policy;
what failed is listed, what answered is kept."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest

from server.config import StepConfig
from server.domain import Source
from server.errors import ErrorKind, RecdError, invalid
from server.pipeline.stages import Candidates, Hydrated, SourceHits
from server.pipeline.steps.candidates import GatherCandidates
from server.tests.pipeline.stagekit import FAR, hits, hydrated, per_request, request

DIM = 2


class FakeSource:
    """A candidate source that applies to the requests `mask` names and proposes row 10 * source + i for
    request i; `behaviour` says how its fetch ends."""

    def __init__(
        self, name: str, source: Source, mask: Sequence[bool], behaviour: str = "ok", awaits_io: bool = True
    ):
        self.name = name
        self.source = source
        self.awaits_io = awaits_io
        self.mask = np.asarray(mask, np.bool_)
        self.behaviour = behaviour
        self.fetched: list[tuple[npt.NDArray[np.bool_], float]] = []
        self.finished = False

    def applies(self, h: Hydrated) -> npt.NDArray[np.bool_]:
        return self.mask.copy()

    async def fetch(self, h: Hydrated, applies: npt.NDArray[np.bool_], timeout_s: float) -> SourceHits:
        self.fetched.append((applies.copy(), timeout_s))
        if self.behaviour == "slow":
            await asyncio.sleep(0.3)
        elif self.behaviour == "raise":
            raise RuntimeError(f"{self.name} down")
        elif self.behaviour == "invalid":
            raise invalid("bad filter")
        self.finished = True
        return hits(self.source, [[10 * int(self.source) + i] if a else [] for i, a in enumerate(applies)])


POLICIES = {
    "ann": StepConfig(budget_ms=50.0, fail_open=True),
    "graph": StepConfig(budget_ms=50.0, fail_open=True),
    "popular": StepConfig(budget_ms=50.0, fail_open=True),
}


def batch3() -> Hydrated:
    return hydrated([request(), request(), request()], DIM)


def later() -> float:
    return time.monotonic() + FAR


def sources(
    ann: str = "ok", graph: str = "ok", popular: str = "ok", popular_io: bool = False
) -> list[FakeSource]:
    return [
        FakeSource("ann", Source.ANN, [True, True, False], ann),
        FakeSource("graph", Source.GRAPH, [True, False, False], graph),
        FakeSource("popular", Source.POPULAR, [True, True, True], popular, awaits_io=popular_io),
    ]


@pytest.mark.parametrize(
    ("behaviours", "failed", "answered"),
    [
        pytest.param({}, (), ["ann", "graph", "popular"], id="all-answer"),
        pytest.param({"graph": "raise"}, ("graph",), ["ann", "popular"], id="one-raises"),
        pytest.param({"ann": "slow"}, ("ann",), ["graph", "popular"], id="slow-io-source-cut"),
        pytest.param({"ann": "raise", "graph": "slow"}, ("ann", "graph"), ["popular"], id="two-fail"),
        pytest.param(
            {"ann": "raise", "graph": "raise", "popular": "raise"},
            ("ann", "graph", "popular"),
            [],
            id="all-fail",
        ),
        pytest.param(
            {"popular": "slow", "popular_io": False},
            (),
            ["ann", "graph", "popular"],
            id="slow-compute-source-kept",
        ),
    ],
)
async def test_gather_candidates(
    behaviours: dict[str, object], failed: tuple[str, ...], answered: list[str]
) -> None:
    found = sources(**behaviours)  # type: ignore[arg-type]
    h = batch3()
    started = time.monotonic()
    c = await GatherCandidates(found, POLICIES, "recommend").run(h, later())
    elapsed = time.monotonic() - started
    assert isinstance(c, Candidates) and c.hydrated is h
    assert c.failed == failed
    assert [Source(s.source).name.lower() for s in c.hits] == answered
    # The applied masks are every source's, whether it answered or not.
    assert {n: m.tolist() for n, m in c.applied.items()} == {s.name: s.mask.tolist() for s in found}
    for s in found:
        assert len(s.fetched) == 1
        np.testing.assert_array_equal(s.fetched[0][0], s.mask)
    for h_ in c.hits:
        mask = c.applied[Source(h_.source).name.lower()]
        assert per_request(h_.rows) == [[10 * int(h_.source) + i] if a else [] for i, a in enumerate(mask)]
    if any(v == "slow" for k, v in behaviours.items() if k in ("ann", "graph")):
        assert elapsed < 0.25  # the slow I/O source was cut at its 50 ms budget, not waited for
    if behaviours.get("popular") == "slow":
        assert elapsed >= 0.3  # a compute source runs to its end


async def test_a_source_that_applies_to_no_request_is_not_asked() -> None:
    idle = FakeSource("graph", Source.GRAPH, [False, False, False])
    busy = FakeSource("popular", Source.POPULAR, [True, True, True], awaits_io=False)
    c = await GatherCandidates([idle, busy], POLICIES, "recommend").run(batch3(), later())
    assert idle.fetched == []
    assert c.failed == () and [h.source for h in c.hits] == [Source.POPULAR]
    assert c.applied["graph"].tolist() == [False, False, False]


async def test_each_source_gets_its_budget_capped_by_the_deadline() -> None:
    found = sources()
    generous = {name: StepConfig(budget_ms=10_000.0, fail_open=True) for name in POLICIES}
    c = await GatherCandidates(found, generous, "recommend").run(batch3(), time.monotonic() + 0.5)
    assert c.failed == ()
    for s in found:
        assert 0.0 < s.fetched[0][1] <= 0.5  # min(10 s budget, time to the deadline)
    roomy = sources()
    await GatherCandidates(roomy, POLICIES, "recommend").run(batch3(), later())
    assert all(s.fetched[0][1] == pytest.approx(0.05) for s in roomy)


async def test_with_no_time_left_only_compute_sources_run() -> None:
    found = sources()
    c = await GatherCandidates(found, POLICIES, "recommend").run(batch3(), time.monotonic() - 1.0)
    assert c.failed == ("ann", "graph")
    assert [h.source for h in c.hits] == [Source.POPULAR]  # the popular floor is always there
    assert found[0].fetched == [] and found[1].fetched == []


@pytest.mark.parametrize(
    ("behaviour", "kind"), [("raise", ErrorKind.UNAVAILABLE), ("slow", ErrorKind.DEADLINE_EXCEEDED)]
)
async def test_a_fail_closed_source_fails_the_batch(behaviour: str, kind: ErrorKind) -> None:
    policies = {**POLICIES, "graph": StepConfig(budget_ms=50.0, fail_open=False)}
    with pytest.raises(RecdError) as err:
        await GatherCandidates(sources(graph=behaviour), policies, "recommend").run(batch3(), later())
    assert err.value.kind is kind


async def test_bad_input_from_a_source_is_never_swallowed() -> None:
    with pytest.raises(RecdError) as err:
        await GatherCandidates(sources(ann="invalid"), POLICIES, "recommend").run(batch3(), later())
    assert err.value.kind is ErrorKind.INVALID_ARGUMENT


def test_every_source_needs_a_policy() -> None:
    with pytest.raises(ValueError, match=r"pipeline similar: no policy configured for sources \['graph'\]"):
        GatherCandidates(sources(), {"ann": StepConfig(), "popular": StepConfig()}, "similar")


def test_fallback_lists_every_source_as_failed() -> None:
    h = batch3()
    c = GatherCandidates(sources(), POLICIES, "recommend").fallback(h)
    assert c.hydrated is h and c.hits == () and c.applied == {}
    assert c.failed == ("ann", "graph", "popular")


def test_step_declaration() -> None:
    step = GatherCandidates([], {}, "recommend")
    assert (step.name, step.degraded_reason, step.reads, step.produces) == (
        "candidates",
        "candidates",
        Hydrated,
        Candidates,
    )
    # Each source runs under its own budget: the runner must not cut the whole step off.
    assert step.awaits_io is False

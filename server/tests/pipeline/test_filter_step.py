"""The filter step: one deduplicated candidate set per request, without deleted, seen, excluded or
filtered-out items, nor (for warm users who have enough personalised candidates) popular-only ones;
the requests of one batch never leak into each other."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from server.catalog.item_store import ItemStore
from server.domain import Source
from server.pipeline.stages import Candidates, Filtered, Request
from server.pipeline.steps.filter import FilterCandidates
from server.tests.pipeline.stagekit import (
    FAR,
    candidates,
    hits,
    hydrated,
    make_items,
    per_request,
    request,
    seen,
)

DIM = 2
ANN, GRAPH, POPULAR = (1 << int(s) for s in (Source.ANN, Source.GRAPH, Source.POPULAR))


@pytest.fixture
def items() -> ItemStore:
    # i0..i7: odd rows "en", even rows "de".
    return make_items(np.ones((8, DIM), np.float32), [{"lang": "en" if n % 2 else "de"} for n in range(8)])


def later() -> float:
    return time.monotonic() + FAR


def one_request(fields: dict[str, Any]) -> Candidates:
    """One request: ANN proposes 0, 1, 2; graph 2, 3; popular 3, 6, 7."""
    fields = dict(fields)
    warm = fields.pop("warm", True)
    seen_set = fields.pop("seen", seen())
    r = request(**fields)
    h = hydrated([r], DIM, vectors=[[1.0, 0.0] if warm else None], seen_sets=[seen_set])
    return candidates(
        h, [hits(Source.ANN, [[0, 1, 2]]), hits(Source.GRAPH, [[2, 3]]), hits(Source.POPULAR, [[3, 6, 7]])]
    )


@pytest.mark.parametrize(
    ("fallback", "fields", "expected"),
    [
        pytest.param(False, {"k": 2}, [0, 1, 2, 3, 6, 7], id="popular-like-any-other"),
        pytest.param(True, {"k": 2}, [0, 1, 2, 3], id="warm-enough-personal"),  # 3 stays: graph proposed it
        pytest.param(True, {"k": 4}, [0, 1, 2, 3], id="warm-exactly-k-personal"),
        pytest.param(True, {"k": 5}, [0, 1, 2, 3, 6, 7], id="warm-too-few-personal"),
        pytest.param(True, {"k": 2, "warm": False}, [0, 1, 2, 3, 6, 7], id="cold-user"),
        pytest.param(True, {"k": 2, "exclude_item_ids": frozenset({"i0", "i6"})}, [1, 2, 3], id="exclusions"),
        pytest.param(True, {"k": 2, "seen": seen("i1", "i2")}, [0, 3], id="seen"),
        pytest.param(
            True, {"k": 2, "seen": seen("i1", "i2"), "include_seen": True}, [0, 1, 2, 3], id="include_seen"
        ),
        pytest.param(False, {"k": 2, "seen": seen("i3", "i7")}, [0, 1, 2, 6], id="seen-from-every-source"),
        pytest.param(True, {"k": 2, "filter": {"lang": frozenset({"en"})}}, [1, 3], id="filter"),
        pytest.param(
            True, {"k": 3, "filter": {"lang": frozenset({"en"})}}, [1, 3, 7], id="filter-too-few-personal"
        ),
        pytest.param(False, {"k": 2, "filter": {"lang": frozenset({"fr"})}}, [], id="filter-no-match"),
        pytest.param(
            False, {"k": 2, "filter": {"colour": frozenset({"red"})}}, [], id="filter-unknown-attribute"
        ),
        # Exclusions count before the k rule: i0 and i1 excluded leave 2 personal candidates (2, 3).
        pytest.param(
            True,
            {"k": 3, "exclude_item_ids": frozenset({"i0", "i1"})},
            [2, 3, 6, 7],
            id="exclusions-before-k-rule",
        ),
    ],
)
async def test_filter_step(
    items: ItemStore, fallback: bool, fields: dict[str, Any], expected: list[int]
) -> None:
    c = one_request(fields)
    f = await FilterCandidates(items, popular_as_fallback=fallback).run(c, later())
    assert isinstance(f, Filtered) and f.candidates is c
    assert per_request(f.rows) == [expected]
    assert len(f.bits) == len(f.graph) == len(f.rows.values)


async def test_sources_are_merged_per_item(items: ItemStore) -> None:
    r = request(k=2)
    c = candidates(
        hydrated([r], DIM, vectors=[[1.0, 0.0]]),
        [
            hits(Source.ANN, [[2, 0, 1]], [[0.9, 0.8, 0.7]]),  # ANN scores are not graph scores
            hits(Source.GRAPH, [[3, 2, 3]], [[0.2, 0.4, 0.7]]),  # i3 twice: the best score is kept
            hits(Source.POPULAR, [[3, 6]], [[0.99, 0.98]]),
            hits(Source.GRAPH, [[3]], [[0.5]]),
        ],
    )
    f = await FilterCandidates(items).run(c, later())
    rows = f.rows.values.tolist()
    assert rows == [0, 1, 2, 3, 6]  # unique, ascending
    bits = dict(zip(rows, f.bits.tolist(), strict=True))
    assert bits == {0: ANN, 1: ANN, 2: ANN | GRAPH, 3: GRAPH | POPULAR, 6: POPULAR}
    graph = dict(zip(rows, f.graph.tolist(), strict=True))
    assert graph == pytest.approx({0: 0.0, 1: 0.0, 2: 0.4, 3: 0.7, 6: 0.0})


async def test_deleted_items_are_dropped(items: ItemStore) -> None:
    items.delete(["i1", "i3"])
    f = await FilterCandidates(items).run(one_request({"k": 2}), later())
    assert per_request(f.rows) == [[0, 2, 6, 7]]


async def test_requests_of_one_batch_do_not_leak_into_each_other(items: ItemStore) -> None:
    requests: list[Request] = [
        # A warm user with enough personal candidates, who has seen i2 and excludes i6.
        request(k=2, exclude_item_ids=frozenset({"i6"})),
        # The same items proposed to a cold user with a filter.
        request(k=2, filter={"lang": frozenset({"de"})}),
        # Nothing proposed at all.
        request(k=2),
        # A warm user with too few personal candidates, including what request 0 excluded.
        request(k=3, include_seen=True),
    ]
    h = hydrated(
        requests,
        DIM,
        vectors=[[1.0, 0.0], None, [1.0, 0.0], [1.0, 0.0]],
        seen_sets=[seen("i2"), seen("i2"), seen(), seen("i2")],
    )
    c = candidates(
        h,
        [
            hits(Source.ANN, [[0, 1, 2], [], [], [2]]),
            hits(Source.GRAPH, [[3], [], [], [6]], [[0.3], [], [], [0.6]]),
            hits(Source.POPULAR, [[4, 6, 7], [0, 2, 4, 5, 6], [], [4, 6, 7]]),
        ],
    )
    f = await FilterCandidates(items, popular_as_fallback=True).run(c, later())
    assert per_request(f.rows) == [[0, 1, 3], [0, 4, 6], [], [2, 4, 6, 7]]
    per_bits = [f.bits[f.rows.offsets[i] : f.rows.offsets[i + 1]].tolist() for i in range(4)]
    assert per_bits == [[ANN, ANN, GRAPH], [POPULAR] * 3, [], [ANN, POPULAR, GRAPH | POPULAR, POPULAR]]
    np.testing.assert_allclose(
        f.graph, [0, 0, 0.3, 0, 0, 0, 0, 0, 0.6, 0], rtol=1e-6
    )  # per request: 3, 3, 0, 4


@pytest.mark.parametrize(
    ("ks", "expected"),
    [
        # Requests with no candidates between and around others: each one's count of personal
        # candidates is its own.
        ([1, 1, 1, 1], [[], [0, 1], [], [5]]),
        ([1, 1, 1, 2], [[], [0, 1], [], [5, 6, 7]]),
        ([1, 2, 1, 1], [[], [0, 1], [], [5]]),
        ([1, 3, 1, 1], [[], [0, 1, 2], [], [5]]),
    ],
)
async def test_the_popular_rule_with_empty_requests_in_the_batch(
    items: ItemStore, ks: list[int], expected: list[list[int]]
) -> None:
    requests = [request(k=k) for k in ks]
    h = hydrated(requests, DIM, vectors=[[1.0, 0.0]] * 4)
    c = candidates(
        h,
        [
            hits(Source.ANN, [[], [0], [], [5]]),
            hits(Source.GRAPH, [[], [1], [], []]),
            hits(Source.POPULAR, [[], [2], [], [6, 7]]),
        ],
    )
    f = await FilterCandidates(items, popular_as_fallback=True).run(c, later())
    assert per_request(f.rows) == expected


async def test_no_hits_gives_every_request_an_empty_set(items: ItemStore) -> None:
    h = hydrated([request(), request()], DIM)
    step = FilterCandidates(items)
    for f in (await step.run(candidates(h, []), later()), step.fallback(candidates(h, []))):
        assert per_request(f.rows) == [[], []]
        assert f.rows.offsets.tolist() == [0, 0, 0]
        assert len(f.bits) == len(f.graph) == 0


def test_step_declaration(items: ItemStore) -> None:
    step = FilterCandidates(items)
    assert (step.name, step.degraded_reason, step.reads, step.produces, step.awaits_io) == (
        "filter",
        "filter",
        Candidates,
        Filtered,
        False,
    )

"""The select step: each request's final k (MMR when it asks for diversity), with every item's sources and
the weighted parts of its score."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pytest

from server.catalog.item_store import ItemStore
from server.domain import Source
from server.pipeline.stages import Filtered, Ragged, Ranked, Request, Selected
from server.pipeline.steps.select import SelectItems
from server.tests.pipeline.stagekit import FAR, candidates, hydrated, make_items, request

W_SIM = 2.0
W_SIDE = (0.5, 0.25, 0.1)
A, NEAR_A, B, C = 0, 1, 2, 3  # rows: i1 is a near-duplicate of i0; i2 and i3 are orthogonal to both
ANN, GRAPH, POPULAR = (1 << int(s) for s in (Source.ANN, Source.GRAPH, Source.POPULAR))


@pytest.fixture
def items() -> ItemStore:
    near = np.array([1.0, 0.03, 0.0], np.float32)
    vectors = np.stack([[1.0, 0.0, 0.0], near / np.linalg.norm(near), [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    return make_items(vectors.astype(np.float32))


def ranked_of(
    requests: Sequence[Request],
    rows: Sequence[Sequence[int]],
    scores: Sequence[Sequence[float]],
    bits: Sequence[Sequence[int]] | None = None,
) -> Ranked:
    """Ranked candidates, best first as given; similarity and side parts derived from each row so that
    every item's parts differ."""
    ragged = Ragged.of([np.asarray(r, np.int64) for r in rows], np.int64)
    flat_rows = ragged.values.astype(np.int64)
    n = len(flat_rows)
    flat_bits = (
        np.asarray([b for per in bits for b in per], np.uint8)
        if bits is not None
        else np.full(n, ANN, np.uint8)
    )
    similarity = (0.1 + 0.2 * flat_rows).astype(np.float32)
    side = np.stack([0.01 * (flat_rows + 1), 0.02 * (flat_rows + 1), 0.03 * (flat_rows + 1)], axis=1).astype(
        np.float32
    )
    h = hydrated(requests, 3)
    filtered = Filtered(
        candidates(h, []),
        Ragged.empty(len(requests), np.int64),
        np.empty(0, np.uint8),
        np.empty(0, np.float32),
    )
    return Ranked(
        filtered,
        ragged,
        flat_bits,
        np.asarray([s for per in scores for s in per], np.float32),
        similarity,
        side,
        "cpu",
    )


@pytest.mark.parametrize(
    ("fields", "rows", "scores", "expected"),
    [
        pytest.param({"k": 2}, [C, A, B], [0.9, 0.8, 0.7], ["i3", "i0"], id="top-k"),
        pytest.param({"k": 5}, [B, NEAR_A], [0.9, 0.8], ["i2", "i1"], id="fewer-than-k"),
        pytest.param(
            {"k": 2}, [A, NEAR_A, B, C], [1.0, 0.99, 0.8, 0.7], ["i0", "i1"], id="near-duplicates-top-k"
        ),
        pytest.param(
            {"k": 2, "diversity": 0.5},
            [A, NEAR_A, B, C],
            [1.0, 0.99, 0.8, 0.7],
            ["i0", "i2"],
            id="mmr-skips-near-duplicate",
        ),
        pytest.param(
            {"k": 3, "diversity": 0.5},
            [A, NEAR_A, B, C],
            [1.0, 0.99, 0.8, 0.7],
            ["i0", "i2", "i3"],
            id="mmr-k3",
        ),
        pytest.param({"k": 2, "diversity": 0.5}, [NEAR_A], [0.4], ["i1"], id="mmr-one-candidate"),
        pytest.param({"k": 3}, [], [], [], id="empty"),
        pytest.param({"k": 3, "diversity": 0.5}, [], [], [], id="empty-mmr"),
    ],
)
async def test_select_items(
    items: ItemStore, fields: dict[str, float], rows: list[int], scores: list[float], expected: list[str]
) -> None:
    r = ranked_of([request(**fields)], [rows], [scores])  # type: ignore[arg-type]
    selected = await SelectItems(items, W_SIM, W_SIDE).run(r, time.monotonic() + FAR)
    assert isinstance(selected, Selected) and selected.ranked is r
    assert [item.item_id for item in selected.items[0]] == expected


async def test_mmr_picks_differ_from_top_k_only_with_diversity(items: ItemStore) -> None:
    rows, scores = [A, NEAR_A, B, C], [1.0, 0.99, 0.8, 0.7]
    r = ranked_of([request(k=2), request(k=2, diversity=0.5)], [rows, rows], [scores, scores])
    plain, diverse = (await SelectItems(items, W_SIM, W_SIDE).run(r, time.monotonic() + FAR)).items
    assert [i.item_id for i in plain] == ["i0", "i1"]
    assert [i.item_id for i in diverse] == ["i0", "i2"]


@pytest.mark.parametrize(
    ("bits", "sources"),
    [
        (ANN, (Source.ANN,)),
        (GRAPH, (Source.GRAPH,)),
        (POPULAR, (Source.POPULAR,)),
        (ANN | GRAPH, (Source.ANN, Source.GRAPH)),
        (GRAPH | POPULAR, (Source.GRAPH, Source.POPULAR)),
        (ANN | GRAPH | POPULAR, (Source.ANN, Source.GRAPH, Source.POPULAR)),
    ],
)
async def test_sources_come_from_the_bits(items: ItemStore, bits: int, sources: tuple[Source, ...]) -> None:
    r = ranked_of([request(k=1)], [[B]], [[0.5]], [[bits]])
    (item,) = (await SelectItems(items, W_SIM, W_SIDE).run(r, time.monotonic() + FAR)).items[0]
    assert item.sources == sources


async def test_score_and_components_are_the_weighted_parts(items: ItemStore) -> None:
    r = ranked_of(
        [request(k=3), request(k=1, diversity=0.5)],
        [[C, A, B], [NEAR_A, B]],
        [[0.9, 0.8, 0.7], [0.6, 0.5]],
        [[ANN, ANN | GRAPH, POPULAR], [GRAPH, ANN]],
    )
    selected = await SelectItems(items, W_SIM, W_SIDE).run(r, time.monotonic() + FAR)
    assert [[i.item_id for i in per] for per in selected.items] == [["i3", "i0", "i2"], ["i1"]]
    flat = [item for per in selected.items for item in per]
    for position, item in zip([0, 1, 2, 3], flat, strict=True):
        row = int(r.rows.values[position])
        assert item.score == pytest.approx(float(r.scores[position]))
        c = item.components
        assert (c.similarity, c.graph, c.popularity, c.freshness) == pytest.approx(
            (
                W_SIM * (0.1 + 0.2 * row),
                W_SIDE[0] * 0.01 * (row + 1),
                W_SIDE[1] * 0.02 * (row + 1),
                W_SIDE[2] * 0.03 * (row + 1),
            ),
            rel=1e-5,
        )
    assert [i.sources for i in flat] == [
        (Source.ANN,),
        (Source.ANN, Source.GRAPH),
        (Source.POPULAR,),
        (Source.GRAPH,),
    ]


async def test_a_batch_answers_each_request_from_its_own_slice(items: ItemStore) -> None:
    r = ranked_of(
        [request(k=1), request(k=2), request(k=2, diversity=0.5), request(k=4)],
        [[A, B], [], [A, NEAR_A, C], [C, B]],
        [[0.9, 0.1], [], [1.0, 0.99, 0.5], [0.3, 0.2]],
    )
    selected = await SelectItems(items, W_SIM, W_SIDE).run(r, time.monotonic() + FAR)
    assert [[i.item_id for i in per] for per in selected.items] == [["i0"], [], ["i0", "i3"], ["i3", "i2"]]


def test_fallback_answers_nothing(items: ItemStore) -> None:
    r = ranked_of([request(k=2), request(k=1)], [[A, B], [C]], [[0.9, 0.8], [0.7]])
    selected = SelectItems(items, W_SIM, W_SIDE).fallback(r)
    assert selected.ranked is r and selected.items == ((), ())


def test_step_declaration(items: ItemStore) -> None:
    s = SelectItems(items, W_SIM, W_SIDE)
    assert (s.name, s.degraded_reason, s.reads, s.produces, s.awaits_io) == (
        "select",
        "select",
        Ranked,
        Selected,
        False,
    )

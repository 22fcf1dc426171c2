"""The filter step: one deduplicated candidate set without seen, excluded, filtered-out or (for warm
users who have enough personalised candidates) popular-only items."""

from __future__ import annotations

import numpy as np
import pytest

from server import _core
from server.catalog.item_store import ItemStore
from server.catalog.payload import ItemMetadata
from server.domain import Source
from server.pipeline.context import RequestContext, SourceHits
from server.pipeline.steps.filter import FilterCandidates

IDS = [f"i{n}" for n in range(8)]


@pytest.fixture
def items() -> ItemStore:
    store = ItemStore(2)
    meta = [ItemMetadata({"lang": "en" if n % 2 else "de"}, 1.0, 0) for n in range(8)]
    store.upsert(IDS, _core.stable_hash64(IDS), np.ones((8, 2), np.float32), meta)
    return store


def hits(source: Source, *ids: int) -> SourceHits:
    return SourceHits(source, np.asarray(ids, np.int64), np.full(len(ids), 0.5, np.float32))


def ctx(k: int = 2, warm: bool = True, **fields: object) -> RequestContext:
    c = RequestContext(pipeline="recommend", k=k, deadline=0.0, **fields)  # type: ignore[arg-type]
    c.query_vector = np.ones(2, np.float32) if warm else None
    c.hits = [hits(Source.ANN, 0, 1, 2), hits(Source.GRAPH, 2, 3), hits(Source.POPULAR, 3, 6, 7)]
    return c


@pytest.mark.parametrize(
    ("fallback", "request_fields", "expected"),
    [
        (False, {}, [0, 1, 2, 3, 6, 7]),  # popular items are candidates like the others
        (True, {}, [0, 1, 2, 3]),  # enough personalised ones: popular-only items dropped (3 stays: graph)
        (True, {"k": 5}, [0, 1, 2, 3, 6, 7]),  # too few personalised ones: popular fills up
        (True, {"warm": False}, [0, 1, 2, 3, 6, 7]),  # a cold user: popular is the answer
        (True, {"exclude_item_ids": frozenset({"i0", "i6"})}, [1, 2, 3]),
        (True, {"seen_labels": np.sort(_core.stable_hash64(["i1", "i2"]))}, [0, 3]),
        (
            True,
            {"seen_labels": np.sort(_core.stable_hash64(["i1", "i2"])), "include_seen": True},
            [0, 1, 2, 3],
        ),
        (True, {"filter": {"lang": frozenset({"en"})}}, [1, 3]),
        (True, {"filter": {"lang": frozenset({"en"})}, "k": 3}, [1, 3, 7]),
    ],
)
async def test_filter_step(
    items: ItemStore, fallback: bool, request_fields: dict[str, object], expected: list[int]
) -> None:
    fields = dict(request_fields)
    c = ctx(k=int(fields.pop("k", 2)), warm=bool(fields.pop("warm", True)), **fields)
    await FilterCandidates(items, popular_as_fallback=fallback).run(c)
    assert c.candidates.rows.tolist() == expected


async def test_sources_are_merged_per_item(items: ItemStore) -> None:
    c = ctx()
    await FilterCandidates(items).run(c)
    bits = dict(zip(c.candidates.rows.tolist(), c.candidates.source_bits.tolist(), strict=True))
    assert bits[2] == (1 << Source.ANN) | (1 << Source.GRAPH)
    assert bits[3] == (1 << Source.GRAPH) | (1 << Source.POPULAR)
    graph = dict(zip(c.candidates.rows.tolist(), c.candidates.graph_scores.tolist(), strict=True))
    assert graph[3] == 0.5 and graph[0] == 0.0

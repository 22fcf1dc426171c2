"""Filters inside retrieval, end to end over gRPC: a narrow filter is answered from personalised (ANN)
candidates that all pass it, whichever retrieval path runs, and the response names the path."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest

from server.client import RecdClient
from server.config import Config
from server.domain import Interaction, ItemRecord
from server.gen.recd.v1 import recommender_pb2 as rpb
from server.tests.conftest import ToyCatalogue, make_catalogue, make_config

N_ITEMS = 5000
ANN = 1


def with_selectivity(toy: ToyCatalogue) -> list[str]:
    """A "sel" attribute: p1 on 1% of the items, p10 on 10%, spread over every cluster."""
    order = np.random.default_rng(11).permutation(len(toy.item_ids))
    sel = np.full(len(toy.item_ids), "rest", dtype=object)
    sel[order[: len(order) // 100]] = "p1"
    sel[order[len(order) // 100 : len(order) // 100 + len(order) // 10]] = "p10"
    return [str(v) for v in sel]


@pytest.fixture(scope="module")
def toy_sel() -> tuple[ToyCatalogue, list[str]]:
    toy = make_catalogue(N_ITEMS)
    return toy, with_selectivity(toy)


@pytest.fixture(params=["exact", "hnsw"])
def config(request: pytest.FixtureRequest) -> Config:
    config = make_config()
    # "exact": p1 (50 items) and p10 (500) are scored exactly, a filter passing 99% is not; "hnsw": never
    # score exactly, so the shards' filtered search answers every filter.
    config.pipeline.candidates.exact_filter_max_items = 1000 if request.param == "exact" else 0
    return config


@pytest.fixture
async def client(server_address: str, toy_sel: tuple[ToyCatalogue, list[str]]) -> AsyncIterator[RecdClient]:
    toy, sel = toy_sel
    c = RecdClient(server_address, timeout_s=20.0)
    records = [
        ItemRecord(item_id, toy.vectors[i], {**toy.attributes[i], "sel": sel[i]}, float(toy.popularity[i]), 0)
        for i, item_id in enumerate(toy.item_ids)
    ]
    for start in range(0, len(records), 1000):
        await c.upsert_items(records[start : start + 1000])
    yield c
    await c.close()


def nearest_passing(
    toy: ToyCatalogue, passing: np.ndarray, vector: np.ndarray, n: int, seen: set[int]
) -> set[int]:
    rows = [r for r in np.flatnonzero(passing).tolist() if r not in seen]
    order = np.argsort(-(toy.vectors[rows] @ vector))[:n]
    return {rows[i] for i in order}


@pytest.mark.parametrize("value", ["p1", "p10"])
async def test_a_narrow_filter_is_answered_from_personalised_items(
    client: RecdClient, toy_sel: tuple[ToyCatalogue, list[str]], config: Config, value: str
) -> None:
    toy, sel = toy_sel
    passing = np.asarray(sel) == value
    history = [int(i) for i in np.flatnonzero(toy.cluster_of == 2)[:10]]
    history += [int(i) for i in np.flatnonzero(passing & (toy.cluster_of == 2))[:2]]  # seen, passing
    await client.record_interactions([Interaction("fay", toy.item_ids[i], "click", 1.0, 0) for i in history])
    response = await client.recommend("fay", k=10, filter_={"sel": [value]})
    rows = [toy.item_ids.index(item.item_id) for item in response.items]
    assert len(rows) == 10
    assert passing[rows].all()  # every item passes the filter
    assert not set(rows) & set(history)  # and none was seen
    personalised = sum(ANN in item.sources for item in response.items)
    assert personalised >= 9, [list(i.sources) for i in response.items]
    # Personalised means close to the user: most of the answer is among the nearest passing items.
    user = toy.vectors[history].mean(axis=0)
    near = nearest_passing(toy, passing, user / np.linalg.norm(user), 20, set(history))
    assert len(set(rows) & near) >= 7
    exact = config.pipeline.candidates.exact_filter_max_items > 0
    assert response.retrieval == (rpb.RETRIEVAL_EXACT_FILTERED if exact else rpb.RETRIEVAL_HNSW_FILTERED)
    assert response.coverage.shards_ok == response.coverage.shards_total == 20


async def test_the_response_names_the_path(
    client: RecdClient, toy_sel: tuple[ToyCatalogue, list[str]], config: Config
) -> None:
    toy, _ = toy_sel
    await client.record_interactions([Interaction("gus", toy.item_ids[i], "view", 1.0, 0) for i in range(5)])
    plain = await client.recommend("gus", k=5)
    assert plain.retrieval == rpb.RETRIEVAL_HNSW
    broad = await client.recommend("gus", k=5, filter_={"sel": ["rest", "p10"]})  # 99% of the items
    assert broad.retrieval == rpb.RETRIEVAL_HNSW_FILTERED
    cold = await client.recommend("someone-new", k=5)
    assert cold.retrieval == rpb.RETRIEVAL_UNSPECIFIED  # popular only: no vector to search with
    similar = await client.similar(toy.item_ids[0], k=5, filter_={"sel": ["p1"]})
    exact = config.pipeline.candidates.exact_filter_max_items > 0
    assert similar.retrieval == (rpb.RETRIEVAL_EXACT_FILTERED if exact else rpb.RETRIEVAL_HNSW_FILTERED)
    assert len(similar.items) == 5 and toy.item_ids[0] not in {i.item_id for i in similar.items}
    unfiltered = await client.similar(toy.item_ids[0], k=5)
    assert unfiltered.retrieval == rpb.RETRIEVAL_HNSW

"""Filters and exclusions through the router over replicated shards: carried per query to every node, and
through failover."""

from __future__ import annotations

import numpy as np

from server import _core
from server.tests.routing.fakes import fake_cluster, unit_vectors
from shards.payload import ItemMetadata, encode_metadata
from shards.records import NO_LABEL, RecordBatch

N_ITEMS = 2000


async def load(router) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # type: ignore[no-untyped-def]
    vectors = unit_vectors(N_ITEMS)
    ids = [f"i{i}" for i in range(N_ITEMS)]
    colour = np.random.default_rng(2).choice(
        np.array(["red", "green", "blue"]), size=N_ITEMS, p=[0.9, 0.08, 0.02]
    )
    payloads = [encode_metadata(ItemMetadata({"colour": str(c)}, 1.0, 0)) for c in colour]
    labels = _core.stable_hash64(ids)
    await router.upsert(RecordBatch(labels, ids, vectors, payloads), 30)
    return labels, vectors, colour


def rows_of(labels: np.ndarray, found: np.ndarray) -> np.ndarray:
    order = np.argsort(labels)
    return order[np.searchsorted(labels[order], found[found != NO_LABEL])]


async def test_each_query_keeps_its_filter_and_exclusions_through_failover() -> None:
    router, fakes, _, _ = fake_cluster(nodes=4, replication=2)
    labels, vectors, colour = await load(router)
    fakes["node-2"].down = True
    queries = vectors[:3]
    exclude = [np.sort(labels[np.argsort(-(vectors @ q))[:50]]) for q in queries]  # the 50 nearest
    filters = [{"colour": ["blue"]}, None, {"colour": ["green", "blue"]}]
    result = await router.search(queries, 10, 10, 50, exclude, 5.0, filters)
    assert (result.shards_ok, result.shards_total) == (20, 20) and result.calls > 4
    for i, wanted in enumerate(filters):
        rows = rows_of(labels, result.labels[i])
        assert len(rows) == 10
        assert not np.isin(result.labels[i], exclude[i]).any()
        if wanted is not None:
            assert np.isin(colour[rows], wanted["colour"]).all()
        passing = np.isin(colour, wanted["colour"]) if wanted else np.ones(N_ITEMS, bool)
        passing &= ~np.isin(labels, exclude[i])
        best = np.flatnonzero(passing)[np.argsort(-(vectors[passing] @ queries[i]))[:10]]
        assert len(set(rows.tolist()) & set(best.tolist())) >= 9

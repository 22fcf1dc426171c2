"""Two frontends over one set of shards: a write through one is served by the other, for item upserts,
item deletes (every source) and interactions, on the embedded backends and on the real ones.

Both frontends run in this process over gRPC, each with its own catalogue replica, router and rankers,
as two processes would: items reach the second one only through the shards' change feed. Embedded, they
share one profile store, graph and cache (what the worker group's state node gives its workers); real,
each has its own connections to Cassandra, Neo4j and Redis.
"""

from __future__ import annotations

import numpy as np

from server.client import RecdClient
from server.domain import Interaction
from server.tests.api.test_end_to_end import cluster_items
from server.tests.api.two_frontends import *  # noqa: F403 (the two-frontend fixtures)
from server.tests.api.two_frontends import Pair, eventually
from server.tests.conftest import ToyCatalogue


async def test_items_written_through_one_frontend_are_served_by_the_other(
    pair: Pair, toy: ToyCatalogue
) -> None:
    _, b = pair

    async def all_there() -> bool:
        _, missing = await b.get_items(toy.item_ids)
        return not missing

    await eventually(all_there)
    similar = await b.similar(toy.item_ids[0], k=5)
    assert len(similar.items) == 5
    history = cluster_items(toy, 4, 6)
    await b.record_interactions([Interaction("carol", item, "click", 1.0, 0) for item in history])
    got = [toy.item_ids.index(i.item_id) for i in (await b.recommend("carol", k=10)).items]
    assert np.mean(toy.cluster_of[got] == 4) >= 0.8  # the second frontend's ANN knows the items


async def test_a_delete_through_one_frontend_reaches_every_source_of_the_other(
    pair: Pair, toy: ToyCatalogue
) -> None:
    a, b = pair
    top = toy.item_ids[int(np.argmax(toy.popularity))]
    await eventually(lambda: _recommends(b, "newcomer", top))  # the popular source serves it
    await a.delete_items([top])

    async def gone() -> bool:
        _, missing = await b.get_items([top])
        return missing == [top]

    await eventually(gone)
    assert not await _recommends(b, "newcomer", top)  # popular
    at = toy.item_ids.index(top)
    closeness = toy.vectors @ toy.vectors[at]
    closeness[at] = -np.inf
    neighbour = toy.item_ids[int(np.argmax(closeness))]
    similar = await b.similar(neighbour, k=50)
    assert top not in {i.item_id for i in similar.items}  # ANN
    await b.record_interactions([Interaction("dave", neighbour, "click", 1.0, 0)])
    assert not await _recommends(b, "dave", top, k=50)  # ANN and graph for a warm user


async def test_an_interaction_through_one_frontend_shows_in_the_next_recommend_of_the_other(
    pair: Pair, toy: ToyCatalogue
) -> None:
    a, b = pair
    history = cluster_items(toy, 2, 4)
    await a.record_interactions([Interaction("erin", item, "click", 1.0, 0) for item in history])

    async def synced() -> bool:
        _, missing = await b.get_items(toy.item_ids)
        return not missing

    await eventually(synced)
    first = [i.item_id for i in (await b.recommend("erin", k=10)).items]  # b caches erin's state
    assert first and not set(first) & set(history)
    # erin now interacts, through a, with exactly what b just served her.
    await a.record_interactions([Interaction("erin", item, "click", 1.0, 1) for item in first])
    served = {i.item_id for i in (await b.recommend("erin", k=10)).items}
    assert not served & (set(history) | set(first))  # the next Recommend through b excludes them


async def _recommends(client: RecdClient, user: str, item: str, k: int = 20) -> bool:
    return item in {i.item_id for i in (await client.recommend(user, k=k)).items}

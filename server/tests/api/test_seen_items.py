"""Served lists never hold an item the user has seen (unless asked), however long the history, and a
write through one frontend is honoured by another that shares the profile store and the cache."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np
import pytest

from server.api.server import RecdServer
from server.catalog.item_store import ItemStore
from server.client import RecdClient
from server.config import Config
from server.domain import Interaction
from server.ranking.model import load_model
from server.ranking.service import RankService
from server.runtime import Recd
from server.tests.api.test_end_to_end import load_toy
from server.tests.conftest import ToyCatalogue, make_config
from server.wiring import build_rankers, build_recd, build_router, build_shard_host


@dataclass
class Frontends:
    a: RecdClient
    b: RecdClient


def second_frontend(config: Config, first: Recd, host_config: Config) -> Recd:
    """Another frontend over the same profile store, graph and cache (as two pods over ScyllaDB, Neo4j
    and Redis), with its own catalogue replica, ranker and in-process shards."""
    router = build_router(host_config, build_shard_host(host_config))
    items = ItemStore(config.dim)
    model = load_model(config.ranking.model_file)
    primary, fallback = build_rankers(config, items, model)
    ranking = RankService(primary, fallback)
    return Recd(config, router, first.profiles, first.graph, first.cache, items, ranking, model)


@pytest.fixture
async def frontends(toy: ToyCatalogue) -> AsyncIterator[Frontends]:
    config = make_config()
    config.profiles.seen_limit = 10_000
    first = build_recd(config)
    second = second_frontend(config, first, make_config())
    servers = [RecdServer(first, config), RecdServer(second, config)]
    for server in servers:
        await server.start()
    clients = [RecdClient(server.address, timeout_s=20.0) for server in servers]
    # Both replicas hold the catalogue (each frontend loads it into its own shards here).
    for client in clients:
        await load_toy(client, toy)
    try:
        yield Frontends(*clients)
    finally:
        for client in clients:
            await client.close()
        for server in servers:
            await server.stop()


def nearest(toy: ToyCatalogue, cluster: int) -> list[str]:
    """The items of a cluster, nearest to its centre first: what ANN finds first for its fans."""
    members = np.flatnonzero(toy.cluster_of == cluster)
    order = members[np.argsort(-(toy.vectors[members] @ toy.centres[cluster]))]
    return [toy.item_ids[i] for i in order]


async def test_a_heavy_users_whole_history_is_excluded(frontends: Frontends, toy: ToyCatalogue) -> None:
    """Far more interactions than the 50 that build the user vector: every one stays excluded."""
    history = nearest(toy, 4)[:120]
    events = [
        Interaction("heavy", item, "view", 1.0, 1_000_000 + i * 60_000) for i, item in enumerate(history)
    ]
    await frontends.a.record_interactions(events)
    for client in (frontends.a, frontends.b):
        response = await client.recommend("heavy", k=10)
        served = [i.item_id for i in response.items]
        assert len(served) == 10
        assert not set(served) & set(history)
        # Still personalised: the next-nearest items of the same cluster, found by ANN.
        got = [toy.item_ids.index(i) for i in served]
        assert np.mean(toy.cluster_of[got] == 4) >= 0.8
        assert sum(1 in item.sources for item in response.items) >= 8


async def test_include_seen_returns_seen_items(frontends: Frontends, toy: ToyCatalogue) -> None:
    history = nearest(toy, 6)[:100]
    await frontends.a.record_interactions(
        [Interaction("fan", item, "click", 1.0, 5_000 + i) for i, item in enumerate(history)]
    )
    excluded = await frontends.b.recommend("fan", k=10)
    included = await frontends.b.recommend("fan", k=10, include_seen=True)
    assert not {i.item_id for i in excluded.items} & set(history)
    assert len({i.item_id for i in included.items} & set(history)) >= 5


async def test_a_write_through_one_frontend_is_excluded_by_the_other(
    frontends: Frontends, toy: ToyCatalogue
) -> None:
    await frontends.a.record_interactions(
        [Interaction("carol", item, "view", 1.0, 1_000 + i) for i, item in enumerate(nearest(toy, 3)[:5])]
    )
    first = await frontends.b.recommend("carol", k=10)  # B caches carol's state
    top = first.items[0].item_id
    await frontends.a.record_interactions([Interaction("carol", top, "click", 1.0, 2_000)])
    after = await frontends.b.recommend("carol", k=10)
    assert top not in {i.item_id for i in after.items}


async def test_an_explicit_exclusion_list_is_honoured_with_the_seen_set(
    frontends: Frontends, toy: ToyCatalogue
) -> None:
    history = nearest(toy, 8)[:20]
    await frontends.a.record_interactions(
        [Interaction("dave", item, "view", 1.0, 1 + i) for i, item in enumerate(history)]
    )
    first = await frontends.a.recommend("dave", k=10)
    exclude = [i.item_id for i in first.items[:5]]
    second = await frontends.a.recommend("dave", k=10, exclude=exclude)
    served = {i.item_id for i in second.items}
    assert len(served) == 10 and not served & (set(exclude) | set(history))

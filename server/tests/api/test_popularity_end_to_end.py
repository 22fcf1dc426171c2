"""Interactions make items popular: through the API, across a restart, and across frontends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from server.api.server import RecdServer
from server.backends.memory_profiles import InMemoryProfileStore
from server.client import RecdClient
from server.config import Config
from server.domain import Interaction, ItemRecord, RecommendQuery
from server.runtime import Recd
from server.tests.conftest import DIM, make_config

CREATED_MS = 1_700_000_000_000
POPULAR = 3  # recd.v1.Source.POPULAR


def catalogue() -> list[ItemRecord]:
    """40 items with priors 1..40, and "rising", with none: it can only become popular by interactions."""
    rng = np.random.default_rng(11)
    vectors = rng.normal(size=(41, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    records = [ItemRecord(f"i{k}", vectors[k], {}, float(k + 1), CREATED_MS) for k in range(40)]
    return [*records, ItemRecord("rising", vectors[40], {}, 0.0, CREATED_MS)]


def interactions_with_rising(n: int) -> list[Interaction]:
    # Far more weight than the largest prior (40): "rising" becomes the most popular item.
    return [Interaction(f"fan{k}", "rising", "purchase", 2.0, 0) for k in range(n)]


async def eventually(check: Callable[[], Awaitable[bool]], within_s: float = 15.0) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("not within the time allowed")
        await asyncio.sleep(0.1)


def durable_config(data_dir: Path) -> Config:
    config = make_config()
    config.data_dir = str(data_dir)
    # Far longer than the test: what shows a write at once is the frontend's early refresh.
    config.popularity.refresh_s = 600.0
    return config


async def test_recorded_interactions_make_an_item_popular_and_survive_a_restart(tmp_path: Path) -> None:
    from server.wiring import build_recd

    config = durable_config(tmp_path)
    server = RecdServer(build_recd(config), config)
    await server.start()
    client = RecdClient(server.address, timeout_s=20.0)
    try:
        await client.upsert_items(catalogue())
        before = await client.recommend("newcomer", k=5)
        assert "rising" not in [i.item_id for i in before.items]
        await client.record_interactions(interactions_with_rising(40))

        async def rising_is_served_to_a_cold_start_user() -> bool:
            response = await client.recommend("another-newcomer", k=5)
            hits = [i for i in response.items if i.item_id == "rising"]
            return bool(hits) and POPULAR in hits[0].sources

        await eventually(rising_is_served_to_a_cold_start_user)
    finally:
        await client.close()
        await server.stop()  # closes the stores: the profile store writes its snapshot

    # A new process on the same data: the counts come back from the store before the first request.
    recd = build_recd(config)
    await recd.sync_catalogue()
    await recd.popularity_sync.start()
    server = RecdServer(recd, config)
    await server.start()
    client = RecdClient(server.address, timeout_s=20.0)
    try:
        response = await client.recommend("third-newcomer", k=5)
        assert response.items[0].item_id == "rising"
        assert POPULAR in response.items[0].sources
    finally:
        await client.close()
        await server.stop()


async def test_a_write_through_one_frontend_reaches_the_others_popular_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from server import wiring

    # Two frontends, one profile store (what ScyllaDB is to frontends in production).
    shared = InMemoryProfileStore(None)
    monkeypatch.setattr(wiring, "build_profiles", lambda config: shared)
    config = make_config()
    config.popularity.refresh_s = 0.2
    frontends: list[Recd] = [wiring.build_recd(config), wiring.build_recd(config)]
    try:
        await write_through_one_read_through_the_other(frontends)
    finally:
        for recd in frontends:
            await recd.close()


async def write_through_one_read_through_the_other(frontends: list[Recd]) -> None:
    """Interactions recorded through the first frontend make "rising" popular in the second's answers."""
    for recd in frontends:
        await recd.catalog.upsert_items(catalogue())
        await recd.popularity_sync.start()
    writer, reader = frontends
    await writer.recommender.record_interactions(interactions_with_rising(40))

    async def reader_serves_rising() -> bool:
        query = RecommendQuery("newcomer", 5, {}, frozenset(), {}, 0.0, False)
        answer = await reader.recommender.recommend(query, time.monotonic() + 10.0)
        return "rising" in [item.item_id for item in answer.items]

    await eventually(reader_serves_rising)


@pytest.mark.real
async def test_two_frontends_on_the_cql_store_share_counts_and_seen_sets() -> None:
    from server.tests.backends.real_backends import drop_scylla, scylla_keyspace
    from server.wiring import build_recd

    config = make_config()
    config.profiles = await scylla_keyspace()
    config.popularity.refresh_s = 0.2
    frontends = [build_recd(config), build_recd(config)]
    try:
        await write_through_one_read_through_the_other(frontends)
        # The fans have seen "rising": neither frontend serves it to them again.
        query = RecommendQuery("fan3", 5, {}, frozenset(), {}, 0.0, False)
        for recd in frontends:
            answer = await recd.recommender.recommend(query, time.monotonic() + 10.0)
            assert answer.items and "rising" not in [item.item_id for item in answer.items]
    finally:
        for recd in frontends:
            await recd.close()
        await drop_scylla(config.profiles)

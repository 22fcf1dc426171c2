"""Fail-open on the embedded backends: a failing profile store gives a cold-start answer, not an error."""

from __future__ import annotations

import pytest

from server.client import RecdClient
from server.config import Config, StepConfig
from server.tests.api.test_end_to_end import load_toy
from server.tests.conftest import ToyCatalogue, make_config


@pytest.fixture
def config() -> Config:
    config = make_config()
    # The whole request gets 400 ms, but hydration may take all of it: the case where a slow profile store
    # leaves nothing for the candidate sources.
    config.pipeline.budget_ms = 400.0
    config.pipeline.steps["hydrate_user"] = StepConfig(budget_ms=10_000.0, fail_open=True)
    return config


async def test_a_failing_profile_store_degrades_to_cold_start(
    server_address: str, toy: ToyCatalogue, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.backends.memory_profiles import InMemoryProfileStore
    from server.errors import BackendError

    client = RecdClient(server_address, timeout_s=20.0)
    await load_toy(client, toy)

    async def down(self: object, *args: object) -> None:
        raise BackendError("profiles", "connection refused")

    monkeypatch.setattr(InMemoryProfileStore, "read_users", down)
    response = await client.recommend("zed", k=5)
    assert len(response.items) == 5 and all(list(i.sources) == [3] for i in response.items)
    assert list(response.coverage.degraded_reasons) == ["profile"]
    await client.close()


async def test_a_spent_budget_still_gets_the_popular_fallback(
    server_address: str, toy: ToyCatalogue, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from server.backends.memory_profiles import InMemoryProfileStore

    client = RecdClient(server_address, timeout_s=20.0)
    await load_toy(client, toy)
    original = InMemoryProfileStore.read_users

    async def slow(self: InMemoryProfileStore, *args: object) -> object:
        await asyncio.sleep(1.0)  # past the whole request budget
        return await original(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(InMemoryProfileStore, "read_users", slow)
    response = await client.recommend("late", k=5)
    assert len(response.items) == 5 and all(list(i.sources) == [3] for i in response.items)
    assert "profile" in response.coverage.degraded_reasons
    await client.close()

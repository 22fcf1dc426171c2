"""Fail-open on the embedded backends: a failing profile store gives a cold-start answer, not an error."""

from __future__ import annotations

import pytest

from server.client import RecdClient
from server.tests.api.test_end_to_end import load_toy
from server.tests.conftest import ToyCatalogue


async def test_a_failing_profile_store_degrades_to_cold_start(
    server_address: str, toy: ToyCatalogue, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.backends.memory_profiles import InMemoryProfileStore
    from server.errors import BackendError

    client = RecdClient(server_address, timeout_s=20.0)
    await load_toy(client, toy)

    async def down(self: object, *args: object) -> None:
        raise BackendError("profiles", "connection refused")

    monkeypatch.setattr(InMemoryProfileStore, "recent_interactions", down)
    response = await client.recommend("zed", k=5)
    assert len(response.items) == 5 and all(list(i.sources) == [3] for i in response.items)
    assert list(response.coverage.degraded_reasons) == ["profile"]
    await client.close()

"""The gRPC end-to-end tests of test_end_to_end.py again, with every backend role on its real system.

The tests are imported, so pytest collects them here a second time; this module's `config` fixture
(overriding conftest's) points profiles at Cassandra, the graph at Neo4j and the cache at Redis, each
isolated per test (fresh keyspace, node label, key prefix) and cleaned up afterwards.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from server.config import Config
from server.tests.api.test_end_to_end import *  # noqa: F403 (the same tests, collected again here)
from server.tests.backends.real_backends import (
    drop_neo4j,
    drop_redis,
    drop_scylla,
    neo4j_config,
    redis_config,
    scylla_keyspace,
)
from server.tests.conftest import make_config

pytestmark = pytest.mark.real


@pytest.fixture
async def config() -> AsyncIterator[Config]:
    config = make_config()
    # Per-call ceilings with room for a slow shared test machine (the steps' budgets still apply).
    config.profiles = await scylla_keyspace(request_timeout_ms=1000.0)
    config.graph = neo4j_config(query_timeout_ms=1000.0)
    config.cache = redis_config(timeout_ms=100.0)
    try:
        yield config
    finally:
        await drop_scylla(config.profiles)
        await drop_neo4j(config.graph)
        await drop_redis(config.cache)

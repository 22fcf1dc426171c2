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
from server.tests.backends.real_backends import on_real_backends
from server.tests.conftest import make_config

pytestmark = pytest.mark.real


@pytest.fixture
async def config() -> AsyncIterator[Config]:
    async with on_real_backends(make_config()) as config:
        yield config

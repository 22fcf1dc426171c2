"""Factories of the real backends for the contract suites and the backend-specific tests.

Each factory skips the test (saying how to start the server) when `deploy/scripts/stack.sh` has not
exported the server's address, and isolates the test: a fresh keyspace (Cassandra), a fresh node label
(Neo4j) or a fresh key prefix (Redis), all removed again by the instance's `close()`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from server.config import CacheConfig, Config, GraphConfig, ProfilesConfig

START_HINT = "start it with deploy/scripts/stack.sh up (make test does)"


def env_or_skip(name: str, server: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.skip(f"{server} not running ({name} unset): {START_HINT}")
    return value


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


# --- Cassandra (the CQL stand-in for ScyllaDB) ------------------------------------------------------------
def scylla_config(**overrides: Any) -> ProfilesConfig:
    hosts = env_or_skip("RECD_TEST_CASSANDRA_HOSTS", "Cassandra")
    port = int(env_or_skip("RECD_TEST_CASSANDRA_PORT", "Cassandra"))
    config = ProfilesConfig(
        backend="scylla",
        hosts=hosts.split(","),
        port=port,
        keyspace=unique("recd_test_"),
        history_limit=50,
        # The test server runs a C1-only JVM on a shared, small machine: latency budgets are tested by
        # their own tests, the contract only checks behaviour.
        request_timeout_ms=2000.0,
        reconnect_max_s=1.0,
    )
    return dataclasses.replace(config, **overrides)


# Keyspaces with the standard schema whose tables a finished test emptied, for the next test to reuse:
# TRUNCATE takes milliseconds, DROP + CREATE KEYSPACE most of a second. Dropped when pytest exits.
_SCHEMA_KEYS = ("keyspace", "replication", "interactions_ttl_s")
_free_keyspaces: list[str] = []
_created_keyspaces: set[str] = set()
_janitor: Any = None


def _janitor_session(config: ProfilesConfig) -> Any:
    """One blocking driver session for schema chores, shared by all tests (and all event loops)."""
    global _janitor
    if _janitor is None:
        from server.backends.scylla import _new_cluster

        # recd's own cluster settings: among them a reconnect within a second of a restarted node
        # (the fault tests restart Cassandra under this session).
        _janitor = _new_cluster(config).connect()
        atexit.register(_drop_pooled_keyspaces)
    return _janitor


def _drop_pooled_keyspaces() -> None:
    for keyspace in _free_keyspaces:
        with contextlib.suppress(Exception):
            _janitor.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=60)
    with contextlib.suppress(Exception):
        _janitor.cluster.shutdown()


async def scylla_keyspace(**overrides: Any) -> ProfilesConfig:
    """A config naming a keyspace with the schema applied and empty tables, for this test alone."""
    from server.backends.scylla import apply_schema

    if _free_keyspaces and not set(overrides) & set(_SCHEMA_KEYS):
        return scylla_config(keyspace=_free_keyspaces.pop(), **overrides)
    config = scylla_config(**overrides)
    await asyncio.to_thread(apply_schema, config)
    if not set(overrides) & set(_SCHEMA_KEYS):
        _created_keyspaces.add(config.keyspace)
    return config


async def drop_scylla(config: ProfilesConfig) -> None:
    """Gives the test's keyspace back: emptied into the pool when it has the standard schema, else dropped."""
    from server.backends.scylla import drop_keyspace

    if config.keyspace not in _created_keyspaces:
        await asyncio.to_thread(drop_keyspace, config)
        return

    def truncate() -> None:
        from cassandra.cluster import NoHostAvailable

        session = _janitor_session(config)
        deadline = time.monotonic() + 30.0
        tables = (
            "user_profiles",
            "user_interactions",
            "items",
            "user_seen",
            "item_popularity",
            "popularity_clock",
            "popularity_writes",
            "cluster_layout",
            "exposures",
            "outcomes",
        )
        for table in tables:
            while True:
                try:
                    session.execute(f"TRUNCATE {config.keyspace}.{table}", timeout=60)
                    break
                except NoHostAvailable:
                    # Cassandra was just restarted (fault tests): the session is still reconnecting.
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)

    await asyncio.to_thread(truncate)
    _free_keyspaces.append(config.keyspace)


async def scylla_store(tmp_path: Path | None = None, **overrides: Any) -> Any:
    from server.backends.scylla import ScyllaProfileStore

    class DisposableScyllaStore(ScyllaProfileStore):
        async def close(self) -> None:
            await super().close()
            await drop_scylla(self.config)

    store = DisposableScyllaStore(await scylla_keyspace(**overrides))
    await store.connect()
    return store


# --- Neo4j ---------------------------------------------------------------------------------------------
def neo4j_config(**overrides: Any) -> GraphConfig:
    uri = env_or_skip("RECD_TEST_NEO4J_URI", "Neo4j")
    config = GraphConfig(backend="neo4j", uri=uri, item_label=unique("TestItem_"), query_timeout_ms=5000.0)
    return dataclasses.replace(config, **overrides)


async def drop_neo4j(config: GraphConfig) -> None:
    from server.backends.neo4j_graph import Neo4jItemGraph

    graph = Neo4jItemGraph(config)
    try:
        await graph.drop_all()
    finally:
        await graph.close()


async def neo4j_graph(tmp_path: Path | None = None, **overrides: Any) -> Any:
    from server.backends.neo4j_graph import Neo4jItemGraph

    class DisposableNeo4jGraph(Neo4jItemGraph):
        async def close(self) -> None:
            try:
                await self.drop_all()
            finally:
                await super().close()

    graph = DisposableNeo4jGraph(neo4j_config(**overrides))
    await graph.start()
    return graph


# --- Redis ---------------------------------------------------------------------------------------------
def redis_config(**overrides: Any) -> CacheConfig:
    url = env_or_skip("RECD_TEST_REDIS_URL", "Redis")
    # A generous timeout: the contract checks behaviour; timeouts have their own tests.
    config = CacheConfig(backend="redis", url=url, key_prefix=unique("recd-test:") + ":", timeout_ms=500.0)
    return dataclasses.replace(config, **overrides)


async def drop_redis(config: CacheConfig) -> None:
    """Deletes the keys under the config's (test-unique) prefix."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(config.url)
    try:
        keys = [k async for k in client.scan_iter(match=config.key_prefix + "*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def redis_cache(tmp_path: Path | None = None, **overrides: Any) -> Any:
    from server.backends.redis_cache import RedisCache

    class DisposableRedisCache(RedisCache):
        async def close(self) -> None:
            try:
                await drop_redis(self.config)
            finally:
                await super().close()

    return DisposableRedisCache(redis_config(**overrides))


@contextlib.asynccontextmanager
async def on_real_backends(config: Config) -> AsyncIterator[Config]:
    """`config` with every state role on its real system, isolated for one test (fresh keyspace, node
    label, key prefix) and cleaned up afterwards, with per-call ceilings that leave room for a slow
    shared test machine (the steps' budgets still apply)."""
    config.profiles = await scylla_keyspace(request_timeout_ms=1000.0)
    config.graph = neo4j_config(query_timeout_ms=1000.0)
    config.cache = redis_config(timeout_ms=100.0)
    try:
        yield config
    finally:
        await drop_scylla(config.profiles)
        await drop_neo4j(config.graph)
        await drop_redis(config.cache)

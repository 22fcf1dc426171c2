"""`recd schema apply` and `recd graph build` (server/tools/schema_cli.py) on embedded and real backends."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.backends.memory_graph import InMemoryItemGraph
from server.backends.memory_profiles import InMemoryProfileStore
from server.domain import Interaction
from server.tests.backends.real_backends import neo4j_config, scylla_config
from server.tools.schema_cli import add_graph_build_arguments, cmd_graph_build, cmd_schema_apply

# Five users who each touched a, b, c in that order, and one who touched only d: a-b-c become
# neighbours of each other (five users per pair), d none (one user, below --min-count 2).
HISTORIES = {f"u{k}": ["a", "b", "c"] for k in range(5)} | {"loner": ["d", "a"]}


def interactions() -> list[Interaction]:
    return [
        Interaction(user, item, "view", 1.0, 1_000 * (i + 1))
        for user, items in HISTORIES.items()
        for i, item in enumerate(items)
    ]


def write_config(path: Path, **sections: Any) -> str:
    path.write_text(yaml.safe_dump(sections))
    return str(path)


def args_for(config_file: str, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_graph_build_arguments(parser)
    return parser.parse_args(["--config", config_file, *extra])


def test_graph_build_on_embedded_backends(tmp_path: Path) -> None:
    async def seed() -> None:
        store = InMemoryProfileStore(tmp_path / "profiles", history_limit=500)
        await store.append_interactions(interactions())
        await store.close()

    asyncio.run(seed())
    config_file = write_config(tmp_path / "recd.yaml", data_dir=str(tmp_path))
    assert cmd_schema_apply(args_for(config_file)) == 0  # nothing to do, and says so
    assert cmd_graph_build(args_for(config_file, "--top-n", "5")) == 0

    async def check() -> None:
        graph = InMemoryItemGraph(tmp_path / "graph")
        try:
            assert await graph.count_edges() == 6  # a<->b, a<->c, b<->c
            assert set(await graph.neighbours(["a"], 1, 10, 0.0, 1.0)) == {"b", "c"}
            assert await graph.neighbours(["d"], 1, 10, 0.0, 1.0) == {}
        finally:
            await graph.close()

    asyncio.run(check())


@pytest.mark.real
def test_schema_apply_and_graph_build_on_real_backends(tmp_path: Path) -> None:
    profiles = scylla_config()
    graph_config = neo4j_config()
    config_file = write_config(
        tmp_path / "real.yaml",
        data_dir=None,
        profiles=dataclasses.asdict(profiles),
        graph=dataclasses.asdict(graph_config),
    )
    assert cmd_schema_apply(args_for(config_file)) == 0

    async def seed_and_check() -> None:
        from server.backends.neo4j_graph import Neo4jItemGraph
        from server.backends.scylla import ScyllaProfileStore, drop_keyspace

        store = ScyllaProfileStore(profiles)
        await store.append_interactions(interactions())
        await store.close()
        # cmd_graph_build runs its own event loop: run it in a thread, outside this one.
        assert await asyncio.to_thread(cmd_graph_build, args_for(config_file)) == 0
        graph = Neo4jItemGraph(graph_config)
        try:
            assert await graph.count_edges() == 6
            assert set(await graph.neighbours(["a"], 2, 10, 0.0, 5.0)) == {"b", "c"}
        finally:
            await graph.drop_all()
            await graph.close()
            await asyncio.to_thread(drop_keyspace, profiles)

    asyncio.run(seed_and_check())


def test_graph_build_reports_an_unreachable_store(tmp_path: Path) -> None:
    config_file = write_config(
        tmp_path / "down.yaml",
        data_dir=None,
        profiles={"backend": "scylla", "port": 1, "connect_timeout_s": 0.5},
    )
    assert cmd_graph_build(args_for(config_file)) == 1

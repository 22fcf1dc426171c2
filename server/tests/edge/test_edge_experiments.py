"""The edge in front of a frontend that runs an experiment: answers are cached per variant, a user who
changes variant (here: the experiment killed through the watched file) never gets the old variant's
cached answer, and an answer ranked by a variant's own model does not move the edge's default model."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from server.api.server import RecdServer
from server.client import RecdClient
from server.config import Config
from server.edge.server import EdgeServer, build_edge
from server.experiments.registry import ExperimentRegistry
from server.tests.api.test_end_to_end import load_toy
from server.tests.api.test_experiments import experiment, experiments_config
from server.tests.api.two_frontends import eventually
from server.tests.conftest import ToyCatalogue
from server.tests.edge.fakes import edge_config
from server.wiring import build_recd


@pytest.fixture
async def setup(tmp_path: Path, toy: ToyCatalogue) -> AsyncIterator[tuple[EdgeServer, RecdClient, Path]]:
    config: Config = experiments_config(tmp_path)
    config.experiments.definitions = []
    path = tmp_path / "experiments.yaml"
    path.write_text(yaml.safe_dump([dataclasses.asdict(experiment())]))
    config.experiments.file = str(path)
    config.experiments.reload_interval_s = 0.05
    server = RecdServer(build_recd(config), config)
    await server.start()
    edge = build_edge(edge_config(origins=[server.address]), experiments=ExperimentRegistry(config))
    await edge.start()
    client = RecdClient(edge.address, timeout_s=20.0)
    try:
        await load_toy(client, toy)
        yield edge, client, path
    finally:
        await client.close()
        await edge.stop()
        await server.stop()


async def test_a_user_who_changes_variant_never_gets_the_old_variants_cached_answer(
    setup: tuple[EdgeServer, RecdClient, Path],
) -> None:
    edge, client, path = setup
    first = await client.recommend("forced-popular", k=10)
    assert [e.variant for e in first.experiments] == ["popular"]
    assert first.model_version == "test-popularity-first"
    again = await client.recommend("forced-popular", k=10)
    assert again == first and edge.cache.origin_calls == 1  # cached under its variant
    # A variant's own model is not the default one: the edge keeps learning the default elsewhere.
    assert edge.cache.model_version != "test-popularity-first"
    calls = edge.cache.origin_calls
    path.write_text(yaml.safe_dump([dataclasses.asdict(experiment(enabled=False))]))

    async def served_outside() -> bool:
        return not (await client.recommend("forced-popular", k=10)).experiments

    await eventually(served_outside)
    assert edge.cache.origin_calls > calls
    killed = await client.recommend("forced-popular", k=10)
    assert not killed.experiments and killed.model_version == "test-similarity-first"

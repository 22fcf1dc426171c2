"""Shared fixtures: a clustered toy catalogue and a real gRPC server on an ephemeral port."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from server.config import Config, load_config

if TYPE_CHECKING:
    from server.api.server import RecdServer

DIM = 16
# Tests rank with fixed, similarity-first weights, not the shipped (tuned) ones: see the file.
TEST_MODEL_FILE = Path(__file__).with_name("similarity_first_model.yaml")


@dataclass
class ToyCatalogue:
    item_ids: list[str]
    vectors: np.ndarray  # unit rows
    cluster_of: np.ndarray
    centres: np.ndarray
    attributes: list[dict[str, str]]
    popularity: np.ndarray


def make_catalogue(n_items: int = 2000, clusters: int = 10, dim: int = DIM, seed: int = 3) -> ToyCatalogue:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    cluster_of = rng.integers(0, clusters, size=n_items)
    vectors = centres[cluster_of] + 0.25 * rng.normal(size=(n_items, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    attributes = [
        {"category": f"c{cluster_of[i]}", "lang": ("en", "de", "fr")[i % 3]} for i in range(n_items)
    ]
    popularity = rng.pareto(1.5, size=n_items).astype(np.float32) * 10
    return ToyCatalogue(
        [f"i{i:05d}" for i in range(n_items)],
        vectors.astype(np.float32),
        cluster_of,
        centres,
        attributes,
        popularity,
    )


@pytest.fixture(scope="session")
def toy() -> ToyCatalogue:
    return make_catalogue()


def make_config(**overrides: object) -> Config:
    config = load_config(environ={})
    config.dim = DIM
    config.data_dir = None
    config.server.address = "127.0.0.1:0"
    config.ranking.ranker = "cpu"
    config.ranking.model_file = str(TEST_MODEL_FILE)
    # Generous budgets: CI machines are slow and shared; budgets are exercised by their own tests.
    config.pipeline.budget_ms = 5000.0
    config.pipeline.steps = {
        name: dataclasses.replace(step, budget_ms=step.budget_ms * 50)
        for name, step in config.pipeline.steps.items()
    }
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


@pytest.fixture
def config() -> Config:
    return make_config()


@pytest.fixture
async def server_address(config: Config) -> AsyncIterator[str]:
    from server.api.server import RecdServer
    from server.wiring import build_recd

    recd = build_recd(config)
    server = RecdServer(recd, config)
    await server.start()
    try:
        yield server.address
    finally:
        await server.stop()


@asynccontextmanager
async def frontends_over_one_host(config: Config, count: int) -> AsyncIterator[list[RecdServer]]:
    """`count` started frontends in this process over one set of in-process shards, each with its own
    catalogue replica (following the shards' change feed), router and rankers, as separate processes
    would have. Embedded state roles are one set shared by all (what a worker group's state node gives
    its workers); real ones are separate connections per frontend."""
    from server.api.server import RecdServer
    from server.wiring import Stores, build_cache, build_graph, build_profiles, build_recd, build_shard_host

    host = build_shard_host(config)
    embedded = config.profiles.backend == "embedded"
    stores = Stores(build_profiles(config), build_graph(config), build_cache(config)) if embedded else None
    servers: list[RecdServer] = []
    try:
        for _ in range(count):
            recd = build_recd(config, host, stores)
            await recd.sync_catalogue()
            server = RecdServer(recd, config)
            await server.start()
            servers.append(server)
        yield servers
    finally:
        for server in servers:
            await server.stop()

"""Hot model reload through the serving path: a real gRPC server under concurrent Recommends while its
model file changes (and breaks); no request fails and answers switch version between batches."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from server.client import RecdClient
from server.config import Config
from server.domain import Interaction, RecommendQuery
from server.gen.recd.v1 import catalog_pb2
from server.runtime import Recd
from server.tests.api.test_end_to_end import cluster_items, load_toy
from server.tests.conftest import TEST_MODEL_FILE, ToyCatalogue

USERS = 8


def write(path: Path, text: str) -> None:
    temp = path.with_suffix(".tmp")
    temp.write_text(text)
    os.replace(temp, path)


def version_of(text: str, version: str, similarity: str = "1.0") -> str:
    return text.replace("version: test-similarity-first", f"version: {version}").replace(
        "similarity: 1.0", f"similarity: {similarity}"
    )


@pytest.fixture
async def served(
    config: Config, toy: ToyCatalogue, tmp_path: Path
) -> AsyncIterator[tuple[Recd, RecdClient, Path]]:
    from server.api.server import RecdServer
    from server.wiring import build_recd

    model = tmp_path / "model.yaml"
    write(model, version_of(TEST_MODEL_FILE.read_text(), "m1"))
    config.ranking.model_file = str(model)
    config.ranking.reload_interval_s = 0.05
    recd = build_recd(config)
    server = RecdServer(recd, config)
    await server.start()
    client = RecdClient(server.address, timeout_s=20.0)
    try:
        await load_toy(client, toy)
        for u in range(USERS):
            history = cluster_items(toy, u % 10, 6)
            await client.record_interactions(
                [Interaction(f"u{u}", item, "click", 1.0, 0) for item in history]
            )
        await recd.warm_up()  # starts the file watch, as serving does
        yield recd, client, model
    finally:
        await client.close()
        await server.stop()


async def test_a_reload_under_load_loses_no_request_and_switches_version(
    served: tuple[Recd, RecdClient, Path], caplog: pytest.LogCaptureFixture
) -> None:
    recd, client, model = served
    seen: dict[int, list[str]] = {u: [] for u in range(USERS)}
    errors: list[BaseException] = []
    mismatched: list[str] = []
    stop = asyncio.Event()

    async def user(u: int) -> None:
        while not stop.is_set():
            try:
                response = await client.recommend(f"u{u}", k=10)
            except Exception as exc:  # counted, not raised: the test reports every failure
                errors.append(exc)
                continue
            seen[u].append(response.model_version)
            assert response.cache_key.startswith(f"rec:v3:{response.model_version}:")
            for item in response.items:
                c = item.components
                parts = c.similarity + c.graph + c.popularity + c.freshness
                if abs(parts - item.score) > 1e-3:  # features and scores of two models mixed
                    mismatched.append(f"{response.model_version}: {item.score} != {parts}")

    async def until(predicate: object, timeout_s: float = 20.0) -> None:
        for _ in range(int(timeout_s / 0.02)):
            if predicate():  # type: ignore[operator]
                return
            await asyncio.sleep(0.02)
        raise AssertionError("timed out")

    tasks = [asyncio.create_task(user(u)) for u in range(USERS)]
    try:
        await until(lambda: all(len(v) >= 3 for v in seen.values()))
        # m2 doubles the similarity weight: every score changes.
        write(model, version_of(TEST_MODEL_FILE.read_text(), "m2", similarity="2.0"))
        await until(lambda: all(v[-1:] == ["m2"] for v in seen.values()))
        counts = {u: len(v) for u, v in seen.items()}
        with caplog.at_level(logging.ERROR, logger="server.ranking.registry"):
            write(model, "version: m3\nweights: {similarity: oops}\n")  # broken: refused
            await until(lambda: any("refused" in r.getMessage() for r in caplog.records))
            await until(lambda: all(len(v) >= counts[u] + 3 for u, v in seen.items()))
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert errors == [] and mismatched == []
    for versions in seen.values():
        # Each user's requests are sequential: once one was answered by m2, every later one is.
        switch = versions.index("m2")
        assert set(versions[:switch]) == {"m1"} and set(versions[switch:]) == {"m2"}
    assert recd.model.version == "m2" and recd.rank_service.models.versions() == ["m2"]
    stats = await client.stats()
    assert stats.model_version == "m2"


async def test_the_admin_call_loads_and_switches_the_default(
    served: tuple[Recd, RecdClient, Path], tmp_path: Path
) -> None:
    recd, client, model = served
    await recd.model_reloader.close()  # no watch: only the admin call loads
    reload = client.catalog.AdminReloadModel
    write(model, version_of(TEST_MODEL_FILE.read_text(), "m2", similarity="0.5"))
    reply = await reload(catalog_pb2.AdminReloadModelRequest())
    assert reply.default_version == "m2" and list(reply.versions) == ["m2"]
    assert [(f.path, f.outcome, f.version) for f in reply.files] == [(str(model), "loaded", "m2")]
    assert (await client.recommend("u1", k=5)).model_version == "m2"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await reload(catalog_pb2.AdminReloadModelRequest(default_version="m1"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "model version 'm1' is not loaded; loaded: ['m2']" in str(err.value.details())
    write(model, "not: [a model")
    reply = await reload(catalog_pb2.AdminReloadModelRequest())
    assert reply.files[0].outcome == "refused" and "not YAML" in reply.files[0].error
    assert reply.default_version == "m2"
    assert (await client.recommend("u1", k=5)).model_version == "m2"


async def test_a_loaded_version_can_be_made_the_default(
    config: Config, toy: ToyCatalogue, tmp_path: Path
) -> None:
    from server.wiring import build_recd

    candidate = tmp_path / "candidate.yaml"
    write(candidate, version_of(TEST_MODEL_FILE.read_text(), "cand", similarity="0.5"))
    config.ranking.extra_model_files = [str(candidate)]
    config.ranking.reload_interval_s = 0
    recd = build_recd(config)
    try:
        assert recd.rank_service.models.versions() == ["cand", "test-similarity-first"]
        report = await recd.catalog.reload_models("cand")
        assert report.default_version == "cand" and recd.model.version == "cand"
        answer = await recd.recommender.recommend(RecommendQuery("u", 3, {}, frozenset(), {}, 0.0, False))
        assert answer.model_version == "cand" and answer.cache_key.startswith("rec:v3:cand:u:")
    finally:
        await recd.close()

"""A worker group follows its model file: every worker loads the new version by itself (each process
watches the file), and answers through fresh connections, whichever worker takes them, carry it."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from server.gen.recd.v1 import recommender_pb2, recommender_pb2_grpc
from server.ranking.model import DEFAULT_MODEL_FILE
from server.tests.workers.group import Group, prepare_demo_state, recommend_channel

WORKERS = 2


def write_model(path: Path, version: str) -> None:
    text = DEFAULT_MODEL_FILE.read_text().replace("version: linear-2026-12-05", f"version: {version}")
    assert f"version: {version}" in text
    temp = path.with_suffix(".tmp")
    temp.write_text(text)
    os.replace(temp, path)


@pytest.fixture(scope="module")
def reloading_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Group, Path, list[str]]]:
    root = tmp_path_factory.mktemp("group-reload")
    demo = prepare_demo_state(root, items=500, users=30)
    users = pq.read_table(demo / "dataset" / "users.parquet", columns=["user_id"]).column(0).to_pylist()
    model = root / "model.yaml"
    write_model(model, "group-m1")
    config = {"ranking": {"ranker": "cpu", "model_file": str(model), "reload_interval_s": 0.2}}
    group = Group(root, demo / "state", WORKERS, config)
    try:
        group.start()
        yield group, model, users
    finally:
        group.close()


def defaults_by_worker(group: Group) -> dict[str, str]:
    """worker -> the version its recd_model_loaded series names as default, from the group's one page."""
    out = {}
    for series, value in group.metrics().items():
        if series.startswith("recd_model_loaded{") and 'role="default"' in series and value == 1:
            worker = series.split('worker="', 1)[1].split('"', 1)[0]
            out[worker] = series.split('version="', 1)[1].split('"', 1)[0]
    return out


async def test_every_worker_loads_the_changed_file(reloading_group: tuple[Group, Path, list[str]]) -> None:
    group, model, users = reloading_group
    assert defaults_by_worker(group) == {str(i): "group-m1" for i in range(WORKERS)}
    write_model(model, "group-m2")
    deadline = time.monotonic() + 30
    while defaults_by_worker(group) != {str(i): "group-m2" for i in range(WORKERS)}:
        assert time.monotonic() < deadline, f"workers did not all reload: {defaults_by_worker(group)}"
        await asyncio.sleep(0.2)
    versions = set()
    for n in range(16):  # fresh connections: the kernel spreads them over the workers
        async with recommend_channel(group.address) as channel:
            stub = recommender_pb2_grpc.RecommenderStub(channel)
            request = recommender_pb2.RecommendRequest(user_id=users[n % len(users)], k=5)
            versions.add((await stub.Recommend(request, timeout=20)).model_version)
    assert versions == {"group-m2"}

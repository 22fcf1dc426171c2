"""Experiments in a worker group: every worker assigns alike, their exposures go to the one state node,
so a click taken by any worker is attributed to the answer another served, and the report through any
worker counts every answer and every click."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow.parquet as pq
import pytest

from server.client import RecdClient
from server.domain import Interaction
from server.tests.api.two_frontends import eventually
from server.tests.workers.group import Group, prepare_demo_state

WORKERS = 2


@pytest.fixture(scope="module")
def experiment_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Group, list[str]]]:
    root = tmp_path_factory.mktemp("group-experiments")
    demo = prepare_demo_state(root, items=500, users=40)
    users = pq.read_table(demo / "dataset" / "users.parquet", columns=["user_id"]).column(0).to_pylist()
    experiment = {
        "name": "group",
        "salt": "group",
        "variants": [{"name": "a"}, {"name": "b", "overrides": {"ann_k": 50}}],
    }
    config = {
        "ranking": {"ranker": "cpu"},
        "experiments": {"definitions": [experiment]},
        "exposures": {"flush_interval_ms": 1.0},
    }
    group = Group(root, demo / "state", WORKERS, config)
    try:
        group.start()
        yield group, users
    finally:
        group.close()


async def test_clicks_through_any_worker_count_for_the_variant_that_served(
    experiment_group: tuple[Group, list[str]],
) -> None:
    group, users = experiment_group
    served: dict[str, list[str]] = {}
    variants: dict[str, str] = {}
    for user in users:
        # A fresh connection per call: the kernel spreads them over the workers.
        client = RecdClient(group.address, timeout_s=20.0)
        try:
            answer = await client.recommend(user, k=5)
        finally:
            await client.close()
        served[user] = [i.item_id for i in answer.items]
        variants[user] = answer.experiments[0].variant
    assert set(variants.values()) == {"a", "b"}
    assert sum(1 for n in group.recommends_by_worker().values() if n > 0) == WORKERS
    for user, items in served.items():
        client = RecdClient(group.address, timeout_s=20.0)
        try:
            await client.record_interactions([Interaction(user, items[0], "click", 1.0, 0)])
        finally:
            await client.close()
    # Each worker attributes its interactions off the write path, within its flush interval.
    expected = {name: sum(1 for v in variants.values() if v == name) for name in ("a", "b")}

    async def attributed() -> bool:
        client = RecdClient(group.address, timeout_s=20.0)
        try:
            report = await client.experiment_outcomes("group")
        finally:
            await client.close()
        by_variant = {v.variant: v for v in report.variants}
        assert {n: (v.units, v.answers) for n, v in by_variant.items()} == {
            n: (c, c) for n, c in expected.items()
        }
        return {n: v.actions["click"].sum_y for n, v in by_variant.items()} == expected  # every click

    await eventually(attributed)

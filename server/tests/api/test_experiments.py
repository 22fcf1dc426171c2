"""Experiments end to end, through two frontends over one set of shards (embedded, and real backends
under the `real` marker): assignment named in answers, variants serving their overrides, interactions
through one frontend attributed to the variant that served through the other, the report, the kill
switch through the watched file, write-back fatigue and erasure of the exposure log."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from server.client import RecdClient
from server.config import Config, ExperimentConfig, VariantConfig
from server.domain import Interaction
from server.experiments.registry import ExperimentRegistry
from server.gen.recd.v1 import catalog_pb2, common_pb2
from server.tests.api.test_end_to_end import cluster_items, load_toy
from server.tests.api.two_frontends import eventually
from server.tests.backends.real_backends import on_real_backends
from server.tests.conftest import ToyCatalogue, frontends_over_one_host, make_config

POPULAR_MODEL = """
version: test-popularity-first
weights: {similarity: 0.1, graph: 0.0, popularity: 1.0, freshness: 0.0}
freshness_half_life_days: 30
"""

Pair = tuple[RecdClient, RecdClient]


def experiment(traffic: float = 1.0, enabled: bool = True) -> ExperimentConfig:
    """control: the default pipeline; popular: popular candidates only, ranked by the popularity-first
    model, and user "forced-popular" always in it."""
    return ExperimentConfig(
        name="ranker",
        salt="ranker-2026-12",
        traffic=traffic,
        enabled=enabled,
        variants=[
            VariantConfig("control", 1.0),
            VariantConfig(
                "popular",
                1.0,
                overrides={"sources": ["popular"], "model_version": "test-popularity-first"},
                users=["forced-popular"],
            ),
        ],
    )


def experiments_config(tmp_path: Path, **exposures: object) -> Config:
    config = make_config()
    model = tmp_path / "popular_model.yaml"
    model.write_text(POPULAR_MODEL)
    config.ranking.extra_model_files = [str(model)]
    config.experiments.definitions = [experiment()]
    config.exposures.flush_interval_ms = 1.0
    for key, value in exposures.items():
        setattr(config.exposures, key, value)
    return config


@asynccontextmanager
async def two_frontends(config: Config, toy: ToyCatalogue, real: bool) -> AsyncIterator[Pair]:
    async with AsyncExitStack() as stack:
        if real:
            config = await stack.enter_async_context(on_real_backends(config))
        servers = await stack.enter_async_context(frontends_over_one_host(config, 2))
        a, b = (RecdClient(s.address, timeout_s=20.0) for s in servers)
        stack.push_async_callback(a.close)
        stack.push_async_callback(b.close)
        await load_toy(a, toy)

        async def synced() -> bool:
            _, missing = await b.get_items(toy.item_ids)
            return not missing

        await eventually(synced)
        yield a, b


REAL = [False, pytest.param(True, marks=pytest.mark.real, id="real")]


async def warm_users(client: RecdClient, toy: ToyCatalogue, users: list[str]) -> None:
    """Each user with a history in one cluster, so that they have a vector (the ANN source applies)."""
    history = [
        Interaction(user, item, "view", 1.0, 0)
        for n, user in enumerate(users)
        for item in cluster_items(toy, n % 10, 5)
    ]
    await client.record_interactions(history)


def sources_of(response: object) -> set[int]:
    return {s for item in response.items for s in item.sources}  # type: ignore[attr-defined]


@pytest.mark.parametrize("real", REAL)
async def test_answers_name_their_variant_and_each_variant_serves_its_overrides(
    tmp_path: Path, toy: ToyCatalogue, real: bool
) -> None:
    config = experiments_config(tmp_path)
    users = [f"user{n}" for n in range(40)]
    expected = ExperimentRegistry(config).current()
    async with two_frontends(config, toy, real) as (a, b):
        await warm_users(a, toy, users)
        seen_variants = set()
        for n, user in enumerate(users):
            response = await (a if n % 2 else b).recommend(user, k=10)
            pairs = [(e.experiment, e.variant) for e in response.experiments]
            assert pairs == list(expected.assign(user).pairs)  # the same on both frontends
            variant = pairs[0][1]
            seen_variants.add(variant)
            if variant == "popular":
                assert sources_of(response) == {common_pb2.SOURCE_POPULAR}
                assert response.model_version == "test-popularity-first"
            else:
                assert common_pb2.SOURCE_ANN in sources_of(response)
                assert response.model_version == "test-similarity-first"
        assert seen_variants == {"control", "popular"}
        forced = await b.recommend("forced-popular", k=5)
        assert [(e.experiment, e.variant) for e in forced.experiments] == [("ranker", "popular")]


@pytest.mark.parametrize("real", REAL)
async def test_an_interaction_through_one_frontend_counts_for_the_variant_that_served_through_the_other(
    tmp_path: Path, toy: ToyCatalogue, real: bool
) -> None:
    config = experiments_config(tmp_path)
    async with two_frontends(config, toy, real) as (a, b):
        await warm_users(a, toy, ["forced-popular"])
        served = await a.recommend("forced-popular", k=5)
        clicked = served.items[0].item_id
        await asyncio.sleep(0.05)  # A's exposure log writes it to the shared profile store
        await b.record_interactions(
            [
                Interaction("forced-popular", clicked, "click", 1.0, 0),
                Interaction("forced-popular", clicked, "click", 1.0, 0),  # the same click twice: once
                Interaction("forced-popular", "never-served", "click", 1.0, 0),  # not served: nothing
            ]
        )
        report = await b.experiment_outcomes("ranker")
        popular = next(v for v in report.variants if v.variant == "popular")
        assert (popular.units, popular.answers, popular.impressions) == (1, 1, 5)
        assert popular.actions["click"].sum_y == 1 and popular.actions["click"].sum_x == 5
        control = next(v for v in report.variants if v.variant == "control")
        assert control.units == 0 and control.actions["click"].sum_y == 0
        held = await a.get_user("forced-popular")
        assert held.exposures_held == 1 and held.outcomes_held >= 1
        # An erasure takes the exposure log with it.
        await b.delete_user("forced-popular")
        held = await a.get_user("forced-popular")
        assert held.exposures_held == 0 and held.outcomes_held == 0 and not held.found


async def test_an_unknown_experiment_is_not_found_and_a_bad_period_invalid(
    tmp_path: Path, toy: ToyCatalogue
) -> None:
    import grpc

    async with two_frontends(experiments_config(tmp_path), toy, False) as (a, _):
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await a.experiment_outcomes("nope")
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND and "ranker" in str(missing.value.details())
        bad = catalog_pb2.ExperimentOutcomesRequest(experiment="ranker", since_ms=-1)
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await a.catalog.AdminExperimentOutcomes(bad)
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_the_kill_switch_in_the_watched_file_ends_the_experiment_on_every_frontend(
    tmp_path: Path, toy: ToyCatalogue
) -> None:
    config = experiments_config(tmp_path)
    config.experiments.definitions = []
    path = tmp_path / "experiments.yaml"
    path.write_text(yaml.safe_dump([_as_dict(experiment())]))
    config.experiments.file = str(path)
    config.experiments.reload_interval_s = 0.05
    async with two_frontends(config, toy, False) as (a, b):
        for client in (a, b):
            assert [e.variant for e in (await client.recommend("forced-popular")).experiments] == ["popular"]
        path.write_text(yaml.safe_dump([_as_dict(experiment(enabled=False))]))

        async def killed() -> bool:
            answers = [await c.recommend("forced-popular") for c in (a, b)]
            return all(not r.experiments and r.model_version == "test-similarity-first" for r in answers)

        await eventually(killed)
        # A broken file is refused: the experiments before it go on (killed, here).
        path.write_text("- name: [unclosed")
        await asyncio.sleep(0.15)
        assert not (await a.recommend("forced-popular")).experiments


@pytest.mark.parametrize("real", REAL)
async def test_write_back_fatigue_retires_items_shown_again_and_again(
    tmp_path: Path, toy: ToyCatalogue, real: bool
) -> None:
    config = experiments_config(tmp_path, write_back=True, fatigue_after=2)
    config.experiments.definitions = []  # write-back works outside experiments
    async with two_frontends(config, toy, real) as (a, b):
        await warm_users(a, toy, ["tired"])
        first = [i.item_id for i in (await a.recommend("tired", k=5)).items]
        assert not (await a.recommend("tired", k=5)).experiments
        await asyncio.sleep(0.05)
        # Shown twice without an interaction: the third answer, through the other frontend, moves on.
        third = [i.item_id for i in (await b.recommend("tired", k=5)).items]
        assert len(third) == 5 and not set(third) & set(first)
        # include_seen lifts fatigue with the rest of the seen set.
        lifted = [i.item_id for i in (await b.recommend("tired", k=5, include_seen=True)).items]
        assert set(lifted) & set(first)


def _as_dict(e: ExperimentConfig) -> dict[str, object]:
    return dataclasses.asdict(e)


@pytest.mark.parametrize(
    "overrides",
    [
        {"model_version": "test-popularity-first"},
        {"model_version": "test-popularity-first", "ann_k": 40, "ef_search": 48, "diversity": 0.2},
    ],
    ids=["model", "model-and-retrieval"],
)
async def test_variants_that_differ_only_per_request_share_batches(
    tmp_path: Path, toy: ToyCatalogue, monkeypatch: pytest.MonkeyPatch, overrides: dict[str, object]
) -> None:
    """A new model (or retrieval depth) against the current one, the usual A/B tests, costs no batching:
    both variants' requests run the one pipeline together, each with its variant's parameters."""
    config = experiments_config(tmp_path)
    config.experiments.definitions[0].variants[1].overrides = overrides
    users = [f"user{n}" for n in range(24)]
    assigner = ExperimentRegistry(config).current()
    async with frontends_over_one_host(config, 1) as servers:
        recommender = servers[0].recd.recommender
        client = RecdClient(servers[0].address, timeout_s=20.0)
        try:
            await load_toy(client, toy)
            await warm_users(client, toy, users)
            mixed: list[set[str | None]] = []
            pipeline = recommender.recommend_pipeline
            run = pipeline.run

            async def recording(batch: Any, *args: Any) -> Any:
                mixed.append({r.model_version for r in batch.requests})
                for r in batch.requests:
                    if r.model_version is not None and "ann_k" in overrides:
                        assert r.ann is not None and (r.ann.k, r.ann.ef) == (40, 48) and r.diversity == 0.2
                return await run(batch, *args)

            monkeypatch.setattr(pipeline, "run", recording)
            answers = await asyncio.gather(*(client.recommend(u, k=5) for u in users))
        finally:
            await client.close()
    assert any(len(versions) == 2 for versions in mixed), mixed  # both variants in one batch
    for user, answer in zip(users, answers, strict=True):
        variant = assigner.assign(user).pairs[0][1]
        assert answer.model_version == (
            "test-popularity-first" if variant == "popular" else "test-similarity-first"
        )


async def test_an_answer_still_queued_for_the_exposure_log_does_not_outlive_the_users_erasure(
    tmp_path: Path, toy: ToyCatalogue
) -> None:
    config = experiments_config(tmp_path, flush_interval_ms=300.0)
    async with two_frontends(config, toy, False) as (a, _):
        await a.recommend("forced-popular", k=5)  # its exposure waits in A's queue
        await a.delete_user("forced-popular")
        await asyncio.sleep(0.5)  # past the flush interval
        held = await a.get_user("forced-popular")
        assert held.exposures_held == 0 and not held.found

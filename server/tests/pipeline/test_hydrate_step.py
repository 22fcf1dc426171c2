"""The hydrate steps: each user's vector, recent items and seen set (read once per user per batch, through
the cache), or each seed item's vector; a seed the catalogue lacks rejects only its own request."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from server.backends.base import UserRecord
from server.backends.memory_cache import InMemoryCache
from server.backends.memory_profiles import InMemoryProfileStore
from server.catalog.item_store import ItemStore
from server.domain import Interaction, UserProfile
from server.errors import ErrorKind
from server.pipeline.stages import Batch, Hydrated, Kind
from server.pipeline.steps.hydrate import HydrateSeedItems, HydrateUsers, cold
from server.tests.pipeline.stagekit import FAR, labels, make_items, request
from server.users import UserStates

DIM = 4
IDS = ["i0", "i1", "i2", "i3"]


class CountingProfiles:
    """The embedded profile store, counting the batched reads the hydrate step makes."""

    def __init__(self, inner: InMemoryProfileStore) -> None:
        self.inner = inner
        self.reads: list[list[str]] = []

    async def read_users(
        self, user_ids: Sequence[str], history_limit: int, timeout_s: float
    ) -> list[UserRecord]:
        self.reads.append(list(user_ids))
        return await self.inner.read_users(user_ids, history_limit, timeout_s)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture
def items() -> ItemStore:
    return make_items(np.eye(DIM, dtype=np.float32))


@pytest.fixture
async def profiles() -> CountingProfiles:
    store = InMemoryProfileStore(None)
    # "warm": i0 then i1 (newest); "stored": a profile embedding and no history; "cold": nothing.
    await store.append_interactions(
        [Interaction("warm", "i0", "view", 1.0, 1_000), Interaction("warm", "i1", "view", 1.0, 2_000)]
    )
    await store.upsert_profiles([UserProfile("stored", np.array([0, 0, 0, 2], np.float32))])
    return CountingProfiles(store)


@pytest.fixture
def step(items: ItemStore, profiles: CountingProfiles) -> HydrateUsers:
    users = UserStates(profiles, InMemoryCache(1 << 20), items, 50, 86400.0, 60.0)  # type: ignore[arg-type]
    return HydrateUsers(users, DIM)


def later() -> float:
    return time.monotonic() + FAR


def batch_of(*requests: Any) -> Batch:
    return Batch(tuple(requests))


def excluded_ids(h: Hydrated, i: int) -> npt.NDArray[np.uint64]:
    return np.asarray(h.excluded.row(i))


def expected_labels(*ids: str) -> npt.NDArray[np.uint64]:
    return np.unique(labels(*ids)) if ids else np.empty(0, np.uint64)


@pytest.mark.parametrize(
    ("fields", "has_vector", "seeds", "excluded"),
    [
        pytest.param({"user_id": "warm"}, True, ("i1", "i0"), ["i0", "i1"], id="warm-user"),
        pytest.param({"user_id": "cold"}, False, (), [], id="cold-user"),
        pytest.param({"user_id": "stored"}, True, (), [], id="stored-embedding-only"),
        pytest.param({"user_id": "warm", "include_seen": True}, True, ("i1", "i0"), [], id="include_seen"),
        pytest.param(
            {"user_id": "warm", "exclude_item_ids": frozenset({"i3"})},
            True,
            ("i1", "i0"),
            ["i0", "i1", "i3"],
            id="seen-and-exclusions",
        ),
        pytest.param(
            {"user_id": "warm", "include_seen": True, "exclude_item_ids": frozenset({"i3"})},
            True,
            ("i1", "i0"),
            ["i3"],
            id="include_seen-keeps-exclusions",
        ),
        pytest.param(
            {"user_id": "cold", "exclude_item_ids": frozenset({"i2"})},
            False,
            (),
            ["i2"],
            id="cold-with-exclusions",
        ),
    ],
)
async def test_hydrate_users(
    step: HydrateUsers, fields: dict[str, Any], has_vector: bool, seeds: tuple[str, ...], excluded: list[str]
) -> None:
    h = await step.run(batch_of(request(**fields)), later())
    assert isinstance(h, Hydrated)
    assert h.vectors.shape == (1, DIM) and h.vectors.dtype == np.float32
    assert bool(h.has_vector[0]) == has_vector
    if has_vector:
        assert np.linalg.norm(h.vectors[0]) == pytest.approx(1.0, abs=1e-3)
    else:
        assert not h.vectors[0].any()
    assert h.graph_seeds == (seeds,)
    np.testing.assert_array_equal(excluded_ids(h, 0), expected_labels(*excluded))
    assert h.rejected == {}


async def test_the_vector_points_where_the_user_has_been(step: HydrateUsers) -> None:
    h = await step.run(batch_of(request(user_id="warm"), request(user_id="stored")), later())
    # Recent items i0 and i1 (the newer weighs a little more): the vector lies in their plane.
    assert h.vectors[0, 0] > 0 and h.vectors[0, 1] >= h.vectors[0, 0] and not h.vectors[0, 2:].any()
    np.testing.assert_allclose(h.vectors[1], [0, 0, 0, 1], atol=1e-3)


async def test_one_batch_reads_each_user_once(step: HydrateUsers, profiles: CountingProfiles) -> None:
    batch = batch_of(
        request(user_id="warm"),
        request(user_id="cold"),
        request(user_id="warm", include_seen=True),
        request(user_id="warm"),
    )
    h = await step.run(batch, later())
    assert profiles.reads == [["warm", "cold"]]
    assert h.has_vector.tolist() == [True, False, True, True]
    np.testing.assert_array_equal(h.vectors[0], h.vectors[2])
    np.testing.assert_array_equal(h.vectors[0], h.vectors[3])
    assert h.graph_seeds == (("i1", "i0"), (), ("i1", "i0"), ("i1", "i0"))
    # The same user, each request with its own exclusions.
    np.testing.assert_array_equal(excluded_ids(h, 0), expected_labels("i0", "i1"))
    assert len(excluded_ids(h, 2)) == 0
    np.testing.assert_array_equal(excluded_ids(h, 3), expected_labels("i0", "i1"))
    # The next batch finds them in the cache.
    again = await step.run(batch, later())
    assert profiles.reads == [["warm", "cold"]]
    np.testing.assert_allclose(again.vectors, h.vectors, atol=1e-3)
    np.testing.assert_array_equal(again.excluded.values, h.excluded.values)


async def test_fallback_makes_every_request_a_cold_start(
    step: HydrateUsers, profiles: CountingProfiles
) -> None:
    batch = batch_of(request(user_id="warm"), request(user_id="cold", exclude_item_ids=frozenset({"i2"})))
    h = step.fallback(batch)
    assert profiles.reads == []  # no profile is read
    assert h.batch is batch
    assert h.vectors.shape == (2, DIM) and not h.vectors.any()
    assert not h.has_vector.any()
    assert h.graph_seeds == ((), ())
    # Only the request's own exclusions: the seen set was never read.
    assert len(excluded_ids(h, 0)) == 0
    np.testing.assert_array_equal(excluded_ids(h, 1), expected_labels("i2"))
    assert h.rejected == {}


# --- seed items ---------------------------------------------------------------------------------------
def similar(seed: str, **fields: Any) -> Any:
    return request(kind=Kind.SIMILAR, seed_item_id=seed, **fields)


@pytest.mark.parametrize(
    ("seeds", "rejected"),
    [
        pytest.param(["i2"], [], id="known"),
        pytest.param(["zzz"], [0], id="unknown"),
        pytest.param(["i1", "zzz", "i3"], [1], id="unknown-among-known"),
        pytest.param(["zzz", "yyy"], [0, 1], id="all-unknown"),
        pytest.param(["i3", "i3"], [], id="same-seed-twice"),
    ],
)
async def test_hydrate_seed_items(items: ItemStore, seeds: list[str], rejected: list[int]) -> None:
    step = HydrateSeedItems(items)
    h = await step.run(batch_of(*(similar(s, exclude_item_ids=frozenset({"i0"})) for s in seeds)), later())
    assert sorted(h.rejected) == rejected
    for i, seed in enumerate(seeds):
        # The seed itself and the request's exclusions are never answered.
        np.testing.assert_array_equal(excluded_ids(h, i), expected_labels("i0", seed))
        if i in rejected:
            error = h.rejected[i]
            assert error.kind is ErrorKind.NOT_FOUND and seed in error.message
            assert not h.has_vector[i] and not h.vectors[i].any() and h.graph_seeds[i] == ()
        else:
            row = items.row_of(seed)
            assert row is not None
            assert h.has_vector[i] and h.graph_seeds[i] == (seed,)
            np.testing.assert_allclose(h.vectors[i], items.vectors(np.array([row]))[0])


async def test_a_deleted_seed_is_not_found(items: ItemStore) -> None:
    items.delete(["i1"])
    h = await HydrateSeedItems(items).run(batch_of(similar("i1"), similar("i2")), later())
    assert list(h.rejected) == [0] and h.rejected[0].kind is ErrorKind.NOT_FOUND
    assert h.has_vector.tolist() == [False, True]


def test_seed_fallback_is_a_cold_batch(items: ItemStore) -> None:
    batch = batch_of(similar("i1"), similar("zzz"))
    h = HydrateSeedItems(items).fallback(batch)
    assert not h.has_vector.any() and h.graph_seeds == ((), ()) and h.rejected == {}
    np.testing.assert_array_equal(excluded_ids(h, 0), expected_labels("i1"))
    assert h.batch is batch and h.vectors.shape == cold(batch, DIM).vectors.shape


@pytest.mark.parametrize(
    ("step_type", "name", "reason", "awaits_io"),
    [(HydrateUsers, "hydrate_user", "profile", True), (HydrateSeedItems, "hydrate_item", "item", False)],
)
def test_step_declarations(step_type: type, name: str, reason: str, awaits_io: bool) -> None:
    assert (step_type.name, step_type.degraded_reason, step_type.awaits_io) == (name, reason, awaits_io)  # type: ignore[attr-defined]
    assert step_type.reads is Batch and step_type.produces is Hydrated  # type: ignore[attr-defined]

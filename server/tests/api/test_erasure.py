"""User erasure (Catalog.DeleteUser / DeleteUsers) and access (Catalog.GetUser) through the public API,
with two frontends over one set of shards: an erasure through one frontend leaves the user cold on the
other, with no history, no seen set and no cached state. Embedded, both share one profile store and
cache (what a worker group's state node gives its workers); real, each has its own connections to
Cassandra and Redis."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from server.domain import Interaction, UserProfile
from server.gen.recd.v1 import catalog_pb2, common_pb2
from server.gen.recd.v1 import recommender_pb2 as rpb
from server.tests.api.test_end_to_end import cluster_items
from server.tests.api.two_frontends import *  # noqa: F403 (the two-frontend fixtures)
from server.tests.api.two_frontends import Pair, eventually
from server.tests.conftest import ToyCatalogue


def top_item(toy: ToyCatalogue) -> str:
    return toy.item_ids[int(np.argmax(toy.popularity))]


async def test_an_erased_user_is_cold_on_every_frontend(pair: Pair, toy: ToyCatalogue) -> None:
    a, b = pair
    top = top_item(toy)

    async def popular_served() -> bool:
        return top in {i.item_id for i in (await b.recommend("stranger", k=10)).items}

    await eventually(popular_served)
    history = cluster_items(toy, 3, 6)
    await a.upsert_users([UserProfile("zoe", toy.centres[3], {"lang": "en"})])
    await a.record_interactions([Interaction("zoe", item, "click", 1.0, 0) for item in [*history, top]])
    warm = await b.recommend("zoe", k=10)  # caches zoe's state (the cache every frontend shares)
    assert warm.retrieval != rpb.RETRIEVAL_UNSPECIFIED
    served = {i.item_id for i in warm.items}
    assert served and not served & {*history, top}  # her seen set is excluded

    await a.delete_user("zoe")

    cold = await b.recommend("zoe", k=10)
    assert cold.retrieval == rpb.RETRIEVAL_UNSPECIFIED  # no vector: no profile, no history
    sources = {s for i in cold.items for s in i.sources}
    assert sources == {common_pb2.SOURCE_POPULAR}  # no ANN, no graph: nothing to start from
    # The popular item she had seen is served again: her seen set is gone too.
    assert top in {i.item_id for i in cold.items}
    held = await b.get_user("zoe")
    assert not held.found and not held.HasField("profile")
    assert list(held.interactions) == [] and list(held.seen) == []


async def test_delete_users_erases_a_batch_and_only_it(pair: Pair, toy: ToyCatalogue) -> None:
    a, b = pair
    items = cluster_items(toy, 1, 3)
    for user in ("u1", "u2", "kept"):
        await a.record_interactions([Interaction(user, item, "view", 1.0, 0) for item in items])
    assert await b.delete_users(["u1", "u2", "u1", "never-seen"]) == 3
    for user in ("u1", "u2"):
        assert not (await a.get_user(user)).found
        assert (await a.recommend(user, k=5)).retrieval == rpb.RETRIEVAL_UNSPECIFIED
    kept = await a.get_user("kept")
    assert kept.found and {s.item_id for s in kept.seen} == set(items)
    assert (await a.recommend("kept", k=5)).retrieval != rpb.RETRIEVAL_UNSPECIFIED


async def test_get_user_returns_what_is_held(pair: Pair, toy: ToyCatalogue) -> None:
    a, b = pair
    items = cluster_items(toy, 2, 4)
    await a.upsert_users([UserProfile("amy", toy.centres[2], {"lang": "de", "tier": "gold"})])
    await a.record_interactions(
        [Interaction("amy", item, "click", 2.0, 1_700_000_000_000 + k) for k, item in enumerate(items)]
        + [Interaction("amy", "not-in-the-catalogue", "view", 1.0, 1_700_000_000_100)]
    )
    held = await b.get_user("amy", max_interactions=3)
    assert held.user_id == "amy" and held.found
    assert dict(held.profile.attributes) == {"lang": "de", "tier": "gold"}
    np.testing.assert_allclose(held.profile.embedding, toy.centres[2], atol=1e-3)  # float16 when real
    assert [(i.item_id, i.timestamp_ms) for i in held.interactions] == [
        ("not-in-the-catalogue", 1_700_000_000_100),
        (items[3], 1_700_000_000_003),
        (items[2], 1_700_000_000_002),
    ]
    assert held.interactions[1].action == "click" and held.interactions[1].weight == pytest.approx(2.0)
    assert held.interactions_truncated
    # Most recently seen first; an item the catalogue does not know is listed by its hash alone.
    assert [s.item_id for s in held.seen] == ["", items[3], items[2], items[1], items[0]]
    assert [s.last_seen_ms for s in held.seen][:2] == [1_700_000_000_100, 1_700_000_000_003]
    assert all(s.item_hash for s in held.seen)
    everything = await b.get_user("amy", max_interactions=100)
    assert len(everything.interactions) == 5 and not everything.interactions_truncated
    assert not (await b.get_user("nobody")).found


@pytest.mark.parametrize(
    ("method", "request_", "fragment"),
    [
        ("DeleteUser", catalog_pb2.DeleteUserRequest(user_id=""), "user_id must not be empty"),
        ("DeleteUser", catalog_pb2.DeleteUserRequest(user_id="x" * 257), "user_id is 257 bytes"),
        ("DeleteUsers", catalog_pb2.DeleteUsersRequest(), "user_ids must not be empty"),
        ("DeleteUsers", catalog_pb2.DeleteUsersRequest(user_ids=["ok", ""]), "user_ids[1] must not be empty"),
        ("DeleteUsers", catalog_pb2.DeleteUsersRequest(user_ids=["u"] * 100_000), "user_ids"),
        ("GetUser", catalog_pb2.GetUserRequest(user_id=""), "user_id must not be empty"),
        ("GetUser", catalog_pb2.GetUserRequest(user_id="u", max_interactions=10_001), "max_interactions"),
    ],
)
async def test_bad_erasure_and_access_requests_are_invalid_argument(
    pair: Pair, method: str, request_: object, fragment: str
) -> None:
    a, _ = pair
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await getattr(a.catalog, method)(request_, timeout=20.0)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in (raised.value.details() or "")

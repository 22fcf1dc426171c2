"""Edge cache keys: each component changes the key; requests that mean the same thing share one."""

from __future__ import annotations

import pytest

from server.edge.keys import KeyParts, key_of_user, normalise, time_bucket, user_key_prefix
from server.gen.recd.v1 import common_pb2, recommender_pb2


def req(**fields: object) -> recommender_pb2.RecommendRequest:
    base: dict[str, object] = {"user_id": "u1", "k": 10}
    base.update(fields)
    return recommender_pb2.RecommendRequest(**base)  # type: ignore[arg-type]


def allowed(*values: str) -> common_pb2.AllowedValues:
    return common_pb2.AllowedValues(values=list(values))


BASE = KeyParts("e1", "m1", "u1", "0", normalise(req()), 7)


@pytest.mark.parametrize(
    "changed",
    [
        pytest.param(KeyParts("e2", "m1", "u1", "0", BASE.request, 7), id="key version"),
        pytest.param(KeyParts("e1", "m2", "u1", "0", BASE.request, 7), id="model version"),
        pytest.param(KeyParts("e1", "m1", "u2", "0", BASE.request, 7), id="user id"),
        pytest.param(KeyParts("e1", "m1", "u1", "ab12", BASE.request, 7), id="user version"),
        pytest.param(KeyParts("e1", "m1", "u1", "0", BASE.request, 8), id="time bucket"),
        pytest.param(KeyParts("e1", "m1", "u1", "0", normalise(req(k=20)), 7), id="k"),
        pytest.param(
            KeyParts("e1", "m1", "u1", "0", normalise(req(filter={"lang": allowed("en")})), 7), id="filter"
        ),
        pytest.param(
            KeyParts("e1", "m1", "u1", "0", normalise(req(context={"device": "tv"})), 7), id="context"
        ),
        pytest.param(
            KeyParts("e1", "m1", "u1", "0", normalise(req(exclude_item_ids=["i1"])), 7), id="exclusions"
        ),
        pytest.param(KeyParts("e1", "m1", "u1", "0", normalise(req(diversity=0.3)), 7), id="diversity"),
        pytest.param(
            KeyParts("e1", "m1", "u1", "0", normalise(req(include_seen=True)), 7), id="include_seen"
        ),
    ],
)
def test_each_component_changes_the_key(changed: KeyParts) -> None:
    assert changed.key() != BASE.key()


@pytest.mark.parametrize(
    ("a", "b"),
    [
        pytest.param(req(k=0), req(k=10), id="k=0 is the default k"),
        pytest.param(
            req(filter={"lang": allowed("en", "de"), "cat": allowed("x")}),
            req(filter={"cat": allowed("x"), "lang": allowed("de", "en", "en")}),
            id="filter order and duplicates",
        ),
        pytest.param(
            req(context={"a": "1", "b": "2"}), req(context={"b": "2", "a": "1"}), id="context order"
        ),
        pytest.param(
            req(exclude_item_ids=["i2", "i1"]), req(exclude_item_ids=["i1", "i2", "i1"]), id="exclusions"
        ),
        pytest.param(req(diversity=0.3), req(diversity=0.300001), id="diversity noise"),
    ],
)
def test_equivalent_requests_share_a_key(
    a: recommender_pb2.RecommendRequest, b: recommender_pb2.RecommendRequest
) -> None:
    assert KeyParts("e1", "m1", "u1", "0", normalise(a), 0).key() == (
        KeyParts("e1", "m1", "u1", "0", normalise(b), 0).key()
    )


def test_key_is_stable_across_calls_and_processes() -> None:
    # A fixed value: replicas (other processes, other versions of Python's hash seed) must agree.
    assert BASE.key() == KeyParts("e1", "m1", "u1", "0", normalise(req()), 7).key()
    assert BASE.key().startswith("edge:e1:u1:")


def test_separators_in_ids_cannot_collide() -> None:
    a = KeyParts("e1", "m1", "u:1", "0", BASE.request, 0)
    b = KeyParts("e1", "m1:u", "1", "0", BASE.request, 0)
    assert a.key() != b.key()


def test_served_by_changes_only_the_model_and_the_variants() -> None:
    assert BASE.served_by("m2", "exp=b") == KeyParts("e1", "m2", "u1", "0", BASE.request, 7, "exp=b")


def test_variants_never_share_a_key() -> None:
    control, treatment = BASE.served_by("m1", "exp=a"), BASE.served_by("m1", "exp=b")
    assert len({BASE.key(), control.key(), treatment.key()}) == 3


def test_time_buckets_roll_over_at_a_per_user_phase() -> None:
    width = 60.0
    assert time_bucket(1000.0, "u1", 0.0) == 0
    # Within one width a user's bucket changes exactly once...
    changes = {
        user: sum(
            time_bucket(t, user, width) != time_bucket(t + 1, user, width) for t in range(0, int(width))
        )
        for user in (f"u{i}" for i in range(50))
    }
    assert set(changes.values()) == {1}
    # ...and users do not all change in the same second.
    seconds = {
        user: next(t for t in range(60) if time_bucket(t, user, width) != time_bucket(t + 1, user, width))
        for user in changes
    }
    assert len(set(seconds.values())) > 10


@pytest.mark.parametrize(
    ("user", "owner", "expected"),
    [("a", "a", True), ("a:b", "a", False), ("a", "a:b", False), ("a:b", "a:b", True), ("ab", "a", False)],
)
def test_a_users_keys_are_told_apart_from_ids_sharing_a_prefix(user: str, owner: str, expected: bool) -> None:
    key = KeyParts("e1", "m1", user, "0", BASE.request, 7).key()
    assert key_of_user(key, user_key_prefix("e1", owner)) is expected
    assert not key_of_user(key, user_key_prefix("e2", user))  # another key version's

"""server._core.HashRing: consistent hashing with virtual nodes, and the resharding plan."""

from __future__ import annotations

import numpy as np
import pytest

from server._core import DEFAULT_VNODES, HashRing


def names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}-{i:02d}" for i in range(n)]


KEYS = [f"item-{i}" for i in range(50_000)]


def owner_names(ring: HashRing, keys: list[str]) -> np.ndarray:
    return np.array(ring.members, dtype=object)[ring.owner(keys)]


@pytest.mark.parametrize(
    ("members", "vnodes", "needle"),
    [
        ([], 16, "`members`"),
        (["a", "b", "a"], 16, "'a'|\"a\""),
        (["a"], 0, "`vnodes`"),
        (["a"], -3, "`vnodes`"),
        ("abc", 16, "`members`"),
        (["a", 1], 16, r"`members\[1\]`"),
    ],
)
def test_invalid_rings(members: object, vnodes: int, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        HashRing(members, vnodes)  # type: ignore[arg-type]


def test_attributes() -> None:
    ring = HashRing(["b", "a", "c"], vnodes=8)
    assert ring.members == ["b", "a", "c"]
    assert ring.vnodes == 8
    assert len(ring) == 3
    assert HashRing(["x"]).vnodes == DEFAULT_VNODES


def test_deterministic_and_independent_of_member_order() -> None:
    members = names("shard", 20)
    a, b = HashRing(members), HashRing(members)
    np.testing.assert_array_equal(a.owner(KEYS), b.owner(KEYS))
    reordered = HashRing(members[::-1])
    np.testing.assert_array_equal(owner_names(a, KEYS), owner_names(reordered, KEYS))
    assert a.plan(reordered, KEYS).shape == (0, 3)


@pytest.mark.parametrize(("n_members", "replicas"), [(1, 1), (5, 1), (5, 3), (5, 5), (20, 3)])
def test_owners_are_distinct_and_start_with_the_owner(n_members: int, replicas: int) -> None:
    ring = HashRing(names("node", n_members), vnodes=64)
    keys = KEYS[:5000]
    owners = ring.owners(keys, replicas)
    assert owners.dtype == np.uint32
    assert owners.shape == (len(keys), replicas)
    np.testing.assert_array_equal(owners[:, 0], ring.owner(keys))
    assert (np.sort(owners, axis=1)[:, 1:] != np.sort(owners, axis=1)[:, :-1]).all()
    assert owners.max() < n_members


@pytest.mark.parametrize("replicas", [0, -1, 4])
def test_owners_rejects_bad_replicas(replicas: int) -> None:
    with pytest.raises(ValueError, match="`replicas`"):
        HashRing(names("node", 3)).owners(KEYS[:3], replicas)


@pytest.mark.parametrize(
    ("old_members", "new_members"),
    [
        (names("shard", 20), names("shard", 22)),  # grow
        (names("shard", 20), [m for m in names("shard", 20) if m != "shard-07"]),  # remove
        (names("shard", 3), names("node", 3)),  # replace everyone
        (names("shard", 5), names("shard", 5)[::-1]),  # same members, other order
    ],
)
def test_plan_lists_exactly_the_keys_whose_owner_name_changes(
    old_members: list[str], new_members: list[str]
) -> None:
    old, new = HashRing(old_members), HashRing(new_members)
    plan = old.plan(new, KEYS)
    assert plan.dtype == np.int64
    assert plan.ndim == 2
    assert plan.shape[1] == 3
    before, after = old.owner(KEYS), new.owner(KEYS)
    moved = np.flatnonzero(owner_names(old, KEYS) != owner_names(new, KEYS))
    np.testing.assert_array_equal(plan[:, 0], moved)
    np.testing.assert_array_equal(plan[:, 1], before[moved])
    np.testing.assert_array_equal(plan[:, 2], after[moved])


def test_growing_moves_only_to_new_members_and_about_their_share() -> None:
    old, new = HashRing(names("shard", 20)), HashRing(names("shard", 22))
    plan = old.plan(new, KEYS)
    new_names = {new.members[i] for i in plan[:, 2]}
    assert new_names <= {"shard-20", "shard-21"}
    assert 0 < len(plan) / len(KEYS) <= 1.2 * 2 / 22


def test_removing_moves_only_the_removed_members_keys() -> None:
    members = names("shard", 20)
    old, new = HashRing(members), HashRing([m for m in members if m != "shard-07"])
    plan = old.plan(new, KEYS)
    assert {old.members[i] for i in plan[:, 1]} == {"shard-07"}
    assert len(plan) == int((old.owner(KEYS) == 7).sum())


def test_balance() -> None:
    ring = HashRing(names("shard", 20))
    keys = [f"k{i}" for i in range(200_000)]
    load = np.bincount(ring.owner(keys), minlength=20)
    assert load.max() / load.mean() < 1.2


def test_empty_keys() -> None:
    ring = HashRing(names("shard", 3))
    assert ring.owner([]).shape == (0,)
    assert ring.owners([], 2).shape == (0, 2)
    assert ring.plan(HashRing(["x"]), []).shape == (0, 3)


def test_plan_needs_a_ring() -> None:
    with pytest.raises(ValueError, match="`other`"):
        HashRing(["a"]).plan(["a"], KEYS[:2])  # type: ignore[arg-type]

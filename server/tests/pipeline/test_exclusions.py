"""Exclusions as sorted labels: what a request must not be answered with, per request and for a batch,
and the membership test the shards and the popular list use on them."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from server.pipeline.exclusions import NO_LABELS, excluded_batch, excluded_labels
from server.pipeline.stages import Kind
from server.tests.pipeline.stagekit import labels, request, seen
from shards.records import is_excluded

SEEN = seen("s1", "s2", "s3")


def expected(*ids: str) -> npt.NDArray[np.uint64]:
    return np.unique(labels(*ids)) if ids else NO_LABELS


def assert_sorted_unique(got: npt.NDArray[np.uint64]) -> None:
    assert got.dtype == np.uint64
    assert bool(np.all(got[1:] > got[:-1]))  # strictly increasing: sorted and unique


@pytest.mark.parametrize(
    ("fields", "seen_set", "expected_ids"),
    [
        pytest.param({}, NO_LABELS, [], id="nothing"),
        pytest.param({}, SEEN, ["s1", "s2", "s3"], id="seen"),
        pytest.param({"include_seen": True}, SEEN, [], id="include_seen"),
        pytest.param({"exclude_item_ids": frozenset({"x"})}, NO_LABELS, ["x"], id="exclusion"),
        pytest.param(
            {"exclude_item_ids": frozenset({"x", "s1"})},
            SEEN,
            ["x", "s1", "s2", "s3"],
            id="exclusion+seen-overlap",
        ),
        pytest.param(
            {"exclude_item_ids": frozenset({"x"}), "include_seen": True},
            SEEN,
            ["x"],
            id="exclusion+include_seen",
        ),
        pytest.param({"seed_item_id": "seed", "kind": Kind.SIMILAR}, NO_LABELS, ["seed"], id="seed"),
        pytest.param(
            {"seed_item_id": "seed", "kind": Kind.SIMILAR, "exclude_item_ids": frozenset({"seed", "y"})},
            NO_LABELS,
            ["seed", "y"],
            id="seed-also-excluded",
        ),
        pytest.param(
            {"seed_item_id": "s2", "kind": Kind.SIMILAR, "exclude_item_ids": frozenset({"z"})},
            SEEN,
            ["z", "s1", "s2", "s3"],
            id="seed+exclusion+seen",
        ),
        pytest.param(
            {"exclude_item_ids": frozenset(f"x{n}" for n in range(50))},
            SEEN,
            [f"x{n}" for n in range(50)] + ["s1", "s2", "s3"],
            id="many-exclusions",
        ),
    ],
)
def test_excluded_labels(
    fields: dict[str, object], seen_set: npt.NDArray[np.uint64], expected_ids: list[str]
) -> None:
    got = excluded_labels(request(**fields), seen_set)  # type: ignore[arg-type]
    assert_sorted_unique(got)
    np.testing.assert_array_equal(got, expected(*expected_ids))


def test_the_seen_set_is_not_changed() -> None:
    held = SEEN.copy()
    excluded_labels(request(exclude_item_ids=frozenset({"x"})), held)
    np.testing.assert_array_equal(held, SEEN)


@pytest.mark.parametrize(
    ("requests_fields", "seen_sets", "expected_rows"),
    [
        pytest.param([], [], [], id="empty-batch"),
        pytest.param([{}], [NO_LABELS], [[]], id="one-without-exclusions"),
        pytest.param(
            [{}, {"include_seen": True}, {"exclude_item_ids": frozenset({"x"})}],
            [SEEN, SEEN, SEEN],
            [["s1", "s2", "s3"], [], ["x", "s1", "s2", "s3"]],
            id="same-user-three-ways",
        ),
        pytest.param(
            [{"exclude_item_ids": frozenset({"a"})}, {}, {"seed_item_id": "b", "kind": Kind.SIMILAR}],
            [NO_LABELS, seen("c"), NO_LABELS],
            [["a"], ["c"], ["b"]],
            id="each-request-its-own",
        ),
    ],
)
def test_excluded_batch(
    requests_fields: list[dict[str, object]],
    seen_sets: list[npt.NDArray[np.uint64]],
    expected_rows: list[list[str]],
) -> None:
    requests = [request(**f) for f in requests_fields]  # type: ignore[arg-type]
    got = excluded_batch(requests, seen_sets)
    assert len(got) == len(requests)
    assert got.values.dtype == np.uint64
    assert got.offsets[0] == 0 and got.offsets[-1] == len(got.values)
    for i, ids in enumerate(expected_rows):
        row = np.asarray(got.row(i))
        assert_sorted_unique(row)
        np.testing.assert_array_equal(row, expected(*ids))


def test_excluded_batch_needs_one_seen_set_per_request() -> None:
    with pytest.raises(ValueError):
        excluded_batch([request(), request()], [SEEN])


@pytest.mark.parametrize("n_sorted", [0, 1, 7, 10_000])
def test_is_excluded_agrees_with_isin(n_sorted: int) -> None:
    rng = np.random.default_rng(n_sorted)
    universe = rng.integers(0, 2**64 - 1, size=20_000, dtype=np.uint64)
    sorted_labels = (
        np.unique(rng.choice(universe, size=n_sorted, replace=False)) if n_sorted else universe[:0]
    )
    probe = np.concatenate([rng.choice(universe, 500), np.array([0, 2**64 - 1], dtype=np.uint64)])
    np.testing.assert_array_equal(is_excluded(probe, sorted_labels), np.isin(probe, sorted_labels))

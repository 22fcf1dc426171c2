"""Exclusions as sorted labels: what a request must not be answered with, and the membership test."""

from __future__ import annotations

import numpy as np
import pytest

from server import _core
from server.pipeline.context import RequestContext
from server.pipeline.exclusions import excluded_labels
from shards.records import is_excluded


def ctx(**fields: object) -> RequestContext:
    return RequestContext(pipeline="recommend", k=10, deadline=0.0, **fields)  # type: ignore[arg-type]


def labels(*ids: str) -> np.ndarray:
    return _core.stable_hash64(list(ids))


SEEN = np.sort(labels("s1", "s2", "s3"))


@pytest.mark.parametrize(
    ("fields", "expected_ids"),
    [
        ({}, []),
        ({"seen_labels": SEEN}, ["s1", "s2", "s3"]),
        ({"seen_labels": SEEN, "include_seen": True}, []),
        ({"exclude_item_ids": frozenset({"x"})}, ["x"]),
        ({"exclude_item_ids": frozenset({"x", "s1"}), "seen_labels": SEEN}, ["x", "s1", "s2", "s3"]),
        ({"exclude_item_ids": frozenset({"x"}), "seen_labels": SEEN, "include_seen": True}, ["x"]),
        ({"seed_item_id": "seed"}, ["seed"]),
    ],
)
def test_excluded_labels(fields: dict[str, object], expected_ids: list[str]) -> None:
    got = excluded_labels(ctx(**fields))
    assert got.dtype == np.uint64
    np.testing.assert_array_equal(got, np.unique(labels(*expected_ids)) if expected_ids else [])


@pytest.mark.parametrize("n_sorted", [0, 1, 7, 10_000])
def test_is_excluded_agrees_with_isin(n_sorted: int) -> None:
    rng = np.random.default_rng(n_sorted)
    universe = rng.integers(0, 2**64 - 1, size=20_000, dtype=np.uint64)
    sorted_labels = (
        np.unique(rng.choice(universe, size=n_sorted, replace=False)) if n_sorted else universe[:0]
    )
    probe = np.concatenate([rng.choice(universe, 500), np.array([0, 2**64 - 1], dtype=np.uint64)])
    np.testing.assert_array_equal(is_excluded(probe, sorted_labels), np.isin(probe, sorted_labels))

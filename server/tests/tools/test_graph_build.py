from __future__ import annotations

import math

import numpy as np
import pytest

from server.domain import Edge, Interaction
from server.tools.graph_build import derive_edge_arrays, derive_edges


def history(user: str, items: list[str], start: int = 0) -> list[Interaction]:
    return [Interaction(user, item, "view", 1.0, start + t) for t, item in enumerate(items)]


def as_map(edges: list[Edge]) -> dict[tuple[str, str], float]:
    return {(e.src_item_id, e.dst_item_id): e.score for e in edges}


def test_score_is_cosine_over_users_and_edges_go_both_ways() -> None:
    interactions = [
        *history("u1", ["a", "b"]),
        *history("u2", ["a", "b"]),
        *history("u3", ["a", "c"]),
        *history("u4", ["b"]),
    ]
    edges = as_map(derive_edges(interactions, min_count=2))
    # a: 3 users, b: 3 users, together for 2 users.
    assert edges == {("a", "b"): pytest.approx(2 / 3), ("b", "a"): pytest.approx(2 / 3)}


def test_min_count_keeps_rare_pairs_out() -> None:
    interactions = [*history("u1", ["a", "b"]), *history("u2", ["a", "c"])]
    assert derive_edges(interactions, min_count=2) == []
    edges = as_map(derive_edges(interactions, min_count=1))
    assert edges[("a", "b")] == pytest.approx(1 / math.sqrt(2 * 1))
    assert set(edges) == {("a", "b"), ("b", "a"), ("a", "c"), ("c", "a")}


def test_a_user_counts_once_per_pair() -> None:
    interactions = history("u1", ["a", "b", "a", "b", "a", "b"]) + history("u2", ["a", "b"])
    edges = as_map(derive_edges(interactions, min_count=2))
    assert edges[("a", "b")] == pytest.approx(1.0)


def test_only_items_within_the_window_co_occur() -> None:
    far_apart = ["a", "x1", "x2", "x3", "b"]  # a and b are 4 positions apart
    interactions = history("u1", far_apart) + history("u2", far_apart)
    assert ("a", "b") not in as_map(derive_edges(interactions, window=3))
    assert ("a", "b") in as_map(derive_edges(interactions, window=4))


def test_time_order_not_input_order_defines_the_window() -> None:
    shuffled = [
        Interaction("u1", "b", "view", 1.0, 40),
        Interaction("u1", "x", "view", 1.0, 20),
        Interaction("u1", "a", "view", 1.0, 30),
        Interaction("u1", "y", "view", 1.0, 10),
    ]
    same_for_u2 = [Interaction("u2", i.item_id, i.action, 1.0, i.timestamp_ms) for i in shuffled]
    edges = as_map(derive_edges(shuffled + same_for_u2, window=1))
    assert ("a", "b") in edges  # adjacent in time (30, 40)
    assert ("y", "b") not in edges


def test_each_item_keeps_its_top_n() -> None:
    # Hub h co-occurs with everyone; pair strength grows with k.
    interactions: list[Interaction] = []
    for k in range(1, 6):
        for user in range(k + 1):
            interactions += history(f"u{k}-{user}", ["h", f"n{k}"], start=0)
    edges = derive_edges(interactions, top_n=2, min_count=1)
    from_hub = [e.dst_item_id for e in edges if e.src_item_id == "h"]
    assert from_hub == ["n5", "n4"]
    assert all(any(e.src_item_id == f"n{k}" and e.dst_item_id == "h" for e in edges) for k in range(1, 6))


def test_no_self_edges_and_empty_input() -> None:
    assert derive_edges([]) == []
    assert derive_edges(history("u1", ["a", "a", "a"]) + history("u2", ["a", "a"])) == []


def test_arrays_are_deterministic_and_sorted_by_source() -> None:
    rng = np.random.default_rng(1)
    users = rng.integers(0, 300, 20_000)
    items = rng.integers(0, 500, 20_000)
    times = rng.integers(0, 10**9, 20_000)
    first = derive_edge_arrays(users, items, times, min_count=2)
    second = derive_edge_arrays(users, items, times, min_count=2)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    src, _, score = first
    assert len(src) > 0
    assert np.all(np.diff(src) >= 0)
    assert np.all((score > 0) & (score <= 1))
    assert np.bincount(src).max() <= 20

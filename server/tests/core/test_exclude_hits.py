"""server._core.exclude_hits: per-query hit lists with padding and excluded labels dropped."""

from __future__ import annotations

import numpy as np
import pytest

from server._core import NO_ITEM, exclude_hits

NEG = -np.inf


def reference(
    labels: np.ndarray, scores: np.ndarray, excluded: np.ndarray, offsets: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Brute force: a boolean mask per row (np.isin, no binary search), then the first k survivors."""
    q_count = labels.shape[0]
    out_labels = np.full((q_count, k), NO_ITEM, dtype=np.uint64)
    out_scores = np.full((q_count, k), NEG, dtype=np.float32)
    kept = np.zeros(q_count, dtype=np.int64)
    for q in range(q_count):
        part = excluded[offsets[q] : offsets[q + 1]]
        keep = (labels[q] != NO_ITEM) & ~np.isin(labels[q], part)
        survivors = np.flatnonzero(keep)[:k]
        kept[q] = len(survivors)
        out_labels[q, : len(survivors)] = labels[q, survivors]
        out_scores[q, : len(survivors)] = scores[q, survivors]
    return out_labels, out_scores, kept


def csr(parts: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    values = np.array([x for part in parts for x in part], dtype=np.uint64)
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(p) for p in parts])
    return values, offsets


@pytest.mark.parametrize(
    ("q_count", "length", "k", "label_space", "max_excluded", "pad_share"),
    [
        (0, 5, 3, 10, 4, 0.0),
        (3, 0, 2, 10, 4, 0.0),
        (1, 10, 1, 10, 0, 0.0),
        (4, 20, 10, 30, 12, 0.2),
        (4, 20, 25, 30, 12, 0.2),  # k beyond the row: padded
        (16, 20, 10, 400, 50, 0.05),  # the shard's case: 16 queries, 50 seen items each
        (5, 40, 5, 40, 40, 0.5),  # most of every row dropped
        (1200, 40, 10, 500, 60, 0.1),  # large enough for the parallel path
    ],
)
def test_matches_a_brute_force_filter(
    q_count: int, length: int, k: int, label_space: int, max_excluded: int, pad_share: float
) -> None:
    rng = np.random.default_rng(q_count * 1000 + length * 10 + k)
    labels = rng.integers(0, label_space, size=(q_count, length)).astype(np.uint64)
    labels[rng.random((q_count, length)) < pad_share] = NO_ITEM
    scores = np.round(rng.standard_normal((q_count, length)), 1).astype(np.float32)
    parts = [
        np.unique(rng.integers(0, label_space, size=int(rng.integers(0, max_excluded + 1)))).tolist()
        for _ in range(q_count)
    ]
    excluded, offsets = csr(parts)
    got = exclude_hits(labels, scores, excluded, offsets, k)
    want = reference(labels, scores, excluded, offsets, k)
    assert [a.dtype for a in got] == [np.uint64, np.float32, np.int64]
    assert got[0].shape == got[1].shape == (q_count, k) and got[2].shape == (q_count,)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize(
    ("row", "excluded", "k", "want"),
    [
        ([(5, 0.9), (3, 0.8), (7, 0.1)], [], 2, [(5, 0.9), (3, 0.8)]),
        ([(5, 0.9), (3, 0.8), (7, 0.1), (1, 0.0)], [3, 5], 2, [(7, 0.1), (1, 0.0)]),
        ([(5, 0.9), (3, 0.8)], [1, 3, 4], 3, [(5, 0.9), (NO_ITEM, NEG), (NO_ITEM, NEG)]),
        ([(NO_ITEM, 0.5), (2, 0.4), (NO_ITEM, NEG), (4, 0.3)], [], 2, [(2, 0.4), (4, 0.3)]),
        ([(1, NEG), (2, np.inf)], [], 2, [(1, NEG), (2, np.inf)]),
        ([(0, 1.0), (NO_ITEM - 1, 0.5)], [0], 2, [(NO_ITEM - 1, 0.5), (NO_ITEM, NEG)]),
        ([(41, 0.9), (40, 0.8), (3, 0.7)], list(range(0, 100, 2)), 3, [(41, 0.9), (3, 0.7), (NO_ITEM, NEG)]),
    ],
    ids=[
        "nothing excluded",
        "excluded dropped in order",
        "short row padded",
        "NO_ITEM dropped",
        "scores pass through",
        "extreme labels",
        "long exclusion list",
    ],
)
def test_table(
    row: list[tuple[int, float]], excluded: list[int], k: int, want: list[tuple[int, float]]
) -> None:
    labels = np.array([[label for label, _ in row]], dtype=np.uint64)
    scores = np.array([[score for _, score in row]], dtype=np.float32)
    values, offsets = csr([excluded])
    got_labels, got_scores, kept = exclude_hits(labels, scores, values, offsets, k)
    assert [int(x) for x in got_labels[0]] == [w[0] for w in want]
    np.testing.assert_array_equal(got_scores[0], np.array([w[1] for w in want], dtype=np.float32))
    assert kept.tolist() == [sum(w[0] != NO_ITEM for w in want)]


def test_each_query_uses_its_own_part() -> None:
    labels = np.tile(np.array([1, 2, 3], dtype=np.uint64), (3, 1))
    scores = np.tile(np.array([0.3, 0.2, 0.1], dtype=np.float32), (3, 1))
    excluded, offsets = csr([[1], [], [1, 2]])
    got_labels, _, kept = exclude_hits(labels, scores, excluded, offsets, 2)
    assert got_labels.tolist() == [[2, 3], [1, 2], [3, NO_ITEM]]
    assert kept.tolist() == [2, 2, 1]


def test_outputs_are_fresh() -> None:
    labels = np.array([[1, 2]], dtype=np.uint64)
    scores = np.array([[0.5, 0.4]], dtype=np.float32)
    got_labels, got_scores, kept = exclude_hits(
        labels, scores, np.zeros(0, np.uint64), np.zeros(2, np.int64), 2
    )
    got_labels[0, 0] = 9
    assert labels[0, 0] == 1
    assert all(a.flags.writeable and a.flags.c_contiguous for a in (got_labels, got_scores, kept))


L2 = np.zeros((2, 3), dtype=np.uint64)
S2 = np.zeros((2, 3), dtype=np.float32)
E3 = np.array([1, 2, 3], dtype=np.uint64)


@pytest.mark.parametrize(
    ("labels", "scores", "excluded", "offsets", "k", "needle"),
    [
        (L2, S2, E3, np.array([0, 1, 3]), 0, "`k` must be >= 1"),
        (L2, S2[:, :2].copy(), E3, np.array([0, 1, 3]), 1, "`labels` has shape"),
        (L2, S2, E3, np.array([0, 3]), 1, "`offsets` has 2 values but 2 parts need 3"),
        (L2, S2, E3, np.array([0, 2, 1]), 1, "`offsets` must be non-decreasing"),
        (L2, S2, E3, np.array([0, 1, 4]), 1, r"`offsets\[2\]` is 4, outside 0..=3"),
        (L2, S2, E3, np.array([-1, 1, 3]), 1, r"`offsets\[0\]` is -1"),
        (L2, S2, E3, np.array([0, 1, 3], dtype=np.int32), 1, "`offsets` has dtype int32"),
        (L2, S2, E3.astype(np.int64), np.array([0, 1, 3]), 1, "`excluded` has dtype int64"),
    ],
    ids=[
        "k",
        "shapes",
        "offsets length",
        "decreasing",
        "past the end",
        "negative",
        "offsets dtype",
        "excluded dtype",
    ],
)
def test_errors(
    labels: np.ndarray, scores: np.ndarray, excluded: np.ndarray, offsets: np.ndarray, k: int, needle: str
) -> None:
    with pytest.raises(ValueError, match=needle):
        exclude_hits(labels, scores, excluded, offsets, k)

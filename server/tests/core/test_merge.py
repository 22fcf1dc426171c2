"""server._core.merge_topk: k-way merge of per-shard top-k lists with label dedup."""

from __future__ import annotations

import numpy as np
import pytest

from server._core import NO_ITEM, merge_topk

NEG = -np.inf


def reference(labels: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort every usable entry by (score desc, list, position) and keep each label's first."""
    q_count, s_count, length = labels.shape
    out_labels = np.full((q_count, k), NO_ITEM, dtype=np.uint64)
    out_scores = np.full((q_count, k), NEG, dtype=np.float32)
    for q in range(q_count):
        entries = sorted(
            (-float(scores[q, s, i]), s, i)
            for s in range(s_count)
            for i in range(length)
            if labels[q, s, i] != NO_ITEM and not np.isnan(scores[q, s, i]) and scores[q, s, i] != NEG
        )
        seen: set[int] = set()
        for _, s, i in entries:
            label = int(labels[q, s, i])
            if label in seen:
                continue
            out_labels[q, len(seen)] = label
            out_scores[q, len(seen)] = scores[q, s, i]
            seen.add(label)
            if len(seen) == k:
                break
    return out_labels, out_scores


def random_lists(
    rng: np.random.Generator, q_count: int, s_count: int, length: int
) -> tuple[np.ndarray, np.ndarray]:
    labels = np.full((q_count, s_count, length), NO_ITEM, dtype=np.uint64)
    scores = np.full((q_count, s_count, length), NEG, dtype=np.float32)
    for q in range(q_count):
        for s in range(s_count):
            fill = int(rng.integers(0, length + 1))
            # One decimal: many ties. A small label space: many duplicates across lists.
            scores[q, s, :fill] = np.sort(np.round(rng.random(fill), 1))[::-1]
            labels[q, s, :fill] = rng.integers(0, 3 * length + 1, size=fill)
            if fill and rng.random() < 0.2:
                scores[q, s, int(rng.integers(0, fill))] = np.nan
    return labels, scores


@pytest.mark.parametrize(
    ("q_count", "s_count", "length", "k"),
    [
        (1, 1, 0, 3),
        (0, 3, 4, 2),
        (1, 0, 4, 2),
        (4, 3, 5, 1),
        (4, 3, 5, 100),
        (8, 20, 10, 50),
        (300, 8, 16, 10),  # large enough for the parallel path
    ],
)
def test_matches_reference(q_count: int, s_count: int, length: int, k: int) -> None:
    rng = np.random.default_rng(q_count * 1000 + s_count * 10 + length)
    labels, scores = random_lists(rng, q_count, s_count, length)
    got_labels, got_scores = merge_topk(labels, scores, k)
    want_labels, want_scores = reference(labels, scores, k)
    assert got_labels.dtype == np.uint64
    assert got_scores.dtype == np.float32
    assert got_labels.shape == got_scores.shape == (q_count, k)
    np.testing.assert_array_equal(got_labels, want_labels)
    np.testing.assert_array_equal(got_scores, want_scores)


@pytest.mark.parametrize(
    ("lists", "k", "want"),
    [
        ([[(1, 0.9), (2, 0.8)], [(2, 0.95), (1, 0.3)]], 3, [(2, 0.95), (1, 0.9), (NO_ITEM, NEG)]),
        ([[(7, 0.5)], [(8, 0.5)]], 1, [(7, 0.5)]),
        ([[(1, float("inf"))], [(2, 1.0)]], 2, [(1, float("inf")), (2, 1.0)]),
        ([[(1, float("nan")), (2, 0.1)]], 2, [(2, 0.1), (NO_ITEM, NEG)]),
    ],
    ids=["duplicate keeps best", "tie to lower list", "+inf is a score", "nan is missing"],
)
def test_table(lists: list[list[tuple[int, float]]], k: int, want: list[tuple[int, float]]) -> None:
    length = max(len(x) for x in lists)
    labels = np.full((1, len(lists), length), NO_ITEM, dtype=np.uint64)
    scores = np.full((1, len(lists), length), NEG, dtype=np.float32)
    for s, entries in enumerate(lists):
        for i, (label, score) in enumerate(entries):
            labels[0, s, i], scores[0, s, i] = label, score
    got_labels, got_scores = merge_topk(labels, scores, k)
    assert [int(x) for x in got_labels[0]] == [w[0] for w in want]
    np.testing.assert_array_equal(got_scores[0], np.array([w[1] for w in want], dtype=np.float32))


def test_errors() -> None:
    labels = np.zeros((2, 3, 4), dtype=np.uint64)
    scores = np.zeros((2, 3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="`k`"):
        merge_topk(labels, scores, 0)
    with pytest.raises(ValueError, match="`labels` has shape"):
        merge_topk(labels, scores[:, :2].copy(), 3)
    with pytest.raises(ValueError, match="`labels` has dtype int64"):
        merge_topk(labels.astype(np.int64), scores, 3)
    with pytest.raises(ValueError, match="`scores` has dtype float64"):
        merge_topk(labels, scores.astype(np.float64), 3)
    with pytest.raises(ValueError, match="`scores` is not a C-contiguous"):
        merge_topk(labels[:, :, :2].copy(), scores[:, :, ::2], 3)

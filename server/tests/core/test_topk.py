"""server._core.topk_rows: row-wise top-k, sorted, ties to the lower index, NaN/-inf skipped."""

from __future__ import annotations

import numpy as np
import pytest

from server._core import topk_rows

NEG = -np.inf


def reference(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    rows = scores.shape[0]
    idx = np.full((rows, k), -1, dtype=np.int64)
    val = np.full((rows, k), NEG, dtype=np.float32)
    for r, row in enumerate(scores):
        valid = np.flatnonzero(~np.isnan(row) & (row != NEG))
        order = valid[np.argsort(-row[valid], kind="stable")][:k]
        idx[r, : len(order)] = order
        val[r, : len(order)] = row[order]
    return idx, val


@pytest.mark.parametrize(
    ("rows", "cols", "k", "invalid_fraction"),
    [
        (0, 5, 3, 0.0),
        (3, 0, 2, 0.0),
        (1, 10, 1, 0.0),
        (4, 10, 10, 0.3),
        (4, 10, 25, 0.3),
        (64, 1000, 100, 0.1),  # parallel path
        (5, 300, 7, 0.95),
    ],
)
def test_matches_argsort(rows: int, cols: int, k: int, invalid_fraction: float) -> None:
    rng = np.random.default_rng(rows + cols + k)
    scores = np.round(rng.standard_normal((rows, cols)), 1).astype(np.float32)  # many ties
    bad = rng.random((rows, cols)) < invalid_fraction
    scores[bad] = rng.choice(np.array([np.nan, NEG], dtype=np.float32), size=int(bad.sum()))
    idx, val = topk_rows(scores, k)
    want_idx, want_val = reference(scores, k)
    assert idx.dtype == np.int64
    assert val.dtype == np.float32
    assert idx.shape == val.shape == (rows, k)
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_array_equal(val, want_val)


def test_inf_is_a_score() -> None:
    idx, val = topk_rows(np.array([[1.0, np.inf, NEG, np.nan]], dtype=np.float32), 3)
    assert idx.tolist() == [[1, 0, -1]]
    assert val.tolist() == [[np.inf, 1.0, NEG]]


@pytest.mark.parametrize(
    ("scores", "k", "needle"),
    [
        (np.zeros((2, 3), dtype=np.float32), 0, "`k`"),
        (np.zeros((2, 3), dtype=np.float64), 1, "`scores` has dtype float64"),
        (np.zeros(3, dtype=np.float32), 1, "`scores` has shape"),
        (np.zeros((3, 4), dtype=np.float32).T, 1, "`scores` is not a C-contiguous"),
        ([[1.0, 2.0]], 1, "`scores` must be a numpy.ndarray"),
    ],
)
def test_errors(scores: object, k: int, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        topk_rows(scores, k)  # type: ignore[arg-type]

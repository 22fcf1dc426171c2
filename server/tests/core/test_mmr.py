"""server._core.mmr: Maximal Marginal Relevance over unit vectors."""

from __future__ import annotations

import numpy as np
import pytest

from server._core import mmr


def reference(relevance: np.ndarray, vectors: np.ndarray, k: int, diversity: float) -> list[int]:
    lam = np.float32(diversity)
    keep = np.float32(1) - lam
    n = len(relevance)
    picked: list[int] = []
    max_sim = np.full(n, -np.inf, dtype=np.float32)
    while len(picked) < min(k, n):
        score = relevance.copy() if not picked or lam == 0 else keep * relevance - lam * max_sim
        score[picked] = -np.inf
        i = int(np.argmax(score))  # first maximum: ties to the lower index
        picked.append(i)
        max_sim = np.maximum(max_sim, vectors @ vectors[i])
    return picked


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("n", "d", "k", "diversity"),
    [
        (1, 4, 1, 0.5),
        (50, 8, 10, 0.0),
        (50, 8, 10, 0.3),
        (200, 16, 20, 0.7),
        (300, 64, 400, 0.5),
        (2000, 128, 8, 1.0),
    ],
)
def test_matches_numpy(n: int, d: int, k: int, diversity: float) -> None:
    rng = np.random.default_rng(n + d + k)
    relevance = rng.random(n).astype(np.float32)
    vectors = unit_rows(rng, n, d)
    got = mmr(relevance, vectors, k, diversity)
    assert got.dtype == np.int64
    assert got.tolist() == reference(relevance, vectors, k, diversity)
    assert len(set(got.tolist())) == len(got) == min(k, n)


def test_diversity_zero_is_top_k_by_relevance() -> None:
    rng = np.random.default_rng(0)
    relevance = np.round(rng.random(100), 1).astype(np.float32)  # ties
    got = mmr(relevance, unit_rows(rng, 100, 8), 30, 0.0)
    assert got.tolist() == np.argsort(-relevance, kind="stable")[:30].tolist()


def test_skips_near_duplicates() -> None:
    vectors = np.array([[1, 0], [0.99, 0.141], [0, 1]], dtype=np.float32)
    relevance = np.array([0.9, 0.85, 0.5], dtype=np.float32)
    assert mmr(relevance, vectors, 2, 0.0).tolist() == [0, 1]
    assert mmr(relevance, vectors, 2, 0.5).tolist() == [0, 2]


def test_empty() -> None:
    assert mmr(np.zeros(0, np.float32), np.zeros((0, 4), np.float32), 3, 0.5).shape == (0,)


@pytest.mark.parametrize(
    ("relevance", "vectors", "k", "diversity", "needle"),
    [
        (np.ones(2, np.float32), np.ones((2, 2), np.float32), 0, 0.5, "`k`"),
        (np.ones(2, np.float32), np.ones((2, 2), np.float32), 1, 1.5, "`diversity`"),
        (np.ones(2, np.float32), np.ones((2, 2), np.float32), 1, -0.1, "`diversity`"),
        (np.ones(2, np.float32), np.ones((2, 2), np.float32), 1, float("nan"), "`diversity`"),
        (np.ones(3, np.float32), np.ones((2, 2), np.float32), 1, 0.5, "`relevance` has 3 values"),
        (np.array([1, np.nan], np.float32), np.ones((2, 2), np.float32), 1, 0.5, "`relevance` holds a NaN"),
        (
            np.ones(2, np.float32),
            np.array([[1, np.inf], [0, 1]], np.float32),
            1,
            0.5,
            "`vectors` holds a NaN",
        ),
        (np.ones(2, np.float64), np.ones((2, 2), np.float32), 1, 0.5, "`relevance` has dtype float64"),
        (
            np.ones(2, np.float32),
            np.ones((2, 4), np.float32)[:, ::2],
            1,
            0.5,
            "`vectors` is not a C-contiguous",
        ),
    ],
)
def test_errors(relevance: np.ndarray, vectors: np.ndarray, k: int, diversity: float, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        mmr(relevance, vectors, k, diversity)

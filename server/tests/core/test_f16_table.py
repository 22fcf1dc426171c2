"""server._core.F16Table: f16 rows, f32 scoring with padding, growth, and concurrent writers."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from server._core import F16Table

NEG = -np.inf


def as_f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def filled(rng: np.random.Generator, n: int, dim: int) -> tuple[F16Table, np.ndarray]:
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    table = F16Table(dim, capacity=8)
    table.set_rows(np.arange(n, dtype=np.int64), vectors)
    return table, vectors


def reference_score(vectors: np.ndarray, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
    stored = as_f16(vectors)
    valid = (rows >= 0) & (rows < len(vectors))
    gathered = stored[np.where(valid, rows, 0)]
    out = np.einsum("bd,bcd->bc", queries.astype(np.float64), gathered.astype(np.float64))
    return np.where(valid, out, NEG).astype(np.float32)


def test_attributes_and_growth() -> None:
    table = F16Table(4, capacity=2)
    assert (table.dim, table.rows, table.capacity, table.nbytes) == (4, 0, 2, 2 * 4 * 2)
    first = np.arange(8, dtype=np.float32).reshape(2, 4)
    table.set_rows(np.array([0, 1]), first)
    for row, rows, capacity in [(2, 3, 4), (3, 4, 4), (4, 5, 8), (40, 41, 64)]:
        table.set_rows(np.array([row]), np.ones((1, 4), dtype=np.float32))
        assert (table.rows, table.capacity, table.nbytes) == (rows, capacity, capacity * 4 * 2)
        np.testing.assert_array_equal(table.get_rows(np.array([0, 1])), first)
    assert F16Table(3).capacity == 1024
    assert "F16Table(dim=4" in repr(table)


def test_set_get_round_to_nearest_even_like_numpy() -> None:
    rng = np.random.default_rng(1)
    values = np.concatenate(
        [
            rng.standard_normal(200).astype(np.float32) * 100,
            np.array([65504, -65504, 2049, 2051, 1e-8, -0.0, 1 / 3, 6.1e-5], dtype=np.float32),
        ]
    ).reshape(-1, 8)
    table = F16Table(8, capacity=0)
    rows = np.arange(len(values), dtype=np.int64)[::-1].copy()
    table.set_rows(rows, values)
    got = table.get_rows(rows)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, as_f16(values))


def test_duplicate_rows_keep_the_last_vector_and_clear_zeroes() -> None:
    table = F16Table(2)
    table.set_rows(np.array([3, 3]), np.array([[1, 1], [2, 2]], dtype=np.float32))
    assert table.rows == 4
    np.testing.assert_array_equal(table.get_rows(np.array([3, 0])), [[2, 2], [0, 0]])
    table.clear_rows(np.array([3]))
    np.testing.assert_array_equal(table.get_rows(np.array([3])), [[0, 0]])
    assert table.rows == 4


@pytest.mark.parametrize(
    ("batch", "candidates", "dim"),
    [(1, 1, 1), (3, 7, 9), (2, 5000, 64), (64, 1000, 64), (64, 1000, 128), (5, 0, 16), (0, 10, 16)],
)
def test_score_matches_numpy(batch: int, candidates: int, dim: int) -> None:
    rng = np.random.default_rng(batch * 7 + candidates + dim)
    n = 3000
    table, vectors = filled(rng, n, dim)
    queries = rng.standard_normal((batch, dim), dtype=np.float32)
    rows = rng.integers(-2, n + 3, size=(batch, candidates), dtype=np.int64)  # padding and past the end
    got = table.score(queries, rows)
    want = reference_score(vectors, queries, rows)
    assert got.dtype == np.float32
    assert got.shape == (batch, candidates)
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    finite = np.isfinite(want)
    scale = np.abs(queries).sum(axis=1, keepdims=True) * np.abs(as_f16(vectors)).max()
    tol = 1e-3 + 1e-5 * np.broadcast_to(scale, got.shape)[finite]
    assert (np.abs(got[finite] - want[finite]) <= tol).all()


def test_set_rows_is_all_or_nothing() -> None:
    table = F16Table(2, capacity=1)
    with pytest.raises(ValueError, match="`vectors`"):
        table.set_rows(np.array([0, 100]), np.array([[1, 1], [np.nan, 0]], dtype=np.float32))
    assert (table.rows, table.capacity) == (0, 1)


BAD_SET_ROWS = [
    (np.array([0]), np.zeros((1, 3), np.float32), "`vectors` has dimension 3 but 4 is expected"),
    (np.array([0, 1]), np.zeros((1, 4), np.float32), "`rows` has 2 entries"),
    (np.array([-1]), np.zeros((1, 4), np.float32), r"`rows\[0\]` is -1"),
    (np.array([0]), np.array([[0, np.nan, 0, 0]], np.float32), "`vectors` holds a NaN"),
    (np.array([0]), np.array([[0, 0, np.inf, 0]], np.float32), "`vectors` holds a NaN or infinity"),
    (np.array([0]), np.array([[0, 0, 0, 65520]], np.float32), "`vectors` holds 65520.*float16 range"),
    (np.array([0]), np.array([[-1e9, 0, 0, 0]], np.float32), "float16 range"),
    (np.array([0]), np.zeros((1, 4), np.float64), "`vectors` has dtype float64"),
    (np.array([0], np.int32), np.zeros((1, 4), np.float32), "`rows` has dtype int32"),
    (np.array([0]), np.zeros((1, 8), np.float32)[:, ::2], "`vectors` is not a C-contiguous"),
    (np.array([0]), np.zeros(4, np.float32), "`vectors` has shape"),
    ([0], np.zeros((1, 4), np.float32), "`rows` must be a numpy.ndarray"),
]


@pytest.mark.parametrize(("rows", "vectors", "needle"), BAD_SET_ROWS)
def test_set_rows_errors(rows: object, vectors: object, needle: str) -> None:
    table = F16Table(4)
    with pytest.raises(ValueError, match=needle):
        table.set_rows(rows, vectors)  # type: ignore[arg-type]
    assert table.rows == 0


@pytest.mark.parametrize("bad", [-1, 5, 1 << 40])
def test_get_and_clear_need_existing_rows(bad: int) -> None:
    table = F16Table(2)
    table.set_rows(np.arange(5), np.ones((5, 2), np.float32))
    with pytest.raises(ValueError, match=f"`rows` holds row {bad}"):
        table.get_rows(np.array([0, bad]))
    with pytest.raises(ValueError, match="`rows`"):
        table.clear_rows(np.array([bad]))


@pytest.mark.parametrize(
    ("queries", "rows", "needle"),
    [
        (np.zeros((2, 3), np.float32), np.zeros((2, 5), np.int64), "`queries` has dimension 3"),
        (np.zeros((2, 4), np.float32), np.zeros((3, 5), np.int64), "`rows` has 3 rows of candidates"),
        (np.zeros((2, 4), np.float64), np.zeros((2, 5), np.int64), "`queries` has dtype float64"),
        (np.zeros((2, 4), np.float32), np.zeros((2, 5), np.int32), "`rows` has dtype int32"),
        (np.zeros((2, 8), np.float32)[:, ::2], np.zeros((2, 5), np.int64), "`queries` is not a C-contiguous"),
        (np.zeros((2, 4), np.float32), np.zeros((5, 2), np.int64).T, "`rows` is not a C-contiguous"),
        (np.zeros(4, np.float32), np.zeros((1, 5), np.int64), "`queries` has shape"),
    ],
)
def test_score_errors(queries: np.ndarray, rows: np.ndarray, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        F16Table(4).score(queries, rows)


@pytest.mark.parametrize(
    ("dim", "capacity", "needle"), [(0, 4, "`dim`"), (-1, 4, "`dim`"), (4, -1, "`capacity`")]
)
def test_constructor_errors(dim: int, capacity: int, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        F16Table(dim, capacity)


def test_scoring_alongside_a_writer() -> None:
    """One thread adds rows (growing the table) while others score; every row has a fixed vector,
    so a row either scores its known value or, if not set yet, -inf."""
    rng = np.random.default_rng(9)
    dim, total, start = 32, 20_000, 1000
    vectors = rng.standard_normal((total, dim), dtype=np.float32)
    table = F16Table(dim, capacity=start)
    table.set_rows(np.arange(start), vectors[:start])
    queries = rng.standard_normal((8, dim), dtype=np.float32)
    rows = rng.integers(0, total, size=(8, 2000), dtype=np.int64)
    want = reference_score(vectors, queries, rows)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for lo in range(start, total, 500):
                table.set_rows(np.arange(lo, lo + 500), vectors[lo : lo + 500])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def scorer() -> None:
        try:
            for _ in range(40):
                set_before = table.rows
                got = table.score(queries, rows)
                must = rows < set_before
                assert np.allclose(got[must], want[must], atol=1e-2)
                assert (np.isneginf(got[~must]) | np.isclose(got[~must], want[~must], atol=1e-2)).all()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=scorer) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert table.rows == total
    np.testing.assert_allclose(table.score(queries, rows), want, atol=1e-2)

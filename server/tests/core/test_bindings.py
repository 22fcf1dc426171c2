"""The binding edge: every array argument is read in place or rejected with a ValueError that
names it; nothing is converted silently."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from server._core import F16Table, exclude_hits, merge_candidates, merge_topk, mmr, topk_rows

# (call taking the one array under test, argument name, good array)
Case = tuple[Callable[[object], object], str, np.ndarray]


EXCLUDE_GOOD: dict[str, np.ndarray] = {
    "labels": np.zeros((2, 3), np.uint64),
    "scores": np.zeros((2, 3), np.float32),
    "excluded": np.arange(3, dtype=np.uint64),
    "offsets": np.array([0, 1, 3], np.int64),
}
CANDIDATES_GOOD: dict[str, np.ndarray] = {
    "rows": np.arange(4, dtype=np.int64),
    "bits": np.ones(4, np.uint8),
    "graph": np.zeros(4, np.float32),
    "offsets": np.array([0, 1, 4], np.int64),
    "item_labels": np.arange(5, dtype=np.uint64),
    "alive": np.ones(5, np.bool_),
    "excluded": np.arange(3, dtype=np.uint64),
    "excluded_offsets": np.array([0, 1, 3], np.int64),
}


def _exclude(name: str, a: Any) -> object:
    return exclude_hits(**{**EXCLUDE_GOOD, name: a}, k=2)


def _candidates(name: str, a: Any) -> object:
    return merge_candidates(**{**CANDIDATES_GOOD, name: a})


def _table() -> F16Table:
    table = F16Table(4)
    table.set_rows(np.arange(3), np.ones((3, 4), np.float32))
    return table


CASES: list[Case] = [
    (lambda a: merge_topk(a, np.zeros((1, 2, 3), np.float32), 2), "labels", np.zeros((1, 2, 3), np.uint64)),
    (lambda a: merge_topk(np.zeros((1, 2, 3), np.uint64), a, 2), "scores", np.zeros((1, 2, 3), np.float32)),
    (lambda a: topk_rows(a, 2), "scores", np.zeros((2, 3), np.float32)),
    (lambda a: mmr(a, np.eye(3, dtype=np.float32), 2, 0.5), "relevance", np.ones(3, np.float32)),
    (lambda a: mmr(np.ones(3, np.float32), a, 2, 0.5), "vectors", np.eye(3, dtype=np.float32)),
    (lambda a: _table().score(a, np.zeros((2, 3), np.int64)), "queries", np.ones((2, 4), np.float32)),
    (lambda a: _table().score(np.ones((2, 4), np.float32), a), "rows", np.zeros((2, 3), np.int64)),
    (lambda a: _table().set_rows(a, np.ones((2, 4), np.float32)), "rows", np.arange(2, dtype=np.int64)),
    (lambda a: _table().set_rows(np.arange(2), a), "vectors", np.ones((2, 4), np.float32)),
    (lambda a: _table().get_rows(a), "rows", np.arange(2, dtype=np.int64)),
    (lambda a: _table().clear_rows(a), "rows", np.arange(2, dtype=np.int64)),
    *[(functools.partial(_exclude, name), name, good) for name, good in EXCLUDE_GOOD.items()],
    *[(functools.partial(_candidates, name), name, good) for name, good in CANDIDATES_GOOD.items()],
]
IDS = [f"{i}-{name}" for i, (_, name, _) in enumerate(CASES)]


def wrong_dtype(a: np.ndarray) -> np.ndarray:
    return a.astype(np.int32 if a.dtype.kind == "f" else np.float64)


def non_contiguous(a: np.ndarray) -> np.ndarray:
    # Same shape, every other element of a doubled last axis.
    return np.repeat(a, 2, axis=-1)[..., ::2]


def big_endian(a: np.ndarray) -> np.ndarray:
    return a.astype(a.dtype.newbyteorder(">"))


BREAKERS = {
    "wrong dtype": (wrong_dtype, "has dtype"),
    "byte-swapped": (big_endian, "has dtype"),
    "non-contiguous": (non_contiguous, "is not a C-contiguous"),
    "extra dimension": (lambda a: a[None], "has shape"),
    "list": (lambda a: a.tolist(), "must be a numpy.ndarray"),
}


@pytest.mark.parametrize(("call", "name", "good"), CASES, ids=IDS)
def test_good_arrays_are_accepted(call: Callable[[object], object], name: str, good: np.ndarray) -> None:
    call(good)


# Every argument with every breaker, except byte-swapping a one-byte dtype (it has no byte order).
BAD_CASES = [
    pytest.param(call, name, good, breaker, id=f"{case_id}-{breaker}")
    for (call, name, good), case_id in zip(CASES, IDS, strict=True)
    for breaker in BREAKERS
    if not (breaker == "byte-swapped" and good.dtype.itemsize == 1)
]


@pytest.mark.parametrize(("call", "name", "good", "breaker"), BAD_CASES)
def test_bad_arrays_name_the_argument(
    call: Callable[[object], object], name: str, good: np.ndarray, breaker: str
) -> None:
    make_bad, reason = BREAKERS[breaker]
    with pytest.raises(ValueError, match=f"`{name}` {reason}"):
        call(make_bad(good))


def test_read_only_arrays_are_fine() -> None:
    scores = np.arange(6, dtype=np.float32).reshape(2, 3)
    scores.flags.writeable = False
    idx, _ = topk_rows(scores, 1)
    assert idx.tolist() == [[2], [2]]


def test_outputs_are_fresh_writable_arrays() -> None:
    idx, val = topk_rows(np.ones((2, 3), np.float32), 2)
    assert idx.flags.writeable and val.flags.writeable
    assert idx.flags.c_contiguous and val.flags.c_contiguous

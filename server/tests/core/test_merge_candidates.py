"""server._core.merge_candidates: each request's proposals deduplicated, dead/unknown/seen rows dropped."""

from __future__ import annotations

import numpy as np
import pytest

from server._core import merge_candidates

# The catalogue of the table tests: rows 0..8, the label of row r is 100 + r, row 6 is dead.
LABELS = np.arange(100, 108, dtype=np.uint64)
ALIVE = np.array([True] * 6 + [False, True])

Proposal = tuple[int, int, float]  # (row, bits, graph)


def csr(parts: list[list[int]], dtype: type = np.uint64) -> tuple[np.ndarray, np.ndarray]:
    values: np.ndarray = np.array([x for part in parts for x in part], dtype=dtype)
    offsets = np.zeros(len(parts) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(p) for p in parts])
    return values, offsets


def proposals_of(members: list[list[Proposal]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    flat = [p for member in members for p in member]
    rows = np.array([p[0] for p in flat], dtype=np.int64)
    bits = np.array([p[1] for p in flat], dtype=np.uint8)
    graph = np.array([p[2] for p in flat], dtype=np.float32)
    offsets = np.zeros(len(members) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(m) for m in members])
    return rows, bits, graph, offsets


def reference(
    rows: np.ndarray,
    bits: np.ndarray,
    graph: np.ndarray,
    offsets: np.ndarray,
    item_labels: np.ndarray,
    alive: np.ndarray,
    excluded: np.ndarray,
    excluded_offsets: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Brute force with NumPy: mask, np.unique for the rows, ufunc.at for the OR and the max."""
    out_rows, out_bits, out_graph, out_offsets = [], [], [], [0]
    for b in range(len(offsets) - 1):
        sl = slice(offsets[b], offsets[b + 1])
        r, bi, g = rows[sl], bits[sl], graph[sl]
        inside = (r >= 0) & (r < len(item_labels))
        r, bi, g = r[inside], bi[inside], g[inside]
        keep = alive[r] & ~np.isin(item_labels[r], excluded[excluded_offsets[b] : excluded_offsets[b + 1]])
        r, bi, g = r[keep], bi[keep], g[keep]
        unique, where = np.unique(r, return_inverse=True)
        merged_bits = np.zeros(len(unique), dtype=np.uint8)
        np.bitwise_or.at(merged_bits, where, bi)
        merged_graph = np.full(len(unique), -np.inf, dtype=np.float32)
        np.fmax.at(merged_graph, where, g)
        out_rows.append(unique)
        out_bits.append(merged_bits)
        out_graph.append(merged_graph)
        out_offsets.append(out_offsets[-1] + len(unique))
    return (
        np.concatenate(out_rows).astype(np.int64) if out_rows else np.zeros(0, np.int64),
        np.concatenate(out_bits) if out_bits else np.zeros(0, np.uint8),
        np.concatenate(out_graph) if out_graph else np.zeros(0, np.float32),
        np.array(out_offsets, dtype=np.int64),
    )


@pytest.mark.parametrize(
    ("members", "per_member", "catalogue", "max_excluded", "dead_share"),
    [
        (0, 10, 20, 5, 0.1),  # an empty batch
        (1, 0, 20, 5, 0.1),
        (1, 30, 20, 5, 0.1),  # many duplicates
        (16, 500, 100_000, 100, 0.05),  # few duplicates
        (16, 200, 300, 300, 0.3),  # exclusions cover much of the catalogue
        (40, 3000, 20_000, 50, 0.1),  # large enough for the parallel path
    ],
)
def test_matches_a_brute_force_merge(
    members: int, per_member: int, catalogue: int, max_excluded: int, dead_share: float
) -> None:
    rng = np.random.default_rng(members * 1000 + per_member + catalogue)
    item_labels = rng.permutation(10 * catalogue)[:catalogue].astype(np.uint64)
    alive = rng.random(catalogue) >= dead_share
    counts = rng.integers(0, 2 * per_member + 1, size=members)
    offsets = np.zeros(members + 1, dtype=np.int64)
    offsets[1:] = np.cumsum(counts)
    n = int(offsets[-1])
    rows = rng.integers(-5, catalogue + 5, size=n).astype(np.int64)  # a few outside the catalogue
    bits = (1 << rng.integers(0, 4, size=n)).astype(np.uint8)
    graph = np.where(rng.random(n) < 0.5, 0.0, np.round(rng.random(n), 2)).astype(np.float32)
    parts = [
        np.unique(rng.choice(item_labels, size=int(rng.integers(0, max_excluded + 1)))).tolist()
        for _ in range(members)
    ]
    excluded, excluded_offsets = csr(parts)
    args = (rows, bits, graph, offsets, item_labels, alive, excluded, excluded_offsets)
    got = merge_candidates(*args)
    want = reference(*args)
    assert [a.dtype for a in got] == [np.int64, np.uint8, np.float32, np.int64]
    assert got[3].shape == (members + 1,)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize(
    ("proposed", "excluded", "want"),
    [
        ([], [], []),
        ([(5, 1, 0.0), (2, 1, 0.0), (3, 2, 0.0)], [], [(2, 1, 0.0), (3, 2, 0.0), (5, 1, 0.0)]),
        (
            [(4, 1, 0.0), (4, 4, 0.7), (1, 2, 0.2), (4, 2, 0.5), (1, 2, 0.1)],
            [],
            [(1, 2, 0.2), (4, 7, 0.7)],
        ),
        ([(-1, 1, 0.0), (8, 1, 0.0), (-(2**63), 1, 0.0), (7, 1, 0.0)], [], [(7, 1, 0.0)]),
        ([(6, 1, 0.9), (0, 1, 0.0)], [], [(0, 1, 0.0)]),
        ([(3, 1, 0.0), (2, 1, 0.0), (3, 2, 0.4), (0, 1, 0.0)], [100, 103, 999], [(2, 1, 0.0)]),
        ([(1, 4, np.nan), (1, 4, 0.3)], [], [(1, 4, 0.3)]),
    ],
    ids=[
        "empty",
        "ascending rows",
        "duplicates OR bits, max graph",
        "rows outside the catalogue",
        "dead rows",
        "excluded labels, every copy",
        "NaN loses to a number",
    ],
)
def test_table(proposed: list[Proposal], excluded: list[int], want: list[Proposal]) -> None:
    values, excluded_offsets = csr([excluded])
    rows, bits, graph, offsets = merge_candidates(
        *proposals_of([proposed]), LABELS, ALIVE, values, excluded_offsets
    )
    assert offsets.tolist() == [0, len(want)]
    assert rows.tolist() == [w[0] for w in want]
    assert bits.tolist() == [w[1] for w in want]
    np.testing.assert_array_equal(graph, np.array([w[2] for w in want], dtype=np.float32))


def test_members_are_independent() -> None:
    members: list[list[Proposal]] = [[(1, 1, 0.0), (2, 1, 0.0), (2, 2, 0.5)], [], [(2, 4, 0.0), (1, 4, 0.0)]]
    excluded, excluded_offsets = csr([[], [], [102]])
    rows, bits, graph, offsets = merge_candidates(
        *proposals_of(members), LABELS, ALIVE, excluded, excluded_offsets
    )
    assert offsets.tolist() == [0, 2, 2, 3]
    assert rows.tolist() == [1, 2, 1]
    assert bits.tolist() == [1, 3, 4]
    assert graph.tolist() == [0.0, 0.5, 0.0]


def _call(**changes: np.ndarray) -> None:
    rows, bits, graph, offsets = proposals_of([[(0, 1, 0.0)], [(1, 1, 0.0)]])
    args = {
        "rows": rows,
        "bits": bits,
        "graph": graph,
        "offsets": offsets,
        "item_labels": LABELS,
        "alive": ALIVE,
        "excluded": np.array([5], dtype=np.uint64),
        "excluded_offsets": np.array([0, 0, 1], dtype=np.int64),
    }
    args.update(changes)
    merge_candidates(**args)


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"bits": np.ones(3, np.uint8)}, "`bits` has 3 values but `rows` has 2"),
        ({"graph": np.zeros(1, np.float32)}, "`graph` has 1 values but `rows` has 2"),
        ({"alive": np.ones(3, np.bool_)}, "`alive` has 3 values but `item_labels` has 8"),
        ({"offsets": np.zeros(0, np.int64)}, "`offsets` is empty"),
        ({"offsets": np.array([0, 3, 2])}, r"`offsets\[1\]` is 3, outside 0..=2"),
        ({"offsets": np.array([0, 2, 1])}, "`offsets` must be non-decreasing"),
        ({"excluded_offsets": np.array([0, 1])}, "`excluded_offsets` has 2 values but 2 parts need 3"),
        ({"excluded_offsets": np.array([0, 1, 2])}, r"`excluded_offsets\[2\]` is 2, outside 0..=1"),
        ({"alive": ALIVE.astype(np.uint8)}, "`alive` has dtype uint8 but bool is required"),
        ({"bits": np.ones(2, np.int64)}, "`bits` has dtype int64 but uint8 is required"),
        ({"rows": np.zeros(2, np.uint64)}, "`rows` has dtype uint64 but int64 is required"),
    ],
    ids=lambda v: v if isinstance(v, str) else "-".join(v),
)
def test_errors(changes: dict[str, np.ndarray], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        _call(**changes)

"""recd's Rust core (crate `recd_core`, core_rs/): pure compute, no I/O.

Conventions shared by every function and method here:

- Array arguments must be NumPy arrays of exactly the documented dtype, C-contiguous and aligned.
  They are read in place, never copied or converted: anything else (another dtype, a byte-swapped
  dtype, a transposed or strided view, a list, a wrong number of dimensions) raises `ValueError`
  naming the argument; fix it once with `np.ascontiguousarray(x, dtype=...)`.
- Results are new, C-contiguous, writable NumPy arrays that take over the buffer the core filled
  (no copy).
- The GIL is released while the work runs, so other Python threads keep going and several calls
  can run at once; large inputs are also spread over all cores (rayon).
- Every error is a `ValueError` whose message names the argument and says how to fix it; none is
  transient, so retrying the same call never helps.
"""

from collections.abc import Iterable
from typing import Self, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_VNODES",
    "NO_ITEM",
    "F16Table",
    "HashRing",
    "exclude_hits",
    "merge_candidates",
    "merge_topk",
    "mmr",
    "stable_hash64",
    "topk_rows",
]

NO_ITEM: int
"""The label meaning "no item" (2**64 - 1): padding in `merge_topk` and `exclude_hits` inputs and
outputs. `stable_hash64` never returns it."""

DEFAULT_VNODES: int
"""Virtual nodes per `HashRing` member when not given (1024: with 20 members the busiest one
carries ~1.1x the mean load; 160 gave up to 1.22x)."""

def stable_hash64(ids: Iterable[str]) -> npt.NDArray[np.uint64]:
    """The item label of each id: xxh3_64 (seed 0) of its UTF-8 bytes, shape (n,).

    Stable across processes, machines and languages (xxh3 is specified); used as the hnswlib
    label and the merge key. A hash equal to `NO_ITEM` is returned as `NO_ITEM - 1`.
    `ids` is any iterable of str (a list, a tuple, a NumPy str array), but not a single str.
    """

@final
class HashRing:
    """Consistent-hash ring with virtual nodes.

    Member `m` owns the points xxh3_64(f"{m}#{i}", seed=0x5eed) for i in range(vnodes); a key is
    placed at xxh3_64(key, seed=0x5eed) and belongs to the first point at or after it (wrapping).
    Growing from n to n + j members moves only the keys the new members take, about j / (n + j)
    of them; removing a member moves only its own keys. Placement depends on member names, not on
    the order they are listed in. Immutable and safe to share between threads.
    """

    def __new__(cls, members: Iterable[str], vnodes: int = 1024) -> Self:
        """`members`: unique, non-empty names; `vnodes` >= 1 points per member (ValueError
        otherwise)."""

    @property
    def members(self) -> list[str]:
        """Member names, in the order given; `owner` and friends return indices into this."""

    @property
    def vnodes(self) -> int:
        """Points per member."""

    def __len__(self) -> int:
        """Number of members."""

    def owner(self, keys: Iterable[str]) -> npt.NDArray[np.uint32]:
        """Index into `members` of each key's owner, shape (n,)."""

    def owners(self, keys: Iterable[str], replicas: int) -> npt.NDArray[np.uint32]:
        """The first `replicas` distinct members clockwise of each key, shape (n, replicas);
        column 0 is `owner(keys)`. `replicas` must be in 1..=len(members)."""

    def plan(self, other: HashRing, keys: Iterable[str]) -> npt.NDArray[np.int64]:
        """What moves going from this ring to `other`: one row (key index, owner index in self,
        owner index in other) per key whose owner NAME differs between the rings, in key order;
        shape (m, 3). Members are matched by name, so a ring listing the same members in another
        order moves nothing."""

def merge_topk(
    labels: npt.NDArray[np.uint64],
    scores: npt.NDArray[np.float32],
    k: int,
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.float32]]:
    """Merge S per-shard top lists into one top-k of distinct labels, per query.

    `labels` and `scores` have the same shape (Q, S, L); each of the S lists of a query is
    sorted by descending score. Entries whose label is `NO_ITEM` or whose score is NaN or -inf are
    skipped (padding). A label found in several lists is returned once, with its best score.
    Returns (labels, scores), each (Q, k), sorted by descending score (ties: lower list index
    first), padded with `NO_ITEM` / -inf when fewer than k distinct labels exist. `k` >= 1.
    """

def exclude_hits(
    labels: npt.NDArray[np.uint64],
    scores: npt.NDArray[np.float32],
    excluded: npt.NDArray[np.uint64],
    offsets: npt.NDArray[np.int64],
    k: int,
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Per query, the first `k` hits of its row that are neither padding nor excluded, in order.

    `labels` and `scores` have the same shape (Q, L). Query q's excluded labels are the CSR part
    `excluded[offsets[q]:offsets[q + 1]]`, which must be sorted ascending (`np.unique` gives that);
    sortedness is not checked (a part that is not sorted gives unspecified hits, never a crash), an
    empty part excludes nothing. `offsets` (Q + 1,) must be non-decreasing and within
    0..len(excluded) (ValueError otherwise). Each row is walked in order; entries whose label is
    `NO_ITEM` or excluded (a binary search) are dropped, the first `k` others are kept with their
    scores as given (no score is special here). Returns (labels, scores, kept): (Q, k), (Q, k) and
    (Q,), each row padded with `NO_ITEM` / -inf after its kept[q] <= k hits. `k` >= 1.
    """

def merge_candidates(
    rows: npt.NDArray[np.int64],
    bits: npt.NDArray[np.uint8],
    graph: npt.NDArray[np.float32],
    offsets: npt.NDArray[np.int64],
    item_labels: npt.NDArray[np.uint64],
    alive: npt.NDArray[np.bool_],
    excluded: npt.NDArray[np.uint64],
    excluded_offsets: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8], npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """The candidate set of each of the B requests of a batch, from what several sources proposed.

    Member b's proposals are `rows[offsets[b]:offsets[b + 1]]` (item rows, the sources' lists
    concatenated); `bits` (N,) is the bit of the source that proposed each entry and `graph` (N,)
    its graph score (0 for other sources). `item_labels` and `alive` (R,) describe every item row.
    Per member, rows that are negative or >= R are dropped, then rows whose `alive[row]` is False
    and rows whose `item_labels[row]` is in the member's exclusion part
    `excluded[excluded_offsets[b]:excluded_offsets[b + 1]]` (sorted ascending, not checked, as in
    `exclude_hits`); the rest is deduplicated by row, OR-ing the bits and keeping the largest graph
    score (NaN only when every copy is NaN). `offsets` and `excluded_offsets` both have B + 1
    values, non-decreasing, within the length of the array they split.

    Returns (rows, bits, graph, offsets): each member's unique rows in ascending order, as CSR with
    new `offsets` (B + 1,) starting at 0. A batch of up to 50,000 proposals runs on the calling
    thread (a microsecond or two of fixed cost); larger ones spread the members over all cores.
    """

def topk_rows(
    scores: npt.NDArray[np.float32],
    k: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Per row of `scores` (B, C): the indices and values of the k largest entries, each (B, k),
    sorted descending (ties: lower index first). NaN and -inf are never selected (+inf is); rows
    with fewer than k others are padded with index -1 and value -inf. `k` >= 1."""

def mmr(
    relevance: npt.NDArray[np.float32],
    vectors: npt.NDArray[np.float32],
    k: int,
    diversity: float,
) -> npt.NDArray[np.int64]:
    """Maximal Marginal Relevance: indices of min(k, n) items, in pick order.

    `relevance` is (n,), `vectors` is (n, d) with unit-normalised rows, both finite. The first
    pick is the most relevant item; each next pick maximises
    `(1 - diversity) * relevance[i] - diversity * max(dot(vectors[i], vectors[j]) for j picked)`
    (ties: lower index). `diversity` in [0, 1]: 0 is top-k by relevance. O(k * n * d).
    """

@final
class F16Table:
    """Embedding rows stored as float16 (row-major), scored against float32 queries.

    Rows are addressed by caller-chosen non-negative int64 indices. Scoring reads under a shared
    lock while writers (`set_rows`, `clear_rows`, growth) take it exclusively only to copy
    already-converted values in, so scoring from several threads alongside one writer is safe;
    each call sees the table either before or after any one write.
    """

    def __new__(cls, dim: int, capacity: int = 1024) -> Self:
        """`dim` >= 1 values per row; room for `capacity` >= 0 rows before the first growth."""

    @property
    def dim(self) -> int:
        """Values per row."""

    @property
    def rows(self) -> int:
        """1 + the highest row ever set (0 for a new table); clearing does not lower it."""

    @property
    def capacity(self) -> int:
        """Rows allocated; doubles as needed when a row at or past it is set."""

    @property
    def nbytes(self) -> int:
        """Bytes of float16 storage allocated: capacity * dim * 2."""

    def set_rows(self, rows: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> None:
        """Store `vectors` (n, dim) at `rows` (n,), rounded to the nearest float16 (ties to
        even, like `astype(np.float16)`). The whole call is rejected, nothing written, when a row
        is negative, a value is NaN/inf or outside [-65504, 65504], or the shapes disagree. A row
        given twice keeps its last vector. Rows between set ones read as zeros."""

    def get_rows(self, rows: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        """The stored vectors of `rows` (n,) as float32, shape (n, dim). Every row must be in
        0..self.rows."""

    def clear_rows(self, rows: npt.NDArray[np.int64]) -> None:
        """Zero the vectors of `rows` (n,); every row must be in 0..self.rows."""

    def score(
        self,
        queries: npt.NDArray[np.float32],
        rows: npt.NDArray[np.int64],
    ) -> npt.NDArray[np.float32]:
        """Fused gather + dot: out[b, c] = dot(queries[b], table[rows[b, c]]), shape (B, C), for
        `queries` (B, dim) and `rows` (B, C). float16 storage, float32 accumulation (AVX2/F16C/FMA
        when the CPU has them). A row that is negative (padding) or >= self.rows scores -inf; NaN
        in a query gives NaN scores."""

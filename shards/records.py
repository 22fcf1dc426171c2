"""Plain data that crosses the shard boundary: record batches, hits, errors, parameters and stats.

Everything here is transport-agnostic: the in-process client and the gRPC client both speak these types.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import overload

import numpy as np
from numpy.typing import NDArray

# recd's one error-kind enum (a leaf module: it imports nothing of server's or shards'), re-exported here
# because shard code takes it together with ShardError.
from server.errors import ErrorKind as ErrorKind

NO_LABEL = np.uint64(2**64 - 1)
"""Reserved label meaning "no item": pads ShardHits rows that have fewer than k hits."""

MAX_K = 10_000
MAX_EF = 100_000
MAX_ITEM_ID_BYTES = 1024


class ShardError(Exception):
    """A failure of one shard (or one shard node). `transient` says whether a retry may succeed."""

    def __init__(self, message: str, kind: ErrorKind = ErrorKind.INTERNAL) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind

    @property
    def transient(self) -> bool:
        return self.kind.transient

    def __repr__(self) -> str:
        return f"ShardError({self.message!r}, {self.kind.name})"

    def __eq__(self, other: object) -> bool:
        # Lets contract tests compare results from both clients directly.
        return isinstance(other, ShardError) and (self.kind, self.message) == (other.kind, other.message)

    def __hash__(self) -> int:
        return hash((self.kind, self.message))


def invalid(message: str) -> ShardError:
    return ShardError(message, ErrorKind.INVALID_ARGUMENT)


def unknown_shard(shard_id: int) -> ShardError:
    return ShardError(f"shard_id: unknown shard {shard_id}", ErrorKind.NOT_FOUND)


@dataclass(frozen=True)
class IndexParams:
    dim: int
    space: str = "ip"
    m: int = 16
    ef_construction: int = 200
    ef_search: int = 100
    initial_capacity: int = 1024
    # Threads hnswlib may use inside one add_items call; 1 keeps ingest from stealing cores from search.
    add_threads: int = 1

    def __post_init__(self) -> None:
        if self.dim <= 0:
            raise ValueError(f"dim must be positive, got {self.dim}")
        if self.space not in ("ip", "l2", "cosine"):
            raise ValueError(f"space must be 'ip', 'l2' or 'cosine', got {self.space!r}")
        if min(self.m, self.ef_construction, self.ef_search, self.initial_capacity, self.add_threads) <= 0:
            raise ValueError(
                "m, ef_construction, ef_search, initial_capacity and add_threads must be positive"
            )


def as_labels(labels: object, field_name: str = "labels") -> NDArray[np.uint64]:
    """Labels as a contiguous 1-D uint64 array; Python ints and any integer array are accepted."""
    if isinstance(labels, np.ndarray):
        arr = labels
    else:
        # Through uint64 directly: numpy would turn a Python list mixing ints >= 2**63 into float64.
        try:
            arr = np.array(labels, dtype=np.uint64)
        except (OverflowError, TypeError, ValueError):
            raise invalid(f"{field_name}: expected integers in 0..2**64-1") from None
    if arr.size == 0:
        return np.zeros(0, dtype=np.uint64)
    if arr.ndim != 1:
        raise invalid(f"{field_name}: expected a 1-D array, got shape {arr.shape}")
    if arr.dtype != np.uint64:
        if arr.dtype.kind not in "iu" or (arr.dtype.kind == "i" and bool((arr < 0).any())):
            raise invalid(f"{field_name}: expected non-negative integers, got dtype {arr.dtype}")
        arr = arr.astype(np.uint64)
    return np.ascontiguousarray(arr)


def check_queries(queries: NDArray[np.float32], dim: int) -> NDArray[np.float32]:
    if queries.ndim != 2 or queries.shape[1] != dim:
        raise invalid(f"dim: expected queries of shape (n, {dim}), got {queries.shape}")
    q = np.ascontiguousarray(queries, dtype=np.float32)
    if not np.isfinite(q).all():
        raise invalid("queries: contain NaN or Inf")
    return q


def check_k(k: int) -> None:
    if not 1 <= k <= MAX_K:
        raise invalid(f"k: must be in 1..{MAX_K}, got {k}")


def check_ef(ef: int) -> None:
    """ef=0 means the index's configured ef_search."""
    if not 0 <= ef <= MAX_EF:
        raise invalid(f"ef: must be in 0..{MAX_EF}, got {ef}")


def check_exclude(exclude: Sequence[object] | None, n_queries: int) -> Exclusions | None:
    """None when nothing is excluded, else one label array per query, sorted and unique (the shards look
    hits up in it with a binary search), held as `Exclusions`. The frontend sends them sorted; checking
    that is cheap."""
    if not exclude:
        return None
    if len(exclude) != n_queries:
        raise invalid(f"exclude: expected {n_queries} entries (one per query) or none, got {len(exclude)}")
    lists = [_sorted_unique(as_labels(e, f"exclude[{i}]")) for i, e in enumerate(exclude)]
    return Exclusions(lists) if any(len(e) for e in lists) else None


class Exclusions(Sequence[NDArray[np.uint64]]):
    """The labels each query of a batch must not return: a sequence of one sorted, unique uint64 array
    per query, and the same labels as one CSR, `labels` with `offsets` (query i's are
    labels[offsets[i]:offsets[i + 1]]), the form `server._core.exclude_hits` takes. Built once per search
    call (check_exclude) and shared, read-only, by every shard the call searches."""

    __slots__ = ("_lists", "labels", "longest", "offsets")

    def __init__(self, lists: Sequence[NDArray[np.uint64]]) -> None:
        self._lists = list(lists)
        lengths = np.fromiter((len(e) for e in self._lists), dtype=np.int64, count=len(self._lists))
        self.offsets = np.zeros(len(self._lists) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self.offsets[1:])
        self.labels: NDArray[np.uint64] = (
            np.concatenate(self._lists).astype(np.uint64, copy=False)
            if self._lists
            else np.zeros(0, dtype=np.uint64)
        )
        self.longest = int(lengths.max()) if len(lengths) else 0  # the most labels one query excludes

    @classmethod
    def of(cls, exclude: Sequence[NDArray[np.uint64]]) -> Exclusions:
        """`exclude` itself when it is Exclusions already, else its arrays (sorted and unique) as one."""
        return exclude if isinstance(exclude, Exclusions) else cls(exclude)

    def take(self, rows: Sequence[int] | NDArray[np.intp]) -> Exclusions:
        """The exclusions of the listed queries only, in that order."""
        return Exclusions([self._lists[i] for i in rows])

    def __len__(self) -> int:
        return len(self._lists)

    @overload
    def __getitem__(self, index: int) -> NDArray[np.uint64]: ...
    @overload
    def __getitem__(self, index: slice) -> list[NDArray[np.uint64]]: ...
    def __getitem__(self, index: int | slice) -> NDArray[np.uint64] | list[NDArray[np.uint64]]:
        return self._lists[index]

    def __iter__(self) -> Iterator[NDArray[np.uint64]]:
        return iter(self._lists)


def _sorted_unique(labels: NDArray[np.uint64]) -> NDArray[np.uint64]:
    if len(labels) > 1 and not bool((labels[1:] > labels[:-1]).all()):
        return np.unique(labels)
    return labels


def is_excluded(labels: NDArray[np.uint64], excluded: NDArray[np.uint64]) -> NDArray[np.bool_]:
    """Membership of each label (any shape) in a sorted, unique array: a binary search per label, in
    NumPy (no Python set of 10,000 labels per shard per query)."""
    if len(excluded) == 0:
        return np.zeros(np.shape(labels), dtype=np.bool_)
    at = np.minimum(np.searchsorted(excluded, labels), len(excluded) - 1)
    return excluded[at] == labels


@dataclass(frozen=True)
class AttributeFilter:
    """Allowed values per attribute: a hit passes when each listed attribute has one of its values (an
    attribute with no allowed value passes nothing). Hashable, so equal filters of a batch share work."""

    terms: tuple[tuple[str, frozenset[str]], ...]

    @classmethod
    def of(cls, allowed: Mapping[str, Collection[str]], where: str = "filter") -> AttributeFilter:
        terms = []
        for name, values in allowed.items():
            if not isinstance(name, str) or not name:
                raise invalid(f"{where}: attribute names must be non-empty strings, got {name!r}")
            if isinstance(values, str | bytes) or not all(isinstance(v, str) for v in values):
                raise invalid(f"{where}[{name!r}]: expected a collection of strings, got {values!r}")
            terms.append((name, frozenset(values)))
        return cls(tuple(sorted(terms, key=lambda t: t[0])))

    def as_dict(self) -> dict[str, frozenset[str]]:
        return dict(self.terms)


QueryFilter = AttributeFilter | Mapping[str, Collection[str]]


def check_filters(
    filters: Sequence[QueryFilter | None] | None, n_queries: int
) -> list[AttributeFilter | None] | None:
    """None when no query is filtered, else one AttributeFilter (or None) per query; equal filters are
    the same object."""
    if not filters:
        return None
    if len(filters) != n_queries:
        raise invalid(f"filters: expected {n_queries} entries (one per query) or none, got {len(filters)}")
    shared: dict[AttributeFilter, AttributeFilter] = {}
    out: list[AttributeFilter | None] = []
    for i, f in enumerate(filters):
        if f is None or (not isinstance(f, AttributeFilter) and not f):
            out.append(None)
            continue
        checked = f if isinstance(f, AttributeFilter) else AttributeFilter.of(f, f"filters[{i}]")
        out.append(shared.setdefault(checked, checked) if checked.terms else None)
    return out if any(f is not None for f in out) else None


@dataclass(eq=False)  # numpy columns: compare with equals()
class RecordBatch:
    """Columnar items for one shard; row i of every column describes the same item."""

    labels: NDArray[np.uint64]
    item_ids: list[str]
    vectors: NDArray[np.float32]
    payloads: list[bytes]

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def empty(cls, dim: int) -> RecordBatch:
        return cls(np.zeros(0, np.uint64), [], np.zeros((0, dim), np.float32), [])

    @classmethod
    def concat(cls, batches: Sequence[RecordBatch], dim: int) -> RecordBatch:
        if not batches:
            return cls.empty(dim)
        return cls(
            np.concatenate([b.labels for b in batches]).astype(np.uint64, copy=False),
            [i for b in batches for i in b.item_ids],
            np.concatenate([b.vectors for b in batches]).astype(np.float32, copy=False),
            [p for b in batches for p in b.payloads],
        )

    def take(self, rows: slice | Sequence[int] | NDArray[np.intp]) -> RecordBatch:
        if isinstance(rows, slice):
            return RecordBatch(
                self.labels[rows], self.item_ids[rows], self.vectors[rows], self.payloads[rows]
            )
        idx = list(rows)
        return RecordBatch(
            self.labels[idx],
            [self.item_ids[i] for i in idx],
            self.vectors[idx],
            [self.payloads[i] for i in idx],
        )

    def validated(self, dim: int, where: str = "batch") -> RecordBatch:
        """A normalised copy (contiguous, exact dtypes) or ShardError(INVALID_ARGUMENT) naming the field.

        Everything that could make the index reject a record is checked here, before the WAL sees it:
        a record that is logged but cannot be applied would fail again on every replay.
        """
        labels = as_labels(self.labels, f"{where}.labels")
        n = len(labels)
        if len(self.item_ids) != n or len(self.payloads) != n:
            raise invalid(
                f"{where}: {n} labels but {len(self.item_ids)} item_ids and {len(self.payloads)} payloads"
            )
        vectors = np.asarray(self.vectors)
        if n == 0:
            vectors = vectors.reshape(0, dim)
        if vectors.ndim != 2 or vectors.shape != (n, dim):
            raise invalid(f"{where}.vectors: expected shape ({n}, {dim}) (dim {dim}), got {vectors.shape}")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if not np.isfinite(vectors).all():
            raise invalid(f"{where}.vectors: contain NaN or Inf")
        if n and bool((labels == NO_LABEL).any()):
            raise invalid(f"{where}.labels: 2**64-1 is reserved for 'no item'")
        if n and len(np.unique(labels)) != n:
            raise invalid(f"{where}.labels: duplicate labels in one batch")
        for i, item_id in enumerate(self.item_ids):
            if not isinstance(item_id, str) or len(item_id.encode()) > MAX_ITEM_ID_BYTES:
                raise invalid(
                    f"{where}.item_ids[{i}]: must be a str of at most {MAX_ITEM_ID_BYTES} UTF-8 bytes"
                )
        payloads = [bytes(p) for p in self.payloads]
        return RecordBatch(labels, list(self.item_ids), vectors, payloads)

    def equals(self, other: RecordBatch) -> bool:
        return (
            np.array_equal(self.labels, other.labels)
            and self.item_ids == other.item_ids
            and np.array_equal(self.vectors, other.vectors)
            and self.payloads == other.payloads
        )


@dataclass(eq=False)
class ShardHits:
    """Top-k of one shard for a batch of Q queries; short rows are padded with NO_LABEL / -inf."""

    labels: NDArray[np.uint64]  # (Q, k)
    scores: NDArray[np.float32]  # (Q, k), higher is better (inner product)

    @classmethod
    def empty(cls, n_queries: int, k: int) -> ShardHits:
        return cls(
            np.full((n_queries, k), NO_LABEL, dtype=np.uint64),
            np.full((n_queries, k), -np.inf, dtype=np.float32),
        )

    def equals(self, other: ShardHits) -> bool:
        return np.array_equal(self.labels, other.labels) and np.array_equal(self.scores, other.scores)


@dataclass(frozen=True)
class ShardStats:
    shard_id: int
    items: int
    deleted: int
    capacity: int
    wal_bytes: int


@dataclass(frozen=True)
class NodeStats:
    dim: int
    shards: list[ShardStats] = field(default_factory=list)
    # Set by a node that follows a cluster layout ("" and 0 otherwise).
    node_name: str = ""
    layout_epoch: int = 0


@dataclass(frozen=True)
class NodeLayout:
    """The cluster layout a node follows: an opaque document (the frontend's cluster package reads it),
    its epoch, and the shards the node hosts now."""

    epoch: int
    layout_json: str
    shard_ids: list[int]
    node_name: str
    incarnation: int = 0

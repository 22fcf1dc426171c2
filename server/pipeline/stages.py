"""The stages a batch of requests passes through, one type per step boundary.

Each step reads one stage and produces the next; a stage is immutable and keeps the stage it was made
from, so the last one carries every fact of the batch and no step can change what an earlier one found.
Per-request data lives in batch-wide arrays (ragged ones as a flat array plus offsets), so the compute
steps work on the whole batch in one call instead of looping over requests.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from server.domain import Retrieval, ScoredItem, Source
from server.errors import RecdError
from server.ranking.model import RankingModel

Rows = npt.NDArray[np.int64]
Labels = npt.NDArray[np.uint64]
Floats = npt.NDArray[np.float32]
Offsets = npt.NDArray[np.int64]


class Kind(enum.Enum):
    RECOMMEND = "recommend"
    SIMILAR = "similar"


@dataclass(frozen=True, slots=True)
class AnnParams:
    """How the ANN source searches for a request: candidates wanted, hits asked of each shard, the
    shards' search beam, and the filter size up to which matches are scored exactly instead."""

    k: int
    per_shard_k: int
    ef: int
    exact_max_items: int


@dataclass(frozen=True, slots=True)
class Request:
    """One validated, normalised request: k resolved, ids checked, the deadline fixed."""

    kind: Kind
    k: int
    deadline: float  # time.monotonic() instant by which the answer must be ready
    user_id: str | None = None
    seed_item_id: str | None = None  # SimilarItems: the item whose neighbours are wanted
    filter: Mapping[str, frozenset[str]] = field(default_factory=dict)
    exclude_item_ids: frozenset[str] = frozenset()
    diversity: float = 0.0
    include_seen: bool = False
    context: Mapping[str, str] = field(default_factory=dict)
    # The loaded model version that ranks it (an experiment variant's); None: the default one. Requests
    # of several versions share a batch: the rank step scores each version's members apart.
    model_version: str | None = None
    # The ANN source's parameters for it (an experiment variant's); None: the source's own.
    ann: AnnParams | None = None


def ragged_offsets(lengths: Sequence[int] | npt.NDArray[np.int64]) -> Offsets:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


@dataclass(frozen=True, slots=True)
class Ragged:
    """Per-request slices of one flat array: request i owns values[offsets[i]:offsets[i + 1]]."""

    values: npt.NDArray[Any]
    offsets: Offsets

    @classmethod
    def of(cls, parts: Sequence[npt.NDArray[Any]], dtype: npt.DTypeLike) -> Ragged:
        offsets = ragged_offsets([len(p) for p in parts])
        values = np.concatenate(parts).astype(dtype, copy=False) if parts else np.empty(0, dtype)
        return cls(np.ascontiguousarray(values), offsets)

    @classmethod
    def empty(cls, n: int, dtype: npt.DTypeLike) -> Ragged:
        return cls(np.empty(0, dtype), np.zeros(n + 1, np.int64))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def row(self, i: int) -> npt.NDArray[Any]:
        return self.values[self.offsets[i] : self.offsets[i + 1]]

    @property
    def lengths(self) -> Offsets:
        return np.diff(self.offsets)

    def owners(self) -> Offsets:
        """The request index of every value."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.lengths)


@dataclass(frozen=True, slots=True)
class Batch:
    """Requests gathered together; every later stage is aligned with `requests`."""

    requests: tuple[Request, ...]

    def __len__(self) -> int:
        return len(self.requests)


@dataclass(frozen=True, slots=True)
class Hydrated:
    """What each request is about: the vector to search and rank against (zeros and has_vector False for
    a cold start), the items whose graph neighbours are wanted, and the labels it must not be answered
    with (sorted and unique per request: seen items, the request's exclusions, the seed item)."""

    batch: Batch
    vectors: npt.NDArray[np.float32]  # (B, dim)
    has_vector: npt.NDArray[np.bool_]  # (B,)
    graph_seeds: tuple[tuple[str, ...], ...]
    excluded: Ragged  # uint64 labels
    # Requests answered with an error instead (e.g. SimilarItems of an unknown item).
    rejected: Mapping[int, RecdError] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ShardCoverage:
    total: npt.NDArray[np.int32]  # (B,) shards that should have answered each request
    ok: npt.NDArray[np.int32]  # (B,) shards that did
    retrieval: npt.NDArray[np.uint8]  # (B,) Retrieval of each request's ANN candidates


@dataclass(frozen=True, slots=True)
class SourceHits:
    """One candidate source's proposals for every request of the batch (empty where it did not apply):
    catalogue rows, and the source's own score aligned with them."""

    source: Source
    rows: Ragged  # int64 rows
    scores: Floats  # aligned with rows.values
    coverage: ShardCoverage | None = None  # the ANN source's shard coverage
    # Requests the source failed for although it answered others (None: it failed for none).
    failed: npt.NDArray[np.bool_] | None = None


@dataclass(frozen=True, slots=True)
class Candidates:
    hydrated: Hydrated
    hits: tuple[SourceHits, ...]
    # Sources that failed for the whole batch, and per source which requests it applied to.
    failed: tuple[str, ...]
    applied: Mapping[str, npt.NDArray[np.bool_]]

    @property
    def batch(self) -> Batch:
        return self.hydrated.batch

    def failed_for(self, source: str, i: int) -> bool:
        """Whether `source` failed request i: for the whole batch, or for that request alone."""
        if source in self.failed:
            return True
        return any(h.failed is not None and h.failed[i] for h in self.hits if h.source.name.lower() == source)

    def coverage(self) -> ShardCoverage:
        for h in self.hits:
            if h.coverage is not None:
                return h.coverage
        n = len(self.batch)
        zero = np.zeros(n, np.int32)
        return ShardCoverage(zero, zero.copy(), np.full(n, Retrieval.UNSPECIFIED, np.uint8))


@dataclass(frozen=True, slots=True)
class Filtered:
    """Each request's candidate set: unique live rows that pass its filter and exclusions, with a bit per
    Source that proposed each and its best graph score."""

    candidates: Candidates
    rows: Ragged  # int64 rows, ascending within a request
    bits: npt.NDArray[np.uint8]  # aligned with rows.values
    graph: Floats

    @property
    def hydrated(self) -> Hydrated:
        return self.candidates.hydrated


@dataclass(frozen=True, slots=True)
class Ranked:
    """Each request's best candidates, best first: the ranking model's pool (k, or the MMR pool)."""

    filtered: Filtered
    rows: Ragged
    bits: npt.NDArray[np.uint8]
    scores: Floats
    similarity: Floats  # unweighted similarity to the request's vector
    side: npt.NDArray[np.float32]  # (n, 3): graph, popularity, freshness (unweighted)
    ranker: str  # the ranker that scored them, or "prior" when ranking failed open
    # The model version that ranked them (the default one for "prior"); None only in tests' stages.
    model: RankingModel | None = None
    # Per request, when the batch's requests were ranked by several versions (else `model` for all).
    models: tuple[RankingModel, ...] = ()

    def model_for(self, i: int) -> RankingModel | None:
        """The model version that ranked request i."""
        return self.models[i] if self.models else self.model


@dataclass(frozen=True, slots=True)
class Selected:
    ranked: Ranked
    items: tuple[tuple[ScoredItem, ...], ...]

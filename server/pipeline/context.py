"""What flows through a pipeline: the request, what each step found, and how complete the answer is."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from server.domain import Coverage, Retrieval, ScoredItem, Source

Rows = npt.NDArray[np.int64]


@dataclass(slots=True)
class SourceHits:
    """One candidate source's answer: item rows and the source's own score for each."""

    source: Source
    rows: Rows
    scores: npt.NDArray[np.float32]


@dataclass(slots=True)
class CandidateSet:
    """Deduplicated candidates: rows, a bit per Source that proposed each, and their graph score."""

    rows: Rows
    source_bits: npt.NDArray[np.uint8]
    graph_scores: npt.NDArray[np.float32]

    @classmethod
    def empty(cls) -> CandidateSet:
        return cls(np.empty(0, np.int64), np.empty(0, np.uint8), np.empty(0, np.float32))

    def take(self, mask_or_index: npt.NDArray[np.bool_] | Rows) -> CandidateSet:
        return CandidateSet(
            self.rows[mask_or_index], self.source_bits[mask_or_index], self.graph_scores[mask_or_index]
        )


@dataclass(slots=True)
class RankedCandidates:
    """Candidates in ranked order, with the parts of each score."""

    rows: Rows
    source_bits: npt.NDArray[np.uint8]
    scores: npt.NDArray[np.float32]
    similarity: npt.NDArray[np.float32]
    side: npt.NDArray[np.float32]  # (n, 3): graph, popularity, freshness (unweighted)


@dataclass(slots=True)
class RequestContext:
    pipeline: str
    k: int
    deadline: float  # time.monotonic() instant by which the answer must be ready
    filter: dict[str, frozenset[str]] = field(default_factory=dict)
    exclude_item_ids: frozenset[str] = frozenset()
    diversity: float = 0.0
    include_seen: bool = False
    user_id: str | None = None
    context: dict[str, str] = field(default_factory=dict)
    # SimilarItems: the item whose neighbours are wanted.
    seed_item_id: str | None = None
    # Filled by hydration: the vector candidates are searched and ranked against, the items whose graph
    # neighbours are wanted, and the items the user has already seen.
    query_vector: npt.NDArray[np.float32] | None = None
    graph_seed_ids: tuple[str, ...] = ()
    # Stable 64-bit hashes (= shard labels) of every item the user has seen, sorted and unique.
    seen_labels: npt.NDArray[np.uint64] = field(default_factory=lambda: np.empty(0, np.uint64))
    hits: list[SourceHits] = field(default_factory=list)
    candidates: CandidateSet = field(default_factory=CandidateSet.empty)
    ranked: RankedCandidates | None = None
    items: list[ScoredItem] = field(default_factory=list)
    coverage: Coverage = field(default_factory=Coverage)
    # Which path retrieved the ANN candidates (set by the ANN source when it answers).
    retrieval: Retrieval = Retrieval.UNSPECIFIED
    sources_failed: list[str] = field(default_factory=list)
    sources_total: int = 0

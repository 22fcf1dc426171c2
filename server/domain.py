"""The frontend's own types: what a request, an item, a user and an answer are, free of protobuf."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]


class Source(enum.IntEnum):
    """Where a candidate came from; values match recd.v1.Source."""

    ANN = 1
    GRAPH = 2
    POPULAR = 3


class Retrieval(enum.IntEnum):
    """How the ANN candidates were retrieved; values match recd.v1.Retrieval."""

    UNSPECIFIED = 0  # no vector retrieval answered (cold start, or the ANN source failed)
    HNSW = 1
    HNSW_FILTERED = 2  # the filter applied inside each shard's HNSW search
    EXACT_FILTERED = 3  # a selective filter: every matching item scored exactly


@dataclass(frozen=True, slots=True)
class ItemRecord:
    item_id: str
    embedding: Vector
    attributes: dict[str, str]
    popularity: float
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class UserProfile:
    user_id: str
    # None: derive the user's vector from their history.
    embedding: Vector | None
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Interaction:
    user_id: str
    item_id: str
    action: str
    weight: float
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class Edge:
    src_item_id: str
    dst_item_id: str
    score: float


@dataclass(frozen=True, slots=True)
class RecommendQuery:
    user_id: str
    k: int
    context: dict[str, str]
    exclude_item_ids: frozenset[str]
    # attribute -> allowed values; an item passes when each listed attribute has an allowed value.
    filter: dict[str, frozenset[str]]
    diversity: float
    include_seen: bool


@dataclass(frozen=True, slots=True)
class SimilarQuery:
    item_id: str
    k: int
    filter: dict[str, frozenset[str]]


@dataclass(frozen=True, slots=True)
class ScoreComponents:
    similarity: float = 0.0
    graph: float = 0.0
    popularity: float = 0.0
    freshness: float = 0.0


@dataclass(frozen=True, slots=True)
class ScoredItem:
    item_id: str
    score: float
    sources: tuple[Source, ...]
    components: ScoreComponents


@dataclass(slots=True)
class Coverage:
    shards_total: int = 0
    shards_ok: int = 0
    degraded: list[str] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        return self.shards_ok < self.shards_total

    def degrade(self, reason: str) -> None:
        if reason not in self.degraded:
            self.degraded.append(reason)


@dataclass(frozen=True, slots=True)
class Recommendation:
    items: list[ScoredItem]
    coverage: Coverage
    cache_key: str
    cache_ttl_seconds: int
    model_version: str
    retrieval: Retrieval = Retrieval.UNSPECIFIED
    # The (experiment, variant) pairs that served it (server/experiments); empty outside experiments.
    experiments: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Exposure:
    """One answer served to a user, as the exposure log keeps it (server/experiments): what experiment
    arm served which items, for attribution, per-variant outcomes and impression fatigue."""

    user_id: str
    served_at_ms: int
    item_ids: tuple[str, ...]  # in the order served
    # The experiment variants that served it, "experiment=variant" pairs in the experiments' order,
    # joined by ";"
    # ("" outside every experiment: an answer logged only for write-back).
    arm: str
    latency_ms: float  # the Recommend's own time on the frontend
    diversity: float  # mean pairwise cosine distance of the items (0 for fewer than two)


@dataclass(frozen=True, slots=True)
class Outcome:
    """An interaction attributed to the exposure that served its item to that user."""

    user_id: str
    item_id: str
    action: str
    weight: float
    at_ms: int  # when the interaction happened
    served_at_ms: int  # when the exposure it is attributed to was served
    arm: str  # that exposure's arm

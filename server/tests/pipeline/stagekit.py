"""Small builders of pipeline stages for the step tests: a catalogue of a few items, requests, a hydrated
batch, and one source's hits, each from plain Python lists."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from server import _core
from server.catalog.item_store import ItemStore
from server.catalog.payload import ItemMetadata
from server.domain import Source
from server.errors import RecdError
from server.pipeline.exclusions import NO_LABELS, excluded_batch
from server.pipeline.stages import Batch, Candidates, Hydrated, Kind, Ragged, Request, SourceHits

FAR = 3600.0  # seconds: a deadline no test reaches


def labels(*ids: str) -> npt.NDArray[np.uint64]:
    return _core.stable_hash64(list(ids)) if ids else NO_LABELS


def seen(*ids: str) -> npt.NDArray[np.uint64]:
    """A seen set as the profile store hands it over: sorted and unique labels."""
    return np.unique(labels(*ids))


def make_items(
    vectors: npt.NDArray[np.float32],
    attributes: Sequence[Mapping[str, str]] | None = None,
    popularity: Sequence[float] | None = None,
    created_at_ms: Sequence[int] | None = None,
    prefix: str = "i",
) -> ItemStore:
    """Items `{prefix}0`, `{prefix}1`, ... in rows 0, 1, ...: row n holds vectors[n]."""
    n, dim = vectors.shape
    ids = [f"{prefix}{i}" for i in range(n)]
    store = ItemStore(dim)
    meta = [
        ItemMetadata(
            dict(attributes[i]) if attributes is not None else {},
            float(popularity[i]) if popularity is not None else 1.0,
            int(created_at_ms[i]) if created_at_ms is not None else 0,
        )
        for i in range(n)
    ]
    store.upsert(ids, _core.stable_hash64(ids), np.ascontiguousarray(vectors, np.float32), meta)
    return store


def request(k: int = 10, kind: Kind = Kind.RECOMMEND, deadline_s: float = FAR, **fields: object) -> Request:
    if kind is Kind.RECOMMEND:
        fields.setdefault("user_id", "u")
    return Request(kind, k, time.monotonic() + deadline_s, **fields)  # type: ignore[arg-type]


def hydrated(
    requests: Sequence[Request],
    dim: int,
    vectors: Sequence[Sequence[float] | None] | None = None,
    graph_seeds: Sequence[Sequence[str]] | None = None,
    seen_sets: Sequence[npt.NDArray[np.uint64]] | None = None,
    rejected: Mapping[int, RecdError] | None = None,
) -> Hydrated:
    """A hydrated batch: `vectors[i]` None (or no vectors at all) makes request i a cold start; its
    exclusions are computed from the request and `seen_sets[i]` as the hydrate steps do."""
    n = len(requests)
    matrix = np.zeros((n, dim), np.float32)
    has_vector = np.zeros(n, np.bool_)
    for i, v in enumerate(vectors or [None] * n):
        if v is not None:
            matrix[i] = v
            has_vector[i] = True
    return Hydrated(
        Batch(tuple(requests)),
        matrix,
        has_vector,
        tuple(tuple(s) for s in graph_seeds) if graph_seeds is not None else ((),) * n,
        excluded_batch(requests, list(seen_sets) if seen_sets is not None else [NO_LABELS] * n),
        dict(rejected or {}),
    )


def hits(
    source: Source, per_request: Sequence[Sequence[int]], scores: Sequence[Sequence[float]] | None = None
) -> SourceHits:
    """One source's hits: rows per request, with a score each (0.5 unless given)."""
    rows = Ragged.of([np.asarray(r, np.int64) for r in per_request], np.int64)
    if scores is None:
        flat = np.full(len(rows.values), 0.5, np.float32)
    else:
        flat = np.asarray([s for per in scores for s in per], np.float32)
    return SourceHits(source, rows, flat)


def candidates(
    h: Hydrated,
    found: Sequence[SourceHits],
    failed: Sequence[str] = (),
    applied: Mapping[str, Sequence[bool]] | None = None,
) -> Candidates:
    masks = {name: np.asarray(mask, np.bool_) for name, mask in (applied or {}).items()}
    return Candidates(h, tuple(found), tuple(failed), masks)


def per_request(ragged: Ragged) -> list[list[int]]:
    return [ragged.row(i).tolist() for i in range(len(ragged))]

"""Request normalisation and validation, shared by the frontend and the edge tier.

A request is checked and put in one canonical form before anything else happens: bad input is answered
with INVALID_ARGUMENT and a message that says what to fix (before the request joins a batch, so a bad one
never fails its neighbours), and two requests that mean the same thing (maps and lists in another order,
duplicate values, the default k left out) get the same canonical form, hence the same cache keys at the
frontend and at the edge.
"""

from __future__ import annotations

import hashlib
import json

from server import validation
from server.domain import RecommendQuery, SimilarQuery
from server.pipeline.stages import Kind, Request
from server.validation import Limits

Canonical = tuple[object, ...]


def canonical(query: RecommendQuery) -> Canonical:
    """The query minus the user id, in a canonical form (the user id is a key component of its own)."""
    return (
        query.k or validation.DEFAULT_K,
        sorted((name, sorted(set(allowed))) for name, allowed in query.filter.items()),
        sorted(query.context.items()),
        sorted(set(query.exclude_item_ids)),
        # Float noise below what MMR can tell apart must not split entries.
        round(query.diversity, 4),
        query.include_seen,
    )


def digest(parts: object) -> str:
    """A short stable digest of JSON-able parts: one unambiguous encoding, so no two differ only by a
    separator inside an id."""
    blob = json.dumps(parts, separators=(",", ":")).encode()
    return hashlib.blake2b(blob, digest_size=12).hexdigest()


def recommend_request(query: RecommendQuery, limits: Limits, deadline: float) -> Request:
    validation.check_id(query.user_id, "user_id", limits)
    k = validation.resolve_k(query.k)
    validation.check_diversity(query.diversity)
    validation.check_filter(query.filter, limits)
    validation.check_exclusions(sorted(query.exclude_item_ids), limits)
    validation.check_context(query.context, limits)
    return Request(
        Kind.RECOMMEND,
        k,
        deadline,
        user_id=query.user_id,
        filter=dict(query.filter),
        exclude_item_ids=query.exclude_item_ids,
        diversity=query.diversity,
        include_seen=query.include_seen,
        context=dict(query.context),
    )


def similar_request(query: SimilarQuery, limits: Limits, deadline: float) -> Request:
    validation.check_id(query.item_id, "item_id", limits)
    k = validation.resolve_k(query.k)
    validation.check_filter(query.filter, limits)
    return Request(Kind.SIMILAR, k, deadline, seed_item_id=query.item_id, filter=dict(query.filter))

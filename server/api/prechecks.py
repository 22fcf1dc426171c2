"""Size checks on the public API's wire messages, run as soon as a request is parsed (server/api/handlers.py).

Only counts: each check is a `len()` on the parsed message (plus one per bounded entry), so a request
carrying a filter of 100,000 attributes or 10 million ids is refused before it is converted, hashed or
sorted. What each entry holds (ids, bytes, values) is checked afterwards by the domain's validation
(server/validation.py), which in-process callers go through too, with the same messages.
"""

from __future__ import annotations

from typing import Any

from server import validation
from server.api.handlers import Precheck
from server.validation import Limits


def _filter(filter_: Any, limits: Limits) -> None:
    validation.check_count(
        len(filter_), "filter", limits.max_filter_attributes, "max_filter_attributes", "attributes"
    )
    for name, allowed in filter_.items():
        validation.check_count(
            len(allowed.values), f"filter[{name!r}]", limits.max_filter_values, "max_filter_values", "values"
        )


def _batch(count: int, field: str, limits: Limits) -> None:
    # An empty batch is the domain's to refuse, with its own message.
    validation.check_batch(count, field, limits, allow_empty=True)


def _embedding(length: int, field: str, limits: Limits) -> None:
    # Only a longer one is refused here, before NumPy copies it; the rest is the domain's to check.
    if length > limits.dim:
        validation.check_dimension(length, field, limits)


def recommender(limits: Limits) -> dict[str, Precheck]:
    def recommend(r: Any) -> None:
        _filter(r.filter, limits)
        validation.check_count(len(r.context), "context", limits.max_context_entries, "max_context_entries")
        validation.check_count(
            len(r.exclude_item_ids), "exclude_item_ids", limits.max_exclude_ids, "max_exclude_ids"
        )

    def similar_items(r: Any) -> None:
        _filter(r.filter, limits)

    def record_interactions(r: Any) -> None:
        _batch(len(r.interactions), "interactions", limits)

    return {"Recommend": recommend, "SimilarItems": similar_items, "RecordInteractions": record_interactions}


def catalog(limits: Limits) -> dict[str, Precheck]:
    def upsert_items(r: Any) -> None:
        _batch(len(r.items), "items", limits)
        for i, item in enumerate(r.items):
            validation.check_count(
                len(item.attributes),
                f"items[{i}].attributes",
                limits.max_attributes_per_item,
                "max_attributes_per_item",
            )
            _embedding(len(item.embedding), f"items[{i}].embedding", limits)

    def upsert_users(r: Any) -> None:
        _batch(len(r.users), "users", limits)
        for i, user in enumerate(r.users):
            validation.check_count(
                len(user.attributes),
                f"users[{i}].attributes",
                limits.max_attributes_per_user,
                "max_attributes_per_user",
            )
            _embedding(len(user.embedding), f"users[{i}].embedding", limits)

    def item_ids(r: Any) -> None:
        _batch(len(r.item_ids), "item_ids", limits)

    def upsert_edges(r: Any) -> None:
        _batch(len(r.edges), "edges", limits)

    return {
        "UpsertItems": upsert_items,
        "UpsertUsers": upsert_users,
        "DeleteItems": item_ids,
        "GetItems": item_ids,
        "UpsertEdges": upsert_edges,
    }

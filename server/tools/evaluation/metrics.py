"""Top-k quality with binary relevance (an item is relevant when it is among the user's held-out items),
and the list-level figures that go beside it.

- HR@k: 1 when at least one relevant item is in the top k.
- NDCG@k: DCG = sum over relevant items at rank r (1-based) of 1 / log2(r + 1), divided by the DCG of
  an ideal list, which puts min(k, number of relevant items) relevant items first.
- recall@k: relevant items in the top k / relevant items.
Each is averaged over users; a user with no relevant item is not scored (the split never yields one).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from server.tools.evaluation.split import HeldOut


def hit_rate(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    return 1.0 if any(item in relevant for item in ranked[:k]) else 0.0


def ndcg(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    if not relevant:
        return 0.0
    dcg = sum(1.0 / math.log2(rank + 2) for rank, item in enumerate(ranked[:k]) if item in relevant)
    ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(k, len(relevant))))
    return dcg / ideal


def recall(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    if not relevant:
        return 0.0
    return sum(1 for item in set(ranked[:k]) if item in relevant) / len(relevant)


@dataclass(frozen=True, slots=True)
class ListQuality:
    """One recommender's answers for the evaluated users, summarised."""

    name: str
    users: int
    hr: float
    ndcg: float
    recall: float
    # distinct items recommended / items in the catalogue
    coverage: float
    distinct_items: int
    # recommended slots holding an item the user interacted with in training / all slots (must be 0)
    seen_share: float
    # answers with fewer than k items
    short_answers: int


def summarise(
    name: str, lists: Mapping[str, Sequence[str]], users: Sequence[HeldOut], k: int, catalogue_size: int
) -> ListQuality:
    """`lists`: user id -> recommended item ids, best first; a user missing from it counts as empty."""
    hr = nd = rc = 0.0
    distinct: set[str] = set()
    slots = seen_slots = short = 0
    for user in users:
        ranked = list(lists.get(user.user_id, ()))[:k]
        hr += hit_rate(ranked, user.relevant, k)
        nd += ndcg(ranked, user.relevant, k)
        rc += recall(ranked, user.relevant, k)
        distinct.update(ranked)
        seen = user.seen
        slots += len(ranked)
        seen_slots += sum(1 for item in ranked if item in seen)
        short += len(ranked) < k
    n = max(len(users), 1)
    return ListQuality(
        name=name,
        users=len(users),
        hr=hr / n,
        ndcg=nd / n,
        recall=rc / n,
        coverage=len(distinct) / catalogue_size if catalogue_size else 0.0,
        distinct_items=len(distinct),
        seen_share=seen_slots / slots if slots else 0.0,
        short_answers=short,
    )

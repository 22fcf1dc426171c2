"""The popularity baseline: the k items with the most training interactions that the user has not seen.

It needs no model and no server, so any recommender worth serving should beat it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from server.domain import Interaction
from server.tools.evaluation.split import HeldOut


def popularity_lists(train: Iterable[Interaction], users: Sequence[HeldOut], k: int) -> dict[str, list[str]]:
    counts = Counter(x.item_id for x in train)
    # Most interactions first; ties by item id so the baseline is the same on every run.
    ranking = sorted(counts, key=lambda item: (-counts[item], item))
    lists: dict[str, list[str]] = {}
    for user in users:
        seen = user.seen
        picked: list[str] = []
        for item in ranking:
            if item not in seen:
                picked.append(item)
                if len(picked) == k:
                    break
        lists[user.user_id] = picked
    return lists

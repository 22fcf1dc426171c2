"""Item-item SIMILAR_TO edges derived from co-interactions (items a user touched close together in time).

Two items co-occur for a user when they sit within `window` positions of each other in the user's
time-ordered history; a user counts once per pair however often the pair repeats, so the score
count / sqrt(count_i * count_j) is the cosine between the items' user sets (restricted to co-occurrence),
which keeps popular items from being everyone's neighbour.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from server.domain import Edge, Interaction

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


def derive_edges(
    interactions: Iterable[Interaction], top_n: int = 20, window: int = 10, min_count: int = 2
) -> list[Edge]:
    """Directed edges both ways between co-occurring items; each item keeps its `top_n` best."""
    events = list(interactions)
    users, _ = _codes([e.user_id for e in events])
    items, item_ids = _codes([e.item_id for e in events])
    times = np.fromiter((e.timestamp_ms for e in events), dtype=np.int64, count=len(events))
    src, dst, score = derive_edge_arrays(
        users,
        items,
        times,
        top_n=top_n,
        window=window,
        min_count=min_count,
    )
    return [
        Edge(item_ids[s], item_ids[d], float(w))
        for s, d, w in zip(src.tolist(), dst.tolist(), score.tolist(), strict=True)
    ]


def _codes(ids: list[str]) -> tuple[IntArray, list[str]]:
    """Dense integer codes for string ids, and the id of each code."""
    distinct = list(dict.fromkeys(ids))
    code_of = {value: code for code, value in enumerate(distinct)}
    return np.fromiter((code_of[i] for i in ids), dtype=np.int64, count=len(ids)), distinct


def derive_edge_arrays(
    user_codes: IntArray,
    item_codes: IntArray,
    timestamps_ms: IntArray,
    top_n: int = 20,
    window: int = 10,
    min_count: int = 2,
) -> tuple[IntArray, IntArray, FloatArray]:
    """The same as `derive_edges` over integer codes: (src codes, dst codes, scores), sorted by src."""
    if top_n < 1 or window < 1 or min_count < 1:
        raise ValueError("top_n, window and min_count must be at least 1")
    empty = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))
    if len(item_codes) < 2:
        return empty
    order = np.lexsort((timestamps_ms, user_codes))
    users = user_codes[order]
    items = item_codes[order]
    n_items = int(items.max()) + 1

    # Every (earlier, later) pair within the window, one shifted copy per distance.
    lo_parts: list[IntArray] = []
    hi_parts: list[IntArray] = []
    user_parts: list[IntArray] = []
    for distance in range(1, min(window, len(items) - 1) + 1):
        same_user = users[:-distance] == users[distance:]
        a = items[:-distance][same_user]
        b = items[distance:][same_user]
        distinct = a != b
        a, b = a[distinct], b[distinct]
        lo_parts.append(np.minimum(a, b))
        hi_parts.append(np.maximum(a, b))
        user_parts.append(users[:-distance][same_user][distinct])
    pair_keys = np.concatenate(lo_parts) * n_items + np.concatenate(hi_parts)
    pair_users = np.concatenate(user_parts)
    if len(pair_keys) == 0:
        return empty

    # One vote per user per pair, then votes per pair. Sorting one combined int64 key is much faster
    # than lexsort or np.unique (hash-based in NumPy 2) at millions of pairs.
    n_users = int(users.max()) + 1
    if n_items * n_items * n_users < 2**62:
        votes = _distinct_sorted(pair_keys * n_users + pair_users)
        voted_pairs = votes // n_users
    else:
        by_pair = np.lexsort((pair_users, pair_keys))
        pair_keys, pair_users = pair_keys[by_pair], pair_users[by_pair]
        first = np.r_[True, (pair_keys[1:] != pair_keys[:-1]) | (pair_users[1:] != pair_users[:-1])]
        voted_pairs = pair_keys[first]
    starts = np.flatnonzero(np.r_[True, voted_pairs[1:] != voted_pairs[:-1]])
    keys = voted_pairs[starts]
    co_counts = np.diff(np.r_[starts, len(voted_pairs)])
    keep = co_counts >= min_count
    keys, co_counts = keys[keep], co_counts[keep]
    if len(keys) == 0:
        return empty

    # Users per item, each user counted once.
    if n_users * n_items < 2**62:
        user_items = _distinct_sorted(users * n_items + items) % n_items
    else:
        user_items = np.unique(np.stack([users, items], axis=1), axis=0)[:, 1]
    item_users = np.bincount(user_items, minlength=n_items)

    lo, hi = keys // n_items, keys % n_items
    scores = (co_counts / np.sqrt(item_users[lo].astype(np.float64) * item_users[hi])).astype(np.float32)

    src = np.concatenate([lo, hi])
    dst = np.concatenate([hi, lo])
    score = np.concatenate([scores, scores])
    # Best first within each source; ties broken by destination so the output is deterministic.
    ranked = np.lexsort((dst, -score, src))
    src, dst, score = src[ranked], dst[ranked], score[ranked]
    group_start = np.flatnonzero(np.r_[True, src[1:] != src[:-1]])
    group_sizes = np.diff(np.r_[group_start, len(src)])
    rank = np.arange(len(src)) - np.repeat(group_start, group_sizes)
    top = rank < top_n
    return src[top], dst[top], score[top]


def _distinct_sorted(keys: IntArray) -> IntArray:
    keys = np.sort(keys)
    return keys[np.r_[True, keys[1:] != keys[:-1]]]

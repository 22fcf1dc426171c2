"""A user's seen set as NumPy arrays: item hashes sorted ascending, each with the time it was last seen.

Pure functions over immutable values, shared by the profile stores: the embedded one keeps a seen set
per user and replaces it on write; the CQL one builds one from the map it reads.

A seen set is a plain tuple (hashes, last_seen_ms) of two read-only arrays: CPython's garbage collector
stops tracking a tuple of untracked objects, so a million users' seen sets do not lengthen every full
collection (an object per user would).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from server.backends.base import ItemHashes

Times = npt.NDArray[np.int64]
# (item hashes sorted ascending and unique, last seen (ms) aligned with them), both read-only.
SeenSet = tuple[ItemHashes, Times]


def frozen(hashes: ItemHashes, last_seen_ms: Times) -> SeenSet:
    """A seen set of arrays that already are one (hashes sorted and unique), made read-only."""
    hashes.flags.writeable = False
    last_seen_ms.flags.writeable = False
    return (hashes, last_seen_ms)


EMPTY = frozen(np.empty(0, np.uint64), np.empty(0, np.int64))


def from_pairs(hashes: ItemHashes, times_ms: Times, limit: int) -> SeenSet:
    """A seen set from (hash, time) pairs in any order, duplicates allowed: the latest time per hash,
    the `limit` most recently seen kept."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    times_ms = np.asarray(times_ms, dtype=np.int64)
    if len(hashes) <= 1:
        return EMPTY if len(hashes) == 0 else frozen(hashes.copy(), times_ms.copy())
    # By hash, then time: the last of each run of equal hashes carries that hash's latest time.
    order = np.lexsort((times_ms, hashes))
    hashes, times_ms = hashes[order], times_ms[order]
    last = np.ones(len(hashes), dtype=np.bool_)
    last[:-1] = hashes[1:] != hashes[:-1]
    return _newest(hashes[last], times_ms[last], limit)


def add(seen: SeenSet, pairs: Sequence[tuple[int, int]], limit: int) -> SeenSet:
    """`seen` plus (item hash, time) pairs given as Python ints (a store's write path)."""
    if len(pairs) == 1 and len(seen[0]):
        return _merge_one(seen, pairs[0][0], pairs[0][1], limit)
    hashes = np.fromiter((h for h, _ in pairs), dtype=np.uint64, count=len(pairs))
    times_ms = np.fromiter((t for _, t in pairs), dtype=np.int64, count=len(pairs))
    return merge(seen, hashes, times_ms, limit)


def merge(seen: SeenSet, hashes: ItemHashes, times_ms: Times, limit: int) -> SeenSet:
    """`seen` plus newly seen (hash, time) pairs; the seen set itself is not changed."""
    held_hashes, held_times = seen
    new_hashes, new_times = from_pairs(hashes, times_ms, limit)
    if len(held_hashes) == 0:
        return new_hashes, new_times
    if len(new_hashes) == 0:
        return seen
    # Both sorted by hash: existing hashes get the later of both times, the others are inserted in order.
    at = np.searchsorted(held_hashes, new_hashes)
    known = at < len(held_hashes)
    known[known] = held_hashes[at[known]] == new_hashes[known]
    last_seen = held_times.copy()
    last_seen[at[known]] = np.maximum(last_seen[at[known]], new_times[known])
    fresh = ~known
    merged_hashes = np.insert(held_hashes, at[fresh], new_hashes[fresh])
    merged_times = np.insert(last_seen, at[fresh], new_times[fresh])
    return _newest(merged_hashes, merged_times, limit)


def _merge_one(seen: SeenSet, item_hash: int, time_ms: int, limit: int) -> SeenSet:
    """merge() of a single pair: the common write (one interaction) without the sorting machinery."""
    held_hashes, held_times = seen
    at = int(held_hashes.searchsorted(np.uint64(item_hash)))
    if at < len(held_hashes) and int(held_hashes[at]) == item_hash:
        if int(held_times[at]) >= time_ms:
            return seen
        last_seen = held_times.copy()
        last_seen[at] = time_ms
        return frozen(held_hashes, last_seen)  # the hashes are unchanged and read-only: shared
    hashes = np.concatenate((held_hashes[:at], np.array([item_hash], np.uint64), held_hashes[at:]))
    times = np.concatenate((held_times[:at], np.array([time_ms], np.int64), held_times[at:]))
    return _newest(hashes, times, limit)


def _newest(hashes: ItemHashes, times_ms: Times, limit: int) -> SeenSet:
    """The `limit` most recently seen of hash-sorted arrays (ties: the larger hash is kept), still sorted."""
    if len(hashes) > limit:
        keep = np.sort(np.lexsort((hashes, times_ms))[-limit:])
        hashes, times_ms = hashes[keep], times_ms[keep]
    return frozen(hashes, times_ms)

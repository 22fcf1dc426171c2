"""An in-process LRU map bounded by the bytes its values hold (the edge's first cache level).

Unlike the embedded Cache (server.backends.memory_cache) it does not expire anything on its own: the edge
serves expired entries for a grace period (stale-while-revalidate), so whether an entry is still usable
is the caller's decision, and the bound in bytes is this map's only eviction rule.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


class ByteLRU(Generic[V]):
    """get / put / pop are O(1); put evicts least recently used entries until the total fits."""

    def __init__(self, max_bytes: int, size_of: Callable[[str, V], int]) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = max_bytes
        self._size_of = size_of
        # key -> (value, size), least recently used first.
        self._entries: OrderedDict[str, tuple[V, int]] = OrderedDict()
        self.bytes_used = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def get(self, key: str) -> V | None:
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries.move_to_end(key)
        return found[0]

    def put(self, key: str, value: V) -> None:
        self.pop(key)
        size = self._size_of(key, value)
        # A value larger than the whole bound would only flush everything else and then go itself.
        if size > self.max_bytes:
            return
        self._entries[key] = (value, size)
        self.bytes_used += size
        while self.bytes_used > self.max_bytes:
            _, (_, evicted) = self._entries.popitem(last=False)
            self.bytes_used -= evicted
            self.evictions += 1

    def pop(self, key: str) -> V | None:
        found = self._entries.pop(key, None)
        if found is None:
            return None
        self.bytes_used -= found[1]
        return found[0]

    def pop_matching(self, match: Callable[[str], bool]) -> int:
        """Removes every entry whose key matches (a scan of all of them); returns how many."""
        keys = [key for key in self._entries if match(key)]
        for key in keys:
            self.pop(key)
        return len(keys)

    def clear(self) -> None:
        self._entries.clear()
        self.bytes_used = 0

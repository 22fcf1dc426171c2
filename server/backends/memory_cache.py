"""The embedded cache: an in-process TTL + LRU map bounded by the bytes it holds.

The bound counts the UTF-8 bytes of each key plus its value, not Python object overhead, so it is
the same budget an operator would give Redis (`maxmemory`), give or take the per-entry overhead.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

Clock = Callable[[], float]


class InMemoryCache:
    """Implements the Cache protocol. Every operation is O(1) (amortised over evictions)."""

    def __init__(self, max_bytes: int, clock: Clock = time.monotonic) -> None:
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = max_bytes
        # A monotonic clock by default: wall-clock jumps (NTP) must not expire or revive entries.
        self._clock = clock
        # key -> (value, expires_at, size); the order is the LRU order, least recent first.
        self._entries: OrderedDict[str, tuple[bytes, float, int]] = OrderedDict()
        self.bytes_used = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.expirations = 0

    def __len__(self) -> int:
        return len(self._entries)

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [await self.get(key) for key in keys]

    async def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        value, expires_at, _ = entry
        if self._clock() >= expires_at:
            self._remove(key)
            self.expirations += 1
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return value

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        self._remove(key)
        size = len(key.encode()) + len(value)
        # A value that could never fit, or one that is already expired, would only evict live entries.
        if ttl_s <= 0 or size > self.max_bytes:
            return
        self._entries[key] = (value, self._clock() + ttl_s, size)
        self.bytes_used += size
        while self.bytes_used > self.max_bytes:
            _, (_, _, evicted_size) = self._entries.popitem(last=False)
            self.bytes_used -= evicted_size
            self.evictions += 1

    async def delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._remove(key)

    async def close(self) -> None:
        self._entries.clear()
        self.bytes_used = 0

    def _remove(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes_used -= entry[2]

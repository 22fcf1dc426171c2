"""A cached Recommend answer and its freshness, and its byte form for the shared (Redis) level."""

from __future__ import annotations

import struct
from dataclasses import dataclass

# Python-side cost of an entry beyond its key and answer bytes (the object, the LRU's link, the key's
# str header), so that the in-process bound stays honest when answers are small.
ENTRY_OVERHEAD_BYTES = 160

# (fresh_until, stale_until, stored_at). Changing it needs a new edge.key_version: old blobs would misread.
_HEADER = struct.Struct("<ddd")


@dataclass(frozen=True, slots=True)
class Entry:
    # The origin's serialised RecommendResponse, served as is: a hit never parses or re-encodes it.
    response: bytes
    # Wall-clock seconds: entries travel between edge processes through Redis, so a monotonic clock,
    # which is per process, would not mean the same instant everywhere.
    fresh_until: float
    stale_until: float
    # When the answer came from the origin: deletes heard of since may be in it (server/edge/deletes.py).
    stored_at: float

    def is_fresh(self, now: float) -> bool:
        return now < self.fresh_until

    def is_usable(self, now: float) -> bool:
        return now < self.stale_until

    def encode(self) -> bytes:
        return _HEADER.pack(self.fresh_until, self.stale_until, self.stored_at) + self.response

    @staticmethod
    def decode(blob: bytes) -> Entry | None:
        """None for a blob that is not an entry (another writer, a truncated value): treated as a miss."""
        if len(blob) < _HEADER.size:
            return None
        fresh_until, stale_until, stored_at = _HEADER.unpack_from(blob)
        return Entry(blob[_HEADER.size :], fresh_until, stale_until, stored_at)


def entry_size(key: str, entry: Entry) -> int:
    return len(key) + len(entry.response) + ENTRY_OVERHEAD_BYTES

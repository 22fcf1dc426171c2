"""The user's state on the request path: their vector, recent history and seen set.

Order of lookups: cache -> profile store (profile + recent history + seen set, read concurrently) ->
vector computed from the history. The vector is the stored profile embedding blended with the
recency-weighted mean of the user's recent items, so RecordInteractions moves it at once (real-time
feedback) even for users with a stored embedding.

Recency is measured from the user's own newest interaction, not from the wall clock: an interaction's
weight halves every `half_life_s` of time between it and that newest one. Against the wall clock, a
history a few years old (an imported data set, a user back after a long break) underflowed every weight
to zero and silently became a plain mean; relative to the newest interaction the newest always weighs 1
and the ordering of weights is the same whenever the history happened.

The seen set (every item the user has interacted with, up to `profiles.seen_limit`) is separate from the
recent window: the window builds the vector, the seen set is what answers must not contain.

Cached states are versioned, because the cache is shared by every frontend (Redis, or the worker
group's state node) and a write and a read of one user can interleave: a Recommend that read the
profile store before an interaction was written must not cache that old state after the write's
invalidation, or every frontend would serve it until the TTL. So a write gives the user a new random
version token (and deletes the state); a reader fetches the token with the state in the same multi-get,
uses the state only when it was cached under the current token, and caches what it reads from the store
under the token it saw before reading. A state cached by a reader that raced a write carries the old
token and is never used. Tokens outlive states (`_VERSION_TTL_EXTRA_S`), so an expired token cannot make
an older state current again; only an early eviction of a token by memory pressure could, which the
write's delete of the state makes a double coincidence.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from server import metrics
from server.backends.base import Cache, ProfileStore
from server.catalog.item_store import ItemStore
from server.domain import Interaction, UserProfile

_NO_LABELS = np.empty(0, np.uint64)


@dataclass(frozen=True, slots=True)
class UserState:
    user_id: str
    vector: npt.NDArray[np.float32] | None  # unit length, or None for a cold-start user
    recent_item_ids: tuple[str, ...]  # newest first
    # Stable hashes (shard labels) of every item the user has seen, sorted and unique.
    seen_labels: npt.NDArray[np.uint64] = field(default_factory=lambda: _NO_LABELS)

    @property
    def cold(self) -> bool:
        return self.vector is None


def user_cache_key(user_id: str) -> str:
    # u3: the entry starts with its version token; u2 and older entries must never be read as one.
    return f"recd:u3:{user_id}"


def user_version_key(user_id: str) -> str:
    return f"recd:uv:{user_id}"


_TOKEN_BYTES = 8
_NO_TOKEN = b"\0" * _TOKEN_BYTES  # a user never written to since their token expired
_VERSION_TTL_EXTRA_S = 3600.0


class UserStates:
    def __init__(
        self,
        profiles: ProfileStore,
        cache: Cache,
        items: ItemStore,
        history_limit: int,
        half_life_s: float,
        cache_ttl_s: float,
        profile_blend: float = 0.5,
    ) -> None:
        self._profiles = profiles
        self._cache = cache
        self._items = items
        self._history_limit = history_limit
        self._half_life_s = half_life_s
        self._cache_ttl_s = cache_ttl_s
        self._profile_blend = profile_blend

    async def get(self, user_id: str, timeout_s: float) -> UserState:
        return (await self.get_many([user_id], timeout_s))[0]

    async def get_many(self, user_ids: Sequence[str], timeout_s: float) -> list[UserState]:
        """The state of each user, aligned with `user_ids`: one multi-get from the cache, one batched
        read of the profile store for the misses. A user named twice is read once."""
        unique = list(dict.fromkeys(user_ids))
        n = len(unique)
        found = await self._cache.get_many(
            [user_version_key(u) for u in unique] + [user_cache_key(u) for u in unique]
        )
        states: dict[str, UserState] = {}
        misses = []
        tokens: dict[str, bytes] = {}
        for user_id, token, blob in zip(unique, found[:n], found[n:], strict=True):
            token = token if token is not None and len(token) == _TOKEN_BYTES else _NO_TOKEN
            if blob is not None and blob[:_TOKEN_BYTES] == token:
                states[user_id] = decode_state(user_id, blob[_TOKEN_BYTES:])
            else:
                misses.append(user_id)
                tokens[user_id] = token
        if len(states):
            metrics.CACHE_REQUESTS.labels("user_state", "hit").inc(len(states))
        if misses:
            metrics.CACHE_REQUESTS.labels("user_state", "miss").inc(len(misses))
            records = await self._profiles.read_users(misses, self._history_limit, timeout_s)
            fresh = [
                self.compute(u, r.profile, r.history, r.seen) for u, r in zip(misses, records, strict=True)
            ]
            await asyncio.gather(
                *(
                    self._cache.set(
                        user_cache_key(s.user_id), tokens[s.user_id] + encode_state(s), self._cache_ttl_s
                    )
                    for s in fresh
                )
            )
            states.update((s.user_id, s) for s in fresh)
        return [states[u] for u in user_ids]

    def compute(
        self,
        user_id: str,
        profile: UserProfile | None,
        history: list[Interaction],
        seen_labels: npt.NDArray[np.uint64] | None = None,
    ) -> UserState:
        """The state from what the profile store holds; `history` newest first."""
        recent = tuple(dict.fromkeys(i.item_id for i in history))
        from_history = self._history_vector(history)
        stored = profile.embedding if profile is not None else None
        if stored is not None and from_history is not None:
            vector = _unit(stored + self._profile_blend * from_history)
        else:
            vector = _unit(stored) if stored is not None else from_history
        seen = _NO_LABELS if seen_labels is None else np.asarray(seen_labels, dtype=np.uint64)
        return UserState(user_id, vector, recent, seen)

    def _history_vector(self, history: list[Interaction]) -> npt.NDArray[np.float32] | None:
        rows = []
        weights = []
        times = []
        for interaction in history:
            row = self._items.row_of(interaction.item_id)
            if row is None:
                continue
            rows.append(row)
            weights.append(interaction.weight)
            times.append(interaction.timestamp_ms)
        if not rows:
            return None
        ts = np.asarray(times, dtype=np.float64)
        age_s = (ts.max() - ts) / 1000.0
        w = (np.asarray(weights, dtype=np.float64) * np.exp2(-age_s / self._half_life_s)).astype(np.float32)
        if float(w.sum()) <= 0.0:
            # Only zero weights: no preference is expressed, so each item counts the same rather than the
            # user going cold.
            w = np.ones_like(w)
        vectors = self._items.vectors(np.asarray(rows, dtype=np.int64))
        return _unit(w @ vectors)

    async def invalidate(self, user_ids: Iterable[str]) -> None:
        """After a write of these users' data (durable first): every frontend's next read goes to the
        store, and no read that started before now can cache what it read (see the module doc)."""
        unique = set(user_ids)
        ttl_s = self._cache_ttl_s + _VERSION_TTL_EXTRA_S
        await asyncio.gather(
            *(self._cache.set(user_version_key(u), _new_token(), ttl_s) for u in unique),
            self._cache.delete([user_cache_key(u) for u in unique]),
        )


def _new_token() -> bytes:
    while True:
        token = os.urandom(_TOKEN_BYTES)
        if token != _NO_TOKEN:
            return token


def _unit(v: npt.NDArray[np.float32] | None) -> npt.NDArray[np.float32] | None:
    if v is None:
        return None
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0.0:
        return None
    return (np.asarray(v, dtype=np.float32) / norm).astype(np.float32)


# Cached state: u16 dim (0 = no vector), the vector as f16, u32 count of seen labels, the labels as
# little-endian u64, then the recent item ids, newline-separated.
_SEEN_COUNT = struct.Struct("<I")


def encode_state(state: UserState) -> bytes:
    if state.vector is None:
        head = struct.pack("<H", 0)
    else:
        head = struct.pack("<H", len(state.vector)) + state.vector.astype("<f2").tobytes()
    seen = _SEEN_COUNT.pack(len(state.seen_labels)) + state.seen_labels.astype("<u8").tobytes()
    return head + seen + "\n".join(state.recent_item_ids).encode()


def decode_state(user_id: str, data: bytes) -> UserState:
    (dim,) = struct.unpack_from("<H", data)
    offset = 2 + 2 * dim
    vector = np.frombuffer(data[2:offset], dtype="<f2").astype(np.float32) if dim else None
    (n_seen,) = _SEEN_COUNT.unpack_from(data, offset)
    offset += _SEEN_COUNT.size
    seen = np.frombuffer(data, dtype="<u8", count=n_seen, offset=offset).astype(np.uint64)
    tail = data[offset + 8 * n_seen :].decode()
    return UserState(user_id, _unit(vector), tuple(tail.split("\n")) if tail else (), seen)

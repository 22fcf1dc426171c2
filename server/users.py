"""The user's state on the request path: their vector and recent history.

Order of lookups: cache -> profile store (profile + history) -> vector computed from the history. The
vector is the stored profile embedding blended with the recency-weighted mean of the user's recent items,
so RecordInteractions moves it at once (real-time feedback) even for users with a stored embedding.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from server import metrics
from server.backends.base import Cache, ProfileStore
from server.catalog.item_store import ItemStore
from server.domain import Interaction, UserProfile


@dataclass(frozen=True, slots=True)
class UserState:
    user_id: str
    vector: npt.NDArray[np.float32] | None  # unit length, or None for a cold-start user
    recent_item_ids: tuple[str, ...]  # newest first

    @property
    def cold(self) -> bool:
        return self.vector is None


def user_cache_key(user_id: str) -> str:
    return f"recd:u1:{user_id}"


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
        cached = await self._cache.get(user_cache_key(user_id))
        if cached is not None:
            metrics.CACHE_REQUESTS.labels("user_state", "hit").inc()
            return decode_state(user_id, cached)
        metrics.CACHE_REQUESTS.labels("user_state", "miss").inc()
        profile, history = await asyncio.gather(
            self._profiles.get_profile(user_id, timeout_s),
            self._profiles.recent_interactions(user_id, self._history_limit, timeout_s),
        )
        state = self.compute(user_id, profile, history)
        await self._cache.set(user_cache_key(user_id), encode_state(state), self._cache_ttl_s)
        return state

    def compute(
        self, user_id: str, profile: UserProfile | None, history: list[Interaction], now_ms: int | None = None
    ) -> UserState:
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        recent = tuple(dict.fromkeys(i.item_id for i in history))
        from_history = self._history_vector(history, now_ms)
        stored = profile.embedding if profile is not None else None
        if stored is not None and from_history is not None:
            vector = _unit(stored + self._profile_blend * from_history)
        else:
            vector = _unit(stored) if stored is not None else from_history
        return UserState(user_id, vector, recent)

    def _history_vector(self, history: list[Interaction], now_ms: int) -> npt.NDArray[np.float32] | None:
        if not history:
            return None
        rows = []
        weights = []
        for interaction in history:
            row = self._items.row_of(interaction.item_id)
            if row is None:
                continue
            age_s = max(0.0, (now_ms - interaction.timestamp_ms) / 1000.0)
            rows.append(row)
            weights.append(interaction.weight * 2.0 ** (-age_s / self._half_life_s))
        if not rows:
            return None
        vectors = self._items.vectors(np.asarray(rows, dtype=np.int64))
        w = np.asarray(weights, dtype=np.float32)
        if float(w.sum()) <= 0.0:
            w = np.ones_like(w)
        return _unit(w @ vectors)

    async def invalidate(self, user_ids: Iterable[str]) -> None:
        await self._cache.delete([user_cache_key(u) for u in set(user_ids)])


def _unit(v: npt.NDArray[np.float32] | None) -> npt.NDArray[np.float32] | None:
    if v is None:
        return None
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0.0:
        return None
    return (np.asarray(v, dtype=np.float32) / norm).astype(np.float32)


# Cached state: u16 dim (0 = no vector), the vector as f16, then the recent item ids, newline-separated.
def encode_state(state: UserState) -> bytes:
    if state.vector is None:
        head = struct.pack("<H", 0)
    else:
        head = struct.pack("<H", len(state.vector)) + state.vector.astype("<f2").tobytes()
    return head + "\n".join(state.recent_item_ids).encode()


def decode_state(user_id: str, data: bytes) -> UserState:
    (dim,) = struct.unpack_from("<H", data)
    offset = 2 + 2 * dim
    vector = np.frombuffer(data[2:offset], dtype="<f2").astype(np.float32) if dim else None
    tail = data[offset:].decode()
    return UserState(user_id, _unit(vector), tuple(tail.split("\n")) if tail else ())

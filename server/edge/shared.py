"""The edge's second cache level: Redis shared by edge replicas, never in the way of an answer."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from server import metrics
from server.backends.base import Cache
from server.config import CacheConfig

log = logging.getLogger(__name__)


class FailOpen:
    """A Cache whose failures are misses and no-ops, even from an implementation that breaks the Cache
    contract and raises: the edge must answer from L1 or the origin whatever the shared level does."""

    def __init__(self, inner: Cache) -> None:
        self.inner = inner

    async def get(self, key: str) -> bytes | None:
        try:
            return await self.inner.get(key)
        except Exception as exc:
            metrics.EDGE_CACHE.labels("l2", "error").inc()
            log.debug("shared cache get failed: %s", exc)
            return None

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        try:
            return await self.inner.get_many(keys)
        except Exception as exc:
            metrics.EDGE_CACHE.labels("l2", "error").inc()
            log.debug("shared cache get_many failed: %s", exc)
            return [None] * len(keys)

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        try:
            await self.inner.set(key, value, ttl_s)
        except Exception as exc:
            metrics.EDGE_CACHE.labels("l2", "error").inc()
            log.debug("shared cache set failed: %s", exc)

    async def delete(self, keys: Sequence[str]) -> None:
        try:
            await self.inner.delete(keys)
        except Exception as exc:
            log.debug("shared cache delete failed: %s", exc)

    async def close(self) -> None:
        try:
            await self.inner.close()
        except Exception as exc:
            log.debug("closing the shared cache: %s", exc)


def open_shared_cache(config: CacheConfig) -> FailOpen | None:
    """None when the edge runs on its in-process level alone (backend "embedded")."""
    if config.backend == "embedded":
        return None
    if config.backend == "redis":
        # Short timeouts, no client retries and a circuit breaker: a Redis outage costs a few ms at most.
        from server.backends.redis_cache import RedisCache

        return FailOpen(RedisCache(config))
    raise NotImplementedError(f"edge.cache.backend {config.backend!r} is not available in this build")

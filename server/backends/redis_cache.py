"""The cache on Redis through redis-py's asyncio client: best effort, never in the way.

- Every operation is bounded by `timeout_ms` (a few milliseconds): socket connect and read timeouts in
  the client, plus an asyncio timeout around the whole call (which also covers waiting for a pooled
  connection). The client's own retries are off: a retry would double the time a miss may cost.
- Fail-open: any failure (refused, reset, timeout, protocol error) is a miss for reads and a no-op for
  writes, counted in recd_cache_requests_total{tier="redis",outcome="error"}. A lost invalidation can
  leave a user's cached state stale for at most its TTL; that is the price of never failing a request.
- A circuit breaker keeps an outage from costing every request the full timeout (a blackholed Redis
  makes each call wait `timeout_ms`): after `breaker_failures` consecutive failures Redis is skipped for
  `breaker_open_s`, then one probe call decides whether it is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from server import metrics, tracing
from server.config import CacheConfig
from server.security.tls import redis_url_and_options

log = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], float]
_TIER = "redis"


class CircuitBreaker:
    """closed -> (N consecutive failures) -> open for `open_s` -> half-open: one probe call at a time;
    its success closes the breaker, its failure opens it again."""

    def __init__(self, failures: int, open_s: float, clock: Clock = time.monotonic) -> None:
        if failures < 1:
            raise ValueError(f"breaker failures must be at least 1, got {failures}")
        self._threshold = failures
        self._open_s = open_s
        self._clock = clock
        self._failures = 0
        self._open_until: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        if self._open_until is None:
            return "closed"
        return "half-open" if self._clock() >= self._open_until else "open"

    def allow(self) -> bool:
        if self._open_until is None:
            return True
        if self._clock() < self._open_until or self._probing:
            return False
        self._probing = True
        return True

    def record_success(self) -> None:
        if self._open_until is not None:
            log.warning("redis is answering again; cache back in use")
        self._failures = 0
        self._open_until = None
        self._probing = False

    def record_failure(self) -> None:
        self._failures += 1
        if self._probing or self._failures >= self._threshold:
            if self._open_until is None:
                log.warning(
                    "redis failed %d times in a row; skipping it for %.1fs at a time",
                    self._failures,
                    self._open_s,
                )
            self._open_until = self._clock() + self._open_s
            self._probing = False


class _Failed:
    """The outcome of a Redis call that failed or was skipped (distinct from a None reply)."""


_FAILED = _Failed()


class RedisCache:
    """Implements the Cache protocol over Redis; never raises."""

    def __init__(self, config: CacheConfig, clock: Clock = time.monotonic) -> None:
        if config.timeout_ms <= 0:
            raise ValueError(f"cache.timeout_ms must be positive, got {config.timeout_ms}")
        self.config = config
        self._timeout_s = config.timeout_ms / 1000.0
        self._prefix = config.key_prefix
        # No loop is bound here: connections are opened on first use, in the loop that uses them.
        url, tls_options = redis_url_and_options(config.url, config.tls, "cache.tls")
        self._client = aioredis.Redis.from_url(
            url,
            **tls_options,
            socket_connect_timeout=self._timeout_s,
            socket_timeout=self._timeout_s,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            max_connections=config.max_connections,
            health_check_interval=0,
        )
        self._breaker = CircuitBreaker(config.breaker_failures, config.breaker_open_s, clock)

    @property
    def breaker_state(self) -> str:
        return self._breaker.state

    def _key(self, key: str) -> str:
        return self._prefix + key

    async def _call(self, op: str, call: Callable[[], Awaitable[T]]) -> T | _Failed:
        if not self._breaker.allow():
            metrics.CACHE_REQUESTS.labels(_TIER, "error").inc()
            return _FAILED
        try:
            async with asyncio.timeout(self._timeout_s):
                with tracing.client_span("redis", op):
                    value = await call()
        except asyncio.CancelledError:
            # The caller's budget ran out first; the command still went to Redis, so it counts.
            metrics.BACKEND_CALLS.labels(_TIER, op, "cancelled").inc()
            raise
        except Exception as exc:  # fail-open: whatever went wrong, the caller sees a miss / no-op
            self._breaker.record_failure()
            metrics.CACHE_REQUESTS.labels(_TIER, "error").inc()
            metrics.BACKEND_CALLS.labels(_TIER, op, "error").inc()
            log.debug("redis %s failed: %s: %s", op, type(exc).__name__, exc)
            return _FAILED
        self._breaker.record_success()
        metrics.BACKEND_CALLS.labels(_TIER, op, "ok").inc()
        return value

    async def get(self, key: str) -> bytes | None:
        value = await self._call("get", lambda: self._client.get(self._key(key)))
        if isinstance(value, _Failed):
            return None
        metrics.CACHE_REQUESTS.labels(_TIER, "miss" if value is None else "hit").inc()
        # decode_responses is off, so a reply is bytes (redis-py's type says bytes | str).
        return value if value is None or isinstance(value, bytes) else value.encode()

    async def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        if not keys:
            return []
        values = await self._call("mget", lambda: self._client.mget([self._key(k) for k in keys]))
        if isinstance(values, _Failed):
            return [None] * len(keys)
        out: list[bytes | None] = [v if v is None or isinstance(v, bytes) else v.encode() for v in values]
        hits = sum(v is not None for v in out)
        metrics.CACHE_REQUESTS.labels(_TIER, "hit").inc(hits)
        metrics.CACHE_REQUESTS.labels(_TIER, "miss").inc(len(out) - hits)
        return out

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        if ttl_s <= 0:
            # As in the embedded cache: an already expired value replaces (removes) the old one.
            await self.delete([key])
            return
        # PX: millisecond TTLs, at least one (Redis rejects 0).
        await self._call(
            "set", lambda: self._client.set(self._key(key), value, px=max(1, round(ttl_s * 1000)))
        )

    async def delete(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        await self._call("delete", lambda: self._client.delete(*(self._key(k) for k in keys)))

    async def close(self) -> None:
        try:
            await self._client.aclose()
        except Exception as exc:  # closing a pool to a dead server must not fail shutdown
            log.debug("closing the redis client: %s", exc)

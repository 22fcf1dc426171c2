"""Per-caller quotas: a token bucket per (caller, role), refilled continuously.

The limit of a caller's RPCs under a role is the caller's own quota for that role (auth.callers[].quotas),
else the role's (auth.quotas), else none. Callers come from the config only, so the buckets are bounded.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

from server.config import QuotaConfig
from server.security.auth import Caller


class TokenBucket:
    """`rate_per_s` tokens a second, at most `burst` held; starts full."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: float, now: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = burst
        self._stamp = now

    def take(self, now: float) -> float:
        """0.0 when a token was taken; else the seconds until one will be there (nothing is taken)."""
        if now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate_per_s)
            self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate_per_s


class Quotas:
    def __init__(
        self, defaults: Mapping[str, QuotaConfig], clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._defaults = dict(defaults)
        self._clock = clock
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    def limit(self, caller: Caller, role: str) -> QuotaConfig | None:
        return caller.quotas.get(role) or self._defaults.get(role)

    def admit(self, caller: Caller, role: str) -> float:
        """0.0: admitted; else refused, and the seconds after which a retry can be admitted."""
        quota = self.limit(caller, role)
        if quota is None:
            return 0.0
        burst = max(1.0, quota.burst or quota.rate_per_s)
        key = (caller.name, role)
        bucket = self._buckets.get(key)
        now = self._clock()
        # A reloaded callers file can change a caller's limit: its bucket starts over with the new one.
        if bucket is None or bucket.rate_per_s != quota.rate_per_s or bucket.burst != burst:
            bucket = self._buckets[key] = TokenBucket(quota.rate_per_s, burst, now)
        return bucket.take(now)


def retry_after_ms(wait_s: float) -> int:
    return max(1, math.ceil(wait_s * 1000.0))
